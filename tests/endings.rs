//! How every response ends: never passed off as complete when it is not.
//! A passed-through body that is cut is aborted, not ended.

mod common;

use bytes::Bytes;
use common::*;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::Session;

fn json_head() -> Vec<(String, String)> {
    vec![("content-type".into(), "application/json".into())]
}

#[test]
fn a_cut_non_stream_answer_is_aborted_not_ended() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_JSON);
    s.handle_upstream_head(1, 200, &json_head());
    s.handle_upstream_chunk(2, Bytes::from_static(b"{\"choices\":[{\"message\":"));
    s.handle_upstream_failed(3, "connection reset");
    w.pump(&mut s, 3);
    assert_eq!(w.status(), 200);
    assert!(w.aborted, "a truncated JSON body was ended as if complete");
    assert!(s.is_finished());
    assert!(w.kv_writes.is_empty());
}

#[test]
fn a_stalled_models_list_is_aborted_not_ended() {
    let mut s = Session::new(config());
    let mut w = World::default();
    s.handle_request(
        0,
        RequestHead::new("GET", "/v1/models", vec![]),
        Bytes::new(),
    );
    w.pump(&mut s, 0);
    s.handle_upstream_head(1, 200, &json_head());
    s.handle_upstream_chunk(2, Bytes::from_static(b"{\"data\":[{\"id\":"));
    w.pump(&mut s, 2);
    fire_timers(&mut s, &mut w, 10 * 60 * 1000);
    assert!(w.aborted, "a truncated JSON body was ended as if complete");
    assert!(s.is_finished());
}

#[test]
fn a_complete_non_stream_answer_still_ends_cleanly() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_JSON);
    s.handle_upstream_head(1, 200, &json_head());
    s.handle_upstream_chunk(2, Bytes::from_static(b"{\"choices\":[]}"));
    s.handle_upstream_end(3);
    w.pump(&mut s, 3);
    assert!(w.ended && !w.aborted);
}

/// A streamed request for `path` with `body` in `format`, answered by an
/// upstream SSE head.
fn stream_request(path: &str, body: &str, format: &str) -> (Session, World) {
    let mut s = Session::new(config());
    let mut w = World::default();
    let head = RequestHead::new(
        "POST",
        path,
        vec![
            ("content-type".into(), "application/json".into()),
            ("x-tokenedge-format".into(), format.into()),
        ],
    );
    s.handle_request(0, head, Bytes::copy_from_slice(body.as_bytes()));
    w.pump(&mut s, 0);
    // The lookup of a cacheable request finds nothing.
    fire_timers(&mut s, &mut w, 1_000);
    if !w.upstream.is_empty() {
        s.handle_upstream_head(1_001, 200, &sse_head());
        w.pump(&mut s, 1_001);
    }
    (s, w)
}

fn send(s: &mut Session, w: &mut World, events: &[&str]) {
    for (i, e) in events.iter().enumerate() {
        let t = 1_002 + i as u64;
        s.handle_upstream_chunk(t, Bytes::copy_from_slice(e.as_bytes()));
        w.pump(s, t);
    }
}

const ARRAY_PROMPT: &str =
    r#"{"model":"m","prompt":["Say a","Say b"],"max_tokens":4,"temperature":0,"stream":true}"#;

fn text_event(index: u32, text: &str, finish: Option<&str>) -> String {
    let finish = finish.map_or("null".to_owned(), |f| format!("\"{f}\""));
    format!("data: {{\"object\":\"text_completion\",\"choices\":[{{\"index\":{index},\"text\":\"{text}\",\"finish_reason\":{finish}}}]}}\n\n")
}

#[test]
fn an_array_prompt_is_never_cached_and_its_second_choice_reaches_the_client() {
    let (mut s, mut w) = stream_request("/v1/completions", ARRAY_PROMPT, "openai");
    assert!(
        w.kv_reads.is_empty(),
        "an array prompt was looked up: {:?}",
        w.kv_reads
    );
    let events = [
        text_event(0, "a", None),
        text_event(0, "", Some("stop")),
        text_event(1, "b", None),
        text_event(1, "", Some("stop")),
        "data: [DONE]\n\n".to_owned(),
    ];
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    send(&mut s, &mut w, &refs);
    assert!(w.ended && !w.aborted);
    let body = w.text();
    assert!(body.contains("\"index\":1,\"text\":\"b\""), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert!(
        w.kv_writes.is_empty(),
        "an array prompt's answer was stored: {:?}",
        w.kv_writes
    );
}

#[test]
fn the_one_choice_formats_refuse_an_array_prompt() {
    for format in ["compact", "ndjson", "text"] {
        let (_, w) = stream_request("/v1/completions", ARRAY_PROMPT, format);
        assert_eq!(w.status(), 400, "{format}");
        assert_eq!(w.json()["error"]["param"], "prompt", "{format}");
        assert!(w.upstream.is_empty());
    }
}

#[test]
fn a_stream_of_several_choices_is_finished_only_when_each_is() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2,"stream":true}"#;
    let (mut s, mut w) = stream_request("/v1/chat/completions", body, "openai");
    send(&mut s, &mut w, &[CONTENT, FINISH]);
    // Choice 1 never finished: the end is a cut, not a clean end.
    s.handle_upstream_end(2_000);
    w.pump(&mut s, 2_000);
    let body = w.text();
    assert!(
        body.contains("\"error\""),
        "cut with one of two choices finished, ended cleanly: {body}"
    );
    assert!(!body.contains("data: [DONE]"), "{body}");
}

#[test]
fn an_abort_finish_ends_with_the_error_event() {
    const GREEDY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream":true}"#;
    let abort = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"abort\"}]}\n\n";
    for format in ["openai", "compact", "ndjson", "text"] {
        let (mut s, mut w) = stream_request("/v1/chat/completions", GREEDY, format);
        send(&mut s, &mut w, &[CONTENT, abort, "data: [DONE]\n\n"]);
        assert!(w.ended && s.is_finished(), "{format}");
        let body = w.text();
        let last = body.trim_end().rsplit("\n\n").next().unwrap_or("");
        let error_last = match format {
            "openai" => last.starts_with("data: {\"error\""),
            "compact" => last.starts_with("event: error"),
            "ndjson" => body
                .trim_end()
                .lines()
                .last()
                .unwrap_or("")
                .starts_with("{\"error\""),
            _ => body.trim_end().ends_with(']') || body.contains("[error]"),
        };
        assert!(
            error_last,
            "{format}: an abort finish did not end with the error event: {body:?}"
        );
        assert!(
            !body.contains("data: [DONE]") && !body.contains("event: done"),
            "{format}: {body:?}"
        );
        assert!(
            w.kv_writes.iter().all(|(k, _, _)| !k.starts_with("cache:")),
            "{format}: an aborted answer was stored"
        );
    }
}
