//! The downstream stream formats, chosen per request with
//! `X-Tokenedge-Format`:
//!
//! | format   | content type          | per token                | end                                   |
//! |----------|-----------------------|--------------------------|---------------------------------------|
//! | `openai` | `text/event-stream`   | the upstream event as is | `data: [DONE]`                        |
//! | `compact`| `text/event-stream`   | `data: "<text>"`         | `event: done` + finish, usage, stats  |
//! | `ndjson` | `application/x-ndjson`| `{"t":"<text>"}`         | `{"finish_reason",usage,stats}` line  |
//! | `text`   | `text/plain`          | the text                 | nothing                               |
//!
//! Token text is a JSON string in `compact` and `ndjson`, so any character
//! survives. Deltas that carry more than text (tool calls, refusals,
//! reasoning) become `event: delta` / `{"delta":...}` with the upstream's
//! JSON; `text` refuses requests that could produce them. Errors after the
//! head: `event: error` / `{"error":...}` / a final `[error] ...` line.
//! Status events (`crate::core::status`): `event: status` /
//! `{"status":...}` / an SSE comment in `openai` / nothing in `text`.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::core::error::Error;
use crate::core::sse::write_event;
use crate::core::status::Status;

/// The request header that selects the format.
pub(crate) const HEADER: &str = "x-tokenedge-format";

/// A downstream stream format (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The upstream's OpenAI events, unchanged.
    #[default]
    OpenAi,
    /// SSE with one JSON string per token and a final `done` event.
    Compact,
    /// One JSON object per line.
    Ndjson,
    /// The text alone.
    Text,
}

/// Figures about the finished stream, sent in the final event of the
/// compact formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Stats {
    /// Events that carried generated text.
    pub(crate) tokens: u64,
    /// Request received → first generated text.
    pub(crate) ttft_ms: u64,
    /// Request received → end of stream.
    pub(crate) duration_ms: u64,
    /// Times the answer moved to another replica mid-stream (absent when
    /// none).
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) failovers: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Format {
    /// Reads the header (absent = `openai`).
    pub(crate) fn from_header(value: Option<&str>) -> Result<Self, Error> {
        let Some(v) = value else {
            return Ok(Self::OpenAi);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "openai" => Ok(Self::OpenAi),
            "compact" => Ok(Self::Compact),
            "ndjson" => Ok(Self::Ndjson),
            "text" => Ok(Self::Text),
            _ => Err(Error::invalid(
                format!(
                    "Unknown X-Tokenedge-Format '{v}': expected openai, compact, ndjson or text"
                ),
                None,
            )),
        }
    }

    /// Refuses requests whose answers this format cannot carry.
    pub(crate) fn check_request(self, body: &Map<String, Value>) -> Result<(), Error> {
        if self == Self::OpenAi {
            return Ok(());
        }
        if crate::core::openai::choices(body) > 1 {
            let param = if body.get("prompt").is_some_and(Value::is_array) {
                "prompt"
            } else {
                "n"
            };
            return Err(Error::invalid(
                "X-Tokenedge-Format compact, ndjson and text carry one choice: use n=1 and one prompt, or the openai format",
                Some(param),
            ));
        }
        if self == Self::Text && (body.contains_key("tools") || body.contains_key("functions")) {
            return Err(Error::invalid(
                "X-Tokenedge-Format text carries only text: use compact, ndjson or openai with tools",
                Some("tools"),
            ));
        }
        Ok(())
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::OpenAi | Self::Compact => "text/event-stream; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
            Self::Text => "text/plain; charset=utf-8",
        }
    }

    /// Whether the format is the upstream's own.
    pub(crate) fn is_openai(self) -> bool {
        self == Self::OpenAi
    }

    /// Whether the format is SSE (so comments can keep the connection up).
    pub(crate) fn is_event_stream(self) -> bool {
        matches!(self, Self::OpenAi | Self::Compact)
    }

    /// Writes one token's text.
    pub(crate) fn write_text(self, out: &mut BytesMut, text: &str) {
        match self {
            Self::OpenAi => {}
            Self::Compact => {
                out.put_slice(b"data: ");
                put_json(out, &text);
                out.put_slice(b"\n\n");
            }
            Self::Ndjson => {
                out.put_slice(b"{\"t\":");
                put_json(out, &text);
                out.put_slice(b"}\n");
            }
            Self::Text => out.put_slice(text.as_bytes()),
        }
    }

    /// Writes a delta that carries more than text (`delta`: its JSON, on
    /// one line).
    pub(crate) fn write_delta(self, out: &mut BytesMut, delta: &str) {
        match self {
            Self::Compact => write_event(out, Some("delta"), delta),
            Self::Ndjson => {
                out.put_slice(b"{\"delta\":");
                out.put_slice(delta.as_bytes());
                out.put_slice(b"}\n");
            }
            Self::OpenAi | Self::Text => {}
        }
    }

    /// Writes a status event (see `crate::core::status`): typed in the
    /// compact formats, an SSE comment in `openai`, nothing in `text`.
    pub(crate) fn write_status(self, out: &mut BytesMut, status: &Status) {
        match self {
            Self::OpenAi => {
                out.put_slice(b": status ");
                put_json(out, status);
                out.put_slice(b"\n\n");
            }
            Self::Compact => {
                out.put_slice(b"event: status\ndata: ");
                put_json(out, status);
                out.put_slice(b"\n\n");
            }
            Self::Ndjson => {
                out.put_slice(b"{\"status\":");
                put_json(out, status);
                out.put_slice(b"}\n");
            }
            Self::Text => {}
        }
    }

    /// Whether the format has a place for status events.
    pub(crate) fn has_status(self) -> bool {
        self != Self::Text
    }

    /// Writes the final event of a completed stream.
    pub(crate) fn write_end(
        self,
        out: &mut BytesMut,
        finish_reason: Option<&str>,
        usage: Option<&RawValue>,
        stats: Stats,
    ) {
        #[derive(Serialize)]
        struct End<'a> {
            finish_reason: Option<&'a str>,
            usage: Option<&'a RawValue>,
            stats: Stats,
        }
        let end = End {
            finish_reason,
            usage,
            stats,
        };
        match self {
            Self::Compact => {
                out.put_slice(b"event: done\ndata: ");
                put_json(out, &end);
                out.put_slice(b"\n\n");
            }
            Self::Ndjson => {
                put_json(out, &end);
                out.put_u8(b'\n');
            }
            Self::OpenAi | Self::Text => {}
        }
    }

    /// Gives the event (or line) just written, the last thing in `out`, the
    /// sequence number `seq`: an SSE `id:` field, an `"id"` member in
    /// `ndjson`; `text` has no place for one.
    pub(crate) fn write_id(self, out: &mut BytesMut, seq: u64) {
        match self {
            Self::OpenAi | Self::Compact if out.ends_with(b"\n\n") => {
                out.truncate(out.len() - 1);
                let _ = write!(out, "id: {seq}\n\n");
            }
            Self::Ndjson if out.ends_with(b"}\n") => {
                out.truncate(out.len() - 2);
                let _ = writeln!(out, ",\"id\":{seq}}}");
            }
            Self::OpenAi | Self::Compact | Self::Ndjson | Self::Text => {}
        }
    }

    /// Writes the end of a stream stopped by a cancel: `object` names the
    /// chunks of its endpoint (`openai` ends with a chunk whose
    /// `finish_reason` is `cancelled`, then `[DONE]`).
    pub(crate) fn write_cancelled(
        self,
        out: &mut BytesMut,
        object: &str,
        usage: Option<&RawValue>,
        stats: Stats,
    ) {
        match self {
            Self::OpenAi => {
                let delta = if object == "text_completion" {
                    serde_json::json!({"index": 0, "text": "", "finish_reason": "cancelled"})
                } else {
                    serde_json::json!({"index": 0, "delta": {}, "finish_reason": "cancelled"})
                };
                let chunk = serde_json::json!({"object": object, "choices": [delta]});
                write_event(out, None, &chunk.to_string());
                out.put_slice(crate::core::sse::DONE);
            }
            Self::Text => out.put_slice(b"\n\n[cancelled]\n"),
            Self::Compact | Self::Ndjson => self.write_end(out, Some("cancelled"), usage, stats),
        }
    }

    /// Writes an error after the head went out. `error` is the
    /// `{"error":{...}}` object.
    pub(crate) fn write_error(self, out: &mut BytesMut, error: &Value) {
        match self {
            Self::OpenAi => write_event(out, None, &error.to_string()),
            Self::Compact => write_event(out, Some("error"), &error.to_string()),
            Self::Ndjson => {
                put_json(out, error);
                out.put_u8(b'\n');
            }
            Self::Text => {
                let message = error["error"]["message"]
                    .as_str()
                    .unwrap_or("stream failed");
                out.put_slice(b"\n\n[error] ");
                out.put_slice(message.as_bytes());
                out.put_u8(b'\n');
            }
        }
    }
}

fn put_json<T: Serialize + ?Sized>(out: &mut BytesMut, value: &T) {
    // Serialising strings and these structs cannot fail.
    let _ = serde_json::to_writer(out.writer(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut BytesMut)) -> String {
        let mut b = BytesMut::new();
        f(&mut b);
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn header_values() {
        assert_eq!(Format::from_header(None).unwrap(), Format::OpenAi);
        assert_eq!(
            Format::from_header(Some(" Compact ")).unwrap(),
            Format::Compact
        );
        assert_eq!(Format::from_header(Some("NDJSON")).unwrap(), Format::Ndjson);
        assert_eq!(Format::from_header(Some("text")).unwrap(), Format::Text);
        assert_eq!(Format::from_header(Some("xml")).unwrap_err().status(), 400);
    }

    #[test]
    fn token_text_survives_any_character() {
        let t = " a\"b\\c\nd\re\u{2028}😀";
        let compact = s(|b| Format::Compact.write_text(b, t));
        let data = compact
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        assert!(!data.contains('\n') && !data.contains('\r'));
        assert_eq!(serde_json::from_str::<String>(data).unwrap(), t);
        let nd = s(|b| Format::Ndjson.write_text(b, t));
        let v: Value = serde_json::from_str(nd.strip_suffix('\n').unwrap()).unwrap();
        assert_eq!(v["t"], t);
        assert_eq!(s(|b| Format::Text.write_text(b, t)), t);
    }

    #[test]
    fn ids_go_on_the_event_just_written() {
        let with_id = |f: Format| {
            s(|b| {
                f.write_text(b, "hi");
                f.write_id(b, 42);
            })
        };
        assert_eq!(with_id(Format::Compact), "data: \"hi\"\nid: 42\n\n");
        assert_eq!(with_id(Format::Ndjson), "{\"t\":\"hi\",\"id\":42}\n");
        assert_eq!(with_id(Format::Text), "hi");
    }

    #[test]
    fn end_and_error_events() {
        let usage = RawValue::from_string(r#"{"total_tokens":3}"#.into()).unwrap();
        let stats = Stats {
            tokens: 2,
            ttft_ms: 5,
            duration_ms: 9,
            failovers: 0,
        };
        assert_eq!(
            s(|b| Format::Compact.write_end(b, Some("stop"), Some(&usage), stats)),
            "event: done\ndata: {\"finish_reason\":\"stop\",\"usage\":{\"total_tokens\":3},\"stats\":{\"tokens\":2,\"ttft_ms\":5,\"duration_ms\":9}}\n\n"
        );
        assert_eq!(
            s(|b| Format::Ndjson.write_end(b, None, None, stats)),
            "{\"finish_reason\":null,\"usage\":null,\"stats\":{\"tokens\":2,\"ttft_ms\":5,\"duration_ms\":9}}\n"
        );
        let err = serde_json::json!({"error": {"message": "boom"}});
        assert_eq!(
            s(|b| Format::Compact.write_error(b, &err)),
            "event: error\ndata: {\"error\":{\"message\":\"boom\"}}\n\n"
        );
        assert_eq!(
            s(|b| Format::Text.write_error(b, &err)),
            "\n\n[error] boom\n"
        );
    }

    #[test]
    fn status_events() {
        use crate::core::status::{Stage, Status};
        let st = Status {
            phase: Stage::Waiting,
            progress: None,
            elapsed_ms: 3,
        };
        let json = r#"{"phase":"waiting","elapsed_ms":3}"#;
        assert_eq!(
            s(|b| Format::Compact.write_status(b, &st)),
            format!("event: status\ndata: {json}\n\n")
        );
        assert_eq!(
            s(|b| Format::Ndjson.write_status(b, &st)),
            format!("{{\"status\":{json}}}\n")
        );
        assert_eq!(
            s(|b| Format::OpenAi.write_status(b, &st)),
            format!(": status {json}\n\n")
        );
        assert_eq!(s(|b| Format::Text.write_status(b, &st)), "");
    }

    #[test]
    fn requests_the_format_cannot_carry() {
        let body = |j: &str| serde_json::from_str::<Map<String, Value>>(j).unwrap();
        assert!(Format::Compact.check_request(&body(r#"{"n":2}"#)).is_err());
        assert!(Format::OpenAi.check_request(&body(r#"{"n":2}"#)).is_ok());
        let e = Format::Ndjson
            .check_request(&body(r#"{"prompt":["a","b"]}"#))
            .unwrap_err();
        assert_eq!(e.to_json()["error"]["param"], "prompt");
        assert!(Format::Text
            .check_request(&body(r#"{"prompt":[1,2,3]}"#))
            .is_ok());
        assert!(Format::Compact
            .check_request(&body(r#"{"n":1,"tools":[]}"#))
            .is_ok());
        let e = Format::Text
            .check_request(&body(r#"{"tools":[]}"#))
            .unwrap_err();
        assert_eq!(e.to_json()["error"]["param"], "tools");
    }
}
