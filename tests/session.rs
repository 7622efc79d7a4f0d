//! The core in a simulated world: a scripted upstream, a virtual clock, and
//! a recording client. Each test drives one `Session` the way an adapter
//! would and checks what the client receives and when.

use bytes::Bytes;
use serde_json::Value;
use tokenedge::core::config::Config;
use tokenedge::core::http::{RequestHead, ResponseHead, UpstreamRequest};
use tokenedge::core::session::{Action, Session, KEEPALIVE_COMMENT};

/// Everything the session asked for, in order.
#[derive(Default, Debug)]
struct World {
    upstream: Vec<UpstreamRequest>,
    cancelled: bool,
    head: Option<ResponseHead>,
    body: Vec<u8>,
    ended: bool,
    /// (time, bytes) of each chunk the client received.
    chunks: Vec<(u64, Vec<u8>)>,
    /// An in-memory KV store, the keys read and the writes made.
    kv: std::collections::HashMap<String, Bytes>,
    kv_reads: Vec<String>,
    kv_writes: Vec<(String, Bytes, u64)>,
    /// When set, every KV read fails.
    kv_down: bool,
}

impl World {
    fn pump(&mut self, s: &mut Session, now: u64) {
        let mut reads = Vec::new();
        loop {
            self.pump_actions(s, now, &mut reads);
            if reads.is_empty() {
                return;
            }
            for key in reads.drain(..) {
                let value = if self.kv_down {
                    None
                } else {
                    self.kv.get(&key).cloned()
                };
                self.kv_reads.push(key.clone());
                s.handle_kv_value(now, &key, value);
            }
        }
    }

    fn pump_actions(&mut self, s: &mut Session, now: u64, reads: &mut Vec<String>) {
        while let Some(a) = s.poll_action() {
            assert!(!self.ended, "action after the end: {a:?}");
            match a {
                Action::SendUpstream(r) => self.upstream.push(r),
                Action::CancelUpstream => self.cancelled = true,
                Action::Respond(h, b) => {
                    assert!(self.head.is_none());
                    self.head = Some(h);
                    self.body = b.to_vec();
                    self.ended = true;
                }
                Action::RespondHead(h) => {
                    assert!(self.head.is_none());
                    self.head = Some(h);
                }
                Action::RespondChunk(b) => {
                    assert!(self.head.is_some(), "chunk before head");
                    self.body.extend_from_slice(&b);
                    self.chunks.push((now, b.to_vec()));
                }
                Action::RespondEnd => self.ended = true,
                Action::KvGet { key } => reads.push(key),
                Action::KvPut {
                    key,
                    value,
                    ttl_secs,
                } => {
                    self.kv.insert(key.clone(), value.clone());
                    self.kv_writes.push((key, value, ttl_secs));
                }
            }
        }
    }

    fn status(&self) -> u16 {
        self.head.as_ref().expect("no response head").status
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.as_ref()?.header(name)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn config() -> Config {
    Config {
        upstream_url: "http://upstream:8081".into(),
        ..Config::default()
    }
}

fn post(path: &str, body: &str) -> (RequestHead, Bytes) {
    let head = RequestHead::new(
        "POST",
        path,
        vec![
            ("Content-Type".into(), "application/json".into()),
            ("Authorization".into(), "Bearer client-key".into()),
        ],
    );
    (head, Bytes::copy_from_slice(body.as_bytes()))
}

const CHAT_STREAM: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
const CHAT_JSON: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

fn start(cfg: Config, path: &str, body: &str) -> (Session, World) {
    let mut s = Session::new(cfg);
    let mut w = World::default();
    let (head, body) = post(path, body);
    s.handle_request(0, head, body);
    w.pump(&mut s, 0);
    (s, w)
}

fn sse_head() -> Vec<(String, String)> {
    vec![("content-type".into(), "text/event-stream".into())]
}

/// A JSON stream request with `extra` headers, answered by an upstream SSE
/// head at t=1.
fn streaming_with(cfg: Config, extra: &[(&str, &str)]) -> (Session, World) {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut s = Session::new(cfg);
    let mut w = World::default();
    s.handle_request(
        0,
        RequestHead::new("POST", "/v1/chat/completions", headers),
        Bytes::from(CHAT_STREAM),
    );
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    (s, w)
}

const CONTENT: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
const FINISH: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n";

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
    // No upstream head yet: at 15 s the stream is committed with a comment.
    assert_eq!(s.poll_timeout(), Some(15_000));
    s.handle_timeout(15_000);
    w.pump(&mut s, 15_000);
    assert_eq!(w.status(), 200);
    assert_eq!(w.body, KEEPALIVE_COMMENT);
    s.handle_upstream_head(20_000, 200, &sse_head());
    assert_eq!(s.poll_timeout(), Some(30_000));
    s.handle_timeout(30_000);
    s.handle_upstream_chunk(31_000, Bytes::from(CONTENT));
    w.pump(&mut s, 31_000);
    assert_eq!(w.chunks.len(), 3);
    // Content pushed the next keep-alive back.
    assert_eq!(s.poll_timeout(), Some(46_000));
    // An upstream error after the commit becomes an error event, not a status.
    s.handle_upstream_failed(32_000, "reset");
    w.pump(&mut s, 32_000);
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
fn missing_upstream_url_is_a_500() {
    let (_, w) = start(Config::default(), "/v1/chat/completions", CHAT_STREAM);
    assert_eq!(w.status(), 500);
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
