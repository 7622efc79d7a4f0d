//! Resumable streams: the nouns a stream's log is kept and read with.
//!
//! Every streamed generation gets a stream id (`X-Tokenedge-Stream`), and
//! every upstream event it re-streams a sequence number, 1 for the first.
//! The downstream events an upstream event becomes carry its number as
//! their SSE `id:` (on the last of them, so `Last-Event-ID: N` means every
//! byte of event N arrived).
//!
//! The generating request keeps the stream's [`Record`] in KV: the
//! upstream events so far, as SSE blocks, and how the stream ended once it
//! has. It writes it at most once per [`CHECKPOINT_MS`] while events come,
//! at least once per [`HEARTBEAT_MS`] while it is alive, when its client
//! leaves, and at the end. A reader (`GET /v1/streams/{id}`) replays the
//! record's events after its cursor through its own re-streamer, so it gets
//! them in the format, coding and pacing it asks for, then follows the
//! record until the end. A cancel (`POST /v1/streams/{id}/cancel`) writes a
//! mark the generating request looks for every [`CANCEL_POLL_MS`].
//!
//! The record names its owner's scope (a hash of the API key): any other
//! key reads it as unknown.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::compress::Encoder;
use crate::core::encoding::Coding;
use crate::core::error::{Error, ErrorKind};
use crate::core::Millis;

/// The response header that names a stream.
pub(crate) const HEADER: &str = "x-tokenedge-stream";
/// The routes under which streams are resumed and cancelled.
pub(crate) const PATH_PREFIX: &str = "/v1/streams/";
/// The KV key prefix of stream records and marks.
pub(crate) const KEY_PREFIX: &str = "stream:v1:";
/// Longest interval between two writes of a live record that has new
/// events (Workers KV takes one write per key per second).
pub(crate) const CHECKPOINT_MS: Millis = 1_000;
/// The same in a store that takes writes as they come (a Durable Object's
/// storage, Spin's store): readers see new events this much later at most.
pub(crate) const FAST_CHECKPOINT_MS: Millis = 100;
/// Longest interval between two writes of a live record with nothing new:
/// how a reader knows its writer is still there.
pub(crate) const HEARTBEAT_MS: Millis = 2_000;
/// A live record not written for this long has lost its writer.
pub(crate) const STALE_MS: Millis = 3 * HEARTBEAT_MS;
/// How often the generating request looks for a cancel mark.
pub(crate) const CANCEL_POLL_MS: Millis = 500;
/// How often a reader of a live stream reads its record again.
pub(crate) const TAIL_POLL_MS: Millis = 250;
/// The same in a store that takes writes as they come.
pub(crate) const FAST_TAIL_POLL_MS: Millis = 100;

/// How often records are written and read, by the store they live in
/// (`Config::fast_stream_store`): (checkpoint, tail poll).
pub(crate) fn intervals(fast: bool) -> (Millis, Millis) {
    match fast {
        true => (FAST_CHECKPOINT_MS, FAST_TAIL_POLL_MS),
        false => (CHECKPOINT_MS, TAIL_POLL_MS),
    }
}
/// How long a reader waits for the store before answering 503.
pub(crate) const READ_TIMEOUT_MS: Millis = 2_000;
/// Most bytes of events a record keeps; a longer stream is resumable only
/// up to there.
pub(crate) const MAX_LOG_BYTES: usize = 1024 * 1024;
/// Compression level of a log: events compress against the one before.
const LOG_LEVEL: u32 = 1;
/// How a stream id starts.
const ID_PREFIX: &str = "st_";

/// A new stream id from the request's random bytes.
pub(crate) fn new_id(nonce: &[u8; 16]) -> String {
    format!("{ID_PREFIX}{}", crate::core::hex(nonce))
}

/// Whether `id` has the shape of a stream id (anything else is unknown
/// without a KV read).
fn well_formed(id: &str) -> bool {
    id.strip_prefix(ID_PREFIX).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// What a path under [`PATH_PREFIX`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ask {
    /// `GET /v1/streams/{id}`.
    Read,
    /// `POST /v1/streams/{id}/cancel`.
    Cancel,
}

/// The id and what is asked, for a path under [`PATH_PREFIX`]; `None` for
/// a path that names no stream route. A malformed id is still a stream
/// route (it is answered as unknown).
pub(crate) fn parse_path(path: &str) -> Option<(String, Ask)> {
    let rest = path.strip_prefix(PATH_PREFIX)?;
    match rest.split_once('/') {
        None if !rest.is_empty() => Some((rest.to_owned(), Ask::Read)),
        Some((id, "cancel")) if !id.is_empty() => Some((id.to_owned(), Ask::Cancel)),
        _ => None,
    }
}

/// The KV key of a stream's record; `None` for an id that cannot exist.
pub(crate) fn record_key(id: &str) -> Option<String> {
    well_formed(id).then(|| format!("{KEY_PREFIX}{id}"))
}

/// Whether a request is a generation, which a deployment with stream
/// owners (Workers' Durable Objects) hands to the owner of its stream, so
/// the generation outlives the client's request.
#[cfg_attr(not(feature = "workers"), allow(dead_code))]
pub(crate) fn owned(method: &str, path: &str) -> bool {
    method == "POST" && matches!(path, "/v1/chat/completions" | "/v1/completions")
}

/// The stream a KV key belongs to (its record, request or a mark).
#[cfg_attr(not(feature = "workers"), allow(dead_code))]
pub(crate) fn stream_of_key(key: &str) -> Option<&str> {
    let id = key.strip_prefix(KEY_PREFIX)?.split(':').next()?;
    well_formed(id).then_some(id)
}

/// The KV key of a stream's cancel mark.
pub(crate) fn cancel_key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}:cancel")
}

/// The KV key of the request a stream answers, kept so that a reader can
/// finish the answer by continuation when its generation is lost.
pub(crate) fn request_key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}:request")
}

/// The KV key of the mark a reader of a live stream keeps fresh, so its
/// writer knows somebody came back.
pub(crate) fn reader_key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}:reader")
}

/// Where a reader starts: after the last event it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// The gateway's number of that event (its `id`).
    Event(u64),
    /// The Responses API's `sequence_number` of that event
    /// (`?starting_after=`, the API's own resume spelling).
    Sequence(u64),
}

impl Cursor {
    /// The gateway's number of the last event the reader has, given the
    /// record's events so far. A `sequence_number` is found among them
    /// (the events the upstream numbered: a number past the last one
    /// counts on from it); where the upstream numbered none, it is taken
    /// as the gateway's number.
    pub(crate) fn resolve(self, events: &[String]) -> u64 {
        let wanted = match self {
            Cursor::Event(n) => return n,
            Cursor::Sequence(s) => s,
        };
        let numbered = events.iter().enumerate().filter_map(|(i, block)| {
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            let n = crate::core::openai::inspect_response_event(data)?.sequence_number?;
            Some((i as u64 + 1, n))
        });
        let mut last = None;
        for (event, n) in numbered {
            if n > wanted {
                return event - 1;
            }
            last = Some((event, n));
        }
        match last {
            Some((event, n)) => event + (wanted - n),
            None => wanted,
        }
    }
}

/// The reader's cursor: the last event it has, from `?after=`, else
/// `?starting_after=`, else `Last-Event-ID`; 0 (everything) when it sent
/// none.
pub(crate) fn cursor(
    after: Option<&str>,
    starting_after: Option<&str>,
    header: Option<&str>,
) -> Result<Cursor, Error> {
    let (value, param) = match (after, starting_after, header) {
        (Some(q), ..) => (q, "after"),
        (None, Some(q), _) => (q, "starting_after"),
        (None, None, Some(h)) => (h, "Last-Event-ID"),
        (None, None, None) => return Ok(Cursor::Event(0)),
    };
    let value = value.trim();
    if value.is_empty() {
        return Ok(Cursor::Event(0));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(
            format!("{param} must be the number of the last event received (got '{value}')"),
            Some(param),
        ));
    }
    let n = value.parse().map_err(|_| {
        Error::invalid(
            format!("{param} is out of range (got '{value}')"),
            Some(param),
        )
    })?;
    Ok(match param {
        "starting_after" => Cursor::Sequence(n),
        _ => Cursor::Event(n),
    })
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum End {
    /// Completed: the format's clean end follows the events.
    Done,
    /// Failed after it started: this error event ends it.
    Failed { error: Value },
    /// Stopped by a cancel, or because nobody came back in time.
    Cancelled,
}

/// What a record says besides its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Head {
    /// Whose stream it is (a hash of the API key).
    pub(crate) scope: String,
    /// Answers the request asked for (`n` × prompts).
    pub(crate) choices: u32,
    /// `chat.completion.chunk` or `text_completion`.
    pub(crate) object: String,
    /// How many events follow.
    pub(crate) events: u64,
    /// The writer's clock when it wrote this.
    pub(crate) at: Millis,
    /// How it ended, once it has.
    pub(crate) end: Option<End>,
    /// Events past [`MAX_LOG_BYTES`] were not kept.
    #[serde(default)]
    pub(crate) overflow: bool,
}

/// A stream as its generating request last wrote it.
///
/// Stored as the head's JSON (after its length, 4 bytes big-endian), then
/// the events as one zlib stream. The writer compresses each event once,
/// as it comes, and writes what it has so far with an end made for the
/// copy ([`Encoder::end_now`]): a checkpoint costs a copy, not a
/// compression of the whole log.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Record {
    pub(crate) head: Head,
    /// The upstream events so far, each a complete SSE block; event N is
    /// `events[N - 1]`.
    pub(crate) events: Vec<String>,
}

impl Record {
    /// A record from its stored form; `None` for anything else.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (len, rest) = bytes.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (head, body) = rest.split_at_checked(len)?;
        let head: Head = serde_json::from_slice(head).ok()?;
        let text =
            miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(body, MAX_LOG_BYTES + 1024)
                .ok()?;
        let text = String::from_utf8(text).ok()?;
        let events: Vec<String> = text.split_inclusive("\n\n").map(str::to_owned).collect();
        (events.len() as u64 == head.events).then_some(Self { head, events })
    }

    /// Whether its writer stopped writing without an end.
    pub(crate) fn lost(&self, now: Millis) -> bool {
        self.head.end.is_none() && now.saturating_sub(self.head.at) > STALE_MS
    }
}

/// The most uncompressed events a log holds (a fast model between two
/// checkpoints): a stream's memory stays bounded.
const MAX_PENDING_BYTES: usize = 4096;

/// The generating request's side: the record it keeps, and when it last
/// wrote it.
pub(crate) struct Log {
    pub(crate) id: String,
    head: Head,
    encoder: Encoder,
    /// The events compressed so far (a zlib stream, sync-flushed at each
    /// checkpoint).
    body: Vec<u8>,
    /// The events since the last checkpoint, compressed when it is written
    /// or when they pass [`MAX_PENDING_BYTES`]: one flush per record, not
    /// one per event.
    pending: Vec<u8>,
    /// Their size before compression.
    bytes: usize,
    /// Events or an end not yet written.
    dirty: bool,
    written_at: Option<Millis>,
    /// How long new events wait for a checkpoint.
    every_ms: Millis,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("id", &self.id)
            .field("head", &self.head)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Log {
    pub(crate) fn new(
        id: String,
        scope: String,
        choices: u32,
        object: &str,
        every_ms: Millis,
    ) -> Self {
        let mut encoder = Encoder::new(Coding::Deflate, LOG_LEVEL);
        let mut body = Vec::new();
        encoder.encode_and_flush(b"", &mut body);
        Self {
            id,
            head: Head {
                scope,
                choices,
                object: object.into(),
                ..Head::default()
            },
            encoder,
            body,
            pending: Vec::new(),
            bytes: 0,
            dirty: true,
            written_at: None,
            every_ms,
        }
    }

    /// Appends upstream events (SSE blocks, in order).
    pub(crate) fn extend(&mut self, events: impl IntoIterator<Item = impl AsRef<[u8]>>) {
        for event in events {
            let event = event.as_ref();
            if self.head.overflow || self.bytes + event.len() > MAX_LOG_BYTES {
                self.head.overflow = true;
                continue;
            }
            self.bytes += event.len();
            self.pending.extend_from_slice(event);
            if self.pending.len() >= MAX_PENDING_BYTES {
                self.compress_pending();
            }
            self.head.events += 1;
            self.dirty = true;
        }
    }

    /// Records how the stream ended (the first end counts).
    pub(crate) fn end(&mut self, end: End) {
        if self.head.end.is_none() {
            self.head.end = Some(end);
            self.dirty = true;
        }
    }

    pub(crate) fn ended(&self) -> bool {
        self.head.end.is_some()
    }

    /// The record to write now, if one is due: at once when `force` (the
    /// client left, the end) or ended, else when new events waited
    /// `every_ms` ([`CHECKPOINT_MS`] or [`FAST_CHECKPOINT_MS`]) or nothing
    /// was written for [`HEARTBEAT_MS`].
    pub(crate) fn checkpoint(&mut self, now: Millis, force: bool) -> Option<Vec<u8>> {
        let since = self.written_at.map(|t| now.saturating_sub(t));
        let due = force
            || self.head.end.is_some() && self.dirty
            || since.is_none()
            || since.is_some_and(|s| (self.dirty && s >= self.every_ms) || s >= HEARTBEAT_MS);
        if !due {
            return None;
        }
        self.head.at = now;
        self.dirty = false;
        self.written_at = Some(now);
        self.compress_pending();
        let head = serde_json::to_vec(&self.head).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + head.len() + self.body.len() + 8);
        out.extend_from_slice(&(head.len() as u32).to_be_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.body);
        self.encoder.end_now(&mut out);
        Some(out)
    }

    /// Adds the events waiting to the compressed body.
    fn compress_pending(&mut self) {
        if !self.pending.is_empty() {
            self.encoder.encode_and_flush(&self.pending, &mut self.body);
            self.pending.clear();
        }
    }

    /// When the next checkpoint is due if nothing else happens.
    pub(crate) fn next_checkpoint(&self) -> Option<Millis> {
        if self.head.end.is_some() && !self.dirty {
            return None;
        }
        let last = self.written_at?;
        let wait = if self.dirty {
            self.every_ms
        } else {
            HEARTBEAT_MS
        };
        Some(last.saturating_add(wait))
    }
}

/// `Last-Event-ID` past the last event of a stream that ended.
pub(crate) fn past_the_end(cursor: u64, last: u64) -> Error {
    Error::invalid(
        format!("The stream ended at event {last}; there is no event after {cursor}"),
        Some("Last-Event-ID"),
    )
}

/// The error a reader gets when the stream's generation stopped writing
/// without an end.
pub(crate) fn lost() -> Error {
    Error::new(ErrorKind::UpstreamStreamBroken {
        detail:
            "the generation stopped before the end of the stream (its gateway instance went away)"
                .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths() {
        let id = new_id(&[0xab; 16]);
        assert_eq!(id.len(), 35);
        assert!(record_key(&id).is_some());
        assert!(record_key("st_xyz").is_none());
        assert!(record_key(&id.to_uppercase()).is_none());
        assert_eq!(
            parse_path(&format!("/v1/streams/{id}")),
            Some((id.clone(), Ask::Read))
        );
        assert_eq!(
            parse_path(&format!("/v1/streams/{id}/cancel")),
            Some((id.clone(), Ask::Cancel))
        );
        assert_eq!(parse_path("/v1/streams/"), None);
        assert_eq!(parse_path(&format!("/v1/streams/{id}/other")), None);
    }

    #[test]
    fn owned_requests_and_the_stream_of_a_key() {
        assert!(owned("POST", "/v1/chat/completions"));
        assert!(owned("POST", "/v1/completions"));
        assert!(!owned("GET", "/v1/chat/completions"));
        assert!(!owned("POST", "/v1/prefetch"));
        assert!(!owned("GET", "/v1/streams/st_0"));
        let id = new_id(&[9; 16]);
        for key in [
            record_key(&id).unwrap(),
            cancel_key(&id),
            reader_key(&id),
            request_key(&id),
        ] {
            assert_eq!(stream_of_key(&key), Some(id.as_str()), "{key}");
        }
        assert_eq!(stream_of_key("stream:v1:nope"), None);
        assert_eq!(stream_of_key("cache:v1:abc"), None);
    }

    #[test]
    fn cursors() {
        assert_eq!(cursor(None, None, None).unwrap(), Cursor::Event(0));
        assert_eq!(cursor(None, None, Some(" 7 ")).unwrap(), Cursor::Event(7));
        assert_eq!(
            cursor(Some("3"), Some("5"), Some("9")).unwrap(),
            Cursor::Event(3)
        );
        assert_eq!(
            cursor(None, Some("5"), Some("9")).unwrap(),
            Cursor::Sequence(5)
        );
        for bad in ["-1", "x", "1.5", "99999999999999999999999"] {
            let e = cursor(Some(bad), None, None).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
        let e = cursor(None, None, Some("abc")).unwrap_err();
        assert_eq!(e.to_json()["error"]["param"], "Last-Event-ID");
        let e = cursor(None, Some("x"), None).unwrap_err();
        assert_eq!(e.to_json()["error"]["param"], "starting_after");
    }

    #[test]
    fn a_sequence_number_is_found_among_the_events() {
        let block = |n: Option<u64>| match n {
            Some(n) => format!("event: e\ndata: {{\"type\":\"e\",\"sequence_number\":{n}}}\n\n"),
            None => "data: {\"type\":\"e\"}\n\n".to_owned(),
        };
        // Numbered from 0, as OpenAI and vLLM do: event k is number k-1.
        let from_zero: Vec<String> = (0..5).map(|n| block(Some(n))).collect();
        assert_eq!(Cursor::Sequence(0).resolve(&from_zero), 1);
        assert_eq!(Cursor::Sequence(3).resolve(&from_zero), 4);
        // Past what the record holds yet: counts on.
        assert_eq!(Cursor::Sequence(7).resolve(&from_zero), 8);
        assert_eq!(Cursor::Sequence(3).resolve(&[]), 3);
        // Not numbered (llama.cpp): the gateway's numbers.
        let plain: Vec<String> = (0..5).map(|_| block(None)).collect();
        assert_eq!(Cursor::Sequence(2).resolve(&plain), 2);
        assert_eq!(Cursor::Event(2).resolve(&from_zero), 2);
    }

    #[test]
    fn checkpoints_are_batched_and_the_end_is_written_at_once() {
        let mut log = Log::new(
            "st_x".into(),
            "s".into(),
            1,
            "chat.completion.chunk",
            CHECKPOINT_MS,
        );
        assert!(log.checkpoint(0, false).is_some(), "the first at once");
        log.extend(["data: 1\n\n".to_owned()]);
        assert!(log.checkpoint(500, false).is_none());
        assert_eq!(log.next_checkpoint(), Some(CHECKPOINT_MS));
        let written = log.checkpoint(CHECKPOINT_MS, false).unwrap();
        let record = Record::decode(&written).unwrap();
        assert_eq!(record.events, ["data: 1\n\n"]);
        assert_eq!(record.head.at, CHECKPOINT_MS);
        assert!(log.checkpoint(CHECKPOINT_MS + 1, false).is_none());
        assert_eq!(log.next_checkpoint(), Some(CHECKPOINT_MS + HEARTBEAT_MS));
        log.end(End::Done);
        let record = Record::decode(&log.checkpoint(CHECKPOINT_MS + 2, false).unwrap()).unwrap();
        assert_eq!(record.head.end, Some(End::Done));
        assert_eq!(log.next_checkpoint(), None);
        assert!(!record.lost(CHECKPOINT_MS + 2 + STALE_MS + 1));
        let mut live = Log::new("st_y".into(), "s".into(), 1, "x", CHECKPOINT_MS);
        let record = Record::decode(&live.checkpoint(10, true).unwrap()).unwrap();
        assert!(!record.lost(10 + STALE_MS) && record.lost(11 + STALE_MS));
    }

    #[test]
    fn a_log_past_its_limit_keeps_its_opening_and_says_so() {
        let mut log = Log::new("st_x".into(), "s".into(), 1, "x", CHECKPOINT_MS);
        let big = format!("data: {}\n\n", "x".repeat(MAX_LOG_BYTES / 2));
        log.extend([big.clone(), big, "data: small\n\n".into()]);
        let record = Record::decode(&log.checkpoint(0, true).unwrap()).unwrap();
        assert_eq!(record.events.len(), 1);
        assert!(record.head.overflow);
    }

    #[test]
    fn a_record_written_between_events_reads_whole_and_writing_goes_on() {
        let mut log = Log::new("st_x".into(), "s".into(), 1, "x", CHECKPOINT_MS);
        let events: Vec<String> = (0..50)
            .map(|i| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\" w{i}\"}}}}]}}\n\n"))
            .collect();
        for (i, e) in events.iter().enumerate() {
            log.extend([e.clone()]);
            let record = Record::decode(&log.checkpoint(i as u64, true).unwrap()).unwrap();
            assert_eq!(record.events, events[..=i]);
        }
        let stored = log.checkpoint(100, true).unwrap();
        let raw: usize = events.iter().map(String::len).sum();
        assert!(stored.len() < raw / 3, "{} of {raw} B", stored.len());
        assert!(Record::decode(&stored[..stored.len() - 1]).is_none());
    }
}
