//! Upstream stream events and error bodies: the few facts the core needs
//! out of each event, read through borrowed views.
//!
//! Stream events are not re-serialised: [`inspect_chunk`] reads the event
//! and the session forwards the upstream's bytes unchanged, so `usage`,
//! `logprobs`, `tool_calls`, `system_fingerprint`, llama.cpp's `timings` and
//! any field we do not know reach the client as the upstream wrote them.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// The finish reasons that end an answer as the model meant it: anything
/// else (vLLM's `abort`, `error`, an unknown value) ends it broken.
/// `content_filter` is a deliberate, final end, but not a whole answer: it
/// is passed on and never stored.
const CLEAN_FINISHES: &[&str] = &[
    "stop",
    "length",
    "tool_calls",
    "function_call",
    "content_filter",
];

/// Whether `reason` ends an answer cleanly (see [`CLEAN_FINISHES`]).
pub(crate) fn clean_finish(reason: &str) -> bool {
    CLEAN_FINISHES.contains(&reason)
}

/// Whether an answer that ended with `reason` may be stored.
pub(crate) fn storable_finish(reason: &str) -> bool {
    clean_finish(reason) && reason != "content_filter"
}

/// What the session needs to know about one upstream stream event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChunkFacts {
    /// The choice indices that carried a non-empty `finish_reason` (empty,
    /// so free, on most events).
    pub finished_choices: Vec<u32>,
    /// A finish reason that is not a clean end, if one came.
    pub broken_finish: Option<String>,
    /// The event carried generated content (text, content, tool call or
    /// refusal): the point where "time to first token" is measured.
    pub has_content: bool,
    /// The event carried a `usage` object.
    pub has_usage: bool,
    /// The event is an in-stream error object (`{"error": ...}`).
    pub is_error: bool,
}

impl ChunkFacts {
    /// Some choice carried a non-empty `finish_reason`.
    pub(crate) fn finished(&self) -> bool {
        !self.finished_choices.is_empty()
    }
}

/// The parts of a stream event [`inspect_chunk`] looks at; everything else
/// is skipped by the deserializer without being built.
#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    usage: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<DeltaView<'a>>,
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<IgnoredAny>>,
}

/// Reads the facts out of one `data:` payload. Anything that is not a JSON
/// object of the expected shape yields no facts (it is still forwarded as
/// is). This runs once per token: a single pass over the bytes reads the
/// usual shapes ([`super::scan`]), and serde, through borrowed views that
/// skip every other field, reads the rest.
pub(crate) fn inspect_chunk(data: &str) -> ChunkFacts {
    super::scan::chunk_facts(data).unwrap_or_else(|| inspect_chunk_with_serde(data))
}

/// [`inspect_chunk`] through serde, which decides every event the single
/// pass of [`super::scan`] does not read.
pub(crate) fn inspect_chunk_with_serde(data: &str) -> ChunkFacts {
    let Ok(view) = serde_json::from_str::<EventView>(data) else {
        return ChunkFacts::default();
    };
    let mut facts = ChunkFacts {
        has_usage: view.usage.is_some(),
        is_error: view.error.is_some(),
        ..ChunkFacts::default()
    };
    let non_empty = |s: &Option<Cow<str>>| s.as_deref().is_some_and(|s| !s.is_empty());
    for choice in view.choices.iter().flatten() {
        if let Some(reason) = choice.finish_reason.as_deref().filter(|r| !r.is_empty()) {
            facts.finished_choices.push(choice.index);
            if !clean_finish(reason) {
                facts.broken_finish = Some(reason.to_owned());
            }
        }
        let delta_content = choice.delta.as_ref().is_some_and(|d| {
            non_empty(&d.content)
                || non_empty(&d.refusal)
                || non_empty(&d.reasoning_content)
                || d.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
        });
        facts.has_content |= non_empty(&choice.text) || delta_content;
    }
    facts
}

/// The parts of one stream event that the compact formats carry: the
/// generated text of the first choice, anything else its delta holds (tool
/// calls, refusal, reasoning), the finish reason, usage, and an in-stream
/// error. Borrowed from the event's text.
#[derive(Debug, Default)]
pub(crate) struct ChunkParts<'a> {
    pub text: Cow<'a, str>,
    /// The delta's raw JSON when it carries more than role and content.
    pub other_delta: Option<&'a RawValue>,
    pub finish_reason: Option<Cow<'a, str>>,
    pub usage: Option<&'a RawValue>,
    pub error: Option<&'a RawValue>,
}

/// The `model` an upstream event names, if any.
pub(crate) fn chunk_model(data: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct ModelView<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<ModelView>(data)
        .ok()?
        .model
        .map(Cow::into_owned)
}

#[derive(Deserialize)]
struct PartsView<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<PartsChoice<'a>>>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PartsChoice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<&'a RawValue>,
}

/// A JSON string, borrowed when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A delta's fields, values left as raw JSON.
type PartsDelta<'a> = std::collections::BTreeMap<Cow<'a, str>, &'a RawValue>;

/// Splits one `data:` payload into [`ChunkParts`] (choice 0 only; requests
/// for several choices are refused for the compact formats). `None` when
/// the payload is not a JSON object.
pub(crate) fn chunk_parts(data: &str) -> Option<ChunkParts<'_>> {
    let view: PartsView = serde_json::from_str(data).ok()?;
    let usage = view.usage.filter(|u| u.get() != "null");
    let mut parts = ChunkParts {
        usage,
        error: view.error,
        ..ChunkParts::default()
    };
    for choice in view.choices.into_iter().flatten().filter(|c| c.index == 0) {
        parts.finish_reason = choice.finish_reason.filter(|f| !f.is_empty());
        if let Some(t) = choice.text {
            parts.text = t;
        }
        if let Some(raw) = choice.delta {
            if let Ok(d) = serde_json::from_str::<PartsDelta>(raw.get()) {
                if let Some(c) = d.get("content") {
                    if let Ok(Some(Text(c))) = serde_json::from_str::<Option<Text>>(c.get()) {
                        parts.text = c;
                    }
                }
                let other = |(k, v): (&Cow<str>, &&RawValue)| {
                    k != "role" && k != "content" && v.get() != "null"
                };
                if d.iter().any(other) {
                    parts.other_delta = Some(raw);
                }
            }
        }
    }
    Some(parts)
}

/// Extracts the message and type of an upstream error body: OpenAI-style
/// `{"error":{"message","type"}}`, `{"error":"text"}`, `{"message":...}`, or
/// plain text. Falls back to the status line.
pub(crate) fn upstream_error_message(status: u16, body: &[u8]) -> (String, Option<String>) {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let err = v.get("error").unwrap_or(&v);
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| err.as_str())
            .or_else(|| v.get("detail").and_then(Value::as_str));
        if let Some(m) = message {
            let t = err.get("type").and_then(Value::as_str).map(str::to_owned);
            return (m.to_owned(), t);
        }
    }
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.len() <= 1024 {
        return (format!("Upstream answered {status}: {trimmed}"), None);
    }
    (format!("Upstream answered {status}"), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_facts() {
        let f = inspect_chunk(
            r#"{"choices":[{"delta":{"role":"assistant","content":null},"finish_reason":null}]}"#,
        );
        assert_eq!(f, ChunkFacts::default());
        let f = inspect_chunk(r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#);
        assert!(f.has_content && !f.finished());
        let f = inspect_chunk(r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#);
        assert!(f.has_content);
        let f = inspect_chunk(r#"{"choices":[{"text":" Paris","finish_reason":"length"}]}"#);
        assert!(f.has_content && f.finished());
        let f = inspect_chunk(r#"{"choices":[],"usage":{"total_tokens":3}}"#);
        assert!(f.has_usage && !f.finished());
        let f = inspect_chunk(
            r#"{"choices":[{"delta":{"content":"a\\n\\u00e9"}}],"usage":null,"error":null}"#,
        );
        assert!(f.has_content && !f.has_usage && !f.is_error);
        assert_eq!(inspect_chunk(r#"{"choices":null}"#), ChunkFacts::default());
        assert!(inspect_chunk(r#"{"error":{"message":"x"}}"#).is_error);
        assert_eq!(inspect_chunk("[DONE]"), ChunkFacts::default());
    }

    #[test]
    fn upstream_error_messages() {
        let (m, t) = upstream_error_message(
            400,
            include_bytes!("../../../tests/vectors/llamacpp_error_400.json"),
        );
        assert_eq!(m, "logprobs is not supported with tools + stream");
        assert_eq!(t.as_deref(), Some("invalid_request_error"));
        assert_eq!(
            upstream_error_message(500, br#"{"error":"boom"}"#).0,
            "boom"
        );
        assert_eq!(
            upstream_error_message(503, b"Service Unavailable").0,
            "Upstream answered 503: Service Unavailable"
        );
        assert_eq!(upstream_error_message(503, b"").0, "Upstream answered 503");
    }
}
