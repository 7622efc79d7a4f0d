//! Prefix warming: `POST /v1/prefetch` takes the conversation so far (what
//! the app has while the user is still typing) and has the upstream
//! process it now, so that its prompt cache already holds that prefix when
//! the real request comes.
//!
//! The body is a chat completions request (or a completions request, when
//! it has a `prompt` and no `messages`), validated like one. The function
//! answers `202 Accepted` at once, then — unless the same prefix was warmed
//! within [`crate::core::config::Config::prefetch_window_secs`], which a
//! KV marker records — sends it to the replica the real request will be
//! routed to ([`crate::core::route`]) with the conversation only (an
//! allowlist of fields), a one-token limit (`max_tokens: 1`, and
//! `n_predict: 1` for llama.cpp) and no streaming, and drops the answer. A
//! warming that takes longer than [`TIMEOUT_MS`] is dropped: never sent to
//! another replica, its replica not marked down. (A replica that refuses
//! the connection or answers 502/503/504 is skipped, as the real request
//! would skip it.) It does not store anything else and
//! never reports the warming's outcome to the client.
//!
//! The debounce marker is keyed on the model and the conversation only, for
//! every tenant: the upstream's prompt cache is shared too. Like every KV
//! read it is eventually consistent, so two prefetches from different
//! locations within seconds may both warm; that costs one extra prefill,
//! nothing more.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::core::config::Dialect;
use crate::core::error::Error;
use crate::core::openai::{CompletionRequest, Endpoint};

/// Prefix of every debounce marker's key.
pub(crate) const KEY_PREFIX: &str = "prefetch:v1:";
/// The path.
pub(crate) const PATH: &str = "/v1/prefetch";

/// Which generation endpoint a prefetch body is shaped for. Only looks
/// for the two fields (nothing is built); the body is parsed for real by
/// [`crate::core::openai::parse_request`].
pub(crate) fn endpoint_of(body: &[u8]) -> Endpoint {
    #[derive(serde::Deserialize)]
    struct Shape {
        prompt: Option<serde::de::IgnoredAny>,
        messages: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Shape>(body) {
        Ok(Shape {
            prompt: Some(_),
            messages: None,
        }) => Endpoint::Completions,
        _ => Endpoint::Chat,
    }
}

/// The debounce marker's key for this conversation.
pub(crate) fn key(request: &CompletionRequest) -> String {
    let body = &request.body;
    let mut hash = Sha256::new();
    hash.update(request.endpoint.path().as_bytes());
    hash.update([0]);
    for field in ["model", "messages", "prompt"] {
        if let Some(v) = body.get(field) {
            hash.update(v.to_string().as_bytes());
        }
        hash.update([0]);
    }
    format!("{KEY_PREFIX}{}", crate::core::hex(&hash.finalize()))
}

/// The fields a warm body keeps: what shapes the prompt the upstream
/// caches, nothing that shapes (or lengthens) a generation.
const WARM_FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "tools",
    "chat_template_kwargs",
];
/// How long a warming may take before it is given up (it is not sent to
/// another replica, and its replica is not marked down). A cold 1,500-token
/// prefill on the CPU test model takes ~26 s.
pub(crate) const TIMEOUT_MS: u64 = 60_000;

/// Whether a prefetch body may be warmed: an array prompt would cost one
/// prefill per item.
pub(crate) fn check(request: &CompletionRequest) -> Result<(), Error> {
    match request.body.get("prompt") {
        Some(p) if !p.is_string() => Err(Error::invalid(
            "A prefetch takes one string prompt (or chat messages).",
            Some("prompt"),
        )),
        _ => Ok(()),
    }
}

/// The body that warms the upstream: the conversation from an allowlist,
/// one token in the dialect's spelling, no stream.
pub(crate) fn warm_body(request: &CompletionRequest, dialect: Dialect) -> Vec<u8> {
    let mut body: Map<String, Value> = request
        .body
        .iter()
        .filter(|(k, _)| WARM_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    body.insert("stream".into(), Value::Bool(false));
    body.insert("max_tokens".into(), Value::from(1));
    if dialect == Dialect::LlamaCpp {
        // llama.cpp lets its own `n_predict` win over `max_tokens`.
        body.insert("n_predict".into(), Value::from(1));
    }
    serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::openai::parse_request;

    #[test]
    fn keys_and_warm_bodies() {
        let a = parse_request(
            Endpoint::Chat,
            br#"{"model":"m","stream":true,"max_tokens":300,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let b = parse_request(
            Endpoint::Chat,
            br#"{"model":"m","temperature":1,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let c = parse_request(
            Endpoint::Chat,
            br#"{"model":"m","messages":[{"role":"user","content":"hi there"}]}"#,
        )
        .unwrap();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        let warm: Value = serde_json::from_slice(&warm_body(&a, Dialect::OpenAi)).unwrap();
        assert_eq!(warm["max_tokens"], 1);
        assert_eq!(warm["stream"], false);
        assert_eq!(warm["messages"][0]["content"], "hi");
        assert_eq!(
            endpoint_of(br#"{"model":"m","prompt":"x"}"#),
            Endpoint::Completions
        );
        assert_eq!(endpoint_of(b"not json"), Endpoint::Chat);
    }
}
