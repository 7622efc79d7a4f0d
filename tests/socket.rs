//! The WebSocket transport (`crate::core::socket`): the upgrade, messages
//! turned into sessions, the sessions' streams turned into messages, and
//! what closes a socket.

mod common;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::Session;
use tokenedge::core::socket::{Out, Socket, CLOSE_POLICY, CLOSE_TOO_BIG, MAX_IN_FLIGHT};

fn keyed() -> Config {
    Config {
        auth_off: false,
        api_keys: vec!["k1".into()],
        sockets: true,
        ..config()
    }
}

fn upgrade(extra: &[(&str, &str)]) -> RequestHead {
    let mut headers = vec![
        ("Upgrade".to_string(), "websocket".to_string()),
        ("Connection".to_string(), "Upgrade".to_string()),
        (
            "Sec-WebSocket-Key".to_string(),
            "dGhlIHNhbXBsZSBub25jZQ==".to_string(),
        ),
    ];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    RequestHead::new("GET", "/v1/ws", headers)
}

fn answer(cfg: Config, head: RequestHead) -> World {
    let mut s = Session::new(cfg);
    let mut w = World::default();
    s.handle_request(0, head, Bytes::new());
    w.pump(&mut s, 0);
    assert!(w.upstream.is_empty(), "an upgrade asks nothing upstream");
    w
}

/// A running generation: its session and what it did.
struct Run {
    id: String,
    session: Session,
    world: World,
    /// Chunks already handed to the socket.
    seen: usize,
}

/// Everything the socket asked for, split by kind.
#[derive(Default)]
struct Outs {
    frames: Vec<Value>,
    starts: Vec<(String, RequestHead, Bytes)>,
    cancels: Vec<String>,
    closes: Vec<(u16, String)>,
}

fn drain(socket: &mut Socket) -> Outs {
    let mut outs = Outs::default();
    while let Some(out) = socket.poll() {
        match out {
            Out::Send(text) => outs.frames.push(serde_json::from_str(&text).unwrap()),
            Out::Start { id, head, body } => outs.starts.push((id, *head, body)),
            Out::Cancel { id } => outs.cancels.push(id),
            Out::Close { code, reason } => outs.closes.push((code, reason)),
        }
    }
    outs
}

fn open() -> Socket {
    Socket::new(
        &keyed(),
        &upgrade(&[("Sec-WebSocket-Protocol", "tokenedge, tokenedge.key.k1")]),
    )
}

fn request(id: &str, content: &str) -> String {
    json!({"type": "request", "id": id, "model": "m",
           "messages": [{"role": "user", "content": content}]})
    .to_string()
}

fn run(start: (String, RequestHead, Bytes)) -> Run {
    let (id, head, body) = start;
    let mut session = Session::new(Socket::session_config(&keyed()));
    let mut world = World::default();
    session.handle_request(0, head, body);
    world.pump(&mut session, 0);
    session.handle_upstream_head(1, 200, &sse_head());
    world.pump(&mut session, 1);
    Run {
        id,
        session,
        world,
        seen: 0,
    }
}

/// Feeds one upstream event to `run` at `t` and hands the socket what the
/// session wrote.
fn step(socket: &mut Socket, run: &mut Run, t: u64, event: &str) {
    run.session
        .handle_upstream_chunk(t, Bytes::copy_from_slice(event.as_bytes()));
    run.world.pump(&mut run.session, t);
    run.session.handle_downstream_drained(t);
    run.world.pump(&mut run.session, t);
    fire_timers(&mut run.session, &mut run.world, t);
    forward(socket, run);
}

fn forward(socket: &mut Socket, run: &mut Run) {
    for (_, chunk) in &run.world.chunks[run.seen..] {
        socket.handle_chunk(&run.id, chunk);
    }
    run.seen = run.world.chunks.len();
    if run.world.ended {
        socket.handle_end(&run.id, run.world.aborted);
    }
}

fn text_of(frames: &[Value], id: &str) -> String {
    frames
        .iter()
        .filter(|f| f["id"] == id && f["type"] == "token")
        .map(|f| f["text"].as_str().unwrap())
        .collect()
}

#[test]
fn a_runtime_without_sockets_answers_501_json() {
    let cfg = Config {
        sockets: false,
        ..keyed()
    };
    let w = answer(cfg, upgrade(&[("Authorization", "Bearer k1")]));
    assert_eq!(w.status(), 501);
    assert_eq!(w.json()["error"]["code"], "not_implemented");
}

#[test]
fn the_upgrade_is_checked_like_any_request() {
    // The key as a subprotocol (what a browser can send): accepted, and
    // only the plain protocol is echoed.
    let w = answer(
        keyed(),
        upgrade(&[("Sec-WebSocket-Protocol", "tokenedge, tokenedge.key.k1")]),
    );
    assert_eq!(w.status(), 101);
    assert_eq!(w.header("sec-websocket-protocol"), Some("tokenedge"));
    // The key in a header (any other client).
    let w = answer(keyed(), upgrade(&[("Authorization", "Bearer k1")]));
    assert_eq!(w.status(), 101);
    assert_eq!(w.header("sec-websocket-protocol"), None);
    // A wrong key, no key, no upgrade, another method.
    let w = answer(
        keyed(),
        upgrade(&[("Sec-WebSocket-Protocol", "tokenedge.key.k2")]),
    );
    assert_eq!(w.status(), 401);
    let w = answer(keyed(), upgrade(&[]));
    assert_eq!(w.status(), 401);
    let plain = RequestHead::new(
        "GET",
        "/v1/ws",
        vec![("authorization".into(), "Bearer k1".into())],
    );
    let w = answer(keyed(), plain);
    assert_eq!(w.status(), 426);
    assert_eq!(w.json()["error"]["code"], "upgrade_required");
    let post = RequestHead::new(
        "POST",
        "/v1/ws",
        vec![("authorization".into(), "Bearer k1".into())],
    );
    assert_eq!(answer(keyed(), post).status(), 405);
}

#[test]
fn two_requests_stream_interleaved_each_under_its_id() {
    let mut socket = open();
    socket.handle_text(&request("a", "count"));
    socket.handle_text(&request("b", "count again"));
    let outs = drain(&mut socket);
    assert_eq!(outs.starts.len(), 2);
    for (_, head, body) in &outs.starts {
        assert_eq!(head.path, "/v1/chat/completions");
        assert_eq!(head.header("authorization"), Some("Bearer k1"));
        assert_eq!(head.header("x-tokenedge-format"), Some("ndjson"));
        assert_eq!(head.header("upgrade"), None);
        let body: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(body["stream"], true);
        assert!(body.get("type").is_none() && body.get("id").is_none());
    }
    let mut runs: Vec<Run> = outs.starts.into_iter().map(run).collect();
    for run in &runs {
        assert_eq!(run.world.upstream.len(), 1, "each went upstream");
    }
    let events: Vec<&str> = LLAMA_CHAT.split_inclusive("\n\n").collect();
    let mut frames = Vec::new();
    for (i, event) in events.iter().enumerate() {
        for run in runs.iter_mut() {
            step(&mut socket, run, 2 + i as u64, event);
            frames.extend(drain(&mut socket).frames);
        }
    }
    let (text, tokens) = content_of(LLAMA_CHAT);
    // Interleaved: the frames alternate between the two ids.
    let ids: Vec<&str> = frames.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert!(ids.windows(2).filter(|w| w[0] != w[1]).count() >= tokens);
    for id in ["a", "b"] {
        assert_eq!(text_of(&frames, id), text);
        let done: Vec<&Value> = frames
            .iter()
            .filter(|f| f["id"] == id && f["type"] == "done")
            .collect();
        assert_eq!(done.len(), 1);
        // The vector stops at its length limit.
        assert_eq!(done[0]["finish_reason"], "length");
        assert_eq!(done[0]["stats"]["tokens"], tokens as u64);
    }
    assert_eq!(socket.in_flight().count(), 0);
}

#[test]
fn every_chunk_boundary_gives_the_same_messages() {
    let mut socket = open();
    socket.handle_text(&request("a", "count"));
    let mut r = run(drain(&mut socket).starts.remove(0));
    for (i, event) in LLAMA_CHAT.split_inclusive("\n\n").enumerate() {
        r.session
            .handle_upstream_chunk(2 + i as u64, Bytes::copy_from_slice(event.as_bytes()));
        r.world.pump(&mut r.session, 2 + i as u64);
    }
    fire_timers(&mut r.session, &mut r.world, 100_000);
    assert!(r.world.ended);
    forward(&mut socket, &mut r);
    let whole = drain(&mut socket).frames;
    assert!(whole.len() > 3);
    let body = r.world.body.clone();
    for cut in 1..body.len() {
        let mut socket = open();
        socket.handle_text(&request("a", "count"));
        drain(&mut socket);
        socket.handle_chunk("a", &body[..cut]);
        socket.handle_chunk("a", &body[cut..]);
        socket.handle_end("a", false);
        assert_eq!(drain(&mut socket).frames, whole, "cut at {cut}");
    }
}

#[test]
fn a_cancel_drops_its_session_and_leaves_the_other() {
    let mut socket = open();
    socket.handle_text(&request("a", "one"));
    socket.handle_text(&request("b", "two"));
    let mut runs: Vec<Run> = drain(&mut socket).starts.into_iter().map(run).collect();
    socket.handle_text(&json!({"type": "cancel", "id": "a"}).to_string());
    let outs = drain(&mut socket);
    assert_eq!(outs.cancels, ["a"]);
    assert_eq!(
        outs.frames,
        [json!({"type": "done", "id": "a", "finish_reason": "cancelled"})]
    );
    // What a's session still wrote before it was dropped is not sent.
    for (i, event) in LLAMA_CHAT.split_inclusive("\n\n").enumerate() {
        for run in runs.iter_mut() {
            step(&mut socket, run, 2 + i as u64, event);
        }
    }
    let frames = drain(&mut socket).frames;
    assert!(frames.iter().all(|f| f["id"] == "b"));
    assert_eq!(text_of(&frames, "b"), content_of(LLAMA_CHAT).0);
    // A cancel of what is not running says nothing.
    socket.handle_text(&json!({"type": "cancel", "id": "zz"}).to_string());
    assert!(drain(&mut socket).frames.is_empty());
}

#[test]
fn a_steer_goes_on_with_the_text_so_far_and_the_new_message() {
    let mut socket = open();
    socket.handle_text(&request("a", "tell me a story"));
    let mut r = run(drain(&mut socket).starts.remove(0));
    let events: Vec<&str> = LLAMA_CHAT.split_inclusive("\n\n").collect();
    for (i, event) in events[..4].iter().enumerate() {
        step(&mut socket, &mut r, 2 + i as u64, event);
    }
    let so_far = text_of(&drain(&mut socket).frames, "a");
    assert!(!so_far.is_empty());
    socket.handle_text(&json!({"type": "steer", "id": "a", "message": "shorter"}).to_string());
    let outs = drain(&mut socket);
    assert_eq!(outs.cancels, ["a"]);
    assert_eq!(
        outs.frames,
        [json!({"type": "done", "id": "a", "finish_reason": "steered"})]
    );
    assert_eq!(outs.starts.len(), 1);
    let body: Value = serde_json::from_slice(&outs.starts[0].2).unwrap();
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "tell me a story"},
            {"role": "assistant", "content": so_far},
            {"role": "user", "content": "shorter"},
        ])
    );
    // The steered answer streams under the same id.
    let mut r = run(outs.starts.into_iter().next().unwrap());
    for (i, event) in events.iter().enumerate() {
        step(&mut socket, &mut r, 20 + i as u64, event);
    }
    let frames = drain(&mut socket).frames;
    assert_eq!(text_of(&frames, "a"), content_of(LLAMA_CHAT).0);
    // Steering what is not running, or with no message, is an error.
    socket.handle_text(&json!({"type": "steer", "id": "a", "message": "x"}).to_string());
    socket.handle_text(&json!({"type": "steer", "id": "q"}).to_string());
    let errors = drain(&mut socket).frames;
    assert_eq!(errors.len(), 2);
    assert!(errors
        .iter()
        .all(|f| f["type"] == "error" && f["status"] == 400));
}

#[test]
fn a_refused_request_is_an_error_message_and_the_socket_stays() {
    let mut socket = open();
    socket.handle_text(&json!({"type": "request", "id": "a", "model": "m"}).to_string());
    let (id, head, body) = drain(&mut socket).starts.remove(0);
    let mut s = Session::new(Socket::session_config(&keyed()));
    let mut w = World::default();
    s.handle_request(0, head, body);
    w.pump(&mut s, 0);
    assert!(w.upstream.is_empty());
    socket.handle_reply(&id, w.status(), &w.body);
    let frames = drain(&mut socket).frames;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["status"], 400);
    assert_eq!(frames[0]["error"]["param"], "messages");
    assert!(!socket.is_closed());
    // The id is free again.
    socket.handle_text(&request("a", "again"));
    assert_eq!(drain(&mut socket).starts.len(), 1);
}

#[test]
fn a_stream_cut_without_its_end_is_an_error_message() {
    let mut socket = open();
    socket.handle_text(&request("a", "count"));
    drain(&mut socket);
    socket.handle_chunk("a", b"{\"t\":\"1\"}\n{\"t\":");
    socket.handle_end("a", true);
    let frames = drain(&mut socket).frames;
    assert_eq!(frames[0]["type"], "token");
    assert_eq!(frames[1]["type"], "error");
    assert_eq!(frames[1]["error"]["code"], "upstream_stream_broken");
}

#[test]
fn the_socket_bounds_what_runs_on_it() {
    let mut socket = open();
    for i in 0..MAX_IN_FLIGHT {
        socket.handle_text(&request(&format!("r{i}"), "x"));
    }
    socket.handle_text(&request("r0", "same id"));
    socket.handle_text(&request("one-more", "x"));
    let outs = drain(&mut socket);
    assert_eq!(outs.starts.len(), MAX_IN_FLIGHT);
    assert_eq!(outs.frames.len(), 2);
    assert_eq!(outs.frames[0]["id"], "r0");
    assert_eq!(outs.frames[1]["id"], "one-more");
    assert!(outs.frames.iter().all(|f| f["type"] == "error"));
    // Closing cancels every one of them.
    socket.handle_closed();
    assert_eq!(drain(&mut socket).cancels.len(), MAX_IN_FLIGHT);
}

#[test]
fn abuse_closes_the_socket_and_cancels_what_runs() {
    let too_big = request("a", &"x".repeat(keyed().max_body_bytes + 2048));
    let cases: [(&[u8], u16); 7] = [
        (too_big.as_bytes(), CLOSE_TOO_BIG),
        (b"not json", CLOSE_POLICY),
        (b"[1,2]", CLOSE_POLICY),
        (b"{\"type\":\"request\"}", CLOSE_POLICY),
        (b"{\"type\":\"dance\",\"id\":\"a\"}", CLOSE_POLICY),
        (b"{\"type\":\"cancel\",\"id\":\"\"}", CLOSE_POLICY),
        (b"{\"type\":\"cancel\",\"id\":7}", CLOSE_POLICY),
    ];
    for (message, code) in cases {
        let mut socket = open();
        socket.handle_text(&request("running", "x"));
        drain(&mut socket);
        socket.handle_text(std::str::from_utf8(message).unwrap());
        let outs = drain(&mut socket);
        let shown = String::from_utf8_lossy(&message[..message.len().min(40)]);
        assert_eq!(outs.closes.len(), 1, "{shown}");
        assert_eq!(outs.closes[0].0, code);
        assert_eq!(outs.cancels, ["running"]);
        assert!(socket.is_closed());
        // Nothing more is taken or sent.
        socket.handle_text(&request("b", "x"));
        assert!(socket.poll().is_none());
    }
    let mut socket = open();
    socket.handle_binary();
    assert_eq!(drain(&mut socket).closes[0].0, CLOSE_POLICY);
}
