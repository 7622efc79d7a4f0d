//! Spin adapter (spin-sdk 6, `wasi:http/handler@0.3.0-rc-2026-03-15`):
//! translates the incoming request into the core's nouns and gives the
//! shared pump ([`super::pump`]) the Spin I/O — `spin_sdk::http::send`, a
//! `wasi:clocks` wait, the default key-value store — then answers with the
//! pump's response. No policy lives here.
//!
//! Client disconnects: the host stops reading the response body and drops
//! it, and the pump with it; the session's `CancelUpstream` drops the
//! outbound request's futures, which closes the upstream connection.
//!
//! KV: Spin's default store, which has no expiry, so each value carries its
//! expiry time in front (8 bytes, milliseconds since the epoch, big-endian);
//! an expired value reads as absent and is deleted, and every write goes
//! through its scope's `Keyspace` (at most `MAX_KEYS_PER_SCOPE` values per
//! API key; expired ones swept) — except a rewrite of a key whose listing
//! already outlasts it (`Listed`). Writes start at once, one after another
//! in a spawned task (a stream's record is rewritten while it streams, in
//! order), and are finished before the body ends, because a Spin host may
//! stop the instance once the response is complete.
//!
//! A resumable generation whose client left goes on in a spawned task
//! (see `pump`), as a prefetch's warming does after its answer — but only
//! as long as the host keeps the instance: Spin 4.0.2's HTTP trigger (and
//! the test host, built the same way on wasmtime's `ProxyHandler`) counts
//! only requests as an instance's work, so an instance with nothing but
//! spawned work is dropped after 1 s without requests, or when it retires
//! after 128 requests, and the generation with it (docs/resume.md). A
//! reader that then finds the record stale gets an error event, never a
//! silent end.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::{Stream, StreamExt};
use http_body::Frame;
use http_body_util::Full;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::Request;
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::wasip3::clocks::monotonic_clock;

use super::pump::{self, Boxed, Platform, Pump, Reply, UpstreamResponse};
use crate::core::config::{vars, Config};
use crate::core::expiring;
use crate::core::http::{ClientInfo, RequestHead, ResponseHead, UpstreamRequest};
use crate::core::keyspace::{self, Keyspace, Listed};
use crate::core::quota::{self, Ask, Lease, Tally, Verdict};
use crate::core::session::Session;
use crate::core::Millis;

/// Spin sets this header to the client's socket address.
const CLIENT_ADDR_HEADER: &str = "spin-client-addr";
/// Headers Spin adds for the component; they are not the client's.
const SPIN_HEADER_PREFIX: &str = "spin-";
/// The key-value store used unless `KV_STORE` names another.
const DEFAULT_STORE: &str = "default";

thread_local! {
    /// What this instance listed in the scopes' indexes: a stream's record,
    /// rewritten at every checkpoint, reads and rewrites its scope's index
    /// (up to `MAX_KEYS_PER_SCOPE` lines) about once a minute instead.
    static LISTED: std::cell::RefCell<Listed> = std::cell::RefCell::default();
}

fn now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// KV writes, carried out one after another in the background as they
/// are asked for (a stream's record is written again and again: a later
/// write must never land before an earlier one).
#[derive(Default)]
struct Writes {
    queue: RefCell<VecDeque<Boxed<()>>>,
    running: Cell<bool>,
}

impl Writes {
    fn push(self: &Rc<Self>, write: Boxed<()>) {
        self.queue.borrow_mut().push_back(write);
        if !self.running.replace(true) {
            let writes = self.clone();
            spin_sdk::wasip3::spawn(async move {
                loop {
                    let next = writes.queue.borrow_mut().pop_front();
                    match next {
                        Some(write) => write.await,
                        None => break,
                    }
                }
                writes.running.set(false);
            });
        }
    }

    /// Waits until every write asked for so far is done.
    async fn settle(&self) {
        while self.running.get() {
            monotonic_clock::wait_for(SETTLE_POLL_NS).await;
        }
    }
}

/// How often the end of a response looks whether the writes are done.
const SETTLE_POLL_NS: u64 = 1_000_000;

/// The Spin side of the pump.
struct Spin {
    /// The client's request body, until the session asks for it.
    request_body: Option<pump::BodyStream>,
    /// The key-value store's label.
    store: Rc<str>,
    /// Writes under way, finished before the response ends.
    kv_writes: Rc<Writes>,
}

impl Platform for Spin {
    type Body = pump::BodyStream;

    fn now(&self) -> Millis {
        now()
    }

    fn take_request_body(&mut self) -> Option<pump::BodyStream> {
        self.request_body.take()
    }

    fn fetch(&mut self, req: UpstreamRequest) -> Result<pump::Answer<pump::BodyStream>, String> {
        let mut builder = http::Request::builder().method(req.method).uri(&req.url);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if !req.body.is_empty() {
            // The body is whole: say its length, or it goes out chunked,
            // which strict HTTP/1.1 servers read as empty or refuse (411).
            builder = builder.header(http::header::CONTENT_LENGTH, req.body.len());
        }
        let request = builder
            .body(Full::new(req.body))
            .map_err(|e| e.to_string())?;
        Ok(Box::pin(async move {
            let response = spin_sdk::http::send(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let headers = header_list(response.headers());
            let status = response.status().as_u16();
            let chunks = response
                .into_body()
                .stream()
                .map(|c| c.map_err(|e| format!("{e:?}")));
            Ok(UpstreamResponse {
                status,
                headers,
                body: Some(Box::pin(chunks) as pump::BodyStream),
            })
        }))
    }

    /// An expired (or damaged) value reads as absent and is deleted.
    fn kv_get(&self, key: String) -> Boxed<Option<Vec<u8>>> {
        let store = self.store.clone();
        Box::pin(async move {
            let store = Store::open(&store).await.ok()?;
            let value = store.get(&key).await.ok()??;
            match expiring::unexpired(&value, now()) {
                Some(v) => Some(v.to_vec()),
                None => {
                    let _ = store.delete(&key).await;
                    None
                }
            }
        })
    }

    /// The value, and its scope's [`Keyspace`]: the keys it sweeps or
    /// evicts are deleted first.
    fn kv_put(&mut self, key: String, value: Bytes, ttl_secs: u64, scope: String) {
        let store = self.store.clone();
        self.kv_writes.push(Box::pin(async move {
            let Ok(store) = Store::open(&store).await else {
                return;
            };
            let now = now();
            let expiry = expiring::after(now, ttl_secs);
            let listing = LISTED.with(|l| l.borrow().listing(&key, expiry));
            if let Some(until) = listing {
                let index_key = keyspace::index_key(&scope);
                let stored = store.get(&index_key).await.ok().flatten();
                let mut index = stored
                    .as_deref()
                    .and_then(|v| expiring::unexpired(v, now))
                    .map(Keyspace::decode)
                    .unwrap_or_default();
                for gone in index.record(&key, until, now) {
                    LISTED.with(|l| l.borrow_mut().forget(&gone));
                    let _ = store.delete(&gone).await;
                }
                let written = store
                    .set(&index_key, &expiring::stored(&index.encode(), Millis::MAX))
                    .await;
                if written.is_ok() {
                    LISTED.with(|l| l.borrow_mut().listed(&key, until));
                }
            }
            let _ = store.set(&key, &expiring::stored(&value, expiry)).await;
        }));
    }

    fn admit(&mut self, key: String, ask: Ask) -> Boxed<Verdict> {
        let store = self.store.clone();
        Box::pin(async move {
            update_tally(&store, &key, |tally, now| tally.admit(now, ask))
                .await
                .unwrap_or(Verdict::Unknown)
        })
    }

    fn release(&mut self, key: String, lease: Lease) {
        let store = self.store.clone();
        self.kv_writes.push(Box::pin(async move {
            update_tally(&store, &key, |tally, now| tally.release(now, lease)).await;
        }));
    }

    fn kv_delete(&mut self, key: String) {
        let store = self.store.clone();
        LISTED.with(|l| l.borrow_mut().forget(&key));
        self.kv_writes.push(Box::pin(async move {
            if let Ok(store) = Store::open(&store).await {
                let _ = store.delete(&key).await;
            }
        }));
    }

    fn sleep(&self, ms: Millis) -> Boxed<()> {
        Box::pin(monotonic_clock::wait_for(ms.saturating_mul(1_000_000)))
    }

    fn settle(&mut self) -> Boxed<()> {
        let writes = self.kv_writes.clone();
        Box::pin(async move { writes.settle().await })
    }

    fn without_client(&mut self) -> Self {
        Self {
            request_body: None,
            store: self.store.clone(),
            kv_writes: self.kv_writes.clone(),
        }
    }

    fn spawn(&mut self, work: Boxed<()>) {
        spin_sdk::wasip3::spawn(work);
    }
}

/// Reads a key's limits record, applies `change` with this instance's
/// clock and writes it back. Not atomic: two instances that read the same
/// record at once both count from it (docs/security.md says what that
/// allows). `None` when the store cannot be used.
async fn update_tally<T>(
    store: &str,
    key: &str,
    change: impl FnOnce(&mut Tally, Millis) -> T,
) -> Option<T> {
    let store = Store::open(store).await.ok()?;
    let stored = store.get(key).await.ok()?;
    let now = now();
    let mut tally = stored
        .as_deref()
        .and_then(|v| expiring::unexpired(v, now))
        .map(Tally::decode)
        .unwrap_or_default();
    let out = change(&mut tally, now);
    let expiry = expiring::after(now, quota::RECORD_TTL_SECS);
    let record = expiring::stored(tally.encode().as_bytes(), expiry);
    store.set(key, &record).await.ok()?;
    Some(out)
}

/// Spin variable names are lower snake case: `UPSTREAM_URL` → `upstream_url`.
async fn config() -> Config {
    let values = join_all(vars::ALL.iter().map(|name| async move {
        let value = spin_sdk::variables::get(name.to_ascii_lowercase()).await;
        (*name, value.ok())
    }))
    .await;
    let mut config = Config::from_lookup(|name| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    });
    // The key-value store takes writes as they come.
    config.fast_stream_store = true;
    config
}

/// The response body: chunks as the pump yields them (one, for a complete
/// answer).
struct Body(Pin<Box<dyn Stream<Item = Result<Bytes, &'static str>>>>);

impl http_body::Body for Body {
    type Data = Bytes;
    /// An error cuts the response: the host ends it without its clean end.
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .as_mut()
            .poll_next(cx)
            .map(|c| c.map(|item| item.map(Frame::data).map_err(std::io::Error::other)))
    }
}

/// Headers with values that are text, as the core takes them.
fn header_list(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
        .collect()
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
    let mut headers = header_list(req.headers());
    headers.retain(|(k, _)| !k.starts_with(SPIN_HEADER_PREFIX));
    let mut head = RequestHead::new(&method, &path, headers);
    head.client = client_info(&req);
    let random = spin_sdk::wasip3::random::random::get_random_bytes(16);
    for (slot, byte) in head.nonce.iter_mut().zip(random) {
        *slot = byte;
    }
    let config = config().await;
    // Read only if the session asks for it, after the head passed.
    let request_body = match method.as_str() {
        "GET" | "HEAD" | "OPTIONS" => None,
        _ => {
            let chunks = req
                .into_body()
                .stream()
                .map(|c| c.map_err(|e| format!("{e:?}")));
            Some(Box::pin(chunks) as pump::BodyStream)
        }
    };
    let platform = Spin {
        request_body,
        store: config.kv_store.as_deref().unwrap_or(DEFAULT_STORE).into(),
        kv_writes: Rc::default(),
    };
    let session = Session::new(config).with_health(pump::health());
    match Pump::start(platform, session, head).await {
        Reply::Full(head, body, rest) => {
            if let Some(rest) = rest {
                // Answered early (a prefetch): the rest runs after the
                // response.
                spin_sdk::wasip3::spawn(rest.run_to_end());
            }
            let body = Some(body).filter(|b| !b.is_empty());
            response(
                head,
                Body(Box::pin(futures_util::stream::iter(body.map(Ok)))),
            )
        }
        Reply::Stream(head, pump) => response(head, Body(Box::pin(pump.into_chunks()))),
    }
}
