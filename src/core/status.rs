//! Status events: what a stream's client is told while it would otherwise
//! see nothing (the upstream has the request but has not answered, or is
//! reading the prompt), so an app can show more than a spinner.
//!
//! | phase        | when                                                        |
//! |--------------|-------------------------------------------------------------|
//! | `waiting`    | the upstream was asked and has not answered                 |
//! | `prefill`    | it answered and is reading the prompt (`progress` if told)  |
//! | `generating` | text came (only in keep-alives: the text says it first)     |
//!
//! Each carries `elapsed_ms` since the request arrived. How each format
//! writes one is `Format::write_status`: an `event: status` in `compact`, a
//! `{"status":{...}}` line in `ndjson`, an SSE comment in `openai` (the
//! official SDKs skip comments, so nothing a client parses changes), and
//! nothing in `text`.
//!
//! Prefill progress comes from llama.cpp's server, which sends chunks with
//! `prompt_progress: {total, cache, processed, time_ms}` while it reads a
//! prompt when asked with `"return_progress": true` (the session asks
//! when `UPSTREAM_DIALECT` is `llama.cpp`). Those chunks are status, never
//! content: they are not forwarded, numbered, logged or cached.

use std::sync::LazyLock;

use memchr::memmem;
use serde::{Deserialize, Serialize};

/// After this long without an upstream answer (or, once it answered,
/// without text), the client is told the phase it is in.
pub(crate) const STATUS_DELAY_MS: u64 = 250;

/// Where a stream is, as its client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Stage {
    Waiting,
    Prefill,
    Generating,
}

/// How far the upstream is through the prompt (tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Progress {
    /// Tokens in the prompt.
    pub(crate) total: u64,
    /// Of them, found in the upstream's prompt cache.
    pub(crate) cached: u64,
    /// Of them, read so far (cached ones included).
    pub(crate) processed: u64,
}

/// One status event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Status {
    pub(crate) phase: Stage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) progress: Option<Progress>,
    pub(crate) elapsed_ms: u64,
}

/// The prefill progress a chunk reports, when it is a progress chunk and
/// carries no content (its role announcement aside).
pub(crate) fn progress_of(data: &str) -> Option<Progress> {
    #[derive(Deserialize)]
    struct Chunk {
        prompt_progress: Option<Raw>,
    }
    #[derive(Deserialize)]
    struct Raw {
        total: u64,
        #[serde(default)]
        cache: u64,
        processed: u64,
    }
    // Cheap first: nearly every chunk is not one. A searcher made once
    // (`str::contains` makes one per call, and has no fast path in wasm).
    static KEY: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new("\"prompt_progress\""));
    KEY.find(data.as_bytes())?;
    let raw = serde_json::from_str::<Chunk>(data).ok()?.prompt_progress?;
    let facts = crate::core::openai::inspect_chunk(data);
    if facts.has_content || facts.finished() || facts.has_usage || facts.is_error {
        return None;
    }
    Some(Progress {
        total: raw.total,
        cached: raw.cache.min(raw.total),
        processed: raw.processed.min(raw.total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_progress_chunks() {
        // Captured from the local llama.cpp server.
        let chat = r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"created":1796077379,"id":"chatcmpl-yg0O","model":"-","object":"chat.completion.chunk","prompt_progress":{"total":571,"cache":0,"processed":120,"time_ms":1200}}"#;
        assert_eq!(
            progress_of(chat),
            Some(Progress {
                total: 571,
                cached: 0,
                processed: 120
            })
        );
        let completion = r#"{"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":null}],"object":"text_completion","prompt_progress":{"total":181,"cache":180,"processed":181,"time_ms":21}}"#;
        assert_eq!(progress_of(completion).map(|p| p.cached), Some(180));
    }

    #[test]
    fn chunks_that_are_not_only_progress() {
        let content = r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}],"prompt_progress":{"total":5,"cache":0,"processed":5}}"#;
        assert_eq!(progress_of(content), None);
        let plain = r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#;
        assert_eq!(progress_of(plain), None);
        let mangled = r#"{"choices":[],"prompt_progress":{"total":"many"}}"#;
        assert_eq!(progress_of(mangled), None);
        let text = r#""prompt_progress""#;
        assert_eq!(progress_of(text), None);
    }

    #[test]
    fn serialised_shape() {
        let s = Status {
            phase: Stage::Prefill,
            progress: Some(Progress {
                total: 10,
                cached: 2,
                processed: 4,
            }),
            elapsed_ms: 7,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"phase":"prefill","progress":{"total":10,"cached":2,"processed":4},"elapsed_ms":7}"#
        );
        let w = Status {
            phase: Stage::Waiting,
            progress: None,
            elapsed_ms: 0,
        };
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"phase":"waiting","elapsed_ms":0}"#
        );
    }
}
