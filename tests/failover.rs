//! Mid-stream failover in the simulated world: the upstream fails at every
//! event boundary of a real captured stream, the next replica continues
//! from the text already sent, and the client sees one answer — one role
//! announcement, the whole text once, usage that counts both halves, one
//! `[DONE]`. Where a failover cannot happen, the error event as before.

mod common;

use bytes::Bytes;
use common::*;
use serde_json::Value;
use tokenedge::core::config::{Config, Dialect};
use tokenedge::core::session::Session;

fn two_replicas() -> Config {
    Config {
        upstream_urls: vec!["http://a:8081".into(), "http://b:8081".into()],
        dialect: Dialect::LlamaCpp,
        cache_ttl_secs: 0,
        ..config()
    }
}

const BODY: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100,"stream":true}"#;

fn text_of(body: &str) -> String {
    content_of(body).0
}

fn blocks(vector: &str) -> Vec<&str> {
    vector.split_inclusive("\n\n").collect()
}

/// Whether a block carries content text.
fn is_content(block: &str) -> bool {
    block
        .strip_prefix("data: ")
        .and_then(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .is_some_and(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
}

/// Streams the first `cut` blocks, fails the upstream, and returns the
/// session and world.
fn cut_at(cfg: Config, cut: usize) -> (Session, World) {
    let (mut s, mut w) = start(cfg, "/v1/chat/completions", BODY);
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    for (i, b) in blocks(LLAMA_CHAT)[..cut].iter().enumerate() {
        s.handle_upstream_chunk(2 + i as u64, Bytes::copy_from_slice(b.as_bytes()));
        w.pump(&mut s, 2 + i as u64);
    }
    s.handle_upstream_failed(500, "connection reset");
    w.pump(&mut s, 500);
    (s, w)
}

#[test]
fn a_failure_at_every_event_boundary_is_spliced_into_one_answer() {
    let all = blocks(LLAMA_CHAT);
    let (whole, _) = content_of(LLAMA_CHAT);
    // Cut after the role announcement and before the end of the content.
    let last_content = all.iter().rposition(|b| is_content(b)).unwrap();
    for cut in 2..=last_content {
        let (mut s, mut w) = cut_at(two_replicas(), cut);
        assert_eq!(w.upstream.len(), 2, "cut {cut}: asked the other replica");
        let second = &w.upstream[1];
        assert!(
            second.url.starts_with("http://b:8081")
                || w.upstream[0].url.starts_with("http://b:8081")
        );
        assert_ne!(w.upstream[0].url, second.url, "cut {cut}: another replica");
        let sent: Value = serde_json::from_slice(&second.body).unwrap();
        let messages = sent["messages"].as_array().unwrap();
        let (before, tokens) = content_of(&all[..cut].concat());
        assert_eq!(messages.last().unwrap()["role"], "assistant");
        assert_eq!(
            messages.last().unwrap()["content"],
            before.as_str(),
            "cut {cut}"
        );
        assert_eq!(sent["max_tokens"], 100 - tokens as u64, "cut {cut}");
        // The next replica continues: its own role announcement, the rest.
        s.handle_upstream_head(600, 200, &sse_head());
        w.pump(&mut s, 600);
        let rest: String = std::iter::once(all[0])
            .chain(all[cut..].iter().copied())
            .collect();
        feed(&mut s, &mut w, &rest, 1);
        assert!(w.ended && !w.aborted, "cut {cut}");
        let body = w.text();
        assert_eq!(text_of(&body), whole, "cut {cut}");
        assert_eq!(
            body.matches("\"role\":\"assistant\"").count(),
            1,
            "cut {cut}"
        );
        assert_eq!(body.matches("data: [DONE]").count(), 1, "cut {cut}");
        assert!(!body.contains("\"error\""), "cut {cut}");
        // Usage counts the first half's tokens too.
        let usage = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|v| v["usage"].is_object())
            .unwrap();
        // (The continuation's prompt holds the first half: those tokens
        // move to the completion. This vector's prompt had 28.)
        let moved = (tokens as u64).min(28);
        assert_eq!(usage["usage"]["completion_tokens"], 40 + moved, "cut {cut}");
        assert_eq!(usage["usage"]["prompt_tokens"], 28 - moved, "cut {cut}");
    }
}

#[test]
fn the_compact_end_says_the_stream_failed_over() {
    let mut headers_cfg = two_replicas();
    headers_cfg.debug_headers = false;
    let (mut s, mut w) = streaming_with(
        headers_cfg,
        &[
            ("authorization", "Bearer k"),
            ("x-tokenedge-format", "compact"),
        ],
    );
    let all = blocks(LLAMA_CHAT);
    for (i, b) in all[..6].iter().enumerate() {
        s.handle_upstream_chunk(2 + i as u64, Bytes::copy_from_slice(b.as_bytes()));
        w.pump(&mut s, 2 + i as u64);
    }
    s.handle_upstream_end(100);
    w.pump(&mut s, 100);
    assert_eq!(
        w.upstream.len(),
        2,
        "an end without a finish fails over too"
    );
    s.handle_upstream_head(101, 200, &sse_head());
    let rest: String = std::iter::once(all[0])
        .chain(all[6..].iter().copied())
        .collect();
    feed(&mut s, &mut w, &rest, 1);
    let body = w.text();
    assert!(body.contains("\"failovers\":1"), "{body}");
    assert!(body.contains("event: done"), "{body}");
}

#[test]
fn where_no_failover_can_happen_the_error_event_ends_the_stream() {
    // The budget is spent: the second replica fails too.
    let (mut s, mut w) = cut_at(two_replicas(), 5);
    s.handle_upstream_head(600, 200, &sse_head());
    s.handle_upstream_chunk(601, Bytes::from(blocks(LLAMA_CHAT)[0]));
    s.handle_upstream_failed(602, "reset again");
    w.pump(&mut s, 602);
    assert_eq!(w.upstream.len(), 2);
    assert!(w.ended && w.text().contains("upstream_stream_broken"));
    assert!(!w.text().contains("[DONE]"));

    let one = Config {
        upstream_urls: vec!["http://a:8081".into()],
        ..two_replicas()
    };
    let no_budget = Config {
        failover_budget: 0,
        ..two_replicas()
    };
    let openai_chat = Config {
        dialect: Dialect::OpenAi,
        ..two_replicas()
    };
    for (name, cfg) in [
        ("one replica", one),
        ("no budget", no_budget),
        ("openai dialect", openai_chat),
    ] {
        let (_, w) = cut_at(cfg, 5);
        assert_eq!(w.upstream.len(), 1, "{name}");
        assert!(
            w.ended && w.text().contains("upstream_stream_broken"),
            "{name}"
        );
        assert!(!w.text().contains("[DONE]"), "{name}");
    }

    // A tool call under way is never spliced.
    let tools = include_str!("vectors/openai_tool_calls.sse");
    let (mut s, mut w) = start(two_replicas(), "/v1/chat/completions", BODY);
    s.handle_upstream_head(1, 200, &sse_head());
    for b in blocks(tools).iter().take(4) {
        s.handle_upstream_chunk(2, Bytes::copy_from_slice(b.as_bytes()));
    }
    s.handle_upstream_failed(3, "reset");
    w.pump(&mut s, 3);
    assert_eq!(
        w.upstream.len(),
        1,
        "no continuation inside tool-call arguments"
    );
    assert!(w.text().contains("upstream_stream_broken"));
}

/// Regression (found by fuzzing the session): an idle upstream failed over
/// at the moment the keep-alive was due, and the keep-alive stayed due.
#[test]
fn a_failover_on_idle_leaves_no_timer_due() {
    let cfg = Config {
        idle_timeout_ms: 15_000,
        keepalive_interval_ms: 15_000,
        // The idle limit, not the rate, fails it over.
        min_tokens_per_sec: 0,
        ..two_replicas()
    };
    let (mut s, mut w) = start(cfg, "/v1/chat/completions", BODY);
    s.handle_upstream_head(1, 200, &sse_head());
    s.handle_upstream_chunk(1, Bytes::from(blocks(LLAMA_CHAT)[1]));
    w.pump(&mut s, 1);
    let due = s.poll_timeout().unwrap();
    s.handle_timeout(due);
    w.pump(&mut s, due);
    assert_eq!(w.upstream.len(), 2, "the silent replica was failed over");
    assert!(
        s.poll_timeout().is_none_or(|t| t > due),
        "a timer stayed due"
    );
}

#[test]
fn an_answer_that_finished_is_never_continued() {
    let all = blocks(LLAMA_CHAT);
    let finish = all
        .iter()
        .position(|b| {
            b.contains("\"finish_reason\":\"length\"") || b.contains("\"finish_reason\":\"stop\"")
        })
        .unwrap();
    let (_, w) = cut_at(two_replicas(), finish + 1);
    assert_eq!(
        w.upstream.len(),
        1,
        "the finished answer went to another replica"
    );
}

/// Streams the vector's blocks, block `i` at `at(i)` ms, firing timers in
/// between, until a second upstream request is sent or the blocks run
/// out. Returns the session, world, and the blocks fed.
fn paced(cfg: Config, at: impl Fn(usize) -> u64) -> (Session, World, usize) {
    let (mut s, mut w) = start(cfg, "/v1/chat/completions", BODY);
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    let all = blocks(LLAMA_CHAT);
    for (i, b) in all.iter().enumerate() {
        let t = at(i);
        fire_timers(&mut s, &mut w, t);
        if w.upstream.len() > 1 {
            return (s, w, i);
        }
        s.handle_upstream_chunk(t, Bytes::copy_from_slice(b.as_bytes()));
        w.pump(&mut s, t);
    }
    (s, w, all.len())
}

#[test]
fn a_stream_slower_than_the_minimum_rate_fails_over() {
    let cfg = Config {
        min_tokens_per_sec: 1,
        stall_secs: 10,
        idle_timeout_ms: 120_000,
        ..two_replicas()
    };
    // Steady at 2 events per second: never stalled.
    let (_, w, fed) = paced(cfg.clone(), |i| 2 + 500 * i as u64);
    assert_eq!(w.upstream.len(), 1, "a steady stream stays");
    assert_eq!(fed, blocks(LLAMA_CHAT).len());
    // Five quick events, then one every 3 s (under 1/s, never idle long
    // enough for the idle timeout): the next replica continues from the
    // text so far, within one window of the slowdown.
    let slow = |i: usize| match i {
        0..5 => 2 + i as u64,
        _ => 2 + 4 + 3_000 * (i as u64 - 4),
    };
    let (mut s, mut w, fed) = paced(cfg.clone(), slow);
    assert_eq!(w.upstream.len(), 2, "the stalled stream failed over");
    assert!(w.cancelled, "the stalled upstream was cancelled");
    assert!(fed <= 9, "within a window: {fed} blocks");
    let sent: Value = serde_json::from_slice(&w.upstream[1].body).unwrap();
    let (before, _) = content_of(&blocks(LLAMA_CHAT)[..fed].concat());
    let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"], before.as_str());
    let all = blocks(LLAMA_CHAT);
    s.handle_upstream_head(40_000, 200, &sse_head());
    let rest: String = std::iter::once(all[0])
        .chain(all[fed..].iter().copied())
        .collect();
    feed(&mut s, &mut w, &rest, 1);
    assert_eq!(text_of(&w.text()), content_of(LLAMA_CHAT).0);
    // With one replica (or the rule off) a slow stream goes on as it is.
    let one = Config {
        upstream_urls: vec!["http://a:8081".into()],
        ..cfg.clone()
    };
    let off = Config {
        min_tokens_per_sec: 0,
        ..cfg
    };
    for cfg in [one, off] {
        let (_, w, fed) = paced(cfg, slow);
        assert_eq!(w.upstream.len(), 1);
        assert_eq!(fed, blocks(LLAMA_CHAT).len());
        assert!(!w.text().contains("error"));
    }
}

#[test]
fn an_error_event_or_a_broken_finish_mid_answer_is_continued_elsewhere() {
    let all = blocks(LLAMA_CHAT);
    let (whole, _) = content_of(LLAMA_CHAT);
    let last_content = all.iter().rposition(|b| is_content(b)).unwrap();
    let breaks = [
        "data: {\"error\":{\"message\":\"slot crashed\",\"type\":\"server_error\"}}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"error\"}]}\n\ndata: [DONE]\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"abort\"}]}\n\n",
    ];
    for brk in breaks {
        for cut in 2..=last_content {
            let (mut s, mut w) = start(two_replicas(), "/v1/chat/completions", BODY);
            s.handle_upstream_head(1, 200, &sse_head());
            for (i, b) in all[..cut].iter().enumerate() {
                s.handle_upstream_chunk(2 + i as u64, Bytes::copy_from_slice(b.as_bytes()));
            }
            s.handle_upstream_chunk(100, Bytes::from(brk));
            w.pump(&mut s, 100);
            assert_eq!(w.upstream.len(), 2, "{brk} at {cut}: continued elsewhere");
            assert!(
                w.cancelled,
                "{brk} at {cut}: the broken upstream is dropped"
            );
            s.handle_upstream_head(600, 200, &sse_head());
            let rest: String = std::iter::once(all[0])
                .chain(all[cut..].iter().copied())
                .collect();
            feed(&mut s, &mut w, &rest, 1);
            let body = w.text();
            assert!(w.ended && !w.aborted, "{brk} at {cut}");
            assert_eq!(text_of(&body), whole, "{brk} at {cut}");
            assert!(!body.contains("error"), "{brk} at {cut}: {body}");
            assert_eq!(body.matches("data: [DONE]").count(), 1, "{brk} at {cut}");
            assert_eq!(body.matches("\"role\":\"assistant\"").count(), 1);
        }
        // With one replica the event goes out as it came, then the error.
        let one = Config {
            upstream_urls: vec!["http://a:8081".into()],
            ..two_replicas()
        };
        let (mut s, mut w) = start(one, "/v1/chat/completions", BODY);
        s.handle_upstream_head(1, 200, &sse_head());
        for b in &all[..5] {
            s.handle_upstream_chunk(2, Bytes::copy_from_slice(b.as_bytes()));
        }
        s.handle_upstream_chunk(3, Bytes::from(brk));
        s.handle_upstream_end(4);
        w.pump(&mut s, 4);
        let body = w.text();
        assert_eq!(w.upstream.len(), 1);
        let first_line = brk.lines().next().unwrap();
        assert!(body.contains(first_line), "{brk}: {body}");
        assert!(body.contains("upstream_stream_broken"), "{body}");
        assert!(!body.contains("data: [DONE]"), "{body}");
        // The budget spent, a second break goes out as it came too.
        let (mut s, mut w) = start(two_replicas(), "/v1/chat/completions", BODY);
        s.handle_upstream_head(1, 200, &sse_head());
        s.handle_upstream_chunk(2, Bytes::copy_from_slice(all[..5].concat().as_bytes()));
        s.handle_upstream_chunk(3, Bytes::from(brk));
        s.handle_upstream_head(4, 200, &sse_head());
        s.handle_upstream_chunk(5, Bytes::copy_from_slice(all[..1].concat().as_bytes()));
        s.handle_upstream_chunk(6, Bytes::from(brk));
        s.handle_upstream_end(7);
        w.pump(&mut s, 7);
        let body = w.text();
        assert_eq!(w.upstream.len(), 2);
        assert_eq!(body.matches(first_line).count(), 1, "{brk}: {body}");
        assert!(body.contains("upstream_stream_broken"), "{body}");
        assert!(!body.contains("data: [DONE]"), "{body}");
    }
}
