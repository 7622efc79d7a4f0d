//! Resumable streams in the simulated world: a writer that keeps its
//! stream's record in the world's KV, readers that reattach at every event
//! boundary, follow a live stream, or find it gone; a client that leaves
//! and a generation that goes on for its grace period; cancels; bad ids
//! and cursors.

mod common;

use bytes::Bytes;
use common::*;
use serde_json::Value;
use tokenedge::core::config::{Config, Dialect};
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
/// The stream's events with their ids; status events and comments, which
/// are never replayed, left out.
fn events(body: &str) -> Vec<(Option<u64>, String)> {
    body.split_inclusive("\n\n")
        .filter(|block| !block.starts_with(':') && !block.starts_with("event: status\n"))
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

/// The text a body of `format` carries: openai chunks' content, or the
/// compact format's text events.
fn text_in(body: &str) -> String {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .map(|v| match v {
            Value::String(s) => s,
            v => v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
        .collect()
}

#[test]
fn a_reader_finishes_a_lost_generation_by_continuation_at_every_event_boundary() {
    let cfg = Config {
        dialect: Dialect::LlamaCpp,
        ..resumable()
    };
    let all: Vec<&str> = LLAMA_CHAT.split_inclusive("\n\n").collect();
    let (whole, _) = content_of(LLAMA_CHAT);
    let last_content = all.iter().rposition(|b| content_of(b).1 > 0).unwrap();
    for format in ["openai", "compact"] {
        for cut in 0..=last_content {
            let (mut s, mut w) = writer(cfg.clone(), "k1", format);
            let id = id_of(&w);
            let mut t = 2;
            for b in &all[..cut] {
                s.handle_upstream_chunk(t, Bytes::copy_from_slice(b.as_bytes()));
                w.pump(&mut s, t);
                t += 1;
            }
            fire_timers(&mut s, &mut w, t + 1_000);
            // The writer's instance is gone: its record stays as it was.
            drop(s);
            let had = events(&w.text());
            // Half the readers had everything the first client got, the
            // others nothing.
            let cursor = match cut % 2 {
                0 => had.iter().filter_map(|(i, _)| *i).max().unwrap_or(0),
                _ => 0,
            };
            let before: String = had
                .iter()
                .filter(|(i, _)| i.is_some_and(|i| i <= cursor))
                .map(|(_, b)| b.as_str())
                .collect();
            let mut t = 20_000;
            let path = format!("/v1/streams/{id}");
            let n = cursor.to_string();
            let extra = [
                ("last-event-id", n.as_str()),
                ("x-tokenedge-format", format),
            ];
            let (mut r, mut rw) = reader(cfg.clone(), &w, t, "GET", &path, "k1", &extra);
            assert_eq!(rw.status(), 200, "{format} cut {cut}");
            assert_eq!(rw.upstream.len(), 1, "{format} cut {cut}: a continuation");
            let sent: Value = serde_json::from_slice(&rw.upstream[0].body).unwrap();
            let (so_far, _) = content_of(&all[..cut].concat());
            let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
            match so_far.is_empty() {
                true => assert_eq!(last["role"], "user", "{format} cut {cut}"),
                false => {
                    assert_eq!(last["role"], "assistant", "{format} cut {cut}");
                    assert_eq!(last["content"], so_far.as_str(), "{format} cut {cut}");
                }
            }
            // The record is fresh again: another reader would follow it.
            let head_at = rw
                .kv_writes
                .iter()
                .rev()
                .find(|(k, ..)| *k == format!("stream:v1:{id}"));
            assert!(head_at.is_some(), "{format} cut {cut}: the record written");
            // The replica continues: its own role announcement, the rest.
            t += 1;
            r.handle_upstream_head(t, 200, &sse_head());
            rw.pump(&mut r, t);
            // (From the start when nothing was streamed.)
            let rest = all[..1.min(cut)].iter().chain(&all[cut..]);
            for b in rest {
                t += 1;
                r.handle_upstream_chunk(t, Bytes::copy_from_slice(b.as_bytes()));
                rw.pump(&mut r, t);
            }
            r.handle_upstream_end(t);
            rw.pump(&mut r, t);
            fire_timers(&mut r, &mut rw, t + 1_000);
            assert!(
                r.is_finished() && rw.ended && !rw.aborted,
                "{format} cut {cut}"
            );
            let body = rw.text();
            assert!(!body.contains("\"error\""), "{format} cut {cut}: {body}");
            let got = format!("{}{}", text_in(&before), text_in(&body));
            assert_eq!(got, whole, "{format} cut {cut}");
            let ids: Vec<u64> = events(&body).iter().filter_map(|(i, _)| *i).collect();
            assert!(
                ids.first().is_none_or(|i| *i > cursor),
                "{format} cut {cut}: {ids:?}"
            );
            assert!(
                ids.windows(2).all(|p| p[0] < p[1]),
                "{format} cut {cut}: {ids:?}"
            );
            // The record goes on from where it stopped: read whole later,
            // it is one answer.
            let (_, later) = reader(cfg.clone(), &rw, t + 2_000, "GET", &path, "k1", &extra[1..]);
            let replay = later.text();
            assert_eq!(text_in(&replay), whole, "{format} cut {cut}");
            if format == "openai" {
                let roles = replay.matches("\"role\":\"assistant\"").count();
                assert_eq!(roles, 1, "cut {cut}: {replay}");
                assert_eq!(replay.matches("data: [DONE]").count(), 1, "cut {cut}");
            }
        }
    }
}

#[test]
fn a_lost_generation_that_cannot_be_continued_ends_its_readers_with_the_error() {
    // A dialect that does not continue a chat answer.
    let cfg = resumable();
    let (mut s, mut w) = writer(cfg.clone(), "k1", "openai");
    let id = id_of(&w);
    s.handle_upstream_chunk(2, Bytes::from(CONTENT));
    w.pump(&mut s, 2);
    assert!(
        !w.kv.contains_key(&format!("stream:v1:{id}:request")),
        "no request kept for a takeover that cannot happen"
    );
    drop(s);
    let path = format!("/v1/streams/{id}");
    let (_, rw) = reader(cfg, &w, 20_000, "GET", &path, "k1", &[]);
    assert!(rw.upstream.is_empty());
    assert!(rw.text().contains("upstream_stream_broken"));
}

#[test]
fn a_cancel_while_the_client_is_away_stops_the_generation_and_the_record_says_so() {
    let (mut s, mut w) = writer(resumable(), "k1", "compact");
    let id = id_of(&w);
    s.handle_upstream_chunk(2, Bytes::from(CONTENT));
    w.pump(&mut s, 2);
    s.handle_downstream_closed(3);
    w.pump(&mut s, 3);
    assert!(
        !s.is_finished() && !w.cancelled,
        "detached, still generating"
    );
    let sent = w.body.len();
    let cancel = format!("/v1/streams/{id}/cancel");
    let (_, cw) = reader(resumable(), &w, 4, "POST", &cancel, "k1", &[]);
    assert_eq!(cw.status(), 202);
    w.kv = cw.kv.clone();
    fire_timers(&mut s, &mut w, 4 + 500);
    assert!(w.cancelled && s.is_finished(), "the upstream was cancelled");
    assert_eq!(
        w.body.len(),
        sent,
        "nothing written to the client that left"
    );
    let path = format!("/v1/streams/{id}");
    let (_, rw) = reader(
        resumable(),
        &w,
        1_000,
        "GET",
        &path,
        "k1",
        &[("x-tokenedge-format", "compact")],
    );
    let body = rw.text();
    assert!(body.contains("data: \"Hi\""), "{body}");
    assert!(body.contains("\"finish_reason\":\"cancelled\""), "{body}");
}

#[test]
fn two_readers_attached_at_once_each_get_the_whole_rest() {
    let (mut s, mut w) = writer(resumable(), "k1", "openai");
    let id = id_of(&w);
    let blocks: Vec<&str> = LLAMA_CHAT.split_inclusive("\n\n").collect();
    let mut t = 2;
    for b in &blocks[..3] {
        s.handle_upstream_chunk(t, Bytes::copy_from_slice(b.as_bytes()));
        w.pump(&mut s, t);
        t += 300;
        fire_timers(&mut s, &mut w, t);
    }
    let path = format!("/v1/streams/{id}");
    let formats = [("x-tokenedge-format", "openai")];
    let compact = [("x-tokenedge-format", "compact")];
    let (mut a, mut aw) = reader(resumable(), &w, t, "GET", &path, "k1", &formats);
    let (mut b, mut bw) = reader(resumable(), &w, t, "GET", &path, "k1", &compact);
    for block in &blocks[3..] {
        s.handle_upstream_chunk(t, Bytes::copy_from_slice(block.as_bytes()));
        w.pump(&mut s, t);
        t += 300;
        fire_timers(&mut s, &mut w, t);
        for (r, rw) in [(&mut a, &mut aw), (&mut b, &mut bw)] {
            rw.kv = w.kv.clone();
            fire_timers(r, rw, t);
        }
    }
    s.handle_upstream_end(t);
    w.pump(&mut s, t);
    for (r, rw) in [(&mut a, &mut aw), (&mut b, &mut bw)] {
        rw.kv = w.kv.clone();
        fire_timers(r, rw, t + 1_000);
        assert!(r.is_finished() && rw.ended);
    }
    assert_eq!(events(&aw.text()), events(&w.text()), "the same stream");
    let whole = content_of(LLAMA_CHAT).0;
    assert_eq!(text_in(&bw.text()), whole, "the other in its own format");
    assert!(bw.text().contains("event: done"));
}
