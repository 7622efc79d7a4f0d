//! The Workers side of `/v1/ws` ([`crate::core::socket`]): accepts the
//! socket the session allowed, hands each message to the socket's state,
//! and carries out what it asks — each request a session of its own on the
//! shared pump, its stream handed back chunk by chunk. No policy here.
//!
//! Cancels: a request's task is aborted, which drops its pump; the
//! session's `CancelUpstream` then aborts the upstream fetch. A socket that
//! closes (either side) cancels every request on it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::future::{abortable, AbortHandle};
use futures_util::{stream, StreamExt};
use worker::{Env, Headers, Response, Result, WebSocket, WebSocketPair, WebsocketEvent};

use super::pump::{self, Pump, Reply};
use super::workers::{get_random_values, platform, Background};
use crate::core::config::Config;
use crate::core::http::RequestHead;
use crate::core::session::Session;
use crate::core::socket::{Out, Socket};

/// One accepted socket: its state and what runs on it.
struct Conn {
    server: WebSocket,
    socket: RefCell<Socket>,
    /// The task of each request under way, by the client's id.
    calls: RefCell<HashMap<String, AbortHandle>>,
    env: Env,
    /// What each request's session runs under.
    config: Config,
    background: Background,
}

/// Accepts the socket `upgrade` asked for (the session answered 101 with
/// `headers`) and starts listening to it.
pub(super) fn accept(
    env: Env,
    config: &Config,
    upgrade: &RequestHead,
    background: Background,
    headers: Headers,
) -> Result<Response> {
    let pair = WebSocketPair::new()?;
    pair.server.accept()?;
    let conn = Rc::new(Conn {
        server: pair.server,
        socket: RefCell::new(Socket::new(config, upgrade)),
        calls: RefCell::default(),
        env,
        config: Socket::session_config(config),
        background,
    });
    wasm_bindgen_futures::spawn_local(listen(conn));
    Ok(Response::from_websocket(pair.client)?.with_headers(headers))
}

/// Reads the client's messages until the socket closes.
async fn listen(conn: Rc<Conn>) {
    let Ok(mut events) = conn.server.events() else {
        return;
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(WebsocketEvent::Message(message)) => match message.text() {
                Some(text) => conn.socket.borrow_mut().handle_text(&text),
                None => conn.socket.borrow_mut().handle_binary(),
            },
            Ok(WebsocketEvent::Close(_)) | Err(_) => {
                conn.socket.borrow_mut().handle_closed();
                let _ = conn.server.close(Some(1000), Some("closed"));
            }
        }
        carry_out(&conn);
        if conn.socket.borrow().is_closed() {
            return;
        }
    }
    // The events ended without a close event: the socket is gone all the
    // same.
    conn.socket.borrow_mut().handle_closed();
    carry_out(&conn);
}

/// Does what the socket's state asks, in order.
fn carry_out(conn: &Rc<Conn>) {
    loop {
        let out = conn.socket.borrow_mut().poll();
        match out {
            None => return,
            Some(Out::Send(text)) => {
                let _ = conn.server.send_with_str(text);
            }
            Some(Out::Start { id, head, body }) => {
                let (task, handle) = abortable(run(conn.clone(), id.clone(), *head, body));
                if let Some(old) = conn.calls.borrow_mut().insert(id, handle) {
                    old.abort();
                }
                wasm_bindgen_futures::spawn_local(async move {
                    let _ = task.await;
                });
            }
            Some(Out::Cancel { id }) => {
                if let Some(handle) = conn.calls.borrow_mut().remove(&id) {
                    handle.abort();
                }
            }
            Some(Out::Close { code, reason }) => {
                let _ = conn.server.close(Some(code), Some(reason));
            }
        }
    }
}

/// Runs one request's session and hands its answer to the socket.
async fn run(conn: Rc<Conn>, id: String, mut head: RequestHead, body: Bytes) {
    get_random_values(&mut head.nonce);
    let body: pump::BodyStream = Box::pin(stream::once(async move { Ok(body) }));
    let platform = platform(
        &conn.env,
        &conn.config,
        conn.background.clone(),
        Some(body),
        None,
    );
    let session = Session::new(conn.config.clone()).with_health(pump::health());
    match Pump::start(platform, session, head).await {
        Reply::Full(head, body, rest) => {
            if let Some(rest) = rest {
                conn.background.run(rest.run_to_end());
            }
            conn.socket
                .borrow_mut()
                .handle_reply(&id, head.status, &body);
        }
        Reply::Stream(_, pump) => {
            let mut chunks = std::pin::pin!(pump.into_chunks());
            let mut cut = false;
            while let Some(item) = chunks.next().await {
                match item {
                    Ok(bytes) => conn.socket.borrow_mut().handle_chunk(&id, &bytes),
                    Err(_) => {
                        cut = true;
                        break;
                    }
                }
                carry_out(&conn);
            }
            conn.socket.borrow_mut().handle_end(&id, cut);
        }
    }
    conn.calls.borrow_mut().remove(&id);
    carry_out(&conn);
}
