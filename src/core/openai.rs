//! The OpenAI wire format: validating client requests (chat and legacy
//! completions), building the upstream body, and reading the few facts the
//! core needs out of each upstream stream event.
//!
//! "Parse, don't validate": a request that passes [`parse_request`] becomes a
//! [`CompletionRequest`] whose `body` is the client's JSON object with every
//! field it sent, known or not, in its original order. Only the fields
//! OpenAI requires and the ones whose type changes our behaviour are
//! checked; everything else is the upstream's to judge.
//!
//! Stream events are not re-serialised: [`inspect_chunk`] reads the event
//! and the session forwards the upstream's bytes unchanged, so `usage`,
//! `logprobs`, `tool_calls`, `system_fingerprint`, llama.cpp's `timings` and
//! any field we do not know reach the client as the upstream wrote them.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::core::error::Error;

/// The two generation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completions,
}

impl Endpoint {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

/// A validated generation request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompletionRequest {
    pub endpoint: Endpoint,
    pub stream: bool,
    /// The client's JSON object, untouched.
    pub body: Map<String, Value>,
}

impl CompletionRequest {
    /// The JSON body sent upstream: the client's, with
    /// `stream_options.include_usage: true` on streams so usage is always
    /// known at the end (existing `stream_options` fields are kept).
    pub(crate) fn upstream_body(&self) -> Vec<u8> {
        let mut body = self.body.clone();
        if self.stream {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Value::Object(o) = options {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn expect(
    body: &Map<String, Value>,
    field: &str,
    ok: impl Fn(&Value) -> bool,
    want: &str,
) -> Result<(), Error> {
    match body.get(field) {
        Some(v) if !ok(v) => Err(Error::invalid(
            format!(
                "Invalid type for '{field}': expected {want}, got {}",
                type_name(v)
            ),
            Some(field),
        )),
        _ => Ok(()),
    }
}

fn optional(ok: fn(&Value) -> bool) -> impl Fn(&Value) -> bool {
    move |v| v.is_null() || ok(v)
}

/// Parses and validates a generation request body.
pub(crate) fn parse_request(endpoint: Endpoint, bytes: &[u8]) -> Result<CompletionRequest, Error> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid(
            format!("We could not parse the JSON body of your request ({e}). Send a JSON object."),
            None,
        )
    })?;
    let Value::Object(body) = value else {
        return Err(Error::invalid(
            format!(
                "The request body must be a JSON object, got {}",
                type_name(&value)
            ),
            None,
        ));
    };

    match body.get("model") {
        None => {
            return Err(Error::invalid(
                "Missing required parameter: 'model'.",
                Some("model"),
            ))
        }
        Some(m) if !m.is_string() => {
            return Err(Error::invalid(
                format!(
                    "Invalid type for 'model': expected string, got {}",
                    type_name(m)
                ),
                Some("model"),
            ))
        }
        _ => {}
    }
    match endpoint {
        Endpoint::Chat => validate_messages(&body)?,
        Endpoint::Completions => match body.get("prompt") {
            None => {
                return Err(Error::invalid(
                    "Missing required parameter: 'prompt'.",
                    Some("prompt"),
                ))
            }
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(p) => {
                return Err(Error::invalid(
                    format!(
                        "Invalid type for 'prompt': expected string or array, got {}",
                        type_name(p)
                    ),
                    Some("prompt"),
                ))
            }
        },
    }
    expect(&body, "stream", optional(Value::is_boolean), "boolean")?;
    expect(
        &body,
        "stream_options",
        optional(Value::is_object),
        "object",
    )?;
    for field in [
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
    ] {
        expect(&body, field, optional(Value::is_number), "number")?;
    }
    for field in ["max_tokens", "max_completion_tokens", "n", "seed"] {
        expect(
            &body,
            field,
            optional(|v| v.is_i64() || v.is_u64()),
            "integer",
        )?;
    }
    if let Some(n) = body.get("n").and_then(Value::as_i64) {
        if n < 1 {
            return Err(Error::invalid("'n' must be at least 1", Some("n")));
        }
    }
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok(CompletionRequest {
        endpoint,
        stream,
        body,
    })
}

fn validate_messages(body: &Map<String, Value>) -> Result<(), Error> {
    let messages = match body.get("messages") {
        None => {
            return Err(Error::invalid(
                "Missing required parameter: 'messages'.",
                Some("messages"),
            ))
        }
        Some(Value::Array(m)) => m,
        Some(other) => {
            return Err(Error::invalid(
                format!(
                    "Invalid type for 'messages': expected array, got {}",
                    type_name(other)
                ),
                Some("messages"),
            ))
        }
    };
    if messages.is_empty() {
        return Err(Error::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            Some("messages"),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(obj) = m.as_object() else {
            return Err(Error::invalid(
                format!(
                    "Invalid type for '{param}': expected object, got {}",
                    type_name(m)
                ),
                Some(&param),
            ));
        };
        match obj.get("role") {
            Some(Value::String(_)) => {}
            None => {
                return Err(Error::invalid(
                    format!("Missing required parameter: '{param}.role'."),
                    Some(&format!("{param}.role")),
                ))
            }
            Some(r) => {
                return Err(Error::invalid(
                    format!(
                        "Invalid type for '{param}.role': expected string, got {}",
                        type_name(r)
                    ),
                    Some(&format!("{param}.role")),
                ))
            }
        }
    }
    Ok(())
}

/// What the session needs to know about one upstream stream event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChunkFacts {
    /// Some choice carried a non-empty `finish_reason`.
    pub finished: bool,
    /// The event carried generated content (text, content, tool call or
    /// refusal): the point where "time to first token" is measured.
    pub has_content: bool,
    /// The event carried a `usage` object.
    pub has_usage: bool,
    /// The event is an in-stream error object (`{"error": ...}`).
    pub is_error: bool,
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
/// is). This runs once per token, so it deserializes into borrowed views
/// and skips every other field instead of building a `Value`.
pub(crate) fn inspect_chunk(data: &str) -> ChunkFacts {
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
        facts.finished |= non_empty(&choice.finish_reason);
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

    fn chat(body: &str) -> Result<CompletionRequest, Error> {
        parse_request(Endpoint::Chat, body.as_bytes())
    }

    fn param(e: Error) -> Option<String> {
        e.to_json()["error"]["param"].as_str().map(str::to_owned)
    }

    #[test]
    fn valid_chat_keeps_unknown_fields_in_order() {
        let r = chat(r#"{"model":"m","zeta":1,"messages":[{"role":"user","content":"hi"}],"alpha":{"x":[1]},"stream":true}"#).unwrap();
        assert!(r.stream);
        let keys: Vec<_> = r.body.keys().cloned().collect();
        assert_eq!(keys, ["model", "zeta", "messages", "alpha", "stream"]);
    }

    #[test]
    fn invalid_bodies() {
        assert_eq!(chat("{not json").unwrap_err().status(), 400);
        assert_eq!(chat("[1,2]").unwrap_err().status(), 400);
        assert_eq!(
            param(chat(r#"{"model":"m"}"#).unwrap_err()).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param(chat(r#"{"messages":[{"role":"user"}]}"#).unwrap_err()).as_deref(),
            Some("model")
        );
        assert_eq!(
            param(chat(r#"{"model":"m","messages":"hi"}"#).unwrap_err()).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param(chat(r#"{"model":"m","messages":[]}"#).unwrap_err()).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param(chat(r#"{"model":"m","messages":[{"content":"x"}]}"#).unwrap_err()).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(chat(r#"{"model":"m","messages":[1]}"#).unwrap_err()).as_deref(),
            Some("messages[0]")
        );
        assert_eq!(
            param(
                chat(r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#).unwrap_err()
            )
            .as_deref(),
            Some("stream")
        );
        assert_eq!(
            param(
                chat(r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":1.5}"#).unwrap_err()
            )
            .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param(
                chat(r#"{"model":"m","messages":[{"role":"user"}],"temperature":"hot"}"#)
                    .unwrap_err()
            )
            .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param(chat(r#"{"model":"m","messages":[{"role":"user"}],"n":0}"#).unwrap_err())
                .as_deref(),
            Some("n")
        );
        assert!(chat(
            r#"{"model":"m","messages":[{"role":"user"}],"temperature":null,"max_tokens":5}"#
        )
        .is_ok());
    }

    #[test]
    fn completions_need_prompt() {
        assert!(parse_request(Endpoint::Completions, br#"{"model":"m","prompt":"a"}"#).is_ok());
        assert!(parse_request(
            Endpoint::Completions,
            br#"{"model":"m","prompt":["a","b"]}"#
        )
        .is_ok());
        let e = parse_request(Endpoint::Completions, br#"{"model":"m"}"#).unwrap_err();
        assert_eq!(param(e).as_deref(), Some("prompt"));
        let e = parse_request(Endpoint::Completions, br#"{"model":"m","prompt":3}"#).unwrap_err();
        assert_eq!(param(e).as_deref(), Some("prompt"));
    }

    #[test]
    fn include_usage_is_injected_on_streams_only() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"user"}],"stream":true,"stream_options":{"x":1}}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&r.upstream_body()).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x":1,"include_usage":true})
        );
        let r = chat(
            r#"{"model":"m","messages":[{"role":"user"}],"stream":true,"stream_options":null}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&r.upstream_body()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let r = chat(r#"{"model":"m","messages":[{"role":"user"}]}"#).unwrap();
        let v: Value = serde_json::from_slice(&r.upstream_body()).unwrap();
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn chunk_facts() {
        let f = inspect_chunk(
            r#"{"choices":[{"delta":{"role":"assistant","content":null},"finish_reason":null}]}"#,
        );
        assert_eq!(f, ChunkFacts::default());
        let f = inspect_chunk(r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#);
        assert!(f.has_content && !f.finished);
        let f = inspect_chunk(r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#);
        assert!(f.has_content);
        let f = inspect_chunk(r#"{"choices":[{"text":" Paris","finish_reason":"length"}]}"#);
        assert!(f.has_content && f.finished);
        let f = inspect_chunk(r#"{"choices":[],"usage":{"total_tokens":3}}"#);
        assert!(f.has_usage && !f.finished);
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
            include_bytes!("../../tests/vectors/llamacpp_error_400.json"),
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
