//! Sequences of session operations in any order, against the invariants
//! every adapter relies on: no panic; one response head; no chunk before
//! it; nothing to the client after the end or after the client left; a
//! compressed body decodes after every chunk, and its trailer checks at a
//! clean end; an event stream ends with its
//! terminator or an error event and nothing after, every event one line of
//! JSON; a stored entry decodes; a timer that fired is not due any more;
//! and the session finishes once its timers run out.
#![no_main]

#[path = "inflate.rs"]
mod inflate;

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokenedge::core::cache::Entry;
use tokenedge::core::config::{Config, Dialect, Speculate};
use tokenedge::core::http::{RequestHead, ResponseHead};
use tokenedge::core::quota::{Tally, Verdict};
use tokenedge::core::session::{Action, KvRead, Session};

#[derive(Arbitrary, Debug)]
struct Input {
    request: Request,
    limits: bool,
    speculate: bool,
    /// The semantic cache on for every eligible request.
    semantic: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Request {
    endpoint: u8,
    stream: bool,
    format: u8,
    coding: u8,
    n: u8,
    prompt_array: bool,
    greedy: bool,
    body_with_head: bool,
    raw_body: Option<Vec<u8>>,
    headers: Vec<(u8, String)>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    UpstreamHead {
        status: u8,
        sse: bool,
    },
    UpstreamEvent(Event),
    UpstreamBytes(Vec<u8>),
    UpstreamEnd,
    UpstreamFailed,
    DownstreamClosed,
    DownstreamDrained,
    Advance(u16),
    KvAnswer {
        stored: bool,
        bytes: Option<Vec<u8>>,
    },
    Admission(u8),
    /// The embeddings endpoint answers: a vector (as a JSON number list),
    /// or raw bytes, with a 2xx status or not; or the call fails.
    Embedding {
        ok: bool,
        vector: Option<Vec<i8>>,
        raw: Vec<u8>,
        failed: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum Event {
    Role,
    Content {
        index: u8,
        text: String,
    },
    Finish {
        index: u8,
        reason: u8,
    },
    Usage {
        prompt: u64,
        completion: u64,
    },
    MultiLine(String),
    Done,
    Error,
    /// A Responses API typed event.
    Typed {
        kind: u8,
        text: String,
    },
}

const HEADER_NAMES: &[&str] = &[
    "x-tokenedge-prefix",
    "x-tokenedge-bandwidth",
    "cache-control",
    "content-length",
    "content-type",
    "origin",
    "save-data",
    "downlink",
    "ect",
    "rtt",
    "last-event-id",
    "x-tokenedge-cache",
];

fn request_of(r: &Request) -> (RequestHead, Bytes) {
    let path = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/healthz",
        "/v1/prefetch",
        "/v1/streams/st_00000000000000000000000000000000",
        "/v1/streams/st_00000000000000000000000000000000/cancel",
        "/v1/responses",
    ][usize::from(r.endpoint) % 8];
    let mut body = serde_json::json!({
        "model": "m",
        "max_tokens": 8,
        "stream": r.stream,
        "n": 1 + u64::from(r.n % 3),
    });
    if path == "/v1/responses" {
        body = serde_json::json!({"model": "m", "input": "hi", "max_output_tokens": 8, "stream": r.stream});
    } else if path == "/v1/completions" {
        body["prompt"] = if r.prompt_array {
            serde_json::json!(["a", "b"])
        } else {
            "a".into()
        };
    } else {
        body["messages"] = serde_json::json!([{"role": "user", "content": "hi"}]);
    }
    if r.greedy {
        body["temperature"] = 0.into();
    }
    let body = match &r.raw_body {
        Some(raw) => Bytes::from(raw.clone()),
        None => Bytes::from(body.to_string()),
    };
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if let Some(f) = ["openai", "compact", "ndjson", "text"].get(usize::from(r.format)) {
        headers.push(("x-tokenedge-format".into(), (*f).into()));
    }
    if let Some(c) = ["gzip", "deflate", "gzip, deflate"].get(usize::from(r.coding)) {
        headers.push(("accept-encoding".into(), (*c).into()));
    }
    for (name, value) in r.headers.iter().take(4) {
        let name = HEADER_NAMES[usize::from(*name) % HEADER_NAMES.len()];
        headers.push((name.into(), value.clone()));
    }
    let method = if path == "/v1/models" || path == "/healthz" || path.ends_with("0000") {
        "GET"
    } else {
        "POST"
    };
    (RequestHead::new(method, path, headers), body)
}

fn event_bytes(e: &Event) -> Vec<u8> {
    if let Event::Typed { kind, text } = e {
        let kind = [
            "response.created",
            "response.output_text.delta",
            "response.function_call_arguments.delta",
            "response.completed",
            "response.incomplete",
            "response.failed",
            "error",
        ][usize::from(*kind) % 7];
        let data = serde_json::json!({
            "type": kind, "delta": text, "sequence_number": text.len(),
            "response": {"status": "x", "usage": {"output_tokens": 1}},
        });
        return format!("event: {kind}\ndata: {data}\n\n").into_bytes();
    }
    let data = match e {
        Event::Role => r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#.to_owned(),
        Event::Content { index, text } => serde_json::json!({
            "choices": [{"index": index % 3, "delta": {"content": text}}]
        })
        .to_string(),
        Event::Finish { index, reason } => {
            let reason =
                ["stop", "length", "abort", "error", "tool_calls"][usize::from(*reason) % 5];
            serde_json::json!({
                "choices": [{"index": index % 3, "delta": {}, "finish_reason": reason}]
            })
            .to_string()
        }
        Event::Usage { prompt, completion } => serde_json::json!({
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt.saturating_add(*completion)}
        })
        .to_string(),
        // Legal SSE: one JSON value over several data lines.
        Event::MultiLine(text) => {
            let v = serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]});
            serde_json::to_string_pretty(&v).unwrap()
        }
        Event::Done => "[DONE]".to_owned(),
        Event::Error => r#"{"error":{"message":"boom","type":"server_error"}}"#.to_owned(),
        Event::Typed { .. } => unreachable!("written above"),
    };
    let mut out = Vec::new();
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// What the client and the platform have seen.
#[derive(Default)]
struct World {
    head: Option<ResponseHead>,
    /// The body as the client decodes it.
    body: Vec<u8>,
    decoder: Option<inflate::Inflater>,
    ended: bool,
    client_left: bool,
    /// A streamed generation, answered in the format it asked for.
    event_stream: bool,
    /// A Responses API stream (it ends with its own typed event).
    responses: bool,
    kv: std::collections::HashMap<String, Bytes>,
    reads: VecDeque<(String, KvRead)>,
    admit: Option<(String, tokenedge::core::quota::Ask)>,
    tallies: std::collections::HashMap<String, Tally>,
    body_asked: bool,
    /// Embeddings calls not answered yet.
    embeds: usize,
}

impl World {
    fn pump(&mut self, s: &mut Session, now: u64, body: &Bytes) {
        while let Some(a) = s.poll_action() {
            let to_client = matches!(
                a,
                Action::Respond(..)
                    | Action::RespondHead(_)
                    | Action::RespondChunk(_)
                    | Action::RespondEnd
                    | Action::RespondAbort
            );
            assert!(
                !(to_client && self.ended),
                "written to the client after the end: {a:?}"
            );
            assert!(
                !(to_client && self.client_left),
                "written to a client that left: {a:?}"
            );
            match a {
                Action::Respond(head, b) => {
                    assert!(self.head.is_none(), "a second head");
                    check_error_body(&head, &b);
                    self.head = Some(head);
                    self.ended = true;
                }
                Action::RespondHead(head) => {
                    assert!(self.head.is_none(), "a second head");
                    self.decoder = match head.header("content-encoding") {
                        Some("gzip") => Some(inflate::Inflater::new(true)),
                        Some("deflate") => Some(inflate::Inflater::new(false)),
                        _ => None,
                    };
                    self.head = Some(head);
                }
                Action::RespondChunk(b) => {
                    assert!(self.head.is_some(), "a chunk before the head");
                    let plain = match &mut self.decoder {
                        Some(d) => d.feed(&b).expect("the coded body decodes"),
                        None => b.to_vec(),
                    };
                    self.body.extend_from_slice(&plain);
                }
                Action::RespondEnd => {
                    assert!(self.head.is_some(), "an end before the head");
                    self.ended = true;
                    // A clean end carries the coding's trailer, and it checks.
                    if let Some(d) = self.decoder.take() {
                        let whole = d.finish().expect("the ended body's trailer checks");
                        assert_eq!(
                            whole, self.body,
                            "the ended body differs from what was decoded"
                        );
                    }
                    if self.event_stream && self.head.as_ref().is_some_and(|h| h.status == 200) {
                        self.check_stream_end();
                    }
                }
                Action::RespondAbort => {
                    assert!(self.head.is_some(), "an abort before the head");
                    self.ended = true;
                }
                Action::ReadBody { .. } => {
                    assert!(!self.body_asked, "the body asked for twice");
                    self.body_asked = true;
                    s.handle_request_body(now, body.clone());
                }
                Action::SendUpstream(_) | Action::CancelUpstream => {}
                Action::Embed(_) => self.embeds += 1,
                Action::KvGet { key, read } => self.reads.push_back((key, read)),
                Action::KvPut { key, value, .. } => {
                    if key.starts_with("cache:") || key.starts_with("prefix:") {
                        assert!(
                            Entry::decode(&value).is_some(),
                            "a stored entry does not decode: {key}"
                        );
                    }
                    self.kv.insert(key, value);
                }
                Action::KvDelete { key } => {
                    self.kv.remove(&key);
                }
                Action::Admit { key, ask } => {
                    assert!(self.admit.is_none(), "two admissions at once");
                    self.admit = Some((key, ask));
                }
                Action::Release { key, lease } => {
                    self.tallies.entry(key).or_default().release(now, lease);
                }
                Action::ReplicaHealth { .. } | Action::HealthProbe { .. } => {}
            }
        }
    }

    /// An event stream that ended cleanly ends with its terminator or an
    /// error event, each event one line of JSON.
    fn check_stream_end(&self) {
        let Some(head) = &self.head else { return };
        let content_type = head.header("content-type").unwrap_or("");
        let text = String::from_utf8_lossy(&self.body);
        if content_type.starts_with("text/event-stream") {
            let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
            for e in &events {
                let data: Vec<&str> = e.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                assert!(data.len() <= 1, "an event with several data lines: {e:?}");
                for d in data {
                    assert!(d == "[DONE]" || is_json(d), "data that is not JSON: {d:?}");
                }
            }
            let last = events
                .iter()
                .rev()
                .find(|e| !e.starts_with(':'))
                .copied()
                .unwrap_or("");
            // A Responses stream ends with its final typed event, named or
            // not (an upstream may send it without its `event:` line).
            let final_type = last
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .and_then(|v| v["type"].as_str().map(str::to_owned));
            let typed_end = self.responses
                && matches!(
                    final_type.as_deref(),
                    Some("response.completed" | "response.incomplete")
                );
            assert!(
                last == "data: [DONE]"
                    || typed_end
                    || last.starts_with("event: done\n")
                    || last.starts_with("event: error\n")
                    || last.starts_with("data: {\"error\""),
                "an event stream ended without its terminator: {last:?}"
            );
            assert!(text.ends_with("\n\n"), "an event stream ended mid-event");
        } else if content_type.starts_with("application/x-ndjson") {
            for line in text.lines() {
                assert!(is_json(line), "an ndjson line that is not JSON: {line:?}");
            }
            let last = text.lines().last().expect("an ndjson stream with no line");
            assert!(
                last.starts_with("{\"error\"") || last.contains("\"stats\":{"),
                "an ndjson stream ended without its end line: {last}"
            );
        }
    }
}

/// Valid JSON by the grammar (`1e999` included: clients read it).
fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// `/healthz` says `degraded` in its own shape; every other answer of 4xx
/// or 5xx is an OpenAI error.
fn check_error_body(head: &ResponseHead, body: &[u8]) {
    let json = head
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"));
    if head.status >= 400 && json && !body.starts_with(b"{\"status\"") {
        let v: serde_json::Value = serde_json::from_slice(body).expect("an error body is JSON");
        let e = &v["error"];
        assert!(
            e["message"].is_string() && e.get("type").is_some(),
            "not an OpenAI error: {v}"
        );
    }
}

fuzz_target!(|input: Input| {
    let config = Config {
        upstream_urls: vec!["http://a:1".into(), "http://b:1".into()],
        auth_off: true,
        speculate: if input.speculate {
            Speculate::On
        } else {
            Speculate::Off
        },
        // A dialect that continues chat answers: failover and takeover.
        dialect: if input.speculate {
            Dialect::LlamaCpp
        } else {
            Dialect::OpenAi
        },
        fast_stream_store: input.limits,
        rate_limit_rpm: if input.limits { 2 } else { 0 },
        max_streams_per_key: u32::from(input.limits),
        semantic: tokenedge::core::semantic::Settings {
            url: Some("http://e:1/v1/embeddings".into()),
            mode: if input.semantic {
                tokenedge::core::semantic::Mode::On
            } else {
                tokenedge::core::semantic::Mode::Request
            },
            ..Default::default()
        },
        ..Config::default()
    };
    let mut s = Session::new(config);
    let r = &input.request;
    let mut w = World {
        event_stream: r.stream && r.raw_body.is_none() && matches!(r.endpoint % 8, 0 | 1 | 7),
        responses: r.endpoint % 8 == 7,
        ..World::default()
    };
    let mut now = 1_000_u64;
    let (head, body) = request_of(&input.request);
    if input.request.body_with_head {
        s.handle_request(now, head, body.clone());
    } else {
        s.handle_request_head(now, head);
    }
    w.pump(&mut s, now, &body);
    for op in input.ops.iter().take(64) {
        match op {
            Op::UpstreamHead { status, sse } => {
                let status = [200, 200, 400, 429, 500, 503, 401][usize::from(*status) % 7];
                let ct = if *sse {
                    "text/event-stream"
                } else {
                    "application/json"
                };
                s.handle_upstream_head(now, status, &[("content-type".into(), ct.into())]);
            }
            Op::UpstreamEvent(e) => s.handle_upstream_chunk(now, Bytes::from(event_bytes(e))),
            Op::UpstreamBytes(b) => s.handle_upstream_chunk(now, Bytes::from(b.clone())),
            Op::UpstreamEnd => s.handle_upstream_end(now),
            Op::UpstreamFailed => s.handle_upstream_failed(now, "reset"),
            Op::DownstreamClosed => {
                if w.head.is_some() && !w.ended && !w.client_left {
                    w.client_left = true;
                    s.handle_downstream_closed(now);
                }
            }
            Op::DownstreamDrained => s.handle_downstream_drained(now),
            Op::Advance(ms) => {
                now += u64::from(*ms);
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                    assert!(
                        s.poll_timeout().is_none_or(|t| t > now),
                        "a timer stayed due"
                    );
                }
            }
            Op::KvAnswer { stored, bytes } => {
                if let Some((key, read)) = w.reads.pop_front() {
                    let value = if *stored {
                        w.kv.get(&key).cloned()
                    } else {
                        bytes.clone().map(Bytes::from)
                    };
                    s.handle_kv_value(now, read, value);
                }
            }
            Op::Embedding {
                ok,
                vector,
                raw,
                failed,
            } => {
                if w.embeds > 0 {
                    w.embeds -= 1;
                    if *failed {
                        s.handle_embedding_failed(now);
                    } else {
                        let body = match vector {
                            Some(v) => serde_json::json!({"data": [{"embedding": v}]})
                                .to_string()
                                .into_bytes(),
                            None => raw.clone(),
                        };
                        s.handle_embedding(now, if *ok { 200 } else { 500 }, &body);
                    }
                }
            }
            Op::Admission(v) => {
                if let Some((key, ask)) = w.admit.take() {
                    let verdict = match v % 3 {
                        0 => w.tallies.entry(key).or_default().admit(now, ask),
                        1 => Verdict::Unknown,
                        _ => Verdict::OverRate {
                            retry_after_secs: 1,
                        },
                    };
                    s.handle_admission(now, verdict);
                }
            }
        }
        w.pump(&mut s, now, &body);
    }
    // Let time run out: nothing answers any more.
    for _ in 0..1000 {
        if s.is_finished() {
            break;
        }
        while let Some((_, read)) = w.reads.pop_front() {
            s.handle_kv_value(now, read, None);
            w.pump(&mut s, now, &body);
        }
        let Some(t) = s.poll_timeout() else { break };
        now = now.max(t);
        s.handle_timeout(now);
        assert!(
            s.poll_timeout().is_none_or(|t| t > now),
            "a timer stayed due"
        );
        w.pump(&mut s, now, &body);
    }
    assert!(
        s.is_finished(),
        "the session did not finish once its timers ran out"
    );
    if w.head.is_some() && !w.client_left {
        assert!(w.ended, "the session finished without ending the response");
    }
});
