//! `stream(n, gzip, resume)`: one session re-streaming `n` token events of
//! a recorded llama.cpp stream, gzip-compressed or not, resumable (its log
//! kept and checkpointed, `RESUME=on`: `resume` 1 with Workers KV's
//! once-a-second checkpoints, 2 with a fast store's every 100 ms) or not,
//! exactly as the edge function
//! does per request (parse, re-emit, pace, compress, log). Returns the
//! bytes sent to the client. Exported as a plain wasm function so any wasm
//! runtime can time it.

use bytes::Bytes;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::{Action, Session};

const TRACE: &str = include_str!("../../traces/llamacpp_chat_300.sse");

#[no_mangle]
pub extern "C" fn stream(n: u32, gzip: u32, resume: u32) -> u32 {
    // The token events, found once: the split is the harness's work, not
    // the edge function's.
    static EVENTS: std::sync::OnceLock<Vec<&str>> = std::sync::OnceLock::new();
    let events = EVENTS.get_or_init(|| {
        TRACE
            .split_inclusive("\n\n")
            .filter(|e| e.contains("\"content\":\""))
            .collect()
    });
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if gzip != 0 {
        headers.push(("accept-encoding".into(), "gzip".into()));
    }
    let mut s = Session::new(Config {
        upstream_urls: vec!["http://upstream".into()],
        auth_off: true,
        resume: resume != 0,
        fast_stream_store: resume == 2,
        ..Config::default()
    });
    s.handle_request(
        0,
        RequestHead::new("POST", "/v1/chat/completions", headers),
        Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#),
    );
    s.handle_upstream_head(1, 200, &[("content-type".into(), "text/event-stream".into())]);
    let mut wire = 0u32;
    for i in 0..n {
        let e = events[i as usize % events.len()];
        s.handle_upstream_chunk(2 + u64::from(i) * 20, Bytes::from_static(e.as_bytes()));
        while let Some(a) = s.poll_action() {
            if let Action::RespondChunk(b) = a {
                wire += b.len() as u32;
            }
        }
    }
    s.handle_upstream_end(2 + u64::from(n) * 20);
    while let Some(a) = s.poll_action() {
        if let Action::RespondChunk(b) = a {
            wire += b.len() as u32;
        }
    }
    wire
}
