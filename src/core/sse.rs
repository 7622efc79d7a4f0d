//! The `text/event-stream` grammar, both ways: a push parser fed the
//! upstream body in whatever chunks the network delivers, and the writer of
//! the events tokenedge sends downstream (`write_event`, `DONE`).
//!
//! It implements the event-stream grammar of the WHATWG HTML standard
//! (§9.2.5), restated here because every branch below maps to it:
//!
//! ```text
//! stream        = [ bom ] *event
//! event         = *( comment / field ) end-of-line
//! comment       = colon *any-char end-of-line
//! field         = 1*name-char [ colon [ space ] *any-char ] end-of-line
//! end-of-line   = ( cr lf / cr / lf )
//! ```
//!
//! - `data` lines append their value plus `\n` to the data buffer; on dispatch
//!   the final `\n` is removed, so multi-line `data:` joins with `\n`.
//! - `event` sets the type, `id` the last event id (ignored if it contains
//!   NUL), `retry` the reconnection time (ASCII digits only).
//! - A blank line dispatches the event; an event whose data buffer is empty
//!   is not dispatched (but its `id` still counts).
//! - Unknown fields and comment lines (`: ping`) are ignored.
//! - A CR at the end of a chunk ends the line; an LF at the start of the next
//!   chunk is then the second half of CRLF and is skipped.
//!
//! It does not interpret `data` (see `crate::core::openai`), does not
//! decode bytes beyond UTF-8 (lossy, as the standard says), and never
//! buffers more than [`MAX_LINE_BYTES`] of one line or
//! [`MAX_EVENT_BYTES`] of one event: past those it reports an error and the
//! stream is treated as broken.

use bytes::{BufMut, BytesMut};

/// Longest single line we buffer. An upstream chunk with logprobs for a long
/// token is a few KiB; 256 KiB leaves room for large tool-call arguments.
pub const MAX_LINE_BYTES: usize = 256 * 1024;
/// Largest event (sum of its data lines). A whole non-streamed completion can
/// arrive as one event from some upstreams; 1 MiB bounds per-request memory.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The end-of-stream marker, as OpenAI sends it.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// Writes one event; multi-line data becomes several `data:` lines (the
/// parser below joins them back with `\n`).
pub(crate) fn write_event(out: &mut BytesMut, event: Option<&str>, data: &str) {
    out.reserve(data.len() + 16);
    if let Some(name) = event {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_u8(b'\n');
    }
    for line in data.split('\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// `event:` field; `None` means the default type `message`.
    pub event: Option<String>,
    /// The data buffer, lines joined with `\n`.
    pub data: String,
    /// The last event id seen so far in the stream, if any.
    pub id: Option<String>,
    /// A `retry:` value in this event, if any.
    pub retry: Option<u64>,
}

/// Why the stream cannot be parsed further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// A line grew past [`MAX_LINE_BYTES`] without an end of line.
    LineTooLong,
    /// An event's data grew past [`MAX_EVENT_BYTES`] before a blank line.
    EventTooLarge,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::LineTooLong => write!(
                f,
                "upstream event-stream line exceeds {MAX_LINE_BYTES} bytes"
            ),
            SseError::EventTooLarge => {
                write!(
                    f,
                    "upstream event-stream event exceeds {MAX_EVENT_BYTES} bytes"
                )
            }
        }
    }
}

/// Where the parser is between two calls to [`Parser::push`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// At the start of the stream: a UTF-8 BOM may still be skipped.
    #[default]
    StreamStart,
    /// Inside or at the start of a line.
    InLine,
    /// The last byte seen was a CR that ended a line; skip one LF.
    AfterCr,
}

/// The push parser. Feed bytes with [`Parser::push`]; it returns every event
/// completed by those bytes. Holds at most one partial line and one partial
/// event between calls.
#[derive(Debug, Default)]
pub struct Parser {
    state: LineState,
    /// Bytes of the current line not yet ended (may hold a partial BOM).
    line: Vec<u8>,
    /// Fields of the event being built.
    event_type: Option<String>,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    retry: Option<u64>,
    failed: Option<SseError>,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `input`, appending each completed event to `out`. All of
    /// `input` is consumed: incomplete lines are kept for the next call.
    /// Once an error is returned, every later call returns it again.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.state == LineState::StreamStart {
            // The BOM may itself be split across chunks.
            let need = BOM.len() - self.line.len();
            let take = need.min(input.len());
            if BOM.starts_with(&[&self.line[..], &input[..take]].concat()) {
                self.line.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.line.len() < BOM.len() {
                    return Ok(());
                }
                self.line.clear();
            } else {
                // Not a BOM: what we held is ordinary line content.
            }
            self.state = LineState::InLine;
        }
        while !input.is_empty() {
            if self.state == LineState::AfterCr {
                self.state = LineState::InLine;
                if input[0] == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', input) {
                Some(end) => {
                    if self.line.len() + end > MAX_LINE_BYTES {
                        return Err(self.fail(SseError::LineTooLong));
                    }
                    let ended_by_cr = input[end] == b'\r';
                    if self.line.is_empty() {
                        self.process_line(&input[..end], out)?;
                    } else {
                        self.line.extend_from_slice(&input[..end]);
                        let line = std::mem::take(&mut self.line);
                        self.process_line(&line, out)?;
                        self.line = line;
                        self.line.clear();
                    }
                    input = &input[end + 1..];
                    if ended_by_cr {
                        self.state = LineState::AfterCr;
                    }
                }
                None => {
                    if self.line.len() + input.len() > MAX_LINE_BYTES {
                        return Err(self.fail(SseError::LineTooLong));
                    }
                    self.line.extend_from_slice(input);
                    input = &[];
                }
            }
        }
        Ok(())
    }

    /// Bytes held for an unfinished line or event: non-zero at the end of the
    /// stream means the upstream stopped mid-event.
    pub fn pending_bytes(&self) -> usize {
        let line = if self.state == LineState::StreamStart {
            0
        } else {
            self.line.len()
        };
        line + self.data.len()
    }

    fn fail(&mut self, e: SseError) -> SseError {
        self.failed = Some(e);
        e
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // comment
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (&line[..colon], value)
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    return Err(self.fail(SseError::EventTooLarge));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&text(value));
                self.has_data = true;
            }
            b"event" => self.event_type = Some(text(value).into_owned()),
            b"id" if !value.contains(&0) => self.last_id = Some(text(value).into_owned()),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<Event>) {
        let event_type = self.event_type.take();
        let retry = self.retry.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push(Event {
            event: event_type,
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
            retry,
        });
    }
}

/// A field's value as text, invalid UTF-8 replaced. The strict check
/// first: it has a fast path for ASCII, which nearly every event is, and
/// the lossy one walks byte by byte.
fn text(value: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out).unwrap();
        }
        out
    }

    fn data(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn line_endings_lf_crlf_cr() {
        for input in [
            &b"data: a\n\ndata: b\n\n"[..],
            b"data: a\r\n\r\ndata: b\r\n\r\n",
            b"data: a\r\rdata: b\r\r",
            b"data: a\r\n\rdata: b\n\r\n",
        ] {
            assert_eq!(data(&parse_all(&[input])), ["a", "b"], "{input:?}");
        }
    }

    #[test]
    fn cr_at_chunk_end_then_lf() {
        let ev = parse_all(&[b"data: a\r", b"\n\r", b"\n", b"data: b\r", b"\r"]);
        assert_eq!(data(&ev), ["a", "b"]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let ev = parse_all(&[b": ping\n\n: keep-alive\ndata: x\nfoo: bar\n\n"]);
        assert_eq!(data(&ev), ["x"]);
    }

    #[test]
    fn multi_line_data_joins_with_newline() {
        let ev = parse_all(&[b"data: one\ndata:two\ndata\n\n"]);
        assert_eq!(data(&ev), ["one\ntwo\n"]);
    }

    #[test]
    fn event_id_retry_fields() {
        let ev = parse_all(&[b"event: error\nid: 7\nretry: 1500\ndata: {}\n\ndata: y\n\n"]);
        assert_eq!(ev[0].event.as_deref(), Some("error"));
        assert_eq!(ev[0].id.as_deref(), Some("7"));
        assert_eq!(ev[0].retry, Some(1500));
        // id persists, type and retry do not.
        assert_eq!(ev[1].id.as_deref(), Some("7"));
        assert_eq!(ev[1].event, None);
        assert_eq!(ev[1].retry, None);
    }

    #[test]
    fn bad_retry_and_nul_id_are_ignored() {
        let ev = parse_all(&[b"retry: 12a\nid: a\0b\ndata: z\n\n"]);
        assert_eq!(ev[0].retry, None);
        assert_eq!(ev[0].id, None);
    }

    #[test]
    fn blank_event_without_data_is_not_dispatched() {
        let ev = parse_all(&[b"event: x\n\n\n\ndata: q\n\n"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event, None);
    }

    #[test]
    fn bom_is_skipped_even_when_split() {
        let ev = parse_all(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"]);
        assert_eq!(data(&ev), ["a"]);
        let ev = parse_all(&[b"\xEFdata: a\n\n"]);
        assert_eq!(ev.len(), 0, "a lone BOM byte corrupts the first field name");
    }

    #[test]
    fn done_marker_is_plain_data() {
        assert_eq!(data(&parse_all(&[b"data: [DONE]\n\n"])), ["[DONE]"]);
    }

    #[test]
    fn split_utf8_is_reassembled() {
        let s = "data: héllo 🙂\n\n".as_bytes();
        for cut in 0..s.len() {
            let ev = parse_all(&[&s[..cut], &s[cut..]]);
            assert_eq!(data(&ev), ["héllo 🙂"], "cut at {cut}");
        }
    }

    #[test]
    fn line_limit_is_enforced_and_sticky() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        let big = vec![b'a'; MAX_LINE_BYTES + 1];
        assert_eq!(p.push(&big, &mut out), Err(SseError::LineTooLong));
        assert_eq!(p.push(b"\n\n", &mut out), Err(SseError::LineTooLong));
    }

    #[test]
    fn event_limit_is_enforced() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        let line = format!("data: {}\n", "x".repeat(MAX_LINE_BYTES - 10));
        let mut result = Ok(());
        for _ in 0..(MAX_EVENT_BYTES / MAX_LINE_BYTES + 1) {
            result = p.push(line.as_bytes(), &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLarge));
        assert!(out.is_empty());
    }

    #[test]
    fn pending_bytes_reports_unfinished_event() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.push(b"data: {\"a\":1}\n\ndata: {\"b\"", &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert!(p.pending_bytes() > 0);
        p.push(b":2}\n\n", &mut out).unwrap();
        assert_eq!(p.pending_bytes(), 0);
    }
}
