//! The WebSocket transport, `GET /v1/ws`: one socket carries several chat
//! generations at once, each under the client's id, and the client can
//! cancel or steer each one mid-stream. Workers only; a runtime without
//! inbound WebSockets (Spin) answers 501 (`Config::sockets`).
//!
//! Client messages (JSON text frames):
//!
//! | message | meaning |
//! |---|---|
//! | `{"type":"request","id":"a", …chat body}` | start a generation: the rest is a `/v1/chat/completions` body (streamed) |
//! | `{"type":"cancel","id":"a"}` | stop it; the upstream request is cancelled |
//! | `{"type":"steer","id":"a","message":"…"}` | stop it and go on with the conversation: the text so far as the assistant's turn, then this user message, under the same id |
//!
//! Server messages, each with the request's `id`: `status` (the fields of
//! a status event), `token` (`text`), `delta` (what a delta carries beyond
//! text), `done` (`finish_reason`, `usage`, `stats`; `cancelled` after a
//! cancel, `steered` before the steered answer goes on) and `error` (the
//! OpenAI-style `error` object, with `status`, its HTTP status).
//!
//! Each generation is a session of its own: the socket's key, a
//! `POST /v1/chat/completions` in the `ndjson` format, not resumable (the
//! socket is its client); every check, limit and cache applies as over
//! HTTP, and a refusal is an `error` message. This module turns messages
//! into those requests and the session's lines into messages.
//!
//! Abuse closes the socket: a message larger than `MAX_BODY_BYTES` (and a
//! small envelope) with 1009, anything that is not a JSON message of a
//! known type with an id, or a binary frame, with 1008.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::core::config::Config;
use crate::core::error::Error;
use crate::core::http::{Headers, RequestHead};

/// The socket's route.
pub(crate) const PATH: &str = "/v1/ws";
/// The subprotocol the server speaks; echoed when the client offers it.
pub(crate) const PROTOCOL: &str = "tokenedge";
/// A subprotocol that carries the API key (browsers cannot set headers on
/// a WebSocket): `tokenedge.key.<key>`.
const KEY_PROTOCOL: &str = "tokenedge.key.";
/// Generations one socket may have running at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// The longest id a client may give a request.
const MAX_ID_LEN: usize = 64;
/// Room a message may take beyond its chat body (type, id, message).
const ENVELOPE_BYTES: usize = 1024;
/// Close code: a message that breaks the protocol.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: a message too large to take.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Upgrade headers a generation's request does not inherit.
const NOT_INHERITED: &[&str] = &[
    "accept-encoding",
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "upgrade",
    crate::core::format::HEADER,
];

/// The API key an upgrade carries: its bearer token, else a
/// `tokenedge.key.<key>` subprotocol.
pub(crate) fn key(req: &RequestHead) -> Option<&str> {
    crate::core::access::bearer(req).or_else(|| {
        protocols(req)
            .find_map(|p| p.strip_prefix(KEY_PROTOCOL))
            .filter(|k| !k.is_empty())
    })
}

/// Whether the request asks to be upgraded to a WebSocket.
pub(crate) fn is_upgrade(req: &RequestHead) -> bool {
    req.header("upgrade")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// The headers of the answer that accepts the socket: the subprotocol,
/// when the client offered it (one that offered only a key protocol gets
/// none, as the key must not be echoed).
pub(crate) fn accept_headers(req: &RequestHead) -> Headers {
    let mut headers = Headers::new();
    if protocols(req).any(|p| p == PROTOCOL) {
        headers.push(("sec-websocket-protocol".into(), PROTOCOL.into()));
    }
    headers
}

fn protocols(req: &RequestHead) -> impl Iterator<Item = &str> {
    req.header("sec-websocket-protocol")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
}

/// What the adapter must do next.
#[derive(Debug, Clone)]
pub enum Out {
    /// Send this text message.
    Send(String),
    /// Run this request as a session of its own, and report what it
    /// answers with `handle_reply`, `handle_chunk` and `handle_end`
    /// under `id`. The head's nonce is the adapter's to fill.
    Start {
        /// The client's id for it.
        id: String,
        /// The request head.
        head: Box<RequestHead>,
        /// Its body.
        body: Bytes,
    },
    /// Drop the session running `id` (its upstream request is cancelled).
    Cancel {
        /// The client's id.
        id: String,
    },
    /// Close the socket with this code and reason, and drop every
    /// session it runs.
    Close {
        /// The close code.
        code: u16,
        /// Why, for the client.
        reason: String,
    },
}

/// A generation under way.
struct Call {
    /// The chat body it was asked with (for a steer).
    body: Map<String, Value>,
    /// The text generated so far.
    text: String,
    /// A line of the session's output not yet complete.
    partial: Vec<u8>,
}

/// One socket's state: its generations and what goes out next.
pub struct Socket {
    /// What each generation's request inherits.
    template: RequestHead,
    max_message: usize,
    calls: BTreeMap<String, Call>,
    out: VecDeque<Out>,
    closed: bool,
}

impl Socket {
    /// A socket opened by `upgrade` (the request the session accepted),
    /// under `config`.
    pub fn new(config: &Config, upgrade: &RequestHead) -> Self {
        let mut headers: Headers = upgrade
            .headers
            .iter()
            .filter(|(k, _)| {
                !NOT_INHERITED.contains(&k.as_str()) && !k.starts_with("sec-websocket-")
            })
            .cloned()
            .collect();
        if let Some(key) = key(upgrade) {
            headers.push(("authorization".into(), format!("Bearer {key}")));
        }
        headers.push(("content-type".into(), "application/json".into()));
        headers.push((crate::core::format::HEADER.into(), "ndjson".into()));
        let mut template = RequestHead::new("POST", "/v1/chat/completions", headers);
        template.client = upgrade.client.clone();
        Self {
            template,
            max_message: config.max_body_bytes + ENVELOPE_BYTES,
            calls: BTreeMap::new(),
            out: VecDeque::new(),
            closed: false,
        }
    }

    /// The config a generation's session runs under: not resumable, as the
    /// socket is its only client.
    pub fn session_config(config: &Config) -> Config {
        Config {
            resume: false,
            ..config.clone()
        }
    }

    /// The next thing to do, or `None` to wait.
    pub fn poll(&mut self) -> Option<Out> {
        self.out.pop_front()
    }

    /// Whether the socket was closed for good.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The ids of the generations under way.
    pub fn in_flight(&self) -> impl Iterator<Item = &str> {
        self.calls.keys().map(String::as_str)
    }

    /// A binary message: not part of the protocol.
    pub fn handle_binary(&mut self) {
        self.close(CLOSE_POLICY, "binary messages are not accepted");
    }

    /// A text message from the client.
    pub fn handle_text(&mut self, text: &str) {
        if self.closed {
            return;
        }
        if text.len() > self.max_message {
            let reason = format!("message larger than {} bytes", self.max_message);
            return self.close(CLOSE_TOO_BIG, &reason);
        }
        let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(text) else {
            return self.close(CLOSE_POLICY, "a message must be a JSON object");
        };
        let id = match message.remove("id") {
            Some(Value::String(id)) if valid_id(&id) => id,
            _ => {
                return self.close(
                    CLOSE_POLICY,
                    &format!("a message needs an id: a string of 1 to {MAX_ID_LEN} characters"),
                )
            }
        };
        match message.remove("type").as_ref().and_then(Value::as_str) {
            Some("request") => self.request(id, message),
            Some("cancel") => self.cancel(&id),
            Some("steer") => self.steer(id, message.remove("message")),
            _ => self.close(
                CLOSE_POLICY,
                "a message's type must be request, cancel or steer",
            ),
        }
    }

    /// The session running `id` answered with a whole response (an error,
    /// or the stream of a cached answer that was not streamed).
    pub fn handle_reply(&mut self, id: &str, status: u16, body: &[u8]) {
        if self.calls.remove(id).is_none() {
            return;
        }
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let frame = match body.get("error") {
            Some(error) => json!({"type": "error", "id": id, "status": status, "error": error}),
            None if status >= 400 => json!({
                "type": "error", "id": id, "status": status,
                "error": {"message": format!("the request failed with status {status}"),
                          "type": "upstream_error", "code": "upstream_status"},
            }),
            None => json!({"type": "response", "id": id, "status": status, "body": body}),
        };
        self.send(&frame);
    }

    /// A chunk of the stream of the session running `id`.
    pub fn handle_chunk(&mut self, id: &str, chunk: &[u8]) {
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        call.partial.extend_from_slice(chunk);
        let Some(end) = call.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let lines: Vec<u8> = call.partial.drain(..=end).collect();
        let mut frames = Vec::new();
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Some(frame) = frame_of(id, line, &mut call.text) {
                frames.push(frame);
            }
        }
        for frame in frames {
            self.send(&frame);
        }
    }

    /// The stream of the session running `id` ended; `cut` when it broke
    /// without its last line (the session's own error line, if any, came
    /// before).
    pub fn handle_end(&mut self, id: &str, cut: bool) {
        let Some(call) = self.calls.remove(id) else {
            return;
        };
        if cut || !call.partial.is_empty() {
            let error = Error::new(crate::core::error::ErrorKind::UpstreamStreamBroken {
                detail: "the stream ended without its last event".into(),
            });
            self.send(&json!({"type": "error", "id": id, "status": 502, "error": error.to_json()["error"]}));
        }
    }

    /// The socket closed (by either side): every generation is dropped.
    pub fn handle_closed(&mut self) {
        self.closed = true;
        for id in std::mem::take(&mut self.calls).into_keys() {
            self.out.push_back(Out::Cancel { id });
        }
    }

    fn request(&mut self, id: String, mut body: Map<String, Value>) {
        if self.calls.contains_key(&id) {
            let e = Error::invalid(format!("request '{id}' is already running"), Some("id"));
            return self.send_error(&id, &e);
        }
        if self.calls.len() >= MAX_IN_FLIGHT {
            let e = Error::invalid(
                format!("this socket already runs {MAX_IN_FLIGHT} requests, its limit: wait for one to end or cancel it"),
                Some("id"),
            );
            return self.send_error(&id, &e);
        }
        // The transport streams; a client's `stream: false` has no meaning
        // here.
        body.insert("stream".into(), Value::Bool(true));
        self.start(id, body);
    }

    fn cancel(&mut self, id: &str) {
        if self.calls.remove(id).is_some() {
            self.out.push_back(Out::Cancel { id: id.to_owned() });
            self.send(&json!({"type": "done", "id": id, "finish_reason": "cancelled"}));
        }
    }

    fn steer(&mut self, id: String, message: Option<Value>) {
        let message = match message {
            Some(Value::String(text)) => json!({"role": "user", "content": text}),
            Some(Value::Object(m)) if m.get("role").and_then(Value::as_str) == Some("user") => {
                Value::Object(m)
            }
            _ => {
                let e = Error::invalid(
                    "steer needs a message: a string, or a user message object",
                    Some("message"),
                );
                return self.send_error(&id, &e);
            }
        };
        let Some(call) = self.calls.remove(&id) else {
            let e = Error::invalid(format!("no request '{id}' is running to steer"), Some("id"));
            return self.send_error(&id, &e);
        };
        self.out.push_back(Out::Cancel { id: id.clone() });
        self.send(&json!({"type": "done", "id": id, "finish_reason": "steered"}));
        let mut body = call.body;
        if let Some(Value::Array(messages)) = body.get_mut("messages") {
            if !call.text.is_empty() {
                messages.push(json!({"role": "assistant", "content": call.text}));
            }
            messages.push(message);
        }
        self.start(id, body);
    }

    fn start(&mut self, id: String, body: Map<String, Value>) {
        // Serialising a map of JSON values cannot fail.
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let mut head = self.template.clone();
        head.headers
            .push(("content-length".into(), bytes.len().to_string()));
        self.calls.insert(
            id.clone(),
            Call {
                body,
                text: String::new(),
                partial: Vec::new(),
            },
        );
        self.out.push_back(Out::Start {
            id,
            head: Box::new(head),
            body: bytes,
        });
    }

    fn send_error(&mut self, id: &str, error: &Error) {
        let frame = json!({"type": "error", "id": id, "status": error.status(), "error": error.to_json()["error"]});
        self.send(&frame);
    }

    fn send(&mut self, frame: &Value) {
        if !self.closed {
            self.out.push_back(Out::Send(frame.to_string()));
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        self.out.push_back(Out::Close {
            code,
            reason: reason.to_owned(),
        });
        self.handle_closed();
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control)
}

/// The message for one `ndjson` line of a generation's stream (see
/// `crate::core::format`); `text` gathers the generated text.
fn frame_of(id: &str, line: &[u8], text: &mut String) -> Option<Value> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(line) else {
        return None;
    };
    // A sequence number belongs to a resumable stream; these are not.
    fields.remove("id");
    let mut frame = Map::new();
    let kind = if let Some(Value::String(t)) = fields.remove("t") {
        text.push_str(&t);
        frame.insert("text".into(), Value::String(t));
        "token"
    } else if let Some(Value::Object(status)) = fields.remove("status") {
        frame.extend(status);
        "status"
    } else if let Some(delta) = fields.remove("delta") {
        frame.insert("delta".into(), delta);
        "delta"
    } else if let Some(error) = fields.remove("error") {
        frame.insert("error".into(), error);
        "error"
    } else if fields.contains_key("finish_reason") {
        frame.extend(fields);
        "done"
    } else {
        return None;
    };
    let mut out = Map::new();
    out.insert("type".into(), kind.into());
    out.insert("id".into(), id.into());
    out.extend(frame);
    Some(Value::Object(out))
}
