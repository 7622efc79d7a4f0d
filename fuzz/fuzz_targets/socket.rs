//! Any sequence of client messages and session output on a `/v1/ws`
//! socket: nothing panics, every message sent is a JSON object with a type
//! and an id, every request started is a streamed chat body, no more than
//! `MAX_IN_FLIGHT` run, and a closed socket sends nothing more.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::socket::{Out, Socket, MAX_IN_FLIGHT};

#[derive(Arbitrary, Debug)]
enum Op {
    Text(String),
    /// A well-formed request, with extra fields.
    Request(String, String, Vec<(String, String)>),
    /// A cancel or a steer of the n-th request under way.
    Cancel(u8),
    Steer(u8, String),
    Binary,
    /// Session output for the n-th request under way.
    Chunk(u8, Vec<u8>),
    End(u8, bool),
    Reply(u8, u16, Vec<u8>),
    Closed,
}

fuzz_target!(|ops: Vec<Op>| {
    let config = Config {
        max_body_bytes: 4096,
        ..Config::default()
    };
    let upgrade = RequestHead::new(
        "GET",
        "/v1/ws",
        vec![(
            "sec-websocket-protocol".into(),
            "tokenedge, tokenedge.key.k".into(),
        )],
    );
    let mut socket = Socket::new(&config, &upgrade);
    let mut closed = false;
    for op in ops {
        let nth = |n: u8, s: &Socket| {
            let ids: Vec<String> = s.in_flight().map(str::to_owned).collect();
            (!ids.is_empty()).then(|| ids[usize::from(n) % ids.len()].clone())
        };
        match op {
            Op::Text(text) => socket.handle_text(&text),
            Op::Request(id, content, extra) => {
                let mut m = serde_json::Map::new();
                for (k, v) in extra {
                    m.insert(k, v.into());
                }
                m.insert("type".into(), "request".into());
                m.insert("id".into(), id.into());
                m.insert(
                    "messages".into(),
                    serde_json::json!([{"role": "user", "content": content}]),
                );
                socket.handle_text(&serde_json::Value::Object(m).to_string());
            }
            Op::Cancel(n) => {
                if let Some(id) = nth(n, &socket) {
                    socket
                        .handle_text(&serde_json::json!({"type": "cancel", "id": id}).to_string());
                }
            }
            Op::Steer(n, message) => {
                if let Some(id) = nth(n, &socket) {
                    let steer = serde_json::json!({"type": "steer", "id": id, "message": message});
                    socket.handle_text(&steer.to_string());
                }
            }
            Op::Binary => socket.handle_binary(),
            Op::Chunk(n, bytes) => {
                if let Some(id) = nth(n, &socket) {
                    socket.handle_chunk(&id, &bytes);
                }
            }
            Op::End(n, cut) => {
                if let Some(id) = nth(n, &socket) {
                    socket.handle_end(&id, cut);
                }
            }
            Op::Reply(n, status, body) => {
                if let Some(id) = nth(n, &socket) {
                    socket.handle_reply(&id, status, &body);
                }
            }
            Op::Closed => socket.handle_closed(),
        }
        assert!(socket.in_flight().count() <= MAX_IN_FLIGHT);
        while let Some(out) = socket.poll() {
            match out {
                Out::Send(text) => {
                    assert!(!closed, "a message after the close");
                    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                    assert!(v["type"].is_string() && v["id"].is_string(), "{v}");
                }
                Out::Start { head, body, .. } => {
                    assert!(!closed, "a request after the close");
                    assert_eq!(head.header("authorization"), Some("Bearer k"));
                    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                    assert_eq!(v["stream"], true);
                    assert!(v.get("type").is_none() && v.get("id").is_none());
                }
                Out::Cancel { .. } => {}
                Out::Close { code, .. } => {
                    assert!(code == 1008 || code == 1009);
                    closed = true;
                }
            }
        }
        closed |= socket.is_closed();
    }
});
