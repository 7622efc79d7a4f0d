//! A Responses API stream against a chat stream of the same text, through
//! the whole session, in the same run: the captured llama.cpp chat stream
//! (40 text pieces), and the same pieces as llama.cpp's Responses events
//! (`response.created` … one `response.output_text.delta` per piece … the
//! `done` events and `response.completed` carrying the whole text).
//! Throughput is per text piece (≈ token), so the two rows compare the
//! cost of the same answer in each protocol; plain and gzip.
//!
//!   cargo bench --bench responses

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::{Action, Session};

const CHAT: &str = include_str!("../tests/vectors/llamacpp_chat.sse");

/// The chat vector's text pieces.
fn pieces() -> Vec<String> {
    CHAT.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// The same pieces as a llama.cpp Responses stream.
fn responses_stream(pieces: &[String]) -> Vec<Bytes> {
    let item = "msg_vIrXSLIwHO0hAsJLHttpL96WEUSol6Xo";
    let response = json!({"id": "resp_SmRqTt6xoAQG4BqL96cvny9elJT280SW", "object": "response", "status": "in_progress"});
    let text: String = pieces.concat();
    let part = json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text});
    let message = json!({"type": "message", "status": "completed", "id": item, "content": [part], "role": "assistant"});
    let mut events = vec![
        json!({"type": "response.created", "response": response}),
        json!({"type": "response.in_progress", "response": response}),
        json!({"type": "response.output_item.added", "item": {"content": [], "id": item, "role": "assistant", "status": "in_progress", "type": "message"}}),
        json!({"type": "response.content_part.added", "item_id": item, "part": {"type": "output_text", "text": ""}}),
    ];
    for p in pieces {
        events.push(json!({"type": "response.output_text.delta", "item_id": item, "delta": p}));
    }
    events.push(json!({"type": "response.output_text.done", "item_id": item, "text": text}));
    events.push(json!({"type": "response.content_part.done", "item_id": item, "part": part}));
    events.push(json!({"type": "response.output_item.done", "item": message}));
    events.push(json!({"type": "response.completed", "response": {
        "id": "resp_SmRqTt6xoAQG4BqL96cvny9elJT280SW", "object": "response", "created_at": 1796120340,
        "status": "completed", "model": "-", "output": [message],
        "usage": {"input_tokens": 37, "output_tokens": pieces.len(), "total_tokens": 37 + pieces.len()}}}));
    events
        .iter()
        .map(|e| {
            Bytes::from(format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().unwrap()
            ))
        })
        .collect()
}

fn run(path: &str, request: &Bytes, headers: &[(String, String)], chunks: &[Bytes]) -> usize {
    let config = Config {
        upstream_urls: vec!["http://up".into()],
        auth_off: true,
        ..Config::default()
    };
    let sse = [("content-type".to_string(), "text/event-stream".to_string())];
    let mut s = Session::new(config);
    s.handle_request(
        0,
        RequestHead::new("POST", path, headers.to_vec()),
        request.clone(),
    );
    s.handle_upstream_head(1, 200, &sse);
    let mut total = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        s.handle_upstream_chunk(2 + i as u64, chunk.clone());
        while let Some(a) = s.poll_action() {
            if let Action::RespondChunk(b) = a {
                total += b.len();
            }
        }
    }
    s.handle_upstream_end(1_000);
    while let Some(a) = s.poll_action() {
        if let Action::RespondChunk(b) = a {
            total += b.len();
        }
    }
    total
}

fn bench(c: &mut Criterion) {
    let pieces = pieces();
    let chat: Vec<Bytes> = CHAT
        .split_inclusive("\n\n")
        .map(|e| Bytes::copy_from_slice(e.as_bytes()))
        .collect();
    let responses = responses_stream(&pieces);
    let chat_request = Bytes::from_static(
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    );
    let responses_request = Bytes::from_static(br#"{"model":"m","input":"hi","stream":true}"#);
    let mut group = c.benchmark_group("per_text_piece");
    group.throughput(Throughput::Elements(pieces.len() as u64));
    for (coding, extra) in [("plain", None), ("gzip", Some(("accept-encoding", "gzip")))] {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        headers.extend(extra.map(|(k, v)| (k.to_string(), v.to_string())));
        group.bench_function(format!("chat_{coding}"), |b| {
            b.iter(|| run("/v1/chat/completions", &chat_request, &headers, &chat))
        });
        group.bench_function(format!("responses_{coding}"), |b| {
            b.iter(|| run("/v1/responses", &responses_request, &headers, &responses))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
