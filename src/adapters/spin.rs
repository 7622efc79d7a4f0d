//! Spin adapter (spin-sdk 6, `wasi:http/handler@0.3.0-rc-2026-03-15`):
//! translates the incoming request into the core's nouns, performs the I/O
//! the [`Session`] asks for (one outbound request, timers, the default
//! key-value store), and pumps its output through a streamed response body.
//! No policy lives here.
//!
//! Client disconnects: the host stops reading the response stream, the
//! body task ends and drops the [`Pump`]; its `Drop` tells the session, and
//! the session's `CancelUpstream` drops the outbound request (and with it
//! the connection to the upstream).
//!
//! Drain: the host pulls the next frame only once it has taken the previous
//! one, so each pull after a chunk is reported as
//! `handle_downstream_drained`. KV: Spin's default store, which has no
//! expiry, so each value carries its expiry time in front (8 bytes,
//! milliseconds since the epoch, big-endian) and an expired value reads as
//! absent. Writes are finished before the body ends, because a Spin host
//! may stop the instance once the response is complete.

use std::convert::Infallible;
use std::future::{pending, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::{join_all, select, select_all, Either};
use futures_util::{stream, Stream, StreamExt};
use http_body::Frame;
use http_body_util::Full;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::Request;
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::wasip3::clocks::monotonic_clock;
use spin_sdk::wasip3::http::types::ErrorCode;

use crate::core::config::{vars, Config};
use crate::core::http::{ClientInfo, RequestHead, ResponseHead, UpstreamRequest};
use crate::core::route::Health;
use crate::core::session::{Action, Session};
use crate::core::Millis;

type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, ErrorCode>>>>;
type Boxed<T> = Pin<Box<dyn Future<Output = T>>>;

/// Spin sets this header to the client's socket address.
const CLIENT_ADDR_HEADER: &str = "spin-client-addr";
/// Headers Spin adds for the component; they are not the client's.
const SPIN_HEADER_PREFIX: &str = "spin-";
/// The key-value store used unless `KV_STORE` names another.
const DEFAULT_STORE: &str = "default";
/// Bytes of expiry time in front of every stored value.
const EXPIRY_LEN: usize = 8;

thread_local! {
    /// Replica health, kept for the life of the isolate or instance.
    static HEALTH: std::cell::RefCell<Health> = std::cell::RefCell::default();
}

fn health() -> Health {
    HEALTH.with(|h| h.borrow().clone())
}

fn report_health(replica: &str, up: bool) {
    HEALTH.with(|h| h.borrow_mut().report(replica, up, now()));
}

fn now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Spin variable names are lower snake case: `UPSTREAM_URL` → `upstream_url`.
async fn config() -> Config {
    let values = join_all(vars::ALL.iter().map(|name| async move {
        let value = spin_sdk::variables::get(name.to_ascii_lowercase()).await;
        (*name, value.ok())
    }))
    .await;
    Config::from_lookup(|name| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    })
}

/// What the pump hands to the platform.
enum Out {
    Full(ResponseHead, Bytes),
    Head(ResponseHead),
    Chunk(Bytes),
    End,
}

/// What woke the pump up.
enum Wake {
    Head(Result<spin_sdk::http::Response, ErrorCode>),
    Chunk(Option<Result<Bytes, ErrorCode>>),
    Kv(usize, String, Option<Vec<u8>>),
    Timer,
}

/// Owns the session and its upstream I/O for the life of one request.
struct Pump {
    session: Session,
    /// The key-value store's label.
    store: std::rc::Rc<str>,
    head: Option<Boxed<Result<spin_sdk::http::Response, ErrorCode>>>,
    body: Option<UpstreamBody>,
    /// KV reads under way (the link record and the cache entry can both be).
    kv_reads: Vec<Boxed<(String, Option<Vec<u8>>)>>,
    kv_writes: Vec<Boxed<()>>,
    /// A chunk went to the platform; its next pull means it was taken.
    chunk_out: bool,
}

impl Pump {
    fn new(session: Session, store: &str) -> Self {
        Self {
            session,
            store: store.into(),
            head: None,
            body: None,
            kv_reads: Vec::new(),
            kv_writes: Vec::new(),
            chunk_out: false,
        }
    }

    /// Runs the session until it has something for the client.
    async fn next(&mut self) -> Out {
        if std::mem::take(&mut self.chunk_out) {
            self.session.handle_downstream_drained(now());
        }
        loop {
            while let Some(action) = self.session.poll_action() {
                match action {
                    Action::SendUpstream(req) => self.send(req),
                    Action::CancelUpstream => self.cancel(),
                    Action::Respond(head, body) => return Out::Full(head, body),
                    Action::RespondHead(head) => return Out::Head(head),
                    Action::RespondChunk(bytes) => {
                        self.chunk_out = true;
                        return Out::Chunk(bytes);
                    }
                    Action::RespondEnd => {
                        join_all(self.kv_writes.drain(..)).await;
                        return Out::End;
                    }
                    Action::KvGet { key } => self
                        .kv_reads
                        .push(Box::pin(kv_get(self.store.clone(), key))),
                    Action::ReplicaHealth { replica, up } => report_health(&replica, up),
                    Action::KvDelete { key } => self
                        .kv_writes
                        .push(Box::pin(kv_delete(self.store.clone(), key))),
                    Action::KvPut {
                        key,
                        value,
                        ttl_secs,
                    } => self.kv_writes.push(Box::pin(kv_put(
                        self.store.clone(),
                        key,
                        value,
                        ttl_secs,
                    ))),
                }
            }
            let deadline = self.session.poll_timeout();
            if deadline.is_none()
                && self.head.is_none()
                && self.body.is_none()
                && self.kv_reads.is_empty()
            {
                join_all(self.kv_writes.drain(..)).await;
                return Out::End; // nothing can happen any more
            }
            let wake = {
                let Pump {
                    head,
                    body,
                    kv_reads,
                    ..
                } = self;
                let upstream = async {
                    if let Some(head) = head.as_mut() {
                        Wake::Head(head.await)
                    } else if let Some(body) = body.as_mut() {
                        Wake::Chunk(body.next().await)
                    } else {
                        pending().await
                    }
                };
                let kv = async {
                    if kv_reads.is_empty() {
                        pending().await
                    } else {
                        let ((key, value), i, _) = select_all(kv_reads.iter_mut()).await;
                        Wake::Kv(i, key, value)
                    }
                };
                let io = async {
                    match select(pin!(upstream), pin!(kv)).await {
                        Either::Left((w, _)) | Either::Right((w, _)) => w,
                    }
                };
                let timer = async {
                    match deadline {
                        Some(at) => {
                            let ms = at.saturating_sub(now());
                            monotonic_clock::wait_for(ms.saturating_mul(1_000_000)).await
                        }
                        None => pending().await,
                    }
                    Wake::Timer
                };
                match select(pin!(io), pin!(timer)).await {
                    Either::Left((w, _)) | Either::Right((w, _)) => w,
                }
            };
            let t = now();
            match wake {
                Wake::Timer => self.session.handle_timeout(t),
                Wake::Head(Ok(response)) => {
                    self.head = None;
                    let headers: Vec<(String, String)> = response
                        .headers()
                        .iter()
                        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
                        .collect();
                    self.session
                        .handle_upstream_head(t, response.status().as_u16(), &headers);
                    self.body = Some(Box::pin(response.into_body().stream()));
                }
                Wake::Head(Err(e)) => {
                    self.head = None;
                    self.session.handle_upstream_failed(t, &format!("{e:?}"));
                }
                Wake::Chunk(Some(Ok(bytes))) => self.session.handle_upstream_chunk(t, bytes),
                Wake::Chunk(Some(Err(e))) => {
                    self.body = None;
                    self.session.handle_upstream_failed(t, &format!("{e:?}"));
                }
                Wake::Chunk(None) => {
                    self.body = None;
                    self.session.handle_upstream_end(t);
                }
                Wake::Kv(i, key, value) => {
                    drop(self.kv_reads.swap_remove(i));
                    self.session
                        .handle_kv_value(t, &key, value.map(Bytes::from));
                }
            }
        }
    }

    fn send(&mut self, req: UpstreamRequest) {
        let mut builder = http::Request::builder().method(req.method).uri(&req.url);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        let request = match builder.body(Full::new(req.body)) {
            Ok(r) => r,
            Err(e) => return self.session.handle_upstream_failed(now(), &e.to_string()),
        };
        self.head = Some(Box::pin(spin_sdk::http::send(request)));
    }

    /// Dropping the outbound futures and body closes the upstream request.
    fn cancel(&mut self) {
        self.kv_reads.clear();
        self.head = None;
        self.body = None;
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        // The host dropped the body: the client is gone (or the response
        // finished, in which case this is a no-op).
        self.session.handle_downstream_closed(now());
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::CancelUpstream => self.cancel(),
                Action::KvPut {
                    key,
                    value,
                    ttl_secs,
                } => {
                    self.kv_writes
                        .push(Box::pin(kv_put(self.store.clone(), key, value, ttl_secs)))
                }
                _ => {}
            }
        }
        // Best effort: the instance may outlive this request.
        for write in self.kv_writes.drain(..) {
            spin_sdk::wasip3::spawn(write);
        }
    }
}

/// A failure, a missing store or an expired value all read as "absent".
async fn kv_get(store: std::rc::Rc<str>, key: String) -> (String, Option<Vec<u8>>) {
    let value = match Store::open(&store).await {
        Ok(store) => store.get(&key).await.ok().flatten(),
        Err(_) => None,
    };
    let value = value.and_then(|v| {
        let (expiry, value) = v.split_at_checked(EXPIRY_LEN)?;
        let expiry = Millis::from_be_bytes(expiry.try_into().ok()?);
        (expiry > now()).then(|| value.to_vec())
    });
    (key, value)
}

async fn kv_delete(store: std::rc::Rc<str>, key: String) {
    if let Ok(store) = Store::open(&store).await {
        let _ = store.delete(&key).await;
    }
}

async fn kv_put(store: std::rc::Rc<str>, key: String, value: Bytes, ttl_secs: u64) {
    let expiry = now().saturating_add(ttl_secs.saturating_mul(1000));
    let mut stored = Vec::with_capacity(EXPIRY_LEN + value.len());
    stored.extend_from_slice(&expiry.to_be_bytes());
    stored.extend_from_slice(&value);
    if let Ok(store) = Store::open(&store).await {
        let _ = store.set(&key, &stored).await;
    }
}

/// The response body: all at once, or chunk by chunk as the pump yields them.
enum Body {
    Full(Option<Bytes>),
    Stream(Pin<Box<dyn Stream<Item = Bytes>>>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(chunks) => chunks
                .as_mut()
                .poll_next(cx)
                .map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn client_info(req: &Request) -> ClientInfo {
    ClientInfo {
        ip: req
            .headers()
            .get(CLIENT_ADDR_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .map(|a| a.ip()),
        tcp_rtt_ms: None,
    }
}

fn response(head: ResponseHead, body: Body) -> http::Response<Body> {
    let mut response = http::Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(head.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    for (k, v) in &head.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            response.headers_mut().append(k, v);
        }
    }
    response
}

#[http_service]
async fn handle(req: Request) -> http::Response<Body> {
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(k, _)| !k.as_str().starts_with(SPIN_HEADER_PREFIX))
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
        .collect();
    let mut head = RequestHead::new(&method, &path, headers);
    head.client = client_info(&req);
    let body = match method.as_str() {
        "GET" | "HEAD" | "OPTIONS" => Bytes::new(),
        _ => req.into_body().bytes().await.unwrap_or_default(),
    };
    let config = config().await;
    let store = config
        .kv_store
        .clone()
        .unwrap_or_else(|| DEFAULT_STORE.into());
    let mut pump = Pump::new(Session::new(config).with_health(health()), &store);
    pump.session.handle_request(now(), head, body);

    match pump.next().await {
        Out::Full(head, body) => {
            if !pump.session.is_finished() {
                // Answered early (a prefetch): the rest runs after the
                // response.
                spin_sdk::wasip3::spawn(
                    async move { while !matches!(pump.next().await, Out::End) {} },
                );
            }
            response(head, Body::Full(Some(body).filter(|b| !b.is_empty())))
        }
        Out::Head(head) => {
            let chunks = stream::unfold(pump, |mut pump| async move {
                match pump.next().await {
                    Out::Chunk(bytes) => Some((bytes, pump)),
                    Out::Full(..) | Out::Head(_) | Out::End => None,
                }
            });
            response(head, Body::Stream(Box::pin(chunks)))
        }
        Out::Chunk(_) | Out::End => {
            let body = Bytes::from_static(b"internal error: no response");
            let mut r = http::Response::new(Body::Full(Some(body)));
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}
