//! Client requests (chat, legacy completions and responses): validating
//! them and building the upstream body.
//!
//! "Parse, don't validate": a request that passes [`parse_request`] becomes a
//! [`CompletionRequest`] whose `body` is the client's JSON object with every
//! field it sent, known or not, in its original order. Only the fields
//! OpenAI requires and the ones whose type changes our behaviour are
//! checked; everything else is the upstream's to judge.

use serde_json::{Map, Value};

use crate::core::config::Dialect;
use crate::core::error::Error;

/// The generation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/responses`: typed events (`super::response_event`).
    Responses,
}

impl Endpoint {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Responses => "/v1/responses",
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
    /// known at the end (existing `stream_options` fields are kept), and
    /// on a llama.cpp upstream `return_progress: true`, so the stream
    /// reports prefill progress (`crate::core::status`). A responses
    /// request goes as it came: its final event always carries usage.
    pub(crate) fn upstream_body(&self, dialect: Dialect) -> Vec<u8> {
        let mut body = self.body.clone();
        if self.endpoint == Endpoint::Responses {
            return serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        }
        if self.stream && dialect == Dialect::LlamaCpp {
            body.entry("return_progress").or_insert(Value::Bool(true));
        }
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
        Endpoint::Responses => validate_input(&body)?,
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
    for field in [
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
        "seed",
    ] {
        expect(
            &body,
            field,
            optional(|v| v.is_i64() || v.is_u64()),
            "integer",
        )?;
    }
    check_ranges(&body)?;
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok(CompletionRequest {
        endpoint,
        stream,
        body,
    })
}

/// The roles a message may have.
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// The API's ranges for the numeric fields it defines (a field that is
/// absent or null is not checked).
const RANGES: &[(&str, f64, f64)] = &[
    ("temperature", 0.0, 2.0),
    ("top_p", 0.0, 1.0),
    ("presence_penalty", -2.0, 2.0),
    ("frequency_penalty", -2.0, 2.0),
    ("top_logprobs", 0.0, 20.0),
];

fn check_ranges(body: &Map<String, Value>) -> Result<(), Error> {
    for (field, low, high) in RANGES {
        if let Some(v) = body.get(*field).and_then(Value::as_f64) {
            if !(*low..=*high).contains(&v) {
                return Err(Error::invalid(
                    format!("'{field}' must be between {low} and {high}, got {v}"),
                    Some(field),
                ));
            }
        }
    }
    for field in [
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
    ] {
        if body
            .get(field)
            .and_then(Value::as_i64)
            .is_some_and(|v| v < 1)
        {
            return Err(Error::invalid(
                format!("'{field}' must be at least 1"),
                Some(field),
            ));
        }
    }
    Ok(())
}

/// Refuses what the deployment caps: more than `max_n` choices, or a
/// length limit above `max_tokens`.
pub(crate) fn check_caps(
    body: &Map<String, Value>,
    max_n: u64,
    max_tokens: u64,
) -> Result<(), Error> {
    for (field, cap) in [
        ("n", max_n),
        ("max_tokens", max_tokens),
        ("max_completion_tokens", max_tokens),
        ("max_output_tokens", max_tokens),
    ] {
        if body
            .get(field)
            .and_then(Value::as_u64)
            .is_some_and(|v| v > cap)
        {
            return Err(Error::invalid(
                format!("'{field}' may be at most {cap} on this gateway"),
                Some(field),
            ));
        }
    }
    Ok(())
}

/// How many answers the request asks for: `n` for each prompt. A
/// `/v1/completions` `prompt` that is an array of strings or of token
/// arrays is one prompt per item (an array of numbers is one tokenized
/// prompt).
pub(crate) fn choices(body: &Map<String, Value>) -> u64 {
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    let prompts = match body.get("prompt") {
        Some(Value::Array(items)) if items.iter().any(|i| i.is_string() || i.is_array()) => {
            items.len() as u64
        }
        _ => 1,
    };
    n.saturating_mul(prompts)
}

/// A responses request's `input` (a string, or an array of items the
/// upstream judges) and `instructions` (a string).
fn validate_input(body: &Map<String, Value>) -> Result<(), Error> {
    match body.get("input") {
        None => {
            return Err(Error::invalid(
                "Missing required parameter: 'input'.",
                Some("input"),
            ))
        }
        Some(Value::String(_)) => {}
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(Error::invalid(
                "Invalid 'input': empty array. Expected an array with minimum length 1.",
                Some("input"),
            ))
        }
        Some(Value::Array(_)) => {}
        Some(other) => {
            return Err(Error::invalid(
                format!(
                    "Invalid type for 'input': expected string or array, got {}",
                    type_name(other)
                ),
                Some("input"),
            ))
        }
    }
    expect(body, "instructions", optional(Value::is_string), "string")
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
            Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
            Some(Value::String(role)) => {
                return Err(Error::invalid(
                    format!(
                        "Invalid value for '{param}.role': '{role}'. Supported values are: {}.",
                        ROLES.join(", ")
                    ),
                    Some(&format!("{param}.role")),
                ))
            }
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
    fn responses_need_input_and_go_upstream_as_sent() {
        let parse = |b: &str| parse_request(Endpoint::Responses, b.as_bytes());
        let r =
            parse(r#"{"model":"m","input":"hi","stream":true,"max_output_tokens":16}"#).unwrap();
        assert!(r.stream);
        for dialect in [Dialect::OpenAi, Dialect::LlamaCpp, Dialect::Vllm] {
            let v: Value = serde_json::from_slice(&r.upstream_body(dialect)).unwrap();
            assert_eq!(v, Value::Object(r.body.clone()), "{dialect:?}");
        }
        assert!(parse(r#"{"model":"m","input":[{"role":"user","content":"hi"}]}"#).is_ok());
        for (body, field) in [
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":3}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"input":"hi"}"#, "model"),
            (
                r#"{"model":"m","input":"hi","instructions":["x"]}"#,
                "instructions",
            ),
            (
                r#"{"model":"m","input":"hi","max_output_tokens":0}"#,
                "max_output_tokens",
            ),
            (
                r#"{"model":"m","input":"hi","max_output_tokens":"9"}"#,
                "max_output_tokens",
            ),
            (
                r#"{"model":"m","input":"hi","temperature":3}"#,
                "temperature",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(param(e).as_deref(), Some(field), "{body}");
        }
        let capped = parse(r#"{"model":"m","input":"hi","max_output_tokens":900}"#).unwrap();
        let e = check_caps(&capped.body, 1, 512).unwrap_err();
        assert_eq!(param(e).as_deref(), Some("max_output_tokens"));
    }

    #[test]
    fn include_usage_is_injected_on_streams_only() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"user"}],"stream":true,"stream_options":{"x":1}}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&r.upstream_body(Dialect::OpenAi)).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x":1,"include_usage":true})
        );
        let r = chat(
            r#"{"model":"m","messages":[{"role":"user"}],"stream":true,"stream_options":null}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&r.upstream_body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let r = chat(r#"{"model":"m","messages":[{"role":"user"}]}"#).unwrap();
        let v: Value = serde_json::from_slice(&r.upstream_body(Dialect::OpenAi)).unwrap();
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn llama_cpp_streams_ask_for_prefill_progress() {
        let stream = chat(r#"{"model":"m","messages":[{"role":"user"}],"stream":true}"#).unwrap();
        let v: Value = serde_json::from_slice(&stream.upstream_body(Dialect::LlamaCpp)).unwrap();
        assert_eq!(v["return_progress"], true);
        for dialect in [Dialect::OpenAi, Dialect::Vllm] {
            let v: Value = serde_json::from_slice(&stream.upstream_body(dialect)).unwrap();
            assert!(v.get("return_progress").is_none(), "{dialect:?}");
        }
        let whole = chat(r#"{"model":"m","messages":[{"role":"user"}]}"#).unwrap();
        let v: Value = serde_json::from_slice(&whole.upstream_body(Dialect::LlamaCpp)).unwrap();
        assert!(v.get("return_progress").is_none());
    }
}
