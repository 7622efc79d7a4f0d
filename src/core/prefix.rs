//! Speculative prefix streaming: the opening of an earlier answer to the
//! same prompt, sent to the client at once while the upstream is asked to
//! continue from it.
//!
//! A sampled (non-deterministic) answer to a prompt seen before usually
//! opens the way the earlier one did. When a stored prefix exists — the
//! first [`Config::prefix_tokens`] streamed pieces of an earlier answer to
//! the same canonical request (every field but the sampling ones, such as
//! temperature and seed) in the same scope — the client gets those
//! pieces before the upstream has produced anything, and the upstream
//! generates only the rest:
//!
//! - `/v1/chat/completions`: the prefix becomes a trailing assistant
//!   message. llama.cpp's server continues such a message as it is
//!   ([`Dialect::LlamaCpp`]); vLLM and SGLang do when told
//!   `continue_final_message: true, add_generation_prompt: false`
//!   ([`Dialect::Vllm`]). The plain OpenAI API cannot continue one, so
//!   there chat requests never speculate.
//! - `/v1/completions`: the prefix is appended to the prompt, which any
//!   completions server continues.
//!
//! The length limit (`max_tokens`, `max_completion_tokens`) shrinks by the
//! prefix's tokens, and the usage the client sees moves them from the
//! prompt back to the completion, so the totals add up as if one request
//! had generated everything. One streamed piece counts as one token (what
//! llama.cpp and vLLM stream); a re-tokenised prefix may differ by a token.
//!
//! What is eligible: streamed requests with one choice and nothing that
//! constrains the output (no grammar, schema, `response_format` other than
//! text, `logit_bias`, `stop`, tools or `guided_*` field), whose
//! chat conversation ends with a user message, that are not
//! deterministic (those use the exact cache, [`crate::core::cache`]) and do
//! not say `Cache-Control: no-store`; when the deployment turns the feature
//! on ([`Speculate`]) and the request does not opt out (or opts in), via
//! the [`HEADER`] header. A prefix is stored once, from an eligible
//! request that found none and completed cleanly, and is not rewritten
//! by the requests it serves, so it stays stable for its TTL.

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::Digest;

use crate::core::cache::{self, Directives};
use crate::core::config::{Config, Dialect, Speculate};
use crate::core::openai::{CompletionRequest, Endpoint};

/// Prefix of every stored prefix's key (v2: the key covers the whole
/// request but its sampling fields; v1 keys covered only the prompt).
pub(crate) const KEY_PREFIX: &str = "prefix:v2:";
/// Fields that only change how tokens are drawn, not what may be written.
pub(crate) const SAMPLING_FIELDS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
];
/// Fields besides the sampling ones that requests sharing a prefix may
/// differ in: how much is written and how it is delivered. Every other
/// field is part of the key.
const LENGTH_AND_DELIVERY_FIELDS: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stream",
    "stream_options",
    "user",
];
/// Fields that constrain what may be written (a grammar, a schema, banned
/// or forced tokens, stop strings, tools). A request with any of them
/// neither records an opening nor receives one: its opening could be
/// forced text, and another request's opening could break its constraint.
const CONSTRAINING_FIELDS: &[&str] = &[
    "grammar",
    "json_schema",
    "regex",
    "logit_bias",
    "stop",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "structured_outputs",
];
/// Per-request switch: `on` or `off`.
pub(crate) const HEADER: &str = "x-tokenedge-prefix";

/// The KV key of the stored prefix for this request, when the request may
/// be answered with one.
pub(crate) fn plan(
    directives: Directives,
    asked: Option<bool>,
    request: &CompletionRequest,
    config: &Config,
    scope: Option<&str>,
) -> Option<String> {
    let wanted = match config.speculate {
        Speculate::Off => false,
        Speculate::On => asked != Some(false),
        Speculate::Request => asked == Some(true),
    };
    if !wanted || directives.no_store || config.prefix_tokens == 0 || !request.stream {
        return None;
    }
    let body = &request.body;
    if !cache::one_choice(body) || constrained(body) {
        return None;
    }
    let eligible = match request.endpoint {
        // The plain OpenAI API cannot continue an assistant message; a
        // conversation is continued only after the user's turn.
        Endpoint::Chat => {
            config.dialect != Dialect::OpenAi
                && body
                    .get("messages")
                    .and_then(Value::as_array)
                    .and_then(|m| m.last())
                    .and_then(|last| last.get("role"))
                    .and_then(Value::as_str)
                    == Some("user")
        }
        Endpoint::Completions => body.get("prompt").is_some_and(Value::is_string),
        // Typed events are not spliced onto a stored opening.
        Endpoint::Responses => false,
    };
    if !eligible {
        return None;
    }
    let kept: Map<String, Value> = body
        .iter()
        .filter(|(k, _)| {
            !SAMPLING_FIELDS.contains(&k.as_str())
                && !LENGTH_AND_DELIVERY_FIELDS.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut canonical = String::new();
    cache::write_canonical(&mut canonical, &Value::Object(kept));
    let mut hash = cache::scoped_hash(scope);
    hash.update(request.endpoint.path().as_bytes());
    hash.update([0]);
    hash.update(canonical.as_bytes());
    Some(format!(
        "{KEY_PREFIX}{}",
        crate::core::hex(&hash.finalize())
    ))
}

/// Whether the upstream can continue an opening streamed to this request:
/// a stream, with openings configured, whose chat upstream continues an
/// assistant message (completions always continue).
pub(crate) fn continues(request: &CompletionRequest, config: &Config) -> bool {
    request.stream
        && config.prefix_tokens > 0
        && (request.endpoint == Endpoint::Completions || config.dialect != Dialect::OpenAi)
}

/// Whether the request constrains what may be written: one of
/// [`CONSTRAINING_FIELDS`] (an empty list or `null` is none), any
/// `guided_*` field, or a `response_format` other than plain text.
pub(crate) fn constrained(body: &Map<String, Value>) -> bool {
    let present = |v: &Value| match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    };
    body.iter().any(|(k, v)| {
        (CONSTRAINING_FIELDS.contains(&k.as_str()) || k.starts_with("guided_")) && present(v)
    }) || body
        .get("response_format")
        .is_some_and(|f| present(f) && f.get("type").and_then(Value::as_str) != Some("text"))
}

/// What the request's [`HEADER`] asks for: `Some(true)` for `on`,
/// `Some(false)` for `off`, `None` otherwise.
pub(crate) fn asked(value: Option<&str>) -> Option<bool> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("on") => Some(true),
        Some("off") => Some(false),
        _ => None,
    }
}

/// The request to send upstream so that it continues after `text`
/// (`tokens` pieces long).
pub(crate) fn continuation(
    request: &CompletionRequest,
    dialect: Dialect,
    text: &str,
    tokens: u64,
) -> CompletionRequest {
    // Nothing generated yet: the request itself, as first sent.
    if text.is_empty() {
        return request.clone();
    }
    let mut body = request.body.clone();
    match request.endpoint {
        Endpoint::Chat => {
            if let Some(Value::Array(messages)) = body.get_mut("messages") {
                messages.push(serde_json::json!({"role": "assistant", "content": text}));
            }
            if dialect == Dialect::Vllm {
                body.insert("continue_final_message".into(), Value::Bool(true));
                body.insert("add_generation_prompt".into(), Value::Bool(false));
            }
        }
        Endpoint::Completions => {
            if let Some(Value::String(prompt)) = body.get_mut("prompt") {
                prompt.push_str(text);
            }
        }
        // Never planned (see `plan`).
        Endpoint::Responses => {}
    }
    for limit in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = body.get(limit).and_then(Value::as_u64) {
            body.insert(limit.into(), Value::from(n.saturating_sub(tokens).max(1)));
        }
    }
    CompletionRequest {
        endpoint: request.endpoint,
        stream: request.stream,
        body,
    }
}

/// The opening of a stored prefix this request may use: never more pieces
/// than the request's length limit allows, leaving the upstream at least
/// one token to write. Empty when nothing usable is left.
pub(crate) fn cut_opening(pieces: &mut Vec<String>, request: &CompletionRequest) {
    let limit = ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|f| request.body.get(*f)?.as_u64())
        .min();
    if let Some(limit) = limit {
        pieces.truncate(usize::try_from(limit.saturating_sub(1)).unwrap_or(usize::MAX));
    }
}

/// How a continuation is spliced onto an opening the client already has,
/// held by the re-streamer ([`crate::core::restream::Restream::continuing`]):
/// the continuation's events that carry nothing before its first content
/// (its role announcement) are dropped, since the client had one, and its
/// usage moves the opening's tokens from the prompt to the completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Splice {
    /// Pieces of the opening, one token each.
    tokens: u64,
    /// No content of the continuation has come yet.
    before_content: bool,
}

impl Splice {
    /// A continuation after an opening of `tokens` pieces.
    pub(crate) fn new(tokens: u64) -> Self {
        Self {
            tokens,
            before_content: true,
        }
    }

    /// Whether an event is to be dropped: it carries nothing (no content,
    /// finish, usage or error) and comes before the first content.
    pub(crate) fn drops(&self, carries_nothing: bool) -> bool {
        self.before_content && carries_nothing
    }

    /// Records that an event went out, and whether it carried content.
    pub(crate) fn passed(&mut self, has_content: bool) {
        self.before_content &= !has_content;
    }

    /// One stream event's JSON with its `usage` shifted, re-serialised, or
    /// `None` when it has no usage object (then it goes out as it is).
    pub(crate) fn shift_event(&self, data: &str) -> Option<String> {
        let mut v: Value = serde_json::from_str(data).ok()?;
        shift_usage(v.get_mut("usage")?.as_object_mut()?, self.tokens);
        Some(v.to_string())
    }

    /// A usage object, shifted.
    pub(crate) fn shift_raw(&self, usage: &RawValue) -> Option<Box<RawValue>> {
        let mut v: Map<String, Value> = serde_json::from_str(usage.get()).ok()?;
        shift_usage(&mut v, self.tokens);
        serde_json::value::to_raw_value(&v).ok()
    }
}

/// Moves `tokens` from the prompt's count to the completion's in a usage
/// object, leaving the total as it was.
fn shift_usage(usage: &mut Map<String, Value>, tokens: u64) {
    let count = |u: &Map<String, Value>, k: &str| u.get(k).and_then(Value::as_u64);
    if let (Some(p), Some(c)) = (
        count(usage, "prompt_tokens"),
        count(usage, "completion_tokens"),
    ) {
        let moved = tokens.min(p);
        usage.insert("prompt_tokens".into(), Value::from(p - moved));
        usage.insert(
            "completion_tokens".into(),
            Value::from(c.saturating_add(moved)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::http::RequestHead;
    use crate::core::openai::parse_request;

    fn plan_of(body: &str, headers: &[(&str, &str)], config: &Config) -> Option<String> {
        let endpoint = if body.contains("\"prompt\"") {
            Endpoint::Completions
        } else {
            Endpoint::Chat
        };
        let head = RequestHead::new(
            "POST",
            endpoint.path(),
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        plan(
            Directives::parse(head.header("cache-control")),
            asked(head.header(HEADER)),
            &parse_request(endpoint, body.as_bytes()).unwrap(),
            config,
            Some("k"),
        )
    }

    fn on() -> Config {
        Config {
            speculate: Speculate::On,
            dialect: Dialect::LlamaCpp,
            ..Config::default()
        }
    }

    const CHAT: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]"#;

    #[test]
    fn what_may_speculate() {
        let c = on();
        let body = format!("{CHAT}}}");
        let key = plan_of(&body, &[], &c).unwrap();
        assert!(key.starts_with(KEY_PREFIX));
        // Sampling parameters do not change the key.
        assert_eq!(
            plan_of(
                &format!("{CHAT},\"temperature\":0.8,\"top_p\":0.9}}"),
                &[],
                &c
            ),
            Some(key.clone())
        );
        assert!(plan_of(&body, &[("X-Tokenedge-Prefix", "off")], &c).is_none());
        assert!(plan_of(&body, &[("cache-control", "no-store")], &c).is_none());
        assert!(plan_of(&format!("{CHAT},\"n\":2}}"), &[], &c).is_none());
        assert!(plan_of(
            &format!("{CHAT},\"tools\":[{{\"type\":\"function\"}}]}}"),
            &[],
            &c
        )
        .is_none());
        let not_stream = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        assert!(plan_of(not_stream, &[], &c).is_none());
        let prefilled = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"Hel"}]}"#;
        assert!(plan_of(prefilled, &[], &c).is_none());
        let openai = Config {
            dialect: Dialect::OpenAi,
            ..on()
        };
        assert!(plan_of(&body, &[], &openai).is_none());
        let completions = r#"{"model":"m","stream":true,"prompt":"Once"}"#;
        assert!(plan_of(completions, &[], &openai).is_some());
        let by_request = Config {
            speculate: Speculate::Request,
            ..on()
        };
        assert!(plan_of(&body, &[], &by_request).is_none());
        assert_eq!(
            plan_of(&body, &[("x-tokenedge-prefix", "on")], &by_request),
            Some(key)
        );
        assert!(plan_of(&body, &[("x-tokenedge-prefix", "on")], &Config::default()).is_none());
    }

    #[test]
    fn continuation_per_dialect() {
        let r = parse_request(
            Endpoint::Chat,
            format!("{CHAT},\"max_tokens\":20}}").as_bytes(),
        )
        .unwrap();
        let c = continuation(&r, Dialect::LlamaCpp, "The capital", 2);
        assert_eq!(c.body["messages"][1]["role"], "assistant");
        assert_eq!(c.body["messages"][1]["content"], "The capital");
        assert_eq!(c.body["max_tokens"], 18);
        assert!(c.body.get("continue_final_message").is_none());
        let v = continuation(&r, Dialect::Vllm, "The capital", 30);
        assert_eq!(v.body["continue_final_message"], true);
        assert_eq!(v.body["add_generation_prompt"], false);
        assert_eq!(v.body["max_tokens"], 1);
        let p = parse_request(
            Endpoint::Completions,
            br#"{"model":"m","stream":true,"prompt":"Once"}"#,
        )
        .unwrap();
        assert_eq!(
            continuation(&p, Dialect::OpenAi, " upon", 1).body["prompt"],
            "Once upon"
        );
    }

    #[test]
    fn usage_adds_up() {
        let data = r#"{"choices":[],"usage":{"prompt_tokens":42,"completion_tokens":3,"total_tokens":45}}"#;
        let splice = Splice::new(5);
        let v: Value = serde_json::from_str(&splice.shift_event(data).unwrap()).unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 37);
        assert_eq!(v["usage"]["completion_tokens"], 8);
        assert_eq!(v["usage"]["total_tokens"], 45);
        assert!(splice.shift_event(r#"{"choices":[]}"#).is_none());
    }

    #[test]
    fn usage_shift_saturates_on_huge_upstream_counts() {
        // Found by fuzzing (issue 13, item 5): the sum used to wrap.
        let max = u64::MAX;
        let data = format!(
            r#"{{"choices":[],"usage":{{"prompt_tokens":9,"completion_tokens":{max},"total_tokens":1}}}}"#
        );
        let v: Value = serde_json::from_str(&Splice::new(5).shift_event(&data).unwrap()).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], max);
        assert_eq!(v["usage"]["prompt_tokens"], 4);
    }
}
