//! `POST /v1/responses` through a whole session: typed events passed as
//! they came and as they arrive, the end rule (no `response.completed` →
//! an error event the SDKs raise on), the compact formats, the exact cache
//! replaying the same event sequence, and validation.

mod common;

use bytes::Bytes;
use common::*;
use serde_json::Value;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::Session;

const LLAMA: &str = include_str!("vectors/llamacpp_responses.sse");
const VLLM: &str = include_str!("vectors/vllm_responses.sse");
const STREAM: &str = r#"{"model":"m","input":"Say hello.","stream":true}"#;
const DETERMINISTIC: &str = r#"{"model":"m","input":"Say hello.","stream":true,"temperature":0}"#;

/// A request to `/v1/responses` with `body` and `extra` headers, from the
/// key `client-key`, its KV store `kv`.
fn request(
    body: &str,
    extra: &[(&str, &str)],
    kv: &std::collections::HashMap<String, Bytes>,
) -> (Session, World) {
    request_as(config(), "client-key", body, extra, kv)
}

/// [`request`] from `key` to a deployment configured with `cfg`.
fn request_as(
    cfg: Config,
    key: &str,
    body: &str,
    extra: &[(&str, &str)],
    kv: &std::collections::HashMap<String, Bytes>,
) -> (Session, World) {
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("authorization".to_string(), format!("Bearer {key}")),
    ];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut s = Session::new(cfg);
    let mut w = World {
        kv: kv.clone(),
        ..World::default()
    };
    let head = RequestHead::new("POST", "/v1/responses", headers);
    s.handle_request(0, head, Bytes::copy_from_slice(body.as_bytes()));
    w.pump(&mut s, 0);
    (s, w)
}

/// [`request`] answered by an upstream event stream that sends `vector`,
/// one event every 10 ms.
fn streamed(body: &str, extra: &[(&str, &str)], vector: &str) -> (Session, World) {
    let (mut s, mut w) = request(body, extra, &Default::default());
    assert_eq!(w.upstream.len(), 1, "went upstream");
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    feed(&mut s, &mut w, vector, 10);
    s.handle_upstream_end(100_000);
    w.pump(&mut s, 100_000);
    (s, w)
}

/// The SSE events of a body: (name, data as JSON).
fn events(body: &str) -> Vec<(Option<String>, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty() && !e.starts_with(':'))
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .map(str::to_owned);
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("no data: {e:?}"));
            (
                name,
                serde_json::from_str(data).unwrap_or_else(|_| panic!("not JSON: {data}")),
            )
        })
        .collect()
}

/// The text of a stream's `response.output_text.delta` events.
fn text_of(body: &str) -> String {
    events(body)
        .iter()
        .filter(|(_, d)| d["type"] == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn goes_upstream_as_sent_and_passes_every_typed_event_as_it_arrives() {
    let (s, w) = streamed(STREAM, &[], LLAMA);
    let up = &w.upstream[0];
    assert!(up.url.ends_with("/v1/responses"), "{}", up.url);
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(sent, serde_json::from_str::<Value>(STREAM).unwrap());
    assert_eq!(w.status(), 200);
    assert!(w
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(
        w.text(),
        LLAMA,
        "every event, byte for byte, and nothing added"
    );
    assert!(w.ended && !w.aborted && s.is_finished());
    // Timing shape: the first delta reached the client when it was fed
    // (the fifth event, at t=42), not with the rest at the end.
    let first_delta = w
        .chunks
        .iter()
        .find(|(_, b)| String::from_utf8_lossy(b).contains("response.output_text.delta"))
        .unwrap();
    assert_eq!(first_delta.0, 42);
    let last = w.chunks.last().unwrap().0;
    assert!(last >= 2 + 10 * (LLAMA.matches("\n\n").count() as u64 - 1));
}

/// Cut at every event boundary before `response.completed`: the client
/// gets what came, then an `error` event that carries an `error` member
/// (the official SDKs raise on it) and the next `sequence_number`; never a
/// clean end.
#[test]
fn a_cut_stream_ends_with_an_error_event_the_sdks_raise_on() {
    for vector in [LLAMA, VLLM] {
        let completed = vector.find("event: response.completed").unwrap();
        let mut cuts = 0;
        for (at, _) in vector.match_indices("\n\n") {
            let cut = at + 2;
            if cut > completed {
                break;
            }
            let (_, w) = streamed(STREAM, &[], &vector[..cut]);
            let out = w.text();
            assert!(out.starts_with(&vector[..cut]), "cut at {cut}");
            let (name, last) = events(&out).pop().unwrap();
            assert_eq!(name.as_deref(), Some("error"), "cut at {cut}: {out}");
            assert_eq!(last["type"], "error");
            assert_eq!(last["code"], "upstream_stream_broken");
            assert_eq!(last["error"]["code"], "upstream_stream_broken");
            assert!(last["message"]
                .as_str()
                .unwrap()
                .contains("response.completed"));
            let before = events(&vector[..cut]);
            match before
                .last()
                .and_then(|(_, d)| d["sequence_number"].as_u64())
            {
                Some(n) => assert_eq!(last["sequence_number"], n + 1),
                // llama.cpp numbers nothing: the gateway's count.
                None if vector == LLAMA => {
                    assert_eq!(last["sequence_number"], before.len() as u64)
                }
                None => assert!(before.is_empty()),
            }
            assert!(w.ended && !out.contains("[DONE]"));
            cuts += 1;
        }
        assert!(cuts > 10);
    }
}

#[test]
fn failed_and_error_events_end_broken_and_incomplete_ends_clean() {
    let deltas: String = LLAMA.split_inclusive("\n\n").take(6).collect();
    let failed = format!("{deltas}event: response.failed\ndata: {{\"type\":\"response.failed\",\"response\":{{\"status\":\"failed\",\"error\":{{\"code\":\"server_error\",\"message\":\"boom\"}}}}}}\n\n");
    let error = format!("{deltas}event: error\ndata: {{\"type\":\"error\",\"code\":\"server_error\",\"message\":\"boom\",\"param\":null}}\n\n");
    for (input, detail) in [(&failed, "response.failed"), (&error, "an error event")] {
        let (_, w) = streamed(DETERMINISTIC, &[], input);
        let out = w.text();
        assert!(
            out.starts_with(input.as_str()),
            "the upstream's own end event is passed on"
        );
        let (name, last) = events(&out).pop().unwrap();
        assert_eq!(name.as_deref(), Some("error"));
        assert!(
            last["error"]["message"].as_str().unwrap().contains(detail),
            "{last}"
        );
        assert!(w.stored().is_empty(), "a broken answer is never stored");
    }
    let incomplete = format!("{deltas}event: response.incomplete\ndata: {{\"type\":\"response.incomplete\",\"response\":{{\"status\":\"incomplete\",\"incomplete_details\":{{\"reason\":\"max_output_tokens\"}}}}}}\n\n");
    let (_, w) = streamed(DETERMINISTIC, &[], &incomplete);
    assert_eq!(
        w.text(),
        incomplete,
        "a deliberate end is the upstream's, nothing added"
    );
    assert!(w.ended && !w.aborted);
    assert_eq!(
        w.stored().len(),
        1,
        "cut at max_output_tokens, like length: stored"
    );
}

#[test]
fn compact_formats_carry_text_as_tokens_and_other_content_as_deltas() {
    let (_, w) = streamed(STREAM, &[("x-tokenedge-format", "compact")], LLAMA);
    let evs = events(&w.text());
    let tokens: String = evs
        .iter()
        .filter(|(n, _)| n.is_none())
        .map(|(_, d)| d.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens, text_of(LLAMA));
    let (name, done) = evs.last().unwrap();
    assert_eq!(name.as_deref(), Some("done"));
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"]["output_tokens"], 8);
    assert_eq!(done["stats"]["tokens"], text_of(LLAMA).len().min(8) as u64);

    let (_, w) = streamed(STREAM, &[("x-tokenedge-format", "ndjson")], VLLM);
    let lines: Vec<Value> = w
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let deltas: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["delta"]["type"].as_str())
        .collect();
    assert_eq!(
        deltas
            .iter()
            .filter(|t| **t == "response.reasoning_text.delta")
            .count(),
        4
    );
    assert_eq!(
        deltas
            .iter()
            .filter(|t| **t == "response.function_call_arguments.delta")
            .count(),
        3
    );
    assert!(
        lines.iter().all(|l| l.get("t").is_none()),
        "no text in this answer"
    );
    let end = lines.last().unwrap();
    assert_eq!(end["finish_reason"], "stop");
    assert_eq!(
        end["usage"]["output_tokens_details"]["reasoning_tokens"],
        14
    );

    let (_, w) = streamed(STREAM, &[("x-tokenedge-format", "text")], LLAMA);
    assert_eq!(w.text(), text_of(LLAMA));
}

/// A deterministic answer is stored once, with its typed events; the same
/// request then replays that very event sequence without going upstream,
/// and a `stream: false` request gets the final event's response object.
#[test]
fn the_exact_cache_replays_the_same_event_sequence() {
    let (_, first) = streamed(DETERMINISTIC, &[], LLAMA);
    assert_eq!(first.stored().len(), 1);
    let (mut s, mut hit) = request(DETERMINISTIC, &[], &first.kv);
    fire_timers(&mut s, &mut hit, 10_000);
    assert!(hit.upstream.is_empty(), "answered from the cache");
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.text(), LLAMA);
    assert!(hit.ended && s.is_finished());

    let whole = DETERMINISTIC.replace("\"stream\":true", "\"stream\":false");
    let (_, json) = request(&whole, &[], &first.kv);
    assert!(json.upstream.is_empty());
    let body = json.json();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["output"][0]["content"][0]["text"], text_of(LLAMA));

    // Another key does not see it.
    let (mut s, mut other) = request_as(config(), "other-key", DETERMINISTIC, &[], &first.kv);
    fire_timers(&mut s, &mut other, 1_000);
    assert_eq!(
        other.upstream.len(),
        1,
        "another key's request went upstream"
    );

    // A function call is not text: not stored (as a chat tool call).
    let (_, tools) = streamed(DETERMINISTIC, &[], VLLM);
    assert!(tools.stored().is_empty());
    assert_eq!(tools.text(), VLLM);
}

#[test]
fn a_whole_answer_passes_through() {
    let whole = r#"{"model":"m","input":"hi"}"#;
    let (mut s, mut w) = request(whole, &[], &Default::default());
    s.handle_upstream_head(
        1,
        200,
        &[("content-type".into(), "application/json".into())],
    );
    let answer = br#"{"id":"resp_1","object":"response","status":"completed","output":[]}"#;
    s.handle_upstream_chunk(2, Bytes::from_static(answer));
    s.handle_upstream_end(3);
    w.pump(&mut s, 3);
    assert_eq!(w.status(), 200);
    assert_eq!(w.body, answer);
    assert!(w.ended);
}

#[test]
fn bad_input_is_refused_with_the_apis_error_and_goes_nowhere() {
    for (body, param) in [
        (r#"{"model":"m"}"#, "input"),
        (r#"{"model":"m","input":{"x":1}}"#, "input"),
        (r#"{"input":"hi"}"#, "model"),
        (
            r#"{"model":"m","input":"hi","max_output_tokens":0}"#,
            "max_output_tokens",
        ),
        (r#"{"model":"m","input":"hi","stream":"yes"}"#, "stream"),
    ] {
        let (_, w) = request(body, &[], &Default::default());
        assert_eq!(w.status(), 400, "{body}");
        assert_eq!(w.json()["error"]["param"], param, "{body}");
        assert!(w.upstream.is_empty() && w.kv_writes.is_empty(), "{body}");
    }
    let (_, w) = request(
        STREAM,
        &[("x-tokenedge-format", "yaml")],
        &Default::default(),
    );
    assert_eq!(w.status(), 400);
}

/// A Responses stream is resumable like a chat one: a reader of
/// `GET /v1/streams/{id}?starting_after=S` gets exactly the events whose
/// `sequence_number` is past `S`, and a reader of a cut stream gets the
/// Responses error event.
#[test]
fn a_reader_resumes_starting_after_a_sequence_number() {
    let resumable = || Config {
        resume: true,
        cache_ttl_secs: 0,
        ..config()
    };
    let writer = |vector: &str| {
        let (mut s, mut w) =
            request_as(resumable(), "client-key", STREAM, &[], &Default::default());
        s.handle_upstream_head(1, 200, &sse_head());
        w.pump(&mut s, 1);
        feed(&mut s, &mut w, vector, 10);
        s.handle_upstream_end(100_000);
        w.pump(&mut s, 100_000);
        let id = w.header("x-tokenedge-stream").unwrap().to_owned();
        (w, id)
    };
    let read = |w: &World, path: String| {
        let mut s = Session::new(resumable());
        let mut r = World {
            kv: w.kv.clone(),
            ..World::default()
        };
        let head = RequestHead::new(
            "GET",
            &path,
            vec![("authorization".into(), "Bearer client-key".into())],
        );
        s.handle_request(200_000, head, Bytes::new());
        r.pump(&mut s, 200_000);
        fire_timers(&mut s, &mut r, 300_000);
        assert!(r.ended, "{path}");
        events(&r.text())
    };
    let (w, id) = writer(VLLM);
    let all = events(&w.text());
    assert_eq!(all.len(), events(VLLM).len());
    for s in 0..all.len() as u64 {
        let rest = read(&w, format!("/v1/streams/{id}?starting_after={s}"));
        let numbers: Vec<u64> = rest
            .iter()
            .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = (s + 1..all.len() as u64).collect();
        assert_eq!(numbers, want, "starting_after={s}");
        assert_eq!(rest, all[s as usize + 1..], "starting_after={s}");
    }
    // The gateway's own numbers still work.
    assert_eq!(read(&w, format!("/v1/streams/{id}?after=3")), all[3..]);

    let cut: String = LLAMA.split_inclusive("\n\n").take(7).collect();
    let (w, id) = writer(&cut);
    let rest = read(&w, format!("/v1/streams/{id}?after=7"));
    let [(name, error)] = rest.as_slice() else {
        panic!("{rest:?}")
    };
    assert_eq!(name.as_deref(), Some("error"));
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["code"], "upstream_stream_broken");
}

/// A replica that answers 503 before anything was sent is left for the
/// next, which gets the same `/v1/responses` request.
#[test]
fn an_unavailable_replica_is_left_for_the_next_before_the_first_byte() {
    let cfg = Config {
        upstream_urls: vec!["http://a:1".into(), "http://b:1".into()],
        ..config()
    };
    let (mut s, mut w) = request_as(cfg, "client-key", STREAM, &[], &Default::default());
    s.handle_upstream_head(5, 503, &[]);
    w.pump(&mut s, 5);
    assert_eq!(w.upstream.len(), 2);
    assert_ne!(w.upstream[0].url, w.upstream[1].url);
    assert!(w.upstream.iter().all(|u| u.url.ends_with("/v1/responses")));
    assert_eq!(w.upstream[0].body, w.upstream[1].body);
    s.handle_upstream_head(6, 200, &sse_head());
    w.pump(&mut s, 6);
    feed(&mut s, &mut w, LLAMA, 10);
    s.handle_upstream_end(100_000);
    w.pump(&mut s, 100_000);
    assert_eq!(w.text(), LLAMA);
}

/// While the upstream is silent mid-stream, the client gets SSE comments
/// (which the SDKs skip), never a typed event the API does not define.
#[test]
fn a_silent_upstream_gets_keep_alive_comments_between_typed_events() {
    let cfg = Config {
        keepalive_interval_ms: 5_000,
        ..config()
    };
    let (mut s, mut w) = request_as(cfg, "client-key", STREAM, &[], &Default::default());
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    let events: Vec<&str> = LLAMA.split_inclusive("\n\n").collect();
    s.handle_upstream_chunk(2, Bytes::from(events[..5].concat()));
    w.pump(&mut s, 2);
    fire_timers(&mut s, &mut w, 12_000);
    s.handle_upstream_chunk(12_000, Bytes::from(events[5..].concat()));
    s.handle_upstream_end(12_001);
    w.pump(&mut s, 12_001);
    let out = w.text();
    let comments: Vec<&str> = out.split("\n\n").filter(|e| e.starts_with(':')).collect();
    assert!(comments.len() >= 2, "{out}");
    let without: String = out
        .split_inclusive("\n\n")
        .filter(|e| !e.starts_with(':'))
        .collect();
    assert_eq!(without, LLAMA);
}

/// A cancel ends a Responses stream with the API's own final event,
/// `response.incomplete` with the reason `cancelled`, numbered after the
/// last event; no `[DONE]`.
#[test]
fn a_cancel_ends_with_response_incomplete() {
    let resumable = Config {
        resume: true,
        cache_ttl_secs: 0,
        ..config()
    };
    let (mut s, mut w) = request_as(
        resumable.clone(),
        "client-key",
        STREAM,
        &[],
        &Default::default(),
    );
    s.handle_upstream_head(1, 200, &sse_head());
    let opening: String = VLLM.split_inclusive("\n\n").take(6).collect();
    s.handle_upstream_chunk(2, Bytes::from(opening.clone()));
    w.pump(&mut s, 2);
    let id = w.header("x-tokenedge-stream").unwrap().to_owned();
    let mut c = Session::new(resumable);
    let mut cw = World {
        kv: w.kv.clone(),
        ..World::default()
    };
    let head = RequestHead::new(
        "POST",
        &format!("/v1/streams/{id}/cancel"),
        vec![("authorization".into(), "Bearer client-key".into())],
    );
    c.handle_request(3, head, Bytes::new());
    cw.pump(&mut c, 3);
    assert_eq!(cw.status(), 202);
    w.kv = cw.kv.clone();
    fire_timers(&mut s, &mut w, 3 + 500);
    assert!(w.cancelled && w.ended && s.is_finished());
    let out = w.text();
    let (name, last) = events(&out).pop().unwrap();
    assert_eq!(name.as_deref(), Some("response.incomplete"));
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "cancelled"
    );
    assert_eq!(last["sequence_number"], 6, "after the upstream's 0..=5");
    assert!(!out.contains("[DONE]"));
}
