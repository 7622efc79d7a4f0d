//! Resumable streams in the simulated world: a writer that keeps its
//! stream's record in the world's KV, readers that reattach at every event
//! boundary, follow a live stream, or find it gone; a client that leaves
//! and a generation that goes on for its grace period; cancels; bad ids
//! and cursors.

mod common;

use bytes::Bytes;
use common::*;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::Session;

fn resumable() -> Config {
    Config {
        resume: true,
        cache_ttl_secs: 0,
        ..config()
    }
}

/// A streamed chat request by `key`, its upstream answering at t=1.
fn writer(cfg: Config, key: &str, format: &str) -> (Session, World) {
    let mut s = Session::new(cfg);
    let mut w = World::default();
    let mut head = RequestHead::new(
        "POST",
        "/v1/chat/completions",
        vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), format!("Bearer {key}")),
            ("x-tokenedge-format".into(), format.into()),
        ],
    );
    head.nonce = [7; 16];
    s.handle_request(0, head, Bytes::from(CHAT_STREAM));
    w.pump(&mut s, 0);
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    (s, w)
}

/// `GET /v1/streams/{id}` (or a cancel) by `key` at `now`, with the
/// writer's store.
fn reader(
    cfg: Config,
    kv: &World,
    now: u64,
    method: &str,
    path: &str,
    key: &str,
    extra: &[(&str, &str)],
) -> (Session, World) {
    let mut headers = vec![("authorization".to_string(), format!("Bearer {key}"))];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut s = Session::new(cfg);
    let mut w = World {
        kv: kv.kv.clone(),
        ..World::default()
    };
    s.handle_request(now, RequestHead::new(method, path, headers), Bytes::new());
    w.pump(&mut s, now);
    (s, w)
}

fn id_of(w: &World) -> String {
    w.header("x-tokenedge-stream")
        .expect("a stream id")
        .to_owned()
}

/// The SSE events of a body: (id, the block without its id line).
fn events(body: &str) -> Vec<(Option<u64>, String)> {
    body.split_inclusive("\n\n")
        .map(|block| {
            let id = block
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .map(|n| n.parse().unwrap());
            let rest: String = block
                .split_inclusive('\n')
                .filter(|l| !l.starts_with("id: "))
                .collect();
            (id, rest)
        })
        .collect()
}

/// An event without the final event's `stats` (each reader's own timing).
fn without_stats(event: &(Option<u64>, String)) -> String {
    match event.1.split_once("\"stats\"") {
        Some((before, _)) => before.to_owned(),
        None => event.1.clone(),
    }
}

#[test]
fn every_event_is_numbered_and_a_reader_at_any_boundary_gets_exactly_the_rest() {
    for format in ["openai", "compact"] {
        let (mut s, mut w) = writer(resumable(), "k1", format);
        let id = id_of(&w);
        assert!(id.starts_with("st_") && id.len() == 35, "{id}");
        feed(&mut s, &mut w, LLAMA_CHAT, 10);
        assert!(s.is_finished() && w.ended);
        let whole = events(&w.text());
        let ids: Vec<u64> = whole.iter().filter_map(|(i, _)| *i).collect();
        assert!(ids.len() > 10, "{format}: {ids:?}");
        assert!(ids.windows(2).all(|p| p[0] < p[1]), "{format}: {ids:?}");
        let last = *ids.last().unwrap();
        for cursor in 0..=last {
            let path = format!("/v1/streams/{id}");
            let n = cursor.to_string();
            let (r, rw) = reader(
                resumable(),
                &w,
                60_000,
                "GET",
                &path,
                "k1",
                &[("last-event-id", &n), ("x-tokenedge-format", format)],
            );
            assert!(r.is_finished() && rw.ended, "{format} after {cursor}");
            assert_eq!(rw.status(), 200);
            assert_eq!(rw.header("x-tokenedge-stream"), Some(id.as_str()));
            // What the first client had through `cursor`, then the rest.
            let had: Vec<_> = whole
                .iter()
                .take_while(|(i, _)| i.is_none_or(|i| i <= cursor))
                .filter(|(i, _)| i.is_some())
                .cloned()
                .collect();
            let rest = events(&rw.text());
            let mut joined = had.clone();
            joined.extend(rest.iter().cloned());
            let numbered: Vec<_> = whole.iter().filter(|(i, _)| i.is_some()).cloned().collect();
            let got: Vec<_> = joined
                .iter()
                .filter(|(i, _)| i.is_some())
                .cloned()
                .collect();
            assert_eq!(got, numbered, "{format} after {cursor}");
            assert_eq!(
                rest.last().map(without_stats),
                whole.last().map(without_stats),
                "{format}: the same end"
            );
        }
    }
}

#[test]
fn a_reader_follows_a_live_stream_to_its_end() {
    let (mut s, mut w) = writer(resumable(), "k1", "openai");
    let id = id_of(&w);
    let blocks: Vec<&str> = LLAMA_CHAT.split_inclusive("\n\n").collect();
    let half = blocks.len() / 2;
    let mut t = 2;
    for b in &blocks[..half] {
        s.handle_upstream_chunk(t, Bytes::copy_from_slice(b.as_bytes()));
        w.pump(&mut s, t);
        t += 300;
        fire_timers(&mut s, &mut w, t);
    }
    let path = format!("/v1/streams/{id}");
    let (mut r, mut rw) = reader(resumable(), &w, t, "GET", &path, "k1", &[]);
    assert_eq!(rw.status(), 200);
    assert!(!r.is_finished(), "it follows the live stream");
    for b in &blocks[half..] {
        s.handle_upstream_chunk(t, Bytes::copy_from_slice(b.as_bytes()));
        w.pump(&mut s, t);
        t += 300;
        fire_timers(&mut s, &mut w, t);
        rw.kv = w.kv.clone();
        fire_timers(&mut r, &mut rw, t);
    }
    s.handle_upstream_end(t);
    w.pump(&mut s, t);
    rw.kv = w.kv.clone();
    fire_timers(&mut r, &mut rw, t + 1_000);
    assert!(r.is_finished() && rw.ended);
    assert_eq!(events(&rw.text()), events(&w.text()), "the same stream");
    // It told the writer it was there.
    assert!(rw.kv_writes.iter().any(|(k, ..)| k.ends_with(":reader")));
}

#[test]
fn a_generation_whose_client_left_goes_on_until_its_grace_runs_out() {
    let cfg = resumable();
    let grace_ms = cfg.resume_grace_secs * 1000;
    let (mut s, mut w) = writer(cfg.clone(), "k1", "compact");
    let id = id_of(&w);
    s.handle_upstream_chunk(2, Bytes::from(CONTENT));
    w.pump(&mut s, 2);
    let sent = w.body.len();
    s.handle_downstream_closed(3);
    w.pump(&mut s, 3);
    assert!(
        !s.is_finished() && !w.cancelled,
        "it goes on without its client"
    );
    s.handle_upstream_chunk(4, Bytes::from(CONTENT));
    w.pump(&mut s, 4);
    assert_eq!(w.body.len(), sent, "nothing more is written to the client");
    fire_timers(&mut s, &mut w, 3 + grace_ms - 1);
    assert!(!w.cancelled);
    // A reader came back: another grace period.
    w.kv.insert(format!("stream:v1:{id}:reader"), Bytes::from_static(b"1"));
    fire_timers(&mut s, &mut w, 3 + grace_ms);
    assert!(!w.cancelled, "a reader was here");
    w.kv.remove(&format!("stream:v1:{id}:reader"));
    fire_timers(&mut s, &mut w, 3 + 2 * grace_ms);
    assert!(w.cancelled && s.is_finished(), "nobody came back");
    // A later read replays both pieces and the cancelled end.
    let path = format!("/v1/streams/{id}");
    let (_, rw) = reader(
        cfg,
        &w,
        3 + 2 * grace_ms,
        "GET",
        &path,
        "k1",
        &[("x-tokenedge-format", "compact")],
    );
    let body = rw.text();
    assert_eq!(body.matches("data: \"Hi\"").count(), 2, "{body}");
    assert!(body.contains("\"finish_reason\":\"cancelled\""), "{body}");
}

#[test]
fn without_resume_there_is_no_stream_and_a_client_that_leaves_cancels() {
    let cfg = Config {
        resume: false,
        ..resumable()
    };
    let (mut s, mut w) = writer(cfg.clone(), "k1", "openai");
    assert_eq!(w.header("x-tokenedge-stream"), None);
    s.handle_upstream_chunk(2, Bytes::from(CONTENT));
    w.pump(&mut s, 2);
    assert!(!w.text().contains("id: "));
    s.handle_downstream_closed(3);
    w.pump(&mut s, 3);
    assert!(w.cancelled && s.is_finished());
    let (_, rw) = reader(
        cfg,
        &w,
        4,
        "GET",
        &format!("/v1/streams/st_{}", "07".repeat(16)),
        "k1",
        &[],
    );
    assert_eq!(rw.status(), 404);
}

#[test]
fn a_cancel_mark_stops_the_generation_and_its_client_gets_the_cancelled_end() {
    let (mut s, mut w) = writer(resumable(), "k1", "openai");
    let id = id_of(&w);
    s.handle_upstream_chunk(2, Bytes::from(CONTENT));
    w.pump(&mut s, 2);
    let cancel = format!("/v1/streams/{id}/cancel");
    // Another key's cancel is refused and marks nothing.
    let (_, cw) = reader(resumable(), &w, 3, "POST", &cancel, "k2", &[]);
    assert_eq!(cw.status(), 404);
    assert!(cw.kv_writes.is_empty());
    let (_, cw) = reader(resumable(), &w, 3, "POST", &cancel, "k1", &[]);
    assert_eq!(cw.status(), 202);
    assert_eq!(cw.json()["status"], "cancelling");
    w.kv = cw.kv.clone();
    fire_timers(&mut s, &mut w, 3 + 500);
    assert!(w.cancelled && w.ended && s.is_finished());
    let body = w.text();
    assert!(body.contains("\"finish_reason\":\"cancelled\""), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let (_, cw) = reader(resumable(), &w, 4_000, "POST", &cancel, "k1", &[]);
    assert_eq!(
        (cw.status(), cw.json()["status"].as_str()),
        (200, Some("cancelled"))
    );
}

#[test]
fn a_reader_whose_writer_stopped_writing_gets_an_error_not_an_end() {
    let (mut s, mut w) = writer(resumable(), "k1", "openai");
    let id = id_of(&w);
    s.handle_upstream_chunk(2, Bytes::from(CONTENT));
    w.pump(&mut s, 2);
    // The writer is gone (its instance died): its record stays as it was.
    let path = format!("/v1/streams/{id}");
    let (mut r, mut rw) = reader(resumable(), &w, 100, "GET", &path, "k1", &[]);
    assert!(!r.is_finished());
    fire_timers(&mut r, &mut rw, 10_000);
    assert!(r.is_finished() && rw.ended);
    let body = rw.text();
    assert!(body.contains("upstream_stream_broken"), "{body}");
    assert!(!body.contains("[DONE]"), "{body}");
}

/// A path, a key, extra headers, and the status and code they get.
type Refusal<'a> = (String, &'a str, Vec<(&'a str, String)>, u16, &'a str);

#[test]
fn unknown_foreign_and_malformed_ids_and_cursors_are_refused() {
    let (mut s, mut w) = writer(resumable(), "k1", "openai");
    let id = id_of(&w);
    feed(&mut s, &mut w, LLAMA_CHAT, 10);
    let last = events(&w.text())
        .iter()
        .filter_map(|(i, _)| *i)
        .max()
        .unwrap();
    let stream = format!("/v1/streams/{id}");
    let cases: Vec<Refusal> = vec![
        (
            format!("/v1/streams/st_{}", "0".repeat(32)),
            "k1",
            vec![],
            404,
            "stream_not_found",
        ),
        (
            "/v1/streams/nope".into(),
            "k1",
            vec![],
            404,
            "stream_not_found",
        ),
        (stream.clone(), "k2", vec![], 404, "stream_not_found"),
        (
            format!("{stream}?after=x"),
            "k1",
            vec![],
            400,
            "invalid_request",
        ),
        (
            stream.clone(),
            "k1",
            vec![("last-event-id", "-3".into())],
            400,
            "invalid_request",
        ),
        (
            stream.clone(),
            "k1",
            vec![("last-event-id", (last + 1).to_string())],
            400,
            "invalid_request",
        ),
    ];
    for (path, key, headers, status, code) in cases {
        let extra: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (r, rw) = reader(resumable(), &w, 60_000, "GET", &path, key, &extra);
        assert!(r.is_finished());
        assert_eq!(rw.status(), status, "{path} {key}");
        assert_eq!(rw.json()["error"]["code"], code, "{path} {key}");
        assert!(rw.kv_writes.is_empty(), "{path}: nothing written");
    }
    // The store does not answer: 503, retryable.
    let mut s = Session::new(resumable());
    let mut w2 = World::default();
    let head = RequestHead::new(
        "GET",
        &stream,
        vec![("authorization".into(), "Bearer k1".into())],
    );
    s.handle_request(0, head, Bytes::new());
    while s.poll_action().is_some() {}
    fire_timers(&mut s, &mut w2, 5_000);
    assert_eq!(w2.status(), 503);
    assert_eq!(w2.json()["error"]["retryable"], true);
}
