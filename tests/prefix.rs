//! Speculative prefixes in the simulated world: a sampled answer stores
//! its opening; the next request with the same prompt gets that opening
//! before the upstream answers, the upstream is asked to continue it, and
//! the client sees one stream whose usage adds up.

mod common;

use bytes::Bytes;
use common::*;
use serde_json::Value;
use tokenedge::core::config::{Config, Dialect, Speculate};

const SAMPLED: &str = r#"{"model":"m","messages":[{"role":"user","content":"Make a paper plane"}],"stream":true,"temperature":0.8,"max_tokens":100}"#;
const K: usize = 4;

fn speculating() -> Config {
    Config {
        speculate: Speculate::On,
        dialect: Dialect::LlamaCpp,
        prefix_tokens: K,
        ..config()
    }
}

/// Runs one sampled request to completion with `vector` as the upstream's
/// answer and returns the world (with its KV).
fn answered(kv: &std::collections::HashMap<String, Bytes>, key: &str, vector: &str) -> World {
    let (mut s, mut w) = cached_request(speculating(), kv, key, SAMPLED, &[]);
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    feed(&mut s, &mut w, vector, 10);
    assert!(w.ended);
    w
}

fn data_events(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

fn text_of(body: &str) -> String {
    data_events(body)
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn a_stored_opening_streams_before_the_upstream_and_is_continued() {
    let first = answered(&Default::default(), "k1", LLAMA_CHAT);
    assert_eq!(first.header("x-cache"), Some("miss"));
    let (key, value, _) = first
        .kv_writes
        .iter()
        .find(|(k, ..)| k.starts_with("prefix:"))
        .expect("the opening was stored");
    let stored = tokenedge::core::cache::Entry::decode(value).unwrap();
    let pieces: Vec<&str> = stored.pieces.iter().map(String::as_str).collect();
    assert_eq!(pieces, ["1", ".", " To", " create"]);
    let opening: String = pieces.concat();

    // The same prompt, sampled again: the opening goes out at t=0, before
    // the upstream has even answered.
    let (mut s, mut w) = cached_request(speculating(), &first.kv, "k1", SAMPLED, &[]);
    assert_eq!(&w.kv_reads, std::slice::from_ref(key));
    assert_eq!(w.header("x-cache"), Some("prefix"));
    assert!(w
        .header("server-timing")
        .unwrap()
        .starts_with("cache;desc=prefix"));
    assert_eq!(text_of(&w.text()), opening);
    assert!(!w.ended);
    let sent: Value = serde_json::from_slice(&w.upstream[0].body).unwrap();
    assert_eq!(sent["messages"][1]["role"], "assistant");
    assert_eq!(sent["messages"][1]["content"], opening);
    assert_eq!(sent["max_tokens"], 100 - K as u64);
    assert_eq!(sent["temperature"], 0.8);

    // The upstream continues (here: the recorded answer, as a stand-in).
    s.handle_upstream_head(50, 200, &sse_head());
    w.pump(&mut s, 50);
    feed(&mut s, &mut w, LLAMA_CHAT, 10);
    assert!(w.ended);
    let body = w.text();
    let (continued, _) = content_of(LLAMA_CHAT);
    assert_eq!(text_of(&body), format!("{opening}{continued}"));
    let events = data_events(&body);
    let roles = events
        .iter()
        .filter(|e| e["choices"][0]["delta"]["role"].is_string())
        .count();
    assert_eq!(roles, 1, "one role announcement in one seamless stream");
    let usage = &events.iter().find(|e| e["usage"].is_object()).unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 40 + K as u64);
    assert_eq!(usage["prompt_tokens"], 28 - K as u64);
    assert_eq!(usage["total_tokens"], 68);
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert!(
        w.kv_writes.iter().all(|(k, ..)| !k.starts_with("prefix:")),
        "a served prefix is not rewritten"
    );
}

#[test]
fn compact_formats_continue_too() {
    let first = answered(&Default::default(), "k1", LLAMA_CHAT);
    let (mut s, mut w) = cached_request(
        speculating(),
        &first.kv,
        "k1",
        SAMPLED,
        &[("x-tokenedge-format", "text")],
    );
    assert_eq!(w.text(), "1. To create");
    s.handle_upstream_head(50, 200, &sse_head());
    feed(&mut s, &mut w, LLAMA_CHAT, 10);
    let (continued, _) = content_of(LLAMA_CHAT);
    assert!(
        w.text().starts_with(&format!("1. To create{continued}")),
        "{}",
        w.text()
    );
}

#[test]
fn broken_answers_keys_and_kv_failures() {
    // Cut before the end: nothing stored.
    let (mut s, mut w) = cached_request(speculating(), &Default::default(), "k1", SAMPLED, &[]);
    s.handle_upstream_head(1, 200, &sse_head());
    let half: String = LLAMA_CHAT.split_inclusive("\n\n").take(10).collect();
    s.handle_upstream_chunk(2, Bytes::from(half));
    s.handle_upstream_failed(3, "reset");
    w.pump(&mut s, 3);
    assert!(w.text().contains("\"error\""));
    assert!(w.stored().is_empty(), "{:?}", w.stored());

    // Another API key does not see the first key's opening.
    let first = answered(&Default::default(), "k1", LLAMA_CHAT);
    let (_, w) = cached_request(speculating(), &first.kv, "k2", SAMPLED, &[]);
    assert!(w.head.is_none(), "went upstream");
    assert_eq!(w.upstream.len(), 1);
    let sent: Value = serde_json::from_slice(&w.upstream[0].body).unwrap();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 1);

    // A failing store is a miss, and the request is served.
    let (mut s, mut w) = {
        let mut s = tokenedge::core::session::Session::new(speculating());
        let mut w = World {
            kv: first.kv.clone(),
            kv_down: true,
            ..World::default()
        };
        let (head, body) = post("/v1/chat/completions", SAMPLED);
        s.handle_request(0, head, body);
        w.pump(&mut s, 0);
        (s, w)
    };
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    feed(&mut s, &mut w, LLAMA_CHAT, 10);
    assert_eq!(w.header("x-cache"), Some("miss"));
    assert_eq!(text_of(&w.text()), content_of(LLAMA_CHAT).0);

    // Deterministic requests use the exact cache, not a prefix.
    let exact = SAMPLED.replace("0.8", "0");
    let (_, w) = cached_request(speculating(), &first.kv, "k1", &exact, &[]);
    assert!(w.kv_reads.iter().all(|k| k.starts_with("cache:")));
}

#[test]
fn the_opening_never_exceeds_the_length_limit() {
    let first = answered(&Default::default(), "k1", LLAMA_CHAT);
    let short = SAMPLED.replace("\"max_tokens\":100", "\"max_tokens\":3");
    let (_, w) = cached_request(speculating(), &first.kv, "k1", &short, &[]);
    assert_eq!(w.header("x-cache"), Some("prefix"));
    assert_eq!(text_of(&w.text()), "1.", "two of the four stored tokens");
    let sent: Value = serde_json::from_slice(&w.upstream[0].body).unwrap();
    assert_eq!(sent["max_tokens"], 1);
    let one = SAMPLED.replace("\"max_tokens\":100", "\"max_tokens\":1");
    let (mut s, mut w) = cached_request(speculating(), &first.kv, "k1", &one, &[]);
    assert!(w.head.is_none(), "no room for an opening: a plain request");
    s.handle_upstream_head(1, 200, &sse_head());
    feed(&mut s, &mut w, LLAMA_CHAT, 10);
    assert!(
        w.stored().is_empty(),
        "and it does not replace the stored opening"
    );
}

#[test]
fn upstream_failure_after_the_prefix_is_an_error_event() {
    let first = answered(&Default::default(), "k1", LLAMA_CHAT);
    let (mut s, mut w) = cached_request(speculating(), &first.kv, "k1", SAMPLED, &[]);
    assert_eq!(w.header("x-cache"), Some("prefix"));
    s.handle_upstream_failed(5, "connection refused");
    w.pump(&mut s, 5);
    assert!(w.ended);
    let body = w.text();
    assert!(body.contains("\"error\""), "{body}");
    assert!(!body.contains("[DONE]"), "never a clean end: {body}");
}

/// `SAMPLED` with `extra` fields added.
fn sampled_with(extra: &str) -> String {
    format!("{},{extra}}}", SAMPLED.trim_end_matches('}'))
}

/// The prefix keys one request read and wrote.
fn prefix_keys(body: &str) -> (Vec<String>, Vec<String>) {
    let (mut s, mut w) = cached_request(speculating(), &Default::default(), "k1", body, &[]);
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    feed(&mut s, &mut w, LLAMA_CHAT, 10);
    assert!(w.ended);
    let is_prefix = |k: &String| k.starts_with("prefix:");
    let read = w
        .kv_reads
        .iter()
        .filter(|k| is_prefix(k))
        .cloned()
        .collect();
    let written = w
        .kv_writes
        .iter()
        .map(|(k, _, _)| k)
        .filter(|k| is_prefix(k))
        .cloned()
        .collect();
    (read, written)
}

#[test]
fn a_poisoned_opening_is_never_served() {
    // Issue 13, item 1: a key holder forcing the opening with a constrained
    // generation must neither record an opening others get nor receive one.
    for constraint in [
        r#""response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"const":"Account locked"}}}"#,
        r#""grammar":"root ::= \"Account locked\"""#,
        r#""logit_bias":{"1234":100}"#,
        r#""stop":["."]"#,
        r#""guided_regex":"Account.*""#,
        r#""tool_choice":"required""#,
    ] {
        let (read, written) = prefix_keys(&sampled_with(constraint));
        assert!(
            read.is_empty() && written.is_empty(),
            "{constraint}: {read:?} {written:?}"
        );
    }
    // A plain text response format is no constraint.
    let (read, _) = prefix_keys(&sampled_with(r#""response_format":{"type":"text"}"#));
    assert_eq!(read.len(), 1);
}

#[test]
fn the_prefix_key_covers_all_but_sampling_fields() {
    let (plain, _) = prefix_keys(SAMPLED);
    let (warmer, _) = prefix_keys(&SAMPLED.replace("0.8", "1.2"));
    let (seeded, _) = prefix_keys(&sampled_with(r#""top_k":40,"top_p":0.9"#));
    assert_eq!(plain.len(), 1);
    assert_eq!(
        plain, warmer,
        "temperature only changes how tokens are drawn"
    );
    assert_eq!(plain, seeded);
    let (templated, _) = prefix_keys(&sampled_with(
        r#""chat_template_kwargs":{"enable_thinking":true}"#,
    ));
    let (logprobs, _) = prefix_keys(&sampled_with(r#""logprobs":true"#));
    assert_ne!(
        plain, templated,
        "a field outside the allowlist changes the key"
    );
    assert_ne!(plain, logprobs);
}
