//! Per-key limits in the simulated world: requests per minute and
//! generations at once, counted in a store the tests share between
//! sessions, refused with 429 and `Retry-After` before the body is read.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::*;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::quota::{Tally, ADMIT_TIMEOUT_MS};
use tokenedge::core::session::Session;

fn limited(rpm: u32, streams: u32) -> Config {
    Config {
        rate_limit_rpm: rpm,
        max_streams_per_key: streams,
        ..config()
    }
}

fn head(path: &str, key: &str) -> RequestHead {
    RequestHead::new(
        "POST",
        path,
        vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), format!("Bearer {key}")),
        ],
    )
}

/// One request's head against the shared store, as an adapter would send
/// it (the body only once asked for).
fn arrive(
    cfg: &Config,
    store: &mut HashMap<String, Tally>,
    now: u64,
    key: &str,
    body: &str,
) -> (Session, World) {
    let mut s = Session::new(cfg.clone());
    let mut w = World {
        quotas: std::mem::take(store),
        ..World::default()
    };
    s.handle_request_head(now, head("/v1/chat/completions", key));
    w.pump(&mut s, now);
    if w.body_wanted.is_some() {
        s.handle_request_body(now, Bytes::copy_from_slice(body.as_bytes()));
        w.pump(&mut s, now);
    }
    *store = std::mem::take(&mut w.quotas);
    (s, w)
}

fn refused(w: &World, code: &str) {
    assert_eq!(w.status(), 429);
    assert_eq!(w.json()["error"]["code"], code);
    assert!(
        w.body_wanted.is_none(),
        "the body of a refused request is never read"
    );
    assert!(w.upstream.is_empty());
}

#[test]
fn over_the_rate_is_429_with_retry_after_and_the_body_unread() {
    let cfg = limited(2, 0);
    let mut store = HashMap::new();
    for _ in 0..2 {
        let (_, w) = arrive(&cfg, &mut store, 1_000, "k1", CHAT_JSON);
        assert_eq!(w.upstream.len(), 1, "admitted requests go upstream");
    }
    let (s, w) = arrive(&cfg, &mut store, 1_000, "k1", CHAT_JSON);
    refused(&w, "rate_limit_exceeded");
    assert_eq!(w.header("retry-after"), Some("30"));
    assert_eq!(w.json()["error"]["type"], "requests");
    assert!(s.is_finished() && w.releases.is_empty());
    // Another key has its own allowance; the first one's comes back.
    let (_, w) = arrive(&cfg, &mut store, 1_000, "k2", CHAT_JSON);
    assert_eq!(w.upstream.len(), 1);
    let (_, w) = arrive(&cfg, &mut store, 31_000, "k1", CHAT_JSON);
    assert_eq!(w.upstream.len(), 1);
}

#[test]
fn the_record_key_names_no_api_key() {
    let cfg = limited(5, 0);
    let mut store = HashMap::new();
    let (_, w) = arrive(&cfg, &mut store, 0, "secret-key-123", CHAT_JSON);
    let (key, _) = &w.admits[0];
    assert!(
        key.starts_with("quota:") && !key.contains("secret"),
        "{key}"
    );
}

#[test]
fn generations_at_once_are_counted_until_each_ends() {
    let cfg = limited(0, 1);
    let mut store = HashMap::new();
    let (mut first, mut w1) = arrive(&cfg, &mut store, 0, "k", CHAT_STREAM);
    assert_eq!(w1.upstream.len(), 1);
    first.handle_upstream_head(1, 200, &sse_head());
    first.handle_upstream_chunk(2, Bytes::from_static(CONTENT.as_bytes()));
    w1.pump(&mut first, 2);

    let (_, w) = arrive(&cfg, &mut store, 3, "k", CHAT_STREAM);
    refused(&w, "too_many_streams");
    assert_eq!(w.header("retry-after"), Some("2"));

    // The first generation ends: its lease goes back, once.
    w1.quotas = std::mem::take(&mut store);
    first.handle_upstream_chunk(4, Bytes::from_static(FINISH.as_bytes()));
    first.handle_upstream_chunk(4, Bytes::from_static(b"data: [DONE]\n\n"));
    first.handle_upstream_end(4);
    w1.pump(&mut first, 4);
    assert!(first.is_finished());
    assert_eq!(w1.releases.len(), 1);
    store = std::mem::take(&mut w1.quotas);

    let (_, w) = arrive(&cfg, &mut store, 5, "k", CHAT_STREAM);
    assert_eq!(w.upstream.len(), 1);
}

#[test]
fn a_client_that_leaves_returns_its_lease() {
    let cfg = limited(0, 1);
    let mut store = HashMap::new();
    let (mut s, mut w) = arrive(&cfg, &mut store, 0, "k", CHAT_STREAM);
    w.quotas = std::mem::take(&mut store);
    s.handle_downstream_closed(10);
    w.pump(&mut s, 10);
    assert!(w.cancelled);
    assert_eq!(w.releases.len(), 1);
    store = std::mem::take(&mut w.quotas);
    let (_, w) = arrive(&cfg, &mut store, 11, "k", CHAT_STREAM);
    assert_eq!(w.upstream.len(), 1);
}

#[test]
fn errors_return_the_lease_too() {
    let cfg = limited(0, 1);
    let mut store = HashMap::new();
    // Refused after admission (invalid body): the lease goes back.
    let (s, w) = arrive(
        &cfg,
        &mut store,
        0,
        "k",
        r#"{"model":"m","messages":[],"n":100000}"#,
    );
    assert_eq!(w.status(), 400);
    assert!(s.is_finished());
    assert_eq!(w.releases.len(), 1);
    let (mut s, mut w) = arrive(&cfg, &mut store, 1, "k", CHAT_JSON);
    w.quotas = std::mem::take(&mut store);
    s.handle_upstream_failed(2, "connection refused");
    w.pump(&mut s, 2);
    assert_eq!(w.status(), 502);
    assert_eq!(w.releases.len(), 1);
}

#[test]
fn a_store_that_cannot_answer_lets_requests_through() {
    let cfg = limited(1, 1);
    // Unknown: at once.
    let mut s = Session::new(cfg.clone());
    let mut w = World {
        quota_down: true,
        ..World::default()
    };
    s.handle_request_head(0, head("/v1/chat/completions", "k"));
    w.pump(&mut s, 0);
    assert!(w.body_wanted.is_some());

    // Silent: after the admission timeout, and a lease that comes later
    // goes straight back.
    let mut s = Session::new(cfg);
    let mut w = World {
        quota_silent: true,
        ..World::default()
    };
    s.handle_request_head(0, head("/v1/chat/completions", "k"));
    w.pump(&mut s, 0);
    assert!(w.body_wanted.is_none());
    assert_eq!(s.poll_timeout(), Some(ADMIT_TIMEOUT_MS));
    fire_timers(&mut s, &mut w, ADMIT_TIMEOUT_MS);
    assert!(w.body_wanted.is_some(), "went on without the verdict");
    s.handle_request_body(ADMIT_TIMEOUT_MS, Bytes::from(CHAT_STREAM));
    w.pump(&mut s, ADMIT_TIMEOUT_MS);
    assert_eq!(w.upstream.len(), 1);
    w.quota_silent = false;
    w.pump(&mut s, ADMIT_TIMEOUT_MS + 50);
    assert_eq!(w.releases.len(), 1, "the late lease was returned");
    assert!(!s.is_finished(), "the generation goes on");
}

#[test]
fn a_body_given_with_the_head_waits_for_the_verdict() {
    let cfg = limited(1, 0);
    let mut store = HashMap::new();
    for expect in [200, 429] {
        let mut s = Session::new(cfg.clone());
        let mut w = World {
            quotas: std::mem::take(&mut store),
            ..World::default()
        };
        let (h, b) = post("/v1/chat/completions", CHAT_JSON);
        s.handle_request(0, h, b);
        w.pump(&mut s, 0);
        if expect == 200 {
            assert_eq!(w.upstream.len(), 1);
        } else {
            assert_eq!(w.status(), 429);
        }
        store = std::mem::take(&mut w.quotas);
    }
}

#[test]
fn a_prefetch_counts_against_the_rate_but_holds_no_lease() {
    let cfg = limited(2, 1);
    let mut s = Session::new(cfg);
    let mut w = World::default();
    s.handle_request_head(0, head("/v1/prefetch", "k"));
    w.pump(&mut s, 0);
    let (_, ask) = w.admits[0];
    assert!(!ask.lease && ask.rpm == 2);
}

#[test]
fn without_limits_the_store_is_never_asked() {
    let (_, w) = start(config(), "/v1/chat/completions", CHAT_JSON);
    assert!(w.admits.is_empty());
    assert_eq!(w.upstream.len(), 1);
}
