//! The core in a simulated world: a scripted upstream, a virtual clock, and
//! a recording client. Each test drives one `Session` the way an adapter
//! would and checks what the client receives and when.

mod common;

use bytes::Bytes;
use common::*;
use serde_json::Value;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::{Action, Session};

#[test]
fn streams_each_event_at_once_with_sse_headers() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_STREAM);
    let req = &w.upstream[0];
    assert_eq!(req.url, "http://upstream:8081/v1/chat/completions");
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert!(
        !req.headers.iter().any(|(k, _)| k == "authorization"),
        "client key must not be forwarded"
    );

    s.handle_upstream_head(100, 200, &sse_head());
    w.pump(&mut s, 100);
    assert_eq!(w.status(), 200);
    assert_eq!(
        w.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(w.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(w.header("x-accel-buffering"), Some("no"));
    assert_eq!(w.header("x-content-type-options"), Some("nosniff"));
    for h in ["connection", "transfer-encoding"] {
        assert!(w.header(h).is_none());
    }

    s.handle_upstream_chunk(200, Bytes::from(CONTENT));
    w.pump(&mut s, 200);
    assert_eq!(
        w.chunks.len(),
        1,
        "the event must go out before the next one arrives"
    );
    s.handle_upstream_chunk(300, Bytes::from(format!("{FINISH}{USAGE}data: [DONE]\n\n")));
    w.pump(&mut s, 300);
    assert!(w.ended);
    assert_eq!(
        w.text(),
        format!("{CONTENT}{FINISH}{USAGE}data: [DONE]\n\n")
    );
    assert_eq!(s.time_to_first_content(), Some(200));
    // Late upstream input after the end changes nothing.
    s.handle_upstream_chunk(400, Bytes::from(CONTENT));
    s.handle_upstream_end(400);
    w.pump(&mut s, 400);
}

#[test]
fn truncated_stream_ends_with_an_error_event() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_STREAM);
    s.handle_upstream_head(1, 200, &sse_head());
    s.handle_upstream_chunk(2, Bytes::from(CONTENT));
    s.handle_upstream_end(3);
    w.pump(&mut s, 3);
    assert!(w.ended);
    let text = w.text();
    assert!(!text.contains("data: [DONE]"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let err: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "upstream_stream_broken");
}

#[test]
fn finish_reason_without_done_gets_done_appended() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_STREAM);
    s.handle_upstream_head(1, 200, &sse_head());
    s.handle_upstream_chunk(2, Bytes::from(format!("{CONTENT}{FINISH}")));
    s.handle_upstream_end(3);
    w.pump(&mut s, 3);
    assert!(w.text().ends_with("data: [DONE]\n\n"));
}

#[test]
fn read_failure_mid_stream_is_an_error_event() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_STREAM);
    s.handle_upstream_head(1, 200, &sse_head());
    s.handle_upstream_chunk(2, Bytes::from(CONTENT));
    s.handle_upstream_failed(3, "connection reset");
    w.pump(&mut s, 3);
    assert!(w.ended);
    assert!(w.text().contains("connection reset"));
}

#[test]
fn upstream_unreachable_is_502_json() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_STREAM);
    s.handle_upstream_failed(5, "connection refused");
    w.pump(&mut s, 5);
    assert_eq!(w.status(), 502);
    assert_eq!(w.header("content-type"), Some("application/json"));
    assert_eq!(w.json()["error"]["code"], "upstream_unreachable");
    assert!(s.is_finished());
}

#[test]
fn upstream_error_status_keeps_its_message() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_STREAM);
    s.handle_upstream_head(
        5,
        400,
        &[("content-type".into(), "application/json".into())],
    );
    let body = include_bytes!("vectors/llamacpp_error_400.json");
    s.handle_upstream_chunk(6, Bytes::from_static(&body[..20]));
    s.handle_upstream_chunk(6, Bytes::from_static(&body[20..]));
    s.handle_upstream_end(7);
    w.pump(&mut s, 7);
    assert_eq!(w.status(), 400);
    let j = w.json();
    assert_eq!(
        j["error"]["message"],
        "logprobs is not supported with tools + stream"
    );
    assert_eq!(j["error"]["type"], "invalid_request_error");
}

#[test]
fn first_byte_timeout_is_504() {
    let cfg = Config {
        first_byte_timeout_ms: 1_000,
        keepalive_interval_ms: 60_000,
        ..config()
    };
    let (mut s, mut w) = start(cfg, "/v1/chat/completions", CHAT_STREAM);
    // The status delay passes without a word: an openai stream is not
    // committed by a status.
    fire_timers(&mut s, &mut w, 999);
    assert_eq!(s.poll_timeout(), Some(1_000));
    s.handle_timeout(999);
    w.pump(&mut s, 999);
    assert!(w.head.is_none());
    s.handle_timeout(1_000);
    w.pump(&mut s, 1_000);
    assert_eq!(w.status(), 504);
    assert!(w.cancelled);
    assert_eq!(w.json()["error"]["code"], "upstream_timeout");
}

#[test]
fn keepalives_while_waiting_for_the_first_token() {
    let cfg = Config {
        keepalive_interval_ms: 15_000,
        first_byte_timeout_ms: 120_000,
        ..config()
    };
    let (mut s, mut w) = start(cfg, "/v1/chat/completions", CHAT_STREAM);
    // No upstream head yet: at 15 s the stream is committed with a status
    // comment (an openai client's SDK skips it).
    fire_timers(&mut s, &mut w, 14_999);
    assert!(w.head.is_none());
    assert_eq!(s.poll_timeout(), Some(15_000));
    s.handle_timeout(15_000);
    w.pump(&mut s, 15_000);
    assert_eq!(w.status(), 200);
    assert_eq!(
        w.text(),
        ": status {\"phase\":\"waiting\",\"elapsed_ms\":15000}\n\n"
    );
    // The upstream answered: the client hears so if no text follows soon.
    s.handle_upstream_head(20_000, 200, &sse_head());
    assert_eq!(s.poll_timeout(), Some(20_250));
    s.handle_timeout(20_250);
    w.pump(&mut s, 20_250);
    assert!(w
        .text()
        .ends_with(": status {\"phase\":\"prefill\",\"elapsed_ms\":20250}\n\n"));
    assert_eq!(s.poll_timeout(), Some(35_250));
    s.handle_timeout(35_250);
    s.handle_upstream_chunk(36_000, Bytes::from(CONTENT));
    w.pump(&mut s, 36_000);
    assert_eq!(w.chunks.len(), 4);
    // Content pushed the next keep-alive back.
    assert_eq!(s.poll_timeout(), Some(51_000));
    // An upstream error after the commit becomes an error event, not a status.
    s.handle_upstream_failed(37_000, "reset");
    w.pump(&mut s, 37_000);
    assert_eq!(w.status(), 200);
    assert!(w.text().contains("\"upstream_stream_broken\""));
}

#[test]
fn upstream_error_after_keepalive_commit_is_an_error_event() {
    let cfg = Config {
        keepalive_interval_ms: 10,
        ..config()
    };
    let (mut s, mut w) = start(cfg, "/v1/chat/completions", CHAT_STREAM);
    s.handle_timeout(10);
    s.handle_upstream_head(11, 503, &[]);
    s.handle_upstream_chunk(
        12,
        Bytes::from_static(b"{\"error\":{\"message\":\"loading model\"}}"),
    );
    s.handle_upstream_end(13);
    w.pump(&mut s, 13);
    assert_eq!(w.status(), 200);
    assert!(w.text().contains("loading model"), "{}", w.text());
    assert!(w.ended);
}

#[test]
fn idle_timeout_mid_stream() {
    let cfg = Config {
        idle_timeout_ms: 500,
        keepalive_interval_ms: 60_000,
        ..config()
    };
    let (mut s, mut w) = start(cfg, "/v1/chat/completions", CHAT_STREAM);
    s.handle_upstream_head(10, 200, &sse_head());
    s.handle_upstream_chunk(20, Bytes::from(CONTENT));
    assert_eq!(s.poll_timeout(), Some(520));
    s.handle_timeout(520);
    w.pump(&mut s, 520);
    assert!(w.ended && w.cancelled);
    assert!(w.text().contains("upstream_timeout"));
}

#[test]
fn client_disconnect_cancels_upstream_and_sends_nothing_more() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_STREAM);
    s.handle_upstream_head(1, 200, &sse_head());
    s.handle_upstream_chunk(2, Bytes::from(CONTENT));
    w.pump(&mut s, 2);
    s.handle_downstream_closed(3);
    let actions: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
    assert_eq!(actions, vec![Action::CancelUpstream]);
    assert!(s.is_finished());
    assert_eq!(s.poll_timeout(), None);
    s.handle_upstream_chunk(4, Bytes::from(CONTENT));
    assert_eq!(s.poll_action(), None);
}

#[test]
fn non_streaming_passes_json_through() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_JSON);
    assert_eq!(
        w.upstream[0]
            .headers
            .iter()
            .find(|(k, _)| k == "accept")
            .unwrap()
            .1,
        "application/json"
    );
    let sent: Value = serde_json::from_slice(&w.upstream[0].body).unwrap();
    assert!(sent.get("stream_options").is_none());
    s.handle_upstream_head(
        1,
        200,
        &[(
            "content-type".into(),
            "application/json; charset=utf-8".into(),
        )],
    );
    s.handle_upstream_chunk(2, Bytes::from_static(b"{\"choices\":[]"));
    s.handle_upstream_chunk(3, Bytes::from_static(b",\"usage\":{}}"));
    s.handle_upstream_end(4);
    w.pump(&mut s, 4);
    assert_eq!(w.status(), 200);
    assert_eq!(
        w.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(w.text(), "{\"choices\":[],\"usage\":{}}");
    assert!(w.ended);
}

#[test]
fn bad_requests_get_4xx_json_and_no_upstream_call() {
    /// path, body, content type, padding bytes, status, error code
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, usize, u16, &'a str);
    let cases: &[Case] = &[
        (
            "/v1/chat/completions",
            "{oops",
            Some("application/json"),
            0,
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"m"}"#,
            Some("application/json"),
            0,
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            CHAT_JSON,
            Some("text/plain"),
            0,
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/chat/completions",
            CHAT_JSON,
            None,
            0,
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/chat/completions",
            CHAT_JSON,
            Some("application/json"),
            2 * 1024 * 1024,
            413,
            "payload_too_large",
        ),
        (
            "/v1/nope",
            CHAT_JSON,
            Some("application/json"),
            0,
            404,
            "not_found",
        ),
    ];
    for &(path, body, ct, pad, status, code) in cases {
        let mut s = Session::new(config());
        let mut w = World::default();
        let mut headers = vec![];
        if let Some(ct) = ct {
            headers.push(("content-type".to_string(), ct.to_string()));
        }
        let mut bytes = body.as_bytes().to_vec();
        bytes.resize(bytes.len() + pad, b' ');
        s.handle_request(0, RequestHead::new("POST", path, headers), bytes.into());
        w.pump(&mut s, 0);
        assert_eq!(w.status(), status, "{path} {body} {ct:?}");
        assert_eq!(w.json()["error"]["code"], code);
        assert!(w.upstream.is_empty());
    }
    let mut s = Session::new(config());
    let mut w = World::default();
    s.handle_request(
        0,
        RequestHead::new("GET", "/v1/chat/completions", vec![]),
        Bytes::new(),
    );
    w.pump(&mut s, 0);
    assert_eq!(w.status(), 405);
}

#[test]
fn api_keys_are_enforced_except_for_health_and_preflight() {
    let cfg = Config {
        api_keys: vec!["secret-1".into()],
        ..config()
    };
    let (_, w) = start(cfg.clone(), "/v1/chat/completions", CHAT_STREAM); // sends "client-key"
    assert_eq!(w.status(), 401);
    assert_eq!(w.json()["error"]["code"], "invalid_api_key");

    let mut s = Session::new(cfg.clone());
    let mut w = World::default();
    let head = RequestHead::new(
        "POST",
        "/v1/chat/completions",
        vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), "Bearer secret-1".into()),
        ],
    );
    s.handle_request(0, head, Bytes::from(CHAT_STREAM));
    w.pump(&mut s, 0);
    assert_eq!(w.upstream.len(), 1);

    let mut s = Session::new(cfg.clone());
    let mut w = World::default();
    s.handle_request(0, RequestHead::new("GET", "/healthz", vec![]), Bytes::new());
    w.pump(&mut s, 0);
    assert_eq!(w.upstream.len(), 1);

    let mut s = Session::new(cfg);
    let mut w = World::default();
    s.handle_request(
        0,
        RequestHead::new("OPTIONS", "/v1/chat/completions", vec![]),
        Bytes::new(),
    );
    w.pump(&mut s, 0);
    assert_eq!(w.status(), 204);
}

#[test]
fn upstream_key_replaces_client_key() {
    let cfg = Config {
        upstream_api_key: Some("up-key".into()),
        ..config()
    };
    let (_, w) = start(cfg, "/v1/chat/completions", CHAT_STREAM);
    let auth: Vec<_> = w.upstream[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "authorization")
        .collect();
    assert_eq!(
        auth,
        [&("authorization".to_string(), "Bearer up-key".to_string())]
    );
}

#[test]
fn cors_headers_on_allowed_origins() {
    use tokenedge::core::config::CorsOrigins;
    let cfg = Config {
        cors_origins: CorsOrigins::List(vec!["https://app.example".into()]),
        ..config()
    };
    let (_, w) = streaming_with(cfg, &[("origin", "https://app.example")]);
    assert_eq!(
        w.header("access-control-allow-origin"),
        Some("https://app.example")
    );
}

#[test]
fn models_and_health() {
    let mut s = Session::new(config());
    let mut w = World::default();
    s.handle_request(
        0,
        RequestHead::new("GET", "/v1/models?x=1", vec![]),
        Bytes::new(),
    );
    w.pump(&mut s, 0);
    assert_eq!(w.upstream[0].url, "http://upstream:8081/v1/models");
    s.handle_upstream_head(
        1,
        200,
        &[("content-type".into(), "application/json".into())],
    );
    s.handle_upstream_chunk(2, Bytes::from_static(b"{\"data\":[]}"));
    s.handle_upstream_end(3);
    w.pump(&mut s, 3);
    assert_eq!(w.json()["data"], serde_json::json!([]));

    let mut s = Session::new(config());
    let mut w = World::default();
    s.handle_request(0, RequestHead::new("GET", "/healthz", vec![]), Bytes::new());
    s.handle_upstream_failed(1, "refused");
    w.pump(&mut s, 1);
    assert_eq!(w.status(), 503);
    assert_eq!(w.json()["upstream"]["reachable"], false);

    let mut s = Session::new(config());
    let mut w = World::default();
    s.handle_request(0, RequestHead::new("GET", "/healthz", vec![]), Bytes::new());
    s.handle_upstream_head(7, 200, &[]);
    w.pump(&mut s, 7);
    assert_eq!(w.status(), 200);
    assert_eq!(w.json()["status"], "ok");
    assert!(w.cancelled);
}

#[test]
fn missing_upstream_url_is_a_503() {
    let (_, w) = start(Config::default(), "/v1/chat/completions", CHAT_STREAM);
    assert_eq!(w.status(), 503);
    assert_eq!(w.json()["error"]["code"], "misconfigured");
}

/// Inflates everything decodable in a prefix of a gzip stream.
fn gunzip_prefix(wire: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(wire.len() * 30 + 1024);
    let _ = d.decompress_vec(&wire[10..], &mut out, flate2::FlushDecompress::Sync);
    out
}

#[test]
fn gzip_stream_is_decodable_after_every_chunk() {
    let (mut s, mut w) = streaming_with(config(), &[("accept-encoding", "gzip, deflate, br")]);
    assert_eq!(w.header("content-encoding"), Some("gzip"));
    assert_eq!(w.header("vary"), Some("Accept-Encoding"));
    let input = include_bytes!("vectors/llamacpp_chat.sse");
    let text = std::str::from_utf8(input).unwrap();
    let mut sent = String::new();
    for (i, event) in text.split_inclusive("\n\n").enumerate() {
        s.handle_upstream_chunk(2 + i as u64, Bytes::copy_from_slice(event.as_bytes()));
        w.pump(&mut s, 2 + i as u64);
        sent.push_str(event);
        if !w.ended {
            assert_eq!(
                String::from_utf8(gunzip_prefix(&w.body)).unwrap(),
                sent,
                "after event {i}"
            );
        }
    }
    assert!(w.ended);
    let mut whole = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&w.body[..]), &mut whole)
        .unwrap();
    assert_eq!(whole, text);
    assert!(
        w.body.len() * 4 < input.len(),
        "{} compressed bytes for {}",
        w.body.len(),
        input.len()
    );
}

#[test]
fn identity_without_accept_encoding_and_errors_stay_plain_json() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_STREAM);
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    assert_eq!(w.header("content-encoding"), None);
    let mut s = Session::new(config());
    let mut w = World::default();
    let head = RequestHead::new(
        "POST",
        "/v1/chat/completions",
        vec![("accept-encoding".into(), "gzip".into())],
    );
    s.handle_request(0, head, Bytes::from(CHAT_STREAM));
    w.pump(&mut s, 0);
    assert_eq!(w.status(), 415);
    assert_eq!(w.header("content-encoding"), None);
    assert_eq!(w.json()["error"]["code"], "unsupported_media_type");
}

// ---- formats, flush policy and the remembered link ------------------------

/// Fires every timer due up to `until`, as an adapter would.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, data)
        })
        .collect()
}

#[test]
fn compact_format_carries_text_then_a_final_event() {
    let (mut s, mut w) = streaming_with(config(), &[("x-tokenedge-format", "compact")]);
    assert_eq!(
        w.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    feed(&mut s, &mut w, LLAMA_CHAT, 20);
    assert!(w.ended);
    let (want, tokens) = content_of(LLAMA_CHAT);
    let events = sse_events(&w.text());
    let (last, rest) = events.split_last().unwrap();
    let text: String = rest
        .iter()
        .map(|(name, data)| {
            assert_eq!(name, &None);
            serde_json::from_str::<String>(data).unwrap()
        })
        .collect();
    assert_eq!(text, want);
    assert_eq!(last.0.as_deref(), Some("done"));
    let end: Value = serde_json::from_str(&last.1).unwrap();
    assert_eq!(end["finish_reason"], "length");
    assert!(end["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(end["stats"]["tokens"], tokens as u64);
    assert!(
        end["stats"]["duration_ms"].as_u64().unwrap() > end["stats"]["ttft_ms"].as_u64().unwrap()
    );
    // Far fewer bytes than the OpenAI events, before any compression.
    assert!(w.body.len() * 5 < LLAMA_CHAT.len(), "{}", w.body.len());
}

#[test]
fn ndjson_and_text_formats() {
    let (want, _) = content_of(LLAMA_CHAT);
    let (mut s, mut w) = streaming_with(config(), &[("x-tokenedge-format", "ndjson")]);
    assert_eq!(w.header("content-type"), Some("application/x-ndjson"));
    feed(&mut s, &mut w, LLAMA_CHAT, 20);
    let lines: Vec<Value> = w
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (last, rest) = lines.split_last().unwrap();
    let text: String = rest.iter().map(|l| l["t"].as_str().unwrap()).collect();
    assert_eq!(text, want);
    assert_eq!(last["finish_reason"], "length");

    let (mut s, mut w) = streaming_with(config(), &[("x-tokenedge-format", "text")]);
    assert_eq!(w.header("content-type"), Some("text/plain; charset=utf-8"));
    feed(&mut s, &mut w, LLAMA_CHAT, 20);
    assert!(w.ended);
    assert_eq!(w.text(), want);
    // One chunk per token: the text streams as it is generated.
    assert!(w.chunks.len() >= 10);
}

#[test]
fn tool_calls_survive_the_compact_formats() {
    let vector = include_str!("vectors/openai_tool_calls.sse");
    let (mut s, mut w) = streaming_with(config(), &[("x-tokenedge-format", "compact")]);
    feed(&mut s, &mut w, vector, 5);
    let events = sse_events(&w.text());
    let args: String = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("delta"))
        .map(|(_, d)| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        serde_json::from_str::<Value>(&args).is_ok(),
        "arguments: {args}"
    );
    let end: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(end["finish_reason"], "tool_calls");
}

#[test]
fn format_errors_are_400_before_any_upstream_call() {
    for (format, body, param) in [
        ("xml", CHAT_STREAM, None),
        (
            "compact",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"n":2}"#,
            Some("n"),
        ),
        (
            "text",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"tools":[]}"#,
            Some("tools"),
        ),
    ] {
        let mut s = Session::new(config());
        let mut w = World::default();
        let head = RequestHead::new(
            "POST",
            "/v1/chat/completions",
            vec![
                ("content-type".into(), "application/json".into()),
                ("x-tokenedge-format".into(), format.into()),
            ],
        );
        s.handle_request(0, head, Bytes::copy_from_slice(body.as_bytes()));
        w.pump(&mut s, 0);
        assert_eq!(w.status(), 400, "{format}");
        assert_eq!(w.json()["error"]["param"].as_str(), param, "{format}");
        assert!(w.upstream.is_empty());
        assert!(w.kv_writes.is_empty());
    }
}

#[test]
fn compact_error_mid_stream_is_an_error_event() {
    let (mut s, mut w) = streaming_with(config(), &[("x-tokenedge-format", "compact")]);
    s.handle_upstream_chunk(2, Bytes::from(CONTENT));
    s.handle_upstream_failed(3, "connection reset");
    w.pump(&mut s, 3);
    let events = sse_events(&w.text());
    assert_eq!(events[0], (None, "\"Hi\"".to_string()));
    assert_eq!(events[1].0.as_deref(), Some("error"));
    assert!(w.ended);
}

/// Event counts per flush for the vector at `gap` ms per event.
fn flushes_for(extra: &[(&str, &str)], gap: u64) -> (usize, usize, World) {
    let (mut s, mut w) = streaming_with(config(), extra);
    let n = feed(&mut s, &mut w, LLAMA_CHAT, gap);
    assert!(w.ended);
    let decoded = if w.header("content-encoding") == Some("gzip") {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&w.body[..]), &mut out)
            .unwrap();
        out
    } else {
        w.text()
    };
    assert_eq!(decoded, LLAMA_CHAT, "nothing lost, nothing reordered");
    (n, w.chunks.len(), w)
}

#[test]
fn fast_and_unknown_links_get_every_event_at_once() {
    for extra in [
        vec![],
        vec![("x-tokenedge-bandwidth", "50000")],
        vec![("downlink", "10"), ("accept-encoding", "gzip")],
    ] {
        let (events, chunks, w) = flushes_for(&extra, 20);
        // One chunk per event (the gzip trailer adds one).
        let trailer = usize::from(w.header("content-encoding").is_some());
        assert_eq!(chunks, events + trailer, "{extra:?}");
        assert!(w
            .chunks
            .windows(2)
            .all(|c| c[0].0 < c[1].0 || c[1].1.len() <= 20));
    }
}

#[test]
fn slow_links_coalesce_events_with_bounded_delay() {
    // 64 kbit/s = 8 B/ms: an identity event (~300 B + framing) takes ~50 ms
    // of link; at 10 ms per event the link is the bottleneck.
    let (events, chunks, w) = flushes_for(&[("x-tokenedge-bandwidth", "64")], 10);
    assert!(chunks * 3 < events, "{chunks} flushes for {events} events");
    // No event waits longer than the hold limit.
    let mut sent_at = 2u64;
    let mut waited = 0;
    let mut received = 0usize;
    let mut arrival = w.chunks.iter().map(|(t, b)| (*t, b.len()));
    let (mut t_chunk, mut upto) = arrival.next().unwrap();
    for event in LLAMA_CHAT.split_inclusive("\n\n") {
        received += event.len();
        while received > upto {
            let (t, len) = arrival.next().unwrap();
            t_chunk = t;
            upto += len;
        }
        waited = waited.max(t_chunk - sent_at);
        sent_at += 10;
    }
    assert!(
        waited <= tokenedge::core::pacing::MAX_HOLD_MS,
        "waited {waited} ms"
    );
    // Save-Data gathers even on an unknown link.
    let (events, chunks, _) = flushes_for(&[("save-data", "on")], 20);
    assert!(chunks * 5 < events, "{chunks} flushes for {events} events");
    // The fixed rule used by the benchmark.
    let (events, chunks, _) = flushes_for(&[("x-tokenedge-flush", "4")], 20);
    assert_eq!(chunks, events.div_ceil(4));
}

fn client_request(ip: &str, extra: &[(&str, &str)]) -> RequestHead {
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("authorization".to_string(), "Bearer client-key".to_string()),
    ];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut head = RequestHead::new("POST", "/v1/chat/completions", headers);
    head.client.ip = Some(ip.parse().unwrap());
    head
}

/// Runs one streamed request from `ip` against the world's KV; returns the
/// number of chunks the client got.
fn stream_from(w: &mut World, ip: &str, extra: &[(&str, &str)]) -> usize {
    stream_over(w, ip, extra, 1)
}

/// [`stream_from`] over a link that takes what was written only every
/// `drain_every` events (10 ms apart): a slow link, timed by the session.
fn stream_over(w: &mut World, ip: &str, extra: &[(&str, &str)], drain_every: usize) -> usize {
    let mut s = Session::new(config());
    w.head = None;
    w.ended = false;
    w.chunks.clear();
    w.body.clear();
    s.handle_request(0, client_request(ip, extra), Bytes::from(CHAT_STREAM));
    w.pump(&mut s, 0);
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    let mut t = 2;
    for (i, event) in LLAMA_CHAT.split_inclusive("\n\n").enumerate() {
        fire_timers(&mut s, w, t);
        s.handle_upstream_chunk(t, Bytes::copy_from_slice(event.as_bytes()));
        w.pump(&mut s, t);
        if (i + 1) % drain_every == 0 {
            s.handle_downstream_drained(t);
            w.pump(&mut s, t);
        }
        t += 10;
    }
    fire_timers(&mut s, w, t + 10_000);
    s.handle_downstream_drained(t + 10_000);
    w.pump(&mut s, t + 10_000);
    fire_timers(&mut s, w, t + 20_000);
    assert!(w.ended);
    assert_eq!(w.text(), LLAMA_CHAT);
    w.chunks.len()
}

fn link_records(w: &World) -> Vec<u64> {
    w.kv_writes
        .iter()
        .filter(|(k, _, _)| k.starts_with("link:"))
        .map(|(_, v, _)| {
            serde_json::from_slice::<Value>(v).unwrap()["kbps"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn one_clients_hint_does_not_change_a_neighbours_pacing() {
    let mut w = World::default();
    let events = LLAMA_CHAT.matches("\n\n").count();
    // A client behind a carrier NAT claims 1 kbit/s: its own stream is
    // batched hard...
    let own = stream_from(&mut w, "203.0.113.7", &[("x-tokenedge-bandwidth", "1")]);
    assert!(own * 10 < events, "{own} flushes");
    // ...but nothing is stored, and a neighbour without the header gets
    // every event at once.
    assert_eq!(link_records(&w), Vec::<u64>::new());
    assert_eq!(stream_from(&mut w, "203.0.113.99", &[]), events);
}

#[test]
fn the_link_is_remembered_per_client_network() {
    let mut w = World::default();
    let events = LLAMA_CHAT.matches("\n\n").count();
    // First stream: the link takes data only every 20 events; the session
    // times that and stores what it measured.
    stream_over(&mut w, "203.0.113.7", &[], 20);
    let measured = link_records(&w);
    assert_eq!(measured.len(), 1);
    assert!(measured[0] < 1_000, "{measured:?}");
    let (key, _, ttl) = &w.kv_writes[0];
    assert!(key.starts_with("link:v1:") && !key.contains("203"));
    assert!(*ttl >= 24 * 3600);
    // Same network, no header, a link as slow: paced by the remembered
    // figure, no rewrite.
    let second = stream_over(&mut w, "203.0.113.99", &[], 20);
    assert!(second * 3 < events, "{second}");
    assert_eq!(link_records(&w).len(), 1);
    // A neighbour whose link takes everything at once outruns the record,
    // which is rewritten from that measurement: the next stream is fast.
    stream_from(&mut w, "203.0.113.50", &[]);
    let records = link_records(&w);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records[1] > records[0] * 4, "{records:?}");
    assert_eq!(stream_from(&mut w, "203.0.113.51", &[]), events);
    w.kv_writes.clear();
    // Another network: nothing known, every event at once.
    assert_eq!(stream_from(&mut w, "198.51.100.1", &[]), events);
    // KV failing: served the same, just without the memory.
    w.kv_down = true;
    assert_eq!(stream_from(&mut w, "203.0.113.7", &[]), events);
    assert_eq!(w.kv_reads.len(), 6);
}

// ---- exact cache --------------------------------------------------------

const CHAT_DETERMINISTIC: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0}"#;

/// One request through a world whose KV persists across requests.
#[test]
fn exact_cache_miss_stores_and_hit_replays_identical_text() {
    let mut kv = std::collections::HashMap::new();
    let (mut s, mut w) = cached_request(config(), &kv, "k1", CHAT_DETERMINISTIC, &[]);
    assert_eq!(w.upstream.len(), 1, "a miss goes upstream");
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    assert_eq!(w.header("x-cache"), Some("miss"));
    feed(&mut s, &mut w, LLAMA_CHAT, 10);
    assert!(w.ended);
    let stored: Vec<_> = w
        .kv_writes
        .iter()
        .filter(|(k, ..)| k.starts_with(tokenedge::core::cache::KEY_PREFIX))
        .collect();
    assert_eq!(stored.len(), 1, "one write of the whole answer");
    assert_eq!(
        stored[0].2, 43_200,
        "half of CACHE_TTL_SECS until it is served"
    );
    let (want, events) = content_of(LLAMA_CHAT);
    assert_eq!(content_of(&w.text()).0, want);

    kv = w.kv;
    let (_s, w) = cached_request(config(), &kv, "k1", CHAT_DETERMINISTIC, &[]);
    assert!(w.upstream.is_empty(), "a hit does not go upstream");
    assert!(w.ended);
    assert_eq!(w.header("x-cache"), Some("hit"));
    assert!(w
        .header("server-timing")
        .unwrap()
        .starts_with("cache;desc=hit"));
    let (text, n) = content_of(&w.text());
    assert_eq!(text, want);
    assert_eq!(n, events, "the same pieces, one event each");
    assert!(w.text().trim_end().ends_with("data: [DONE]"));
    assert!(w.text().contains("\"usage\""));

    // The same answer in another format, and as JSON.
    let (_s, w) = cached_request(
        config(),
        &kv,
        "k1",
        CHAT_DETERMINISTIC,
        &[("X-Tokenedge-Format", "text")],
    );
    assert!(w.upstream.is_empty());
    assert_eq!(w.text(), want);
    let json_body = CHAT_DETERMINISTIC.replace("\"stream\":true", "\"stream\":false");
    let (_s, w) = cached_request(config(), &kv, "k1", &json_body, &[]);
    assert!(w.upstream.is_empty());
    assert_eq!(w.json()["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(w.header("x-cache"), Some("hit"));

    // Another key does not see it; no-store neither reads nor writes.
    let (_s, w) = cached_request(config(), &kv, "k2", CHAT_DETERMINISTIC, &[]);
    assert_eq!(w.upstream.len(), 1, "entries are scoped to the API key");
    let (_s, w) = cached_request(
        config(),
        &kv,
        "k1",
        CHAT_DETERMINISTIC,
        &[("Cache-Control", "no-store")],
    );
    assert_eq!(w.upstream.len(), 1);
    assert!(w.header("x-cache").is_none() && w.kv_reads.iter().all(|k| !k.starts_with("cache:")));
}

#[test]
fn how_an_answer_was_served_is_shown_only_when_the_deployment_asks() {
    let quiet = Config {
        debug_headers: false,
        ..config()
    };
    let (mut s, mut w) = cached_request(
        quiet.clone(),
        &Default::default(),
        "k1",
        CHAT_DETERMINISTIC,
        &[],
    );
    fire_timers(&mut s, &mut w, 1_000);
    s.handle_upstream_head(1_001, 200, &sse_head());
    w.pump(&mut s, 1_001);
    feed(&mut s, &mut w, LLAMA_CHAT, 1);
    assert!(w.ended);
    let kv = w.kv.clone();
    assert!(kv.keys().any(|k| k.starts_with("cache:")));
    // A hit: served from the cache, but nothing says so.
    let (_s, w) = cached_request(quiet, &kv, "k1", CHAT_DETERMINISTIC, &[]);
    assert!(w.upstream.is_empty(), "a hit");
    let names: Vec<&str> = w
        .head
        .as_ref()
        .unwrap()
        .headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(
        !names.contains(&"x-cache") && !names.contains(&"server-timing"),
        "{names:?}"
    );
}

#[test]
fn exact_cache_stores_nothing_for_broken_or_sampled_answers() {
    let mut kv = std::collections::HashMap::new();
    // Cut mid-stream: an error event, and no entry.
    let (mut s, mut w) = cached_request(config(), &kv, "k1", CHAT_DETERMINISTIC, &[]);
    s.handle_upstream_head(1, 200, &sse_head());
    let half: String = LLAMA_CHAT.split_inclusive("\n\n").take(5).collect();
    s.handle_upstream_chunk(2, Bytes::from(half));
    s.handle_upstream_failed(3, "reset");
    w.pump(&mut s, 3);
    assert!(w.ended);
    assert!(
        w.kv_writes.iter().all(|(k, ..)| !k.starts_with("cache:")),
        "{:?}",
        w.kv_writes
    );
    // A sampled request is not cacheable at all.
    kv = w.kv;
    let (mut s, mut w) = cached_request(config(), &kv, "k1", CHAT_STREAM, &[]);
    s.handle_upstream_head(1, 200, &sse_head());
    feed(&mut s, &mut w, LLAMA_CHAT, 10);
    assert_eq!(w.header("x-cache"), Some("bypass"));
    assert!(w.kv_writes.iter().all(|(k, ..)| !k.starts_with("cache:")));
}

#[test]
fn exact_cache_with_kv_down_or_slow_still_serves() {
    let mut kv = std::collections::HashMap::new();
    let mut s = Session::new(config());
    let mut w = World {
        kv_down: true,
        ..World::default()
    };
    let (head, body) = post("/v1/chat/completions", CHAT_DETERMINISTIC);
    s.handle_request(0, head, body);
    w.pump(&mut s, 0);
    assert_eq!(w.upstream.len(), 1, "a failed read is a miss");

    // A read that never answers: the lookup gives up and goes upstream.
    let mut s = Session::new(config());
    let (head, body) = post("/v1/chat/completions", CHAT_DETERMINISTIC);
    s.handle_request(0, head, body);
    let mut gets = 0;
    while let Some(a) = s.poll_action() {
        gets += usize::from(matches!(a, Action::KvGet { .. }));
        assert!(!matches!(a, Action::SendUpstream(_)));
    }
    assert!(gets >= 1);
    let due = s.poll_timeout().unwrap();
    assert!(due <= 300);
    s.handle_timeout(due);
    let mut w = World {
        kv: std::mem::take(&mut kv),
        ..World::default()
    };
    w.pump(&mut s, due);
    assert_eq!(w.upstream.len(), 1);
}

/// Regression (found by fuzzing the session): an upstream that closes
/// before its response head left the session waiting for ever, with no
/// answer and no timer.
#[test]
fn upstream_closing_before_its_head_is_answered() {
    for body in [CHAT_JSON, CHAT_STREAM] {
        let (mut s, mut w) = start(config(), "/v1/chat/completions", body);
        s.handle_upstream_end(5);
        w.pump(&mut s, 5);
        assert_eq!(w.status(), 502, "{body}");
        assert_eq!(w.json()["error"]["code"], "upstream_unreachable");
        assert!(s.is_finished());
        assert_eq!(s.poll_timeout(), None);
    }
}

/// A client that leaves while a replica's failure is being reported: the
/// report still reaches the deployment, and nothing more goes to the
/// client.
#[test]
fn a_client_leaving_does_not_drop_a_health_report() {
    let cfg = Config {
        upstream_urls: vec!["http://a:1".into(), "http://b:1".into()],
        ..config()
    };
    let (mut s, mut w) = start(cfg, "/v1/chat/completions", CHAT_STREAM);
    s.handle_upstream_failed(1, "connection refused");
    // The adapter had not carried the fallback out when the client left.
    s.handle_downstream_closed(2);
    w.pump(&mut s, 2);
    assert_eq!(w.health.len(), 1);
    assert!(!w.health[0].1, "reported down");
    assert!(w.head.is_none(), "nothing to the client");
    assert!(s.is_finished());
}

/// A key list that parses to nothing (a secret stored under a wrong name, a
/// secrets outage, `API_KEYS=","`) closes the gateway instead of opening it,
/// unless the deployment says `AUTH=off`.
#[test]
fn no_usable_api_keys_fails_closed() {
    for keys in [None, Some(""), Some(","), Some(" , ,")] {
        let cfg = Config::from_lookup(|name| match name {
            "UPSTREAM_URL" => Some("http://upstream:8081".into()),
            "API_KEYS" => keys.map(str::to_owned),
            _ => None,
        });
        for (method, path) in [("POST", "/v1/chat/completions"), ("GET", "/v1/models")] {
            let (head, body) = post(path, CHAT_STREAM);
            let head = RequestHead::new(method, path, head.headers);
            let mut s = Session::new(cfg.clone());
            let mut w = World::default();
            s.handle_request(0, head, body);
            w.pump(&mut s, 0);
            assert_eq!(w.status(), 503, "{keys:?} {path}");
            assert_eq!(w.json()["error"]["code"], "auth_not_configured");
            assert!(w.upstream.is_empty(), "nothing goes upstream");
        }
        let mut s = Session::new(cfg);
        let mut w = World::default();
        s.handle_request(0, RequestHead::new("GET", "/healthz", vec![]), Bytes::new());
        w.pump(&mut s, 0);
        assert_eq!(w.upstream.len(), 1, "health needs no key");
    }
    let open = Config::from_lookup(|name| match name {
        "UPSTREAM_URL" => Some("http://upstream:8081".into()),
        "AUTH" => Some("off".into()),
        _ => None,
    });
    let (_, w) = start(open, "/v1/chat/completions", CHAT_STREAM);
    assert_eq!(w.upstream.len(), 1, "AUTH=off serves without keys");
}

/// Regression (found by fuzzing the configuration): timeouts near `u64::MAX`
/// overflowed `now + interval` and fired at once (or never); they are
/// clamped, so a silent upstream still times out.
#[test]
fn huge_configured_timeouts_still_time_out() {
    let max = u64::MAX.to_string();
    let cfg = Config::from_lookup(|name| match name {
        "UPSTREAM_URL" => Some("http://upstream:8081".into()),
        "AUTH" | "RESUME" => Some("off".into()),
        "FIRST_BYTE_TIMEOUT_MS" | "IDLE_TIMEOUT_MS" | "KEEPALIVE_INTERVAL_MS" => Some(max.clone()),
        _ => None,
    });
    let (mut s, mut w) = start(cfg, "/v1/chat/completions", CHAT_STREAM);
    let due = s.poll_timeout().expect("a deadline");
    assert!(due > 0 && due <= 10 * 60_000, "{due}");
    fire_timers(&mut s, &mut w, 10 * 60_000);
    assert!(w.ended, "the silent upstream timed out");
    assert!(w.text().contains("upstream_timeout"), "{}", w.text());
    // A minute apart until the ten-minute limit: at 1, 2, …, 9 minutes.
    assert_eq!(
        w.text().matches(": status {\"phase\":\"waiting\"").count(),
        9,
        "keep-alives a minute apart: {}",
        w.text()
    );
}

/// A replica list that parses to an unusable URL is a configuration error
/// with a clear message, not a request to "/v1/chat/completions".
#[test]
fn a_replica_list_with_an_empty_url_is_refused() {
    for list in ["http://a:1, /", "http://a:1, b:2"] {
        let cfg = Config::from_lookup(|name| match name {
            "UPSTREAM_URL" => Some(list.into()),
            "AUTH" => Some("off".into()),
            _ => None,
        });
        let (_, w) = start(cfg, "/v1/chat/completions", CHAT_STREAM);
        assert_eq!(w.status(), 503, "{list}");
        assert_eq!(w.json()["error"]["code"], "misconfigured");
        assert!(w.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UPSTREAM_URL"));
        assert!(w.upstream.is_empty());
    }
}

/// Inputs that cost money or that the API does not allow are refused with
/// a 400 naming the field, before anything goes upstream: out-of-range
/// sampling values, non-positive or over-cap lengths, `n` over the cap, a
/// message role outside the API's set.
#[test]
fn out_of_range_inputs_are_400_and_never_forwarded() {
    let cfg = Config {
        max_n: 4,
        max_tokens_cap: 1000,
        ..config()
    };
    let cases: &[(&str, &str)] = &[
        (r#""max_tokens":-5"#, "max_tokens"),
        (r#""max_tokens":0"#, "max_tokens"),
        (r#""max_completion_tokens":1001"#, "max_completion_tokens"),
        (r#""max_tokens":1000000"#, "max_tokens"),
        (r#""n":100000"#, "n"),
        (r#""n":5"#, "n"),
        (r#""temperature":2.5"#, "temperature"),
        (r#""temperature":-0.1"#, "temperature"),
        (r#""top_p":1.5"#, "top_p"),
        (r#""presence_penalty":-3"#, "presence_penalty"),
        (r#""frequency_penalty":2.01"#, "frequency_penalty"),
        (r#""top_logprobs":21"#, "top_logprobs"),
    ];
    for (field, param) in cases {
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],{field}}}"#);
        let (_, w) = start(cfg.clone(), "/v1/chat/completions", &body);
        assert_eq!(w.status(), 400, "{field}");
        assert_eq!(w.json()["error"]["param"], *param, "{field}");
        assert!(w.upstream.is_empty(), "{field}");
    }
    let body = r#"{"model":"m","messages":[{"role":"hacker","content":"hi"}]}"#;
    let (_, w) = start(cfg.clone(), "/v1/chat/completions", body);
    assert_eq!(w.status(), 400);
    assert_eq!(w.json()["error"]["param"], "messages[0].role");
    let body = r#"{"model":"m","prompt":"Once","max_tokens":-1}"#;
    let (_, w) = start(cfg.clone(), "/v1/completions", body);
    assert_eq!(w.status(), 400);
    // The edges of each range are fine.
    let body = r#"{"model":"m","messages":[{"role":"developer","content":"x"},{"role":"user","content":"hi"}],"n":4,"max_tokens":1000,"temperature":2,"top_p":0,"presence_penalty":-2,"frequency_penalty":2}"#;
    let (_, w) = start(cfg, "/v1/chat/completions", body);
    assert_eq!(w.upstream.len(), 1, "{}", w.text());
}

/// An upstream that refuses tokenedge's own credentials (a wrong
/// `UPSTREAM_API_KEY`) is the deployment's problem: clients get a generic
/// 502, never the upstream's message (OpenAI's quotes the key's end).
#[test]
fn upstream_auth_failures_are_502_without_the_upstream_message() {
    for status in [401, 403] {
        let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_STREAM);
        s.handle_upstream_head(
            1,
            status,
            &[("content-type".into(), "application/json".into())],
        );
        s.handle_upstream_chunk(
            2,
            Bytes::from_static(br#"{"error":{"message":"Incorrect API key provided: sk-proj-****wxyz","type":"invalid_request_error"}}"#),
        );
        s.handle_upstream_end(3);
        w.pump(&mut s, 3);
        assert_eq!(w.status(), 502, "{status}");
        assert_eq!(w.json()["error"]["code"], "upstream_auth_failed");
        assert!(!w.text().contains("wxyz"), "{}", w.text());
    }
}

/// `/healthz` needs no key, so it says ok or degraded and nothing else (no
/// transport errors, no upstream status or latency), and answers from a
/// probe made in the last few seconds instead of probing per hit.
#[test]
fn health_says_little_and_probes_at_most_every_few_seconds() {
    let mut s = Session::new(config());
    let mut w = World::default();
    s.handle_request(0, RequestHead::new("GET", "/healthz", vec![]), Bytes::new());
    s.handle_upstream_failed(1, "connect to 10.0.0.7:8081: connection refused");
    w.pump(&mut s, 1);
    assert_eq!(w.status(), 503);
    assert_eq!(w.json()["status"], "degraded");
    assert!(
        !w.text().contains("10.0.0.7") && !w.text().contains("refused"),
        "{}",
        w.text()
    );
    let mut health = tokenedge::core::route::Health::default();
    for (probe, ok) in &w.probes {
        health.probed(*ok, *probe);
    }
    assert_eq!(w.probes.len(), 1, "the probe's result is reported");

    // Within the next few seconds: answered from that probe.
    let mut s = Session::new(config()).with_health(health.clone());
    let mut w = World::default();
    s.handle_request(
        2_000,
        RequestHead::new("GET", "/healthz", vec![]),
        Bytes::new(),
    );
    w.pump(&mut s, 2_000);
    assert!(w.upstream.is_empty(), "no new probe");
    assert_eq!(w.status(), 503);
    // Later: probed again.
    let mut s = Session::new(config()).with_health(health);
    let mut w = World::default();
    s.handle_request(
        60_000,
        RequestHead::new("GET", "/healthz", vec![]),
        Bytes::new(),
    );
    w.pump(&mut s, 60_000);
    assert_eq!(w.upstream.len(), 1);
    s.handle_upstream_head(60_010, 200, &[]);
    w.pump(&mut s, 60_010);
    assert_eq!(w.status(), 200);
    assert_eq!(
        w.text().trim(),
        r#"{"status":"ok","upstream":{"reachable":true}}"#
    );
}

fn head_only(cfg: Config, path: &str, headers: &[(&str, &str)]) -> (Session, World) {
    let mut s = Session::new(cfg);
    let mut w = World::default();
    let headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.handle_request_head(0, RequestHead::new("POST", path, headers));
    w.pump(&mut s, 0);
    (s, w)
}

/// Route, key, declared length and content type are decided from the head:
/// a refused request's body is never read.
#[test]
fn nothing_of_the_body_is_read_before_the_head_passes() {
    let keyed = Config {
        api_keys: vec!["k".into()],
        ..config()
    };
    let fifty_mb = (50 * 1024 * 1024).to_string();
    let json = ("content-type", "application/json");
    for path in ["/v1/chat/completions", "/v1/prefetch"] {
        let (_, w) = head_only(keyed.clone(), path, &[json, ("content-length", &fifty_mb)]);
        assert_eq!(w.status(), 401, "{path}");
        assert_eq!(w.body_wanted, None, "{path}");
    }
    let auth = ("authorization", "Bearer k");
    let (_, w) = head_only(
        keyed.clone(),
        "/v1/chat/completions",
        &[json, auth, ("content-length", &fifty_mb)],
    );
    assert_eq!(w.status(), 413);
    assert_eq!(w.body_wanted, None);
    let (_, w) = head_only(
        keyed.clone(),
        "/v1/chat/completions",
        &[("content-type", "text/plain"), auth],
    );
    assert_eq!(w.status(), 415);
    assert_eq!(w.body_wanted, None);

    // A head that passes asks for the body, within the limit.
    let (mut s, mut w) = head_only(keyed.clone(), "/v1/chat/completions", &[json, auth]);
    assert!(w.head.is_none());
    assert_eq!(w.body_wanted, Some(keyed.max_body_bytes));
    s.handle_request_body(1, Bytes::from(CHAT_STREAM));
    w.pump(&mut s, 1);
    assert_eq!(w.upstream.len(), 1);

    // A body that runs past the limit (no Content-Length) is cut off: 413.
    let (mut s, mut w) = head_only(keyed.clone(), "/v1/chat/completions", &[json, auth]);
    s.handle_request_body_too_large(1);
    w.pump(&mut s, 1);
    assert_eq!(w.status(), 413);
    assert!(w.upstream.is_empty());

    // A body that cannot be read is its own error, not a misleading 400
    // about JSON.
    let (mut s, mut w) = head_only(keyed, "/v1/chat/completions", &[json, auth]);
    s.handle_request_body_failed(1, "connection reset");
    w.pump(&mut s, 1);
    assert_eq!(w.status(), 400);
    assert_eq!(w.json()["error"]["code"], "body_unreadable");
}
