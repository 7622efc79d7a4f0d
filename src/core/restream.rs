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
//! It does not compress, coalesce or decide when to write: it returns the
//! bytes for the caller to send.

use bytes::{BufMut, Bytes, BytesMut};

use crate::core::openai::inspect_chunk;
use crate::core::sse::{Event, Parser, SseError};

/// The end-of-stream marker, as OpenAI sends it.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// What one call to [`Restream::push`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Downstream bytes for the events completed by this push (empty when
    /// the push completed no event).
    pub bytes: Bytes,
    /// Events in `bytes` that carried generated content.
    pub content_events: u32,
}

/// How the upstream stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `[DONE]` was seen and forwarded.
    Done,
    /// A finish reason was seen but no `[DONE]`: [`DONE`] must be appended.
    FinishedWithoutDone,
    /// Neither: the stream was cut.
    Truncated,
}

#[derive(Debug, Default)]
pub struct Restream {
    parser: Parser,
    events: Vec<Event>,
    out: BytesMut,
    finished: bool,
    done: bool,
    /// Upstream events forwarded so far.
    pub events_forwarded: u64,
}

impl Restream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds upstream bytes and returns the downstream bytes they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Output, SseError> {
        self.parser.push(chunk, &mut self.events)?;
        let mut content_events = 0;
        for event in self.events.drain(..) {
            if self.done {
                continue; // nothing is valid after [DONE]
            }
            if event.data == "[DONE]" {
                self.done = true;
                self.out.put_slice(DONE);
                continue;
            }
            let facts = inspect_chunk(&event.data);
            self.finished |= facts.finished;
            content_events += u32::from(facts.has_content);
            write_event(&mut self.out, event.event.as_deref(), &event.data);
            self.events_forwarded += 1;
        }
        Ok(Output {
            bytes: self.out.split().freeze(),
            content_events,
        })
    }

    /// Whether `[DONE]` was seen.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Classifies the end of the upstream body.
    pub fn ending(&self) -> Ending {
        if self.done {
            Ending::Done
        } else if self.finished {
            Ending::FinishedWithoutDone
        } else {
            Ending::Truncated
        }
    }
}

/// Writes one SSE event; multi-line data becomes several `data:` lines.
pub fn write_event(out: &mut BytesMut, event: Option<&str>, data: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (Vec<u8>, Ending) {
        let mut r = Restream::new();
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
    fn keeps_event_names_and_multi_line_data() {
        let (out, _) = run(b"event: error\ndata: a\ndata: b\n\n");
        assert_eq!(out, b"event: error\ndata: a\ndata: b\n\n");
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
    fn counts_content_events() {
        let mut r = Restream::new();
        let o = r
            .push(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n")
            .unwrap();
        assert_eq!(o.content_events, 1);
        assert_eq!(r.events_forwarded, 2);
    }
}
