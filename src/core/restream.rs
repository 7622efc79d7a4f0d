//! Re-framing an upstream OpenAI event stream for the client: upstream
//! bytes in, downstream `text/event-stream` bytes out, one downstream event
//! per upstream event, nothing held back.
//!
//! Event payloads are copied, not re-serialised, so every upstream field
//! survives byte for byte. Comments and keep-alives from the upstream are
//! dropped (the session sends its own). The re-streamer tracks whether the
//! stream completed (`[DONE]` or a `finish_reason`) so that an early end
//! becomes an explicit error, never a silent clean end.
//!
//! In the other [`Format`]s each event is cut down to its text (and any
//! richer delta), and the finish reason and usage are kept for the final
//! event the session writes with `Restream::write_end`.
//!
//! Prefill progress chunks (llama.cpp's `prompt_progress`) are status, not
//! content: they are reported in `Output::progress` and go nowhere else
//! (see `crate::core::status`).
//!
//! It can also hand each event to a cache `Recorder` (so a recorded
//! answer is parsed once), and re-stream a continuation after a
//! speculative prefix (`Restream::continuing`): events carrying nothing
//! before the continuation's first content (its role announcement) are
//! dropped, since the client already had one, and its usage is shifted
//! (`crate::core::prefix`).
//!
//! A Responses API stream (`Restream::responses`) is re-framed the same
//! way, event by typed event (`crate::core::openai::inspect_response_event`):
//! in `openai` every typed event passes as it came, names and
//! `sequence_number` included, and the stream is complete only at
//! `response.completed` or `response.incomplete` (no `[DONE]` is written,
//! nor forwarded); `response.failed` and `error` end it broken. In the
//! other formats `response.output_text.delta` becomes a token, every
//! other `*.delta` event (function-call arguments, reasoning, refusal) is
//! written whole as a delta, the final event gives the finish reason and
//! usage, and the lifecycle events (`response.created`,
//! `response.output_item.added`, …) are dropped.
//!
//! It does not compress, coalesce or decide when to write: it returns the
//! bytes for the caller to send.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::IgnoredAny;

use crate::core::cache::Recorder;
use crate::core::format::{Format, Stats};
use crate::core::openai::{
    chunk_parts, clean_finish, inspect_chunk, inspect_response_event, ResponseKind,
};
use crate::core::prefix::Splice;
use crate::core::sse::{write_event, Event, Parser, SseError, DONE};
use crate::core::status::{progress_of, Progress};

/// What one call to [`Restream::push`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Downstream bytes for the events completed by this push (empty when
    /// the push completed no event).
    pub bytes: Bytes,
    /// Events in `bytes` that carried generated content.
    pub content_events: u32,
    /// The prefill progress the pushed events reported, in order (those
    /// events are status, not content: nothing of them is in `bytes`).
    pub(crate) progress: Vec<Progress>,
}

/// Most distinct finished choices tracked per stream (a request may ask
/// for `n` × any number of prompts; the memory stays bounded).
const MAX_TRACKED_CHOICES: usize = 1024;

/// How the upstream stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// `[DONE]` was seen and forwarded.
    Done,
    /// A finish reason was seen but no `[DONE]`: [`DONE`] must be appended.
    FinishedWithoutDone,
    /// Neither: the stream was cut.
    Truncated,
    /// A choice ended with a finish reason that is not a clean end
    /// (`abort`, `error`, …): the answer is broken, whatever followed.
    Broken,
}

/// The re-streamer of one response. See the module docs.
#[derive(Debug, Default)]
pub struct Restream {
    format: Format,
    parser: Parser,
    finish_reason: Option<String>,
    /// A finish reason that is not a clean end, once one came.
    broken_finish: Option<String>,
    /// Choices the request asks for (`n` × prompts); the stream is
    /// finished when each has its finish reason.
    choices: u32,
    /// The distinct choice indices that finished.
    finished_choices: Vec<u32>,
    usage: Option<Box<serde_json::value::RawValue>>,
    /// Events that carried generated content so far.
    pub(crate) content_events: u64,
    events: Vec<Event>,
    out: BytesMut,
    done: bool,
    /// Upstream events forwarded so far.
    pub(crate) events_forwarded: u64,
    recorder: Option<Box<Recorder>>,
    /// How a continuation of a speculative prefix is spliced on.
    splice: Option<Splice>,
    /// Upstream events numbered so far (see `crate::core::resume`).
    seq: u64,
    /// Write each event's number as its `id`.
    numbered: bool,
    /// Events up to this number update the state but write nothing (a
    /// reader that has them).
    skip_through: u64,
    /// Keep each numbered event's SSE block for [`Restream::take_logged`].
    logging: bool,
    logged: Vec<Bytes>,
    /// The text of choice 0 so far, kept for a continuation elsewhere
    /// (`None`: not kept, or no longer continuable: a delta that was not
    /// text came).
    text: Option<String>,
    /// An upstream event that broke a continuable answer (an error event,
    /// or a finish reason such as `error` or `abort`, with no text), held
    /// back so another replica can continue instead (its name and data).
    held_break: Option<(Option<String>, String)>,
    /// The upstream speaks the Responses API's typed events.
    responses: bool,
    /// The last `sequence_number` a typed event carried.
    upstream_seq: Option<u64>,
}

impl Restream {
    /// A re-streamer writing `format`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            choices: 1,
            ..Self::default()
        }
    }

    /// The upstream stream is a Responses API one (see the module docs).
    pub(crate) fn responses(mut self) -> Self {
        self.responses = true;
        self
    }

    /// The request asks for `choices` answers (`n` × prompts): the stream
    /// is finished only when every one of them is.
    pub(crate) fn expecting(mut self, choices: u32) -> Self {
        self.choices = choices.max(1);
        self
    }

    /// Writes each event's sequence number as its `id` (in the formats
    /// that have a place for one), and keeps each event for
    /// [`Restream::take_logged`] when `log`.
    pub(crate) fn numbered(mut self, log: bool) -> Self {
        self.numbered = true;
        self.logging = log;
        self
    }

    /// Keeps each event numbered from now on for [`Restream::take_logged`]
    /// (a reader that takes over a lost generation's record).
    pub(crate) fn log_from_now(&mut self) {
        self.logging = true;
    }

    /// Keeps the answer's text as it passes, so that another replica can
    /// continue it ([`Restream::text`]).
    pub(crate) fn keeping_text(mut self) -> Self {
        self.text = Some(String::new());
        self
    }

    /// The text so far, while it is all the answer is (no tool call or
    /// other delta, one choice): what a continuation continues after.
    pub(crate) fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Events up to number `seq` are read but not written (a reader that
    /// already has them).
    pub(crate) fn skipping_through(mut self, seq: u64) -> Self {
        self.skip_through = seq;
        self
    }

    /// The events numbered since the last call, as SSE blocks.
    pub(crate) fn take_logged(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.logged)
    }

    /// Hands every event from now on to `recorder` as well.
    pub(crate) fn record_into(&mut self, recorder: Recorder) {
        self.recorder = Some(Box::new(recorder));
    }

    /// The recorder given to [`Restream::record_into`], with what it saw.
    pub(crate) fn take_recorder(&mut self) -> Option<Recorder> {
        self.recorder.take().map(|r| *r)
    }

    /// What follows is the upstream's continuation of a speculative prefix
    /// of `prefix_tokens` tokens that was already streamed.
    pub(crate) fn continuing(&mut self, prefix_tokens: u64) {
        self.splice = Some(Splice::new(prefix_tokens));
    }

    /// Whether an event that broke the answer is held back (see
    /// [`Restream::release_break`], [`Restream::continue_after_break`]).
    pub(crate) fn holds_break(&self) -> bool {
        self.held_break.is_some()
    }

    /// No replica continues: the held event is written as it came, and
    /// returned with anything else not yet taken.
    pub(crate) fn release_break(&mut self) -> Bytes {
        if let Some((name, data)) = self.held_break.take() {
            // Not held again: it is written.
            self.text = None;
            let start = self.out.len();
            if self.write_one(name.as_deref(), &data).is_some() {
                self.seq += 1;
                if self.numbered && self.out.len() > start && self.seq > self.skip_through {
                    self.format.write_id(&mut self.out, self.seq);
                }
            }
        }
        self.out.split().freeze()
    }

    /// Another replica continues after the held event: it is dropped, and
    /// the answer is under way again.
    pub(crate) fn continue_after_break(&mut self) {
        self.held_break = None;
        self.broken_finish = None;
        self.done = false;
    }

    /// An event that breaks a continuable answer and carries no text: held
    /// back (returns true) rather than written.
    fn holds(&mut self, name: Option<&str>, data: &str) -> bool {
        // Cheap first: most streams cannot continue elsewhere, and most
        // events name neither.
        if self.responses || self.text.is_none() || self.held_break.is_some() {
            return false;
        }
        if !data.contains("\"error\"") && !data.contains("\"finish_reason\":\"") {
            return false;
        }
        let facts = inspect_chunk(data);
        if facts.has_content || !(facts.is_error || facts.broken_finish.is_some()) {
            return false;
        }
        self.broken_finish = Some(facts.broken_finish.unwrap_or_else(|| "error".into()));
        self.held_break = Some((name.map(str::to_owned), data.to_owned()));
        true
    }

    /// Feeds upstream bytes and returns the downstream bytes they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Output, SseError> {
        self.parser.push(chunk, &mut self.events)?;
        let mut content_events = 0;
        let mut progress = Vec::new();
        // Taken out for the loop (and put back) so events can be written
        // through `&mut self`; the buffer's allocation is kept.
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            if self.done {
                continue; // nothing is valid after [DONE]
            }
            if event.data == "[DONE]" && self.responses {
                continue; // not the Responses API's end: its typed events are
            }
            if event.data == "[DONE]" {
                self.done = true;
                // A broken answer ends with the session's error event.
                if self.format == Format::OpenAi && self.broken_finish.is_none() {
                    self.out.put_slice(DONE);
                }
                continue;
            }
            let data = one_line(&event.data);
            if let Some(p) = progress_of(&data) {
                progress.push(p);
                continue;
            }
            if let Some(r) = &mut self.recorder {
                r.event(&data);
            }
            self.events_forwarded += 1;
            let start = self.out.len();
            let Some(has_content) = self.write_one(event.event.as_deref(), &data) else {
                continue;
            };
            self.seq += 1;
            if self.seq <= self.skip_through {
                self.out.truncate(start);
            } else if self.numbered && self.out.len() > start {
                self.format.write_id(&mut self.out, self.seq);
            }
            if let Some(s) = &mut self.splice {
                s.passed(has_content);
            }
            content_events += u32::from(has_content);
        }
        self.events = events;
        self.content_events += u64::from(content_events);
        Ok(Output {
            bytes: self.out.split().freeze(),
            content_events,
            progress,
        })
    }

    /// Writes one upstream event; returns whether it carried content, or
    /// `None` when it is dropped (not numbered, not logged).
    fn write_one(&mut self, name: Option<&str>, data: &str) -> Option<bool> {
        if self.holds(name, data) {
            return None;
        }
        if self.responses {
            return self.write_response_event(name, data);
        }
        let has_content = if self.format == Format::OpenAi {
            let facts = inspect_chunk(data);
            let empty =
                !(facts.has_content || facts.finished() || facts.has_usage || facts.is_error);
            // Data that is not JSON carries nothing a client could
            // read, and would break the official SDKs: dropped.
            if empty && serde_json::from_str::<IgnoredAny>(data).is_err() {
                return None;
            }
            if self.splice.is_some_and(|s| s.drops(empty)) {
                return None;
            }
            let shifted = self
                .splice
                .filter(|_| facts.has_usage)
                .and_then(|s| s.shift_event(data));
            let data = shifted.as_deref().unwrap_or(data);
            if facts.has_content && self.text.is_some() {
                self.keep_text(data);
            }
            write_event(&mut self.out, name, data);
            self.log(name, data);
            for index in facts.finished_choices {
                self.choice_finished(index);
            }
            if facts.broken_finish.is_some() {
                self.broken_finish = facts.broken_finish;
            }
            facts.has_content
        } else {
            let Some((has_content, carries)) = self.write_parts(data) else {
                // Not an object: nothing written; logged as the openai
                // format would keep it (JSON), so every format numbers
                // the same events.
                if serde_json::from_str::<IgnoredAny>(data).is_err() {
                    return None;
                }
                self.log(name, data);
                return Some(false);
            };
            if self.splice.is_some_and(|s| s.drops(!carries)) {
                return None;
            }
            if self.logging {
                let shifted = self.splice.and_then(|s| s.shift_event(data));
                self.log(name, shifted.as_deref().unwrap_or(data));
            }
            has_content
        };
        Some(has_content)
    }

    /// Writes one typed Responses API event (see the module docs); `None`
    /// when it is not one (dropped, like data that is not JSON).
    fn write_response_event(&mut self, name: Option<&str>, data: &str) -> Option<bool> {
        let facts = inspect_response_event(data)?;
        if facts.sequence_number.is_some() {
            self.upstream_seq = facts.sequence_number;
        }
        let has_content = facts.has_content();
        match (self.format, facts.kind) {
            (Format::OpenAi, _) => write_event(&mut self.out, name, data),
            (_, ResponseKind::Text) if has_content => {
                self.format.write_text(&mut self.out, &facts.text);
            }
            // The whole event, JSON already (it was just read).
            (_, ResponseKind::OtherContent) => self.format.write_delta(&mut self.out, data),
            (_, ResponseKind::Error) => {
                let event = serde_json::from_str::<serde_json::Value>(data).unwrap_or_default();
                self.format
                    .write_error(&mut self.out, &serde_json::json!({ "error": event }));
            }
            _ => {}
        }
        self.log(name, data);
        match facts.kind {
            ResponseKind::Text => {
                if let Some(kept) = &mut self.text {
                    kept.push_str(&facts.text);
                }
            }
            ResponseKind::OtherContent => self.text = None,
            ResponseKind::Completed | ResponseKind::Incomplete => {
                self.choice_finished(0);
                self.finish_reason = facts.finish_reason().map(Cow::into_owned);
                self.usage = facts.usage.map(ToOwned::to_owned);
            }
            ResponseKind::Failed => self.broken_finish = Some("failed".into()),
            ResponseKind::Error => self.broken_finish = Some("error".into()),
            ResponseKind::Other => {}
        }
        // Nothing is valid after the end.
        self.done |= facts.kind.ends();
        Some(has_content)
    }

    /// The error event that ends a Responses API stream in the `openai`
    /// format (`None` for any other stream: the format's own is used).
    pub(crate) fn error_event(&self, error: &serde_json::Value) -> Option<Bytes> {
        (self.responses && self.format == Format::OpenAi)
            .then(|| response_error_event(error, Some(self.next_sequence_number())))
    }

    /// The `sequence_number` an event of the gateway's own takes: after the
    /// last one the upstream numbered, or (an upstream that numbers none)
    /// the count of events forwarded.
    fn next_sequence_number(&self) -> u64 {
        self.upstream_seq
            .map_or(self.events_forwarded, |n| n.saturating_add(1))
    }

    /// Adds an openai event's text to the kept text; a delta that is not
    /// text (a tool call) makes the answer not continuable.
    fn keep_text(&mut self, data: &str) {
        match chunk_parts(data) {
            Some(parts) if parts.other_delta.is_none() => {
                if let Some(kept) = &mut self.text {
                    kept.push_str(&parts.text);
                }
            }
            _ => self.text = None,
        }
    }

    /// Keeps the event as it would be replayed: an SSE block of its data
    /// as written (a continuation's usage already shifted).
    fn log(&mut self, name: Option<&str>, data: &str) {
        if self.logging {
            let mut block = BytesMut::with_capacity(data.len() + 16);
            write_event(&mut block, name, data);
            self.logged.push(block.freeze());
        }
    }

    fn choice_finished(&mut self, index: u32) {
        let room = self.finished_choices.len() < MAX_TRACKED_CHOICES;
        if room && !self.finished_choices.contains(&index) {
            self.finished_choices.push(index);
        }
    }

    /// Whether every choice asked for has finished (past
    /// [`MAX_TRACKED_CHOICES`], whether that many have).
    fn all_finished(&self) -> bool {
        let wanted = (self.choices as usize).min(MAX_TRACKED_CHOICES);
        self.finished_choices.len() >= wanted
    }

    /// The finish reason that broke the answer, if one did.
    pub(crate) fn broken_finish(&self) -> Option<&str> {
        self.broken_finish.as_deref()
    }

    /// Writes one event in a compact format (one choice: the formats
    /// refuse requests for more), reading it once; returns whether it
    /// carried content, and whether it carried anything at all (`None`
    /// when it is not a JSON object).
    fn write_parts(&mut self, data: &str) -> Option<(bool, bool)> {
        let parts = chunk_parts(data)?;
        let carries = parts.error.is_some()
            || !parts.text.is_empty()
            || parts.other_delta.is_some()
            || parts.finish_reason.is_some()
            || parts.usage.is_some();
        if let Some(error) = parts.error {
            let error = serde_json::json!({ "error": serde_json::from_str::<serde_json::Value>(error.get()).unwrap_or_default() });
            self.format.write_error(&mut self.out, &error);
        }
        if !parts.text.is_empty() {
            self.format.write_text(&mut self.out, &parts.text);
        }
        if let Some(kept) = &mut self.text {
            kept.push_str(&parts.text);
        }
        if parts.other_delta.is_some() {
            self.text = None;
        }
        if let Some(delta) = parts.other_delta {
            self.format.write_delta(&mut self.out, delta.get());
        }
        let has_content = !parts.text.is_empty() || parts.other_delta.is_some();
        if let Some(f) = parts.finish_reason {
            self.choice_finished(0);
            if !clean_finish(&f) {
                self.broken_finish = Some(f.clone().into_owned());
            }
            self.finish_reason = Some(f.into_owned());
        }
        if let Some(u) = parts.usage {
            let shifted = self.splice.and_then(|s| s.shift_raw(u));
            self.usage = Some(shifted.unwrap_or_else(|| u.to_owned()));
        }
        Some((has_content, carries))
    }

    /// Writes the end of a completed stream in the response's format
    /// (`[DONE]` for `openai` when the upstream did not send it).
    pub(crate) fn write_end(&self, out: &mut BytesMut, stats: Stats) {
        match self.format {
            Format::OpenAi if self.responses => {}
            Format::OpenAi if !self.done => out.put_slice(DONE),
            Format::OpenAi => {}
            f => f.write_end(
                out,
                self.finish_reason.as_deref(),
                self.usage.as_deref(),
                stats,
            ),
        }
    }

    /// Writes the end of a stream stopped by a cancel (see
    /// `Format::write_cancelled`).
    pub(crate) fn write_cancelled(&self, out: &mut BytesMut, object: &str, stats: Stats) {
        if self.responses && self.format == Format::OpenAi {
            let event = serde_json::json!({
                "type": "response.incomplete",
                "sequence_number": self.next_sequence_number(),
                "response": {
                    "object": "response",
                    "status": "incomplete",
                    "incomplete_details": {"reason": "cancelled"},
                    "usage": self.usage.as_deref(),
                },
            });
            write_event(out, Some("response.incomplete"), &event.to_string());
            return;
        }
        self.format
            .write_cancelled(out, object, self.usage.as_deref(), stats);
    }

    /// Whether `[DONE]` was seen.
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// Classifies the end of the upstream body.
    pub(crate) fn ending(&self) -> Ending {
        if self.broken_finish.is_some() {
            Ending::Broken
        } else if self.done {
            Ending::Done
        } else if self.all_finished() {
            Ending::FinishedWithoutDone
        } else {
            Ending::Truncated
        }
    }
}

/// The error event that ends a Responses API stream: the API's own `error`
/// event (`code`, `message`, `param`, `sequence_number`) carrying the
/// gateway's `{"error":{...}}` object too, so the official SDKs, which
/// raise on an event with an `error` member, raise on it. `error` is
/// that object; `seq` the number the event takes, when known.
pub(crate) fn response_error_event(error: &serde_json::Value, seq: Option<u64>) -> Bytes {
    let inner = &error["error"];
    let mut event = serde_json::json!({
        "type": "error",
        "code": inner.get("code").filter(|c| !c.is_null()).or_else(|| inner.get("type")),
        "message": inner.get("message"),
        "param": inner.get("param"),
        "error": inner,
    });
    if let Some(n) = seq {
        event["sequence_number"] = n.into();
    }
    let mut out = BytesMut::new();
    write_event(&mut out, Some("error"), &event.to_string());
    out.freeze()
}

/// An event's data on one line, so that line-based SSE readers (common
/// in mobile apps) and every format's single-line events can carry it.
/// Data sent over several `data:` lines is joined with `\n`; in JSON that
/// is whitespace (a JSON string cannot hold a raw newline), so a space in
/// its place changes nothing.
fn one_line(data: &str) -> Cow<'_, str> {
    if data.contains('\n') {
        Cow::Owned(data.replace('\n', " "))
    } else {
        Cow::Borrowed(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (Vec<u8>, Ending) {
        let mut r = Restream::new(Format::OpenAi);
        let out = r.push(input).unwrap();
        (out.bytes.to_vec(), r.ending())
    }

    #[test]
    fn forwards_events_verbatim_and_drops_comments() {
        let input = b": ping\n\ndata: {\"b\":1,\"a\":2}\r\n\r\ndata: [DONE]\n\n";
        let (out, ending) = run(input);
        assert_eq!(out, b"data: {\"b\":1,\"a\":2}\n\ndata: [DONE]\n\n");
        assert_eq!(ending, Ending::Done);
    }

    #[test]
    fn keeps_event_names_and_joins_multi_line_json() {
        let (out, _) = run(b"event: error\ndata: {\"error\":\ndata: {\"message\":\"x\"}}\n\n");
        assert_eq!(
            out,
            b"event: error\ndata: {\"error\": {\"message\":\"x\"}}\n\n"
        );
    }

    #[test]
    fn drops_data_that_is_not_json() {
        let (out, _) = run(b"data: a\ndata: b\n\ndata: ping\n\ndata: {\"id\":1}\n\n");
        assert_eq!(out, b"data: {\"id\":1}\n\n");
    }

    #[test]
    fn endings() {
        let fin = b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
        assert_eq!(run(fin).1, Ending::FinishedWithoutDone);
        assert_eq!(
            run(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n").1,
            Ending::Truncated
        );
    }

    #[test]
    fn nothing_after_done() {
        let (out, _) = run(b"data: [DONE]\n\ndata: {}\n\n");
        assert_eq!(out, DONE);
    }

    #[test]
    fn progress_chunks_are_status_not_content() {
        let progress = |n: u64| {
            format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":null}}}}],\"prompt_progress\":{{\"total\":9,\"cache\":0,\"processed\":{n},\"time_ms\":1}}}}\n\n")
        };
        for format in [Format::OpenAi, Format::Compact] {
            let mut r = Restream::new(format).numbered(true);
            let o = r
                .push(format!("{}{}", progress(0), progress(4)).as_bytes())
                .unwrap();
            assert!(o.bytes.is_empty(), "{format:?}");
            let processed: Vec<u64> = o.progress.iter().map(|p| p.processed).collect();
            assert_eq!(processed, [0, 4]);
            let o = r
                .push(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n")
                .unwrap();
            assert!(o.progress.is_empty());
            // The first event that is not status is number 1.
            assert!(String::from_utf8_lossy(&o.bytes).contains("id: 1\n"));
            assert_eq!(r.take_logged().len(), 1);
        }
    }

    #[test]
    fn counts_content_events() {
        let mut r = Restream::new(Format::OpenAi);
        let o = r
            .push(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n")
            .unwrap();
        assert_eq!(o.content_events, 1);
        assert_eq!(r.events_forwarded, 2);
    }
}
