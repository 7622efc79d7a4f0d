//! Replicas in the simulated world: the request goes to its rendezvous
//! replica, falls back to the next one when that fails before its first
//! byte, never after, and the health reports the adapter keeps.

mod common;

use bytes::Bytes;
use common::*;
use tokenedge::core::config::Config;
use tokenedge::core::route::{self, Health};
use tokenedge::core::session::Session;

const A: &str = "http://a.example";
const B: &str = "http://b.example";

fn two_replicas() -> Config {
    Config {
        upstream_urls: vec![A.into(), B.into()],
        auth_off: true,
        ..Config::default()
    }
}

fn start_with(health: Health) -> (Session, World) {
    let mut s = Session::new(two_replicas()).with_health(health);
    let mut w = World::default();
    let (head, body) = post("/v1/chat/completions", CHAT_STREAM);
    s.handle_request(0, head, body);
    w.pump(&mut s, 0);
    (s, w)
}

fn replica_of(url: &str) -> &str {
    if url.starts_with(A) {
        A
    } else {
        B
    }
}

#[test]
fn connection_failure_falls_back_to_the_other_replica() {
    let (mut s, mut w) = start_with(Health::default());
    assert_eq!(w.upstream.len(), 1);
    let first = replica_of(&w.upstream[0].url).to_owned();
    s.handle_upstream_failed(5, "connection refused");
    w.pump(&mut s, 5);
    assert_eq!(w.upstream.len(), 2, "sent again");
    let second = replica_of(&w.upstream[1].url);
    assert_ne!(first, second);
    assert_eq!(w.upstream[0].body, w.upstream[1].body);
    assert_eq!(w.health, [(first.clone(), false)]);
    assert!(w.head.is_none(), "the client saw nothing of it");
    s.handle_upstream_head(10, 200, &sse_head());
    s.handle_upstream_chunk(
        11,
        Bytes::from(format!("{CONTENT}{FINISH}data: [DONE]\n\n")),
    );
    w.pump(&mut s, 11);
    assert_eq!(w.status(), 200);
    assert!(w.ended);
    assert!(w.text().contains("\"Hi\""));
}

#[test]
fn unavailable_status_falls_back_but_timeouts_and_errors_do_not() {
    // 503 (a replica still loading) moves on.
    let (mut s, mut w) = start_with(Health::default());
    s.handle_upstream_head(5, 503, &[]);
    w.pump(&mut s, 5);
    assert!(w.cancelled);
    assert_eq!(w.upstream.len(), 2);
    // The last replica's 503 is the client's answer.
    s.handle_upstream_head(6, 503, &[]);
    s.handle_upstream_end(7);
    w.pump(&mut s, 7);
    assert_eq!(w.status(), 503);
    assert_eq!(w.upstream.len(), 2);
    assert_eq!(w.health.len(), 2, "{:?}", w.health);

    // A first-byte timeout does not replay the POST elsewhere (the first
    // replica may still be generating it): 504, and that replica is marked
    // down for the requests that follow.
    let (mut s, mut w) = start_with(Health::default());
    let deadline = tokenedge::core::config::DEFAULT_FIRST_BYTE_TIMEOUT_MS;
    s.handle_timeout(deadline);
    w.pump(&mut s, deadline);
    assert_eq!(w.upstream.len(), 1);
    assert!(w.ended && w.cancelled);
    assert!(w.text().contains("upstream_timeout"), "{}", w.text());
    assert_eq!(w.health.len(), 1);
    assert!(!w.health[0].1);

    // A 400 is the same everywhere: no second try.
    let (mut s, mut w) = start_with(Health::default());
    s.handle_upstream_head(5, 400, &[]);
    s.handle_upstream_chunk(6, Bytes::from(r#"{"error":{"message":"bad"}}"#));
    s.handle_upstream_end(7);
    w.pump(&mut s, 7);
    assert_eq!(w.upstream.len(), 1);
    assert_eq!(w.status(), 400);
    assert!(w.health.is_empty());
}

#[test]
fn no_fallback_once_the_stream_started() {
    let (mut s, mut w) = start_with(Health::default());
    s.handle_upstream_head(5, 200, &sse_head());
    s.handle_upstream_chunk(6, Bytes::from(CONTENT));
    s.handle_upstream_failed(7, "reset");
    w.pump(&mut s, 7);
    assert_eq!(w.upstream.len(), 1);
    assert!(w.ended);
    assert!(w.text().contains("\"error\""), "{}", w.text());
}

#[test]
fn a_replica_known_down_is_tried_last_and_reported_up_when_it_answers() {
    let (_, w) = start_with(Health::default());
    let preferred = replica_of(&w.upstream[0].url).to_owned();
    let mut health = Health::default();
    health.report(&preferred, false, 0);
    let (mut s, mut w) = start_with(health.clone());
    assert_ne!(replica_of(&w.upstream[0].url), preferred);
    // The other one fails too: the one known down is the last resort.
    s.handle_upstream_failed(5, "refused");
    w.pump(&mut s, 5);
    assert_eq!(replica_of(&w.upstream[1].url), preferred);
    s.handle_upstream_head(6, 200, &sse_head());
    w.pump(&mut s, 6);
    assert_eq!(w.health.last(), Some(&(preferred.clone(), true)));
    // After the down time it is first again, without any report.
    let (_, w) = {
        let mut s = Session::new(two_replicas()).with_health(health);
        let mut w = World::default();
        let (head, body) = post("/v1/chat/completions", CHAT_STREAM);
        s.handle_request(route::DOWN_FOR_MS, head, body);
        w.pump(&mut s, route::DOWN_FOR_MS);
        (s, w)
    };
    assert_eq!(replica_of(&w.upstream[0].url), preferred);
}

#[test]
fn every_replica_down_is_a_502() {
    let (mut s, mut w) = start_with(Health::default());
    s.handle_upstream_failed(5, "refused");
    w.pump(&mut s, 5);
    s.handle_upstream_failed(6, "refused");
    w.pump(&mut s, 6);
    assert_eq!(w.status(), 502);
    assert_eq!(w.upstream.len(), 2);
    assert_eq!(w.json()["error"]["type"], "upstream_error");
}

/// A complete (`stream: false`) answer arrives in one piece when it is
/// done, so its wait is the whole generation: it has its own, longer
/// limit, and running out of it neither replays the request nor marks the
/// replica down.
#[test]
fn a_long_non_stream_answer_is_waited_for_and_never_replayed() {
    let mut s = Session::new(two_replicas());
    let mut w = World::default();
    let (head, body) = post("/v1/chat/completions", CHAT_JSON);
    s.handle_request(0, head, body);
    w.pump(&mut s, 0);
    let first_byte = tokenedge::core::config::DEFAULT_FIRST_BYTE_TIMEOUT_MS;
    fire_timers(&mut s, &mut w, first_byte + 1);
    assert!(!w.ended, "still generating after the first-byte limit");
    assert_eq!(w.upstream.len(), 1);
    let total = tokenedge::core::config::DEFAULT_NON_STREAM_TIMEOUT_MS;
    assert!(total > first_byte);
    fire_timers(&mut s, &mut w, total);
    assert_eq!(w.status(), 504);
    assert_eq!(w.upstream.len(), 1, "never replayed");
    assert!(w.health.is_empty(), "not marked down: {:?}", w.health);
}
