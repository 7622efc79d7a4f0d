//! The per-token hot path: parse an upstream SSE event and re-emit it for the
//! client, on a real captured llama.cpp stream delivered one event per
//! chunk (as the upstream writes it). Throughput is in events (≈ tokens).
//!
//! Baseline in the same run: copying the same bytes chunk by chunk into a
//! fresh buffer, the least any re-streamer must do. The session is measured
//! plain, with gzip (one context, a sync flush per event), and with gzip in
//! the compact format.
//!
//!   cargo bench --bench restream

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tokenedge::core::config::Config;
use tokenedge::core::format::Format;
use tokenedge::core::http::RequestHead;
use tokenedge::core::restream::Restream;
use tokenedge::core::session::{Action, Session};
use tokenedge::core::sse::Parser;

const STREAM: &[u8] = include_bytes!("../tests/vectors/llamacpp_chat.sse");

/// The vector split after each event, as the upstream sends it.
fn event_chunks() -> Vec<Bytes> {
    let text = std::str::from_utf8(STREAM).unwrap();
    text.split_inclusive("\n\n")
        .map(|e| Bytes::copy_from_slice(e.as_bytes()))
        .collect()
}

fn bench(c: &mut Criterion) {
    let chunks = event_chunks();
    let mut group = c.benchmark_group("per_event");
    group.throughput(Throughput::Elements(chunks.len() as u64));

    group.bench_function("baseline_copy", |b| {
        b.iter(|| {
            let mut total = 0;
            for chunk in &chunks {
                let copy = chunk.to_vec();
                total += black_box(copy).len();
            }
            total
        })
    });

    group.bench_function("sse_parse", |b| {
        b.iter(|| {
            let mut parser = Parser::new();
            let mut events = Vec::new();
            for chunk in &chunks {
                parser.push(chunk, &mut events).unwrap();
            }
            events.len()
        })
    });

    group.bench_function("restream", |b| {
        b.iter(|| {
            let mut r = Restream::new(Format::OpenAi);
            let mut total = 0;
            for chunk in &chunks {
                total += r.push(chunk).unwrap().bytes.len();
            }
            total
        })
    });

    let config = Config {
        upstream_urls: vec!["http://up".into()],
        auth_off: true,
        ..Config::default()
    };
    let request = Bytes::from_static(
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    );
    let sse = [("content-type".to_string(), "text/event-stream".to_string())];
    for (name, extra) in [
        ("session", vec![]),
        ("session_gzip", vec![("accept-encoding", "gzip")]),
        (
            "session_gzip_compact",
            vec![
                ("accept-encoding", "gzip"),
                ("x-tokenedge-format", "compact"),
            ],
        ),
    ] {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut s = Session::new(config.clone());
                let head = RequestHead::new("POST", "/v1/chat/completions", headers.clone());
                s.handle_request(0, head, request.clone());
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
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
