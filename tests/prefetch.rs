//! `/v1/prefetch` in the simulated world: answered at once, the warming
//! request goes to the replica the real request will use, and the same
//! prefix is not warmed twice within the window.

mod common;

use bytes::Bytes;
use common::*;
use serde_json::Value;
use tokenedge::core::config::Config;
use tokenedge::core::session::Session;

fn replicas() -> Config {
    Config {
        upstream_urls: vec!["http://a.example".into(), "http://b.example".into()],
        auth_off: true,
        ..Config::default()
    }
}

fn typing(system: &str, partial: &str) -> String {
    serde_json::json!({"model": "m", "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": partial}]})
    .to_string()
}

fn prefetch(w: &mut World, body: &str) -> Session {
    let mut s = Session::new(replicas());
    let (head, body) = post("/v1/prefetch", body);
    s.handle_request(0, head, body);
    w.pump(&mut s, 0);
    s
}

#[test]
fn answers_at_once_then_warms_the_replica_the_request_will_use() {
    let mut kv = std::collections::HashMap::new();
    for i in 0..8 {
        let system = format!("system prompt {i}");
        let mut w = World {
            kv: kv.clone(),
            ..World::default()
        };
        let mut s = prefetch(&mut w, &typing(&system, "what is the capi"));
        assert_eq!(w.status(), 202);
        assert_eq!(w.json()["status"], "accepted");
        assert!(!s.is_finished(), "the warming goes on in the background");
        assert_eq!(w.upstream.len(), 1);
        let warm = w.upstream[0].clone();
        let sent: Value = serde_json::from_slice(&warm.body).unwrap();
        assert_eq!(sent["max_tokens"], 1);
        assert_eq!(sent["stream"], false);
        assert_eq!(sent["messages"][1]["content"], "what is the capi");
        s.handle_upstream_head(900, 200, &[]);
        w.pump(&mut s, 900);
        assert!(s.is_finished());
        assert!(w.cancelled, "its answer is not needed");
        kv = w.kv.clone();

        // The real request lands on the same replica.
        let full = serde_json::json!({"model": "m", "stream": true, "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "what is the capital of France?"}]})
        .to_string();
        let (_, w2) = {
            let mut s = Session::new(replicas());
            let mut w = World::default();
            let (head, body) = post("/v1/chat/completions", &full);
            s.handle_request(1_000, head, body);
            w.pump(&mut s, 1_000);
            (s, w)
        };
        let host = |u: &str| u.split("/v1/").next().unwrap().to_owned();
        assert_eq!(
            host(&w2.upstream[0].url),
            host(&warm.url),
            "conversation {i}"
        );
    }
}

#[test]
fn the_same_prefix_is_warmed_once_per_window() {
    let body = typing("be brief", "hel");
    let mut w = World::default();
    let mut s = prefetch(&mut w, &body);
    s.handle_upstream_head(5, 200, &[]);
    w.pump(&mut s, 5);
    let (marker, _, ttl) = w.kv_writes[0].clone();
    assert!(marker.starts_with("prefetch:"));
    assert_eq!(ttl, 60);

    let mut again = World {
        kv: w.kv.clone(),
        ..World::default()
    };
    let s = prefetch(&mut again, &body);
    assert_eq!(again.status(), 202);
    assert!(again.upstream.is_empty(), "debounced");
    assert!(s.is_finished());

    // A failing store does not stop the warming.
    let mut down = World {
        kv: w.kv.clone(),
        kv_down: true,
        ..World::default()
    };
    prefetch(&mut down, &body);
    assert_eq!(down.upstream.len(), 1);
}

#[test]
fn bad_input_and_failures() {
    let mut w = World::default();
    let s = prefetch(&mut w, r#"{"messages":[]}"#);
    assert_eq!(w.status(), 400);
    assert!(w.json()["error"]["message"].is_string());
    assert!(w.kv_reads.is_empty() && w.kv_writes.is_empty() && w.upstream.is_empty());
    assert!(s.is_finished());

    // Both replicas refuse: nothing more reaches the client.
    let mut w = World::default();
    let mut s = prefetch(&mut w, &typing("x", "y"));
    s.handle_upstream_failed(5, "refused");
    w.pump(&mut s, 5);
    assert_eq!(
        w.upstream.len(),
        2,
        "the next replica, as the request would"
    );
    let answered = w.body.clone();
    s.handle_upstream_failed(6, "refused");
    s.handle_upstream_chunk(7, Bytes::from_static(b"late"));
    w.pump(&mut s, 7);
    assert!(s.is_finished());
    assert_eq!(w.status(), 202);
    assert_eq!(w.body, answered, "nothing after the 202");
}

/// Regression: the warm body kept whatever the caller sent besides the
/// length, and llama.cpp lets `n_predict: -1, ignore_eos: true` win over
/// `max_tokens`, so one 202 could buy a whole generation. It is now built
/// from an allowlist, with a one-token limit in every dialect's spelling.
#[test]
fn the_warm_body_is_the_conversation_and_one_token_only() {
    let mut w = World::default();
    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "chat_template_kwargs": {"enable_thinking": false},
        "n_predict": -1, "ignore_eos": true, "max_tokens": 500, "n": 3,
        "min_tokens": 400, "logit_bias": {"1": 100}, "stream": true,
        "response_format": {"type": "json_object"}, "grammar": "root ::= \"x\"*",
    })
    .to_string();
    let mut s = Session::new(Config {
        dialect: tokenedge::core::config::Dialect::LlamaCpp,
        ..replicas()
    });
    let (head, bytes) = post("/v1/prefetch", &body);
    s.handle_request(0, head, bytes);
    w.pump(&mut s, 0);
    assert_eq!(w.status(), 202);
    let sent: Value = serde_json::from_slice(&w.upstream[0].body).unwrap();
    let mut keys: Vec<&str> = sent
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "chat_template_kwargs",
            "max_tokens",
            "messages",
            "model",
            "n_predict",
            "stream",
            "tools"
        ]
    );
    assert_eq!(sent["max_tokens"], 1);
    assert_eq!(sent["n_predict"], 1);
    assert_eq!(sent["stream"], false);
    // Other dialects get no llama.cpp field (strict servers refuse them).
    let mut w = World::default();
    let _s = prefetch(&mut w, &body);
    let sent: Value = serde_json::from_slice(&w.upstream[0].body).unwrap();
    assert!(sent.get("n_predict").is_none() && sent.get("ignore_eos").is_none());
    assert_eq!(sent["max_tokens"], 1);
}

/// An array prompt would cost one prefill per item: a prefetch takes one
/// string prompt only.
#[test]
fn an_array_prompt_is_refused() {
    let mut w = World::default();
    let _s = prefetch(&mut w, r#"{"model":"m","prompt":["a","b","c"]}"#);
    assert_eq!(w.status(), 400);
    assert_eq!(w.json()["error"]["param"], "prompt");
    assert!(w.upstream.is_empty());
}

/// A warming that takes long is given up, not sent again to the next
/// replica, and does not mark its replica down (a slow prefill is not a
/// dead replica).
#[test]
fn a_slow_warming_is_dropped_without_fallback() {
    let mut w = World::default();
    let mut s = prefetch(&mut w, &typing("sys", "hello"));
    assert_eq!(w.upstream.len(), 1);
    fire_timers(&mut s, &mut w, 10 * 60_000);
    assert!(s.is_finished());
    assert!(w.cancelled);
    assert_eq!(w.upstream.len(), 1, "not replayed on another replica");
    assert!(w.health.is_empty(), "not marked down: {:?}", w.health);
}
