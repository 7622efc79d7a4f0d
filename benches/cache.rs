//! The cache's CPU cost per request, on the real captured llama.cpp stream
//! (40 tokens): a whole streamed request through the session on a miss
//! (key, lookup, recording, entry encode and store) and on a hit (decode,
//! replay through the re-streamer), against the same request with the
//! cache off as the baseline, measured in the same run.
//!
//!   cargo bench --bench cache

use std::collections::HashMap;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::{Action, Session};

const STREAM: &str = include_str!("../tests/vectors/llamacpp_chat.sse");
const BODY: &str = r#"{"model":"m","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"How do I make a paper plane?"}],"stream":true,"temperature":0,"max_tokens":64}"#;

fn config(ttl: u64) -> Config {
    Config {
        upstream_urls: vec!["http://up".into()],
        cache_ttl_secs: ttl,
        auth_off: true,
        ..Config::default()
    }
}

/// One request, start to end, with `kv` as the store. Returns the bytes
/// sent to the client.
fn run(cfg: &Config, kv: &mut HashMap<String, Bytes>, events: &[Bytes]) -> usize {
    let mut s = Session::new(cfg.clone());
    let head = RequestHead::new(
        "POST",
        "/v1/chat/completions",
        vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), "Bearer k".into()),
        ],
    );
    s.handle_request(0, head, Bytes::from_static(BODY.as_bytes()));
    let mut sent = 0;
    let mut upstream = false;
    let mut drive = |s: &mut Session, sent: &mut usize, upstream: &mut bool| {
        while let Some(a) = s.poll_action() {
            match a {
                Action::KvGet { key, read } => {
                    let v = kv.get(&key).cloned();
                    s.handle_kv_value(1, read, v);
                }
                Action::KvPut { key, value, .. } => {
                    kv.insert(key, value);
                }
                Action::SendUpstream(_) => *upstream = true,
                Action::RespondChunk(b) => *sent += b.len(),
                _ => {}
            }
        }
    };
    drive(&mut s, &mut sent, &mut upstream);
    if upstream {
        s.handle_upstream_head(
            2,
            200,
            &[("content-type".into(), "text/event-stream".into())],
        );
        for (i, e) in events.iter().enumerate() {
            s.handle_upstream_chunk(3 + i as u64, e.clone());
            drive(&mut s, &mut sent, &mut upstream);
        }
        s.handle_upstream_end(100);
    }
    drive(&mut s, &mut sent, &mut upstream);
    sent
}

fn cache(c: &mut Criterion) {
    let events: Vec<Bytes> = STREAM
        .split_inclusive("\n\n")
        .map(|e| Bytes::copy_from_slice(e.as_bytes()))
        .collect();
    let mut g = c.benchmark_group("cache_per_request");
    g.bench_function("off (baseline)", |b| {
        let cfg = config(0);
        b.iter(|| black_box(run(&cfg, &mut HashMap::new(), &events)))
    });
    g.bench_function("miss and store", |b| {
        let cfg = config(86_400);
        b.iter(|| black_box(run(&cfg, &mut HashMap::new(), &events)))
    });
    g.bench_function("hit (replay)", |b| {
        let cfg = config(86_400);
        let mut kv = HashMap::new();
        run(&cfg, &mut kv, &events);
        assert_eq!(kv.len(), 1);
        b.iter(|| black_box(run(&cfg, &mut kv, &events)))
    });
    g.finish();
}

criterion_group!(benches, cache);
criterion_main!(benches);
