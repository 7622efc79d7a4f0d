//! Cloudflare Workers adapter: translates the platform's request into the
//! core's nouns, performs the I/O the [`Session`] asks for (one upstream
//! `fetch`, timers), and pumps its output through a streamed response body.
//! No policy lives here.
//!
//! Client disconnects: workerd cancels the response stream, which drops the
//! [`Pump`]; its `Drop` tells the session, and the session's
//! `CancelUpstream` aborts the upstream fetch through its `AbortController`.
//!
//! Drain: the body is a pull stream, so each time workerd asks for the next
//! chunk it has taken the previous one; that is reported as
//! `handle_downstream_drained`. KV: the `KV` binding (absent = every read
//! answers "not known"); writes run under `ctx.wait_until` so they finish
//! after the response.

use std::future::{pending, Future};
use std::pin::{pin, Pin};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{select, select_all, Either};
use futures_util::{stream, StreamExt};
use worker::kv::KvStore;
use worker::{
    event, js_sys, AbortController, ByteStream, Context, Date, EncodeBody, Env, Fetch, Headers,
    Method, Request, RequestInit, Response, Result,
};

use crate::core::config::{vars, Config};
use crate::core::http::{ClientInfo, RequestHead, ResponseHead, UpstreamRequest};
use crate::core::route::Health;
use crate::core::session::{Action, Session};
use crate::core::Millis;

/// The KV namespace binding (optional) unless `KV_STORE` names another.
const KV_BINDING: &str = "KV";

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
    Date::now().as_millis()
}

fn config(env: &Env) -> Config {
    Config::from_lookup(|name| {
        debug_assert!(vars::ALL.contains(&name));
        env.var(name)
            .map(|v| v.to_string())
            .or_else(|_| env.secret(name).map(|s| s.to_string()))
            .ok()
    })
}

fn headers_of(list: &[(String, String)]) -> Headers {
    let headers = Headers::new();
    for (k, v) in list {
        let _ = headers.append(k, v);
    }
    headers
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
    Head(Result<Response>),
    Chunk(Option<Result<Vec<u8>>>),
    Kv(usize, String, Option<Vec<u8>>),
    Timer,
}

type KvRead = Pin<Box<dyn Future<Output = (String, Option<Vec<u8>>)>>>;

/// Owns the session and its upstream I/O for the life of one request.
struct Pump {
    session: Session,
    ctx: std::rc::Rc<Context>,
    kv: Option<KvStore>,
    abort: Option<AbortController>,
    head: Option<Pin<Box<dyn Future<Output = Result<Response>>>>>,
    body: Option<ByteStream>,
    /// KV reads under way (the link record and the cache entry can both be).
    kv_reads: Vec<KvRead>,
    /// A chunk went to the platform; its next pull means it was taken.
    chunk_out: bool,
}

impl Pump {
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
                    Action::RespondEnd => return Out::End,
                    Action::KvGet { key } => self.kv_get(key),
                    Action::KvPut {
                        key,
                        value,
                        ttl_secs,
                    } => self.kv_put(key, value, ttl_secs),
                    Action::ReplicaHealth { replica, up } => report_health(&replica, up),
                    Action::KvDelete { key } => self.kv_delete(key),
                }
            }
            let deadline = self.session.poll_timeout();
            if deadline.is_none()
                && self.head.is_none()
                && self.body.is_none()
                && self.kv_reads.is_empty()
            {
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
                            worker::Delay::from(Duration::from_millis(at.saturating_sub(now())))
                                .await
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
                Wake::Head(Ok(mut response)) => {
                    self.head = None;
                    let headers: Vec<(String, String)> = response.headers().entries().collect();
                    self.session
                        .handle_upstream_head(t, response.status_code(), &headers);
                    match response.stream() {
                        Ok(body) => self.body = Some(body),
                        Err(_) => self.session.handle_upstream_end(t),
                    }
                }
                Wake::Head(Err(e)) => {
                    self.head = None;
                    self.session.handle_upstream_failed(t, &e.to_string());
                }
                Wake::Chunk(Some(Ok(bytes))) => self.session.handle_upstream_chunk(t, bytes.into()),
                Wake::Chunk(Some(Err(e))) => {
                    self.body = None;
                    self.session.handle_upstream_failed(t, &e.to_string());
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

    /// Starts a KV read; a failure or a missing binding reads as "absent".
    fn kv_get(&mut self, key: String) {
        let Some(kv) = self.kv.clone() else {
            return self.session.handle_kv_value(now(), &key, None);
        };
        self.kv_reads.push(Box::pin(async move {
            let value = kv.get(&key).bytes().await.ok().flatten();
            (key, value)
        }));
    }

    /// Writes in the background; the response does not wait for it.
    fn kv_put(&mut self, key: String, value: Bytes, ttl_secs: u64) {
        let Some(kv) = self.kv.clone() else { return };
        self.ctx.wait_until(async move {
            if let Ok(put) = kv.put_bytes(&key, &value) {
                // Workers KV refuses TTLs under 60 s.
                let _ = put.expiration_ttl(ttl_secs.max(60)).execute().await;
            }
        });
    }

    fn kv_delete(&mut self, key: String) {
        let Some(kv) = self.kv.clone() else { return };
        self.ctx.wait_until(async move {
            let _ = kv.delete(&key).await;
        });
    }

    fn send(&mut self, req: UpstreamRequest) {
        let mut init = RequestInit::new();
        init.with_method(Method::from(req.method.to_string()))
            .with_headers(headers_of(&req.headers));
        if !req.body.is_empty() {
            init.with_body(Some(js_sys::Uint8Array::from(&req.body[..]).into()));
        }
        let request = match Request::new_with_init(&req.url, &init) {
            Ok(r) => r,
            Err(e) => return self.session.handle_upstream_failed(now(), &e.to_string()),
        };
        let controller = AbortController::default();
        let signal = controller.signal();
        self.abort = Some(controller);
        self.head = Some(Box::pin(async move {
            Fetch::Request(request).send_with_signal(&signal).await
        }));
    }

    fn cancel(&mut self) {
        self.kv_reads.clear();
        self.head = None;
        self.body = None;
        if let Some(controller) = self.abort.take() {
            controller.abort();
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        // The platform dropped the body stream: the client is gone (or the
        // response finished, in which case this is a no-op).
        self.session.handle_downstream_closed(now());
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::CancelUpstream => self.cancel(),
                Action::KvPut {
                    key,
                    value,
                    ttl_secs,
                } => self.kv_put(key, value, ttl_secs),
                _ => {}
            }
        }
    }
}

/// A field of `request.cf` (the platform's facts about the client).
fn cf_field(req: &Request, name: &str) -> Option<worker::wasm_bindgen::JsValue> {
    let cf = js_sys::Reflect::get(req.inner(), &"cf".into()).ok()?;
    if cf.is_undefined() || cf.is_null() {
        return None;
    }
    js_sys::Reflect::get(&cf, &name.into()).ok()
}

fn client_info(req: &Request) -> ClientInfo {
    ClientInfo {
        ip: req
            .headers()
            .get("cf-connecting-ip")
            .ok()
            .flatten()
            .and_then(|ip| ip.trim().parse().ok()),
        tcp_rtt_ms: cf_field(req, "clientTcpRtt")
            .and_then(|v| v.as_f64())
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| r as u32),
    }
}

#[event(fetch)]
pub async fn fetch(mut req: Request, env: Env, ctx: Context) -> Result<Response> {
    let url = req.url()?;
    let method = req.method().to_string();
    let mut headers: Vec<(String, String)> = req.headers().entries().collect();
    // Cloudflare rewrites Accept-Encoding before the worker sees it; the
    // client's own header is in `cf.clientAcceptEncoding` (an empty string
    // when the client sent none).
    if let Some(original) = cf_field(&req, "clientAcceptEncoding").and_then(|v| v.as_string()) {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("accept-encoding"));
        if !original.is_empty() {
            headers.push(("accept-encoding".into(), original));
        }
    }
    let mut head = RequestHead::new(&method, url.path(), headers);
    head.client = client_info(&req);
    let body = match method.as_str() {
        "GET" | "HEAD" | "OPTIONS" => Vec::new(),
        _ => req.bytes().await.unwrap_or_default(),
    };
    let config = config(&env);
    let kv = env
        .kv(config.kv_store.as_deref().unwrap_or(KV_BINDING))
        .ok();
    let mut pump = Pump {
        session: Session::new(config).with_health(health()),
        ctx: std::rc::Rc::new(ctx),
        kv,
        abort: None,
        head: None,
        body: None,
        kv_reads: Vec::new(),
        chunk_out: false,
    };
    pump.session.handle_request(now(), head, body.into());

    match pump.next().await {
        Out::Full(head, body) => {
            if !pump.session.is_finished() {
                // Answered early (a prefetch): the rest runs after the
                // response.
                let ctx = pump.ctx.clone();
                ctx.wait_until(async move { while !matches!(pump.next().await, Out::End) {} });
            }
            let response = if body.is_empty() {
                Response::empty()?
            } else {
                Response::from_bytes(body.to_vec())?
            };
            Ok(response
                .with_status(head.status)
                .with_headers(headers_of(&head.headers)))
        }
        Out::Head(head) => {
            let chunks = stream::unfold(pump, |mut pump| async move {
                match pump.next().await {
                    Out::Chunk(bytes) => Some((Ok::<Vec<u8>, worker::Error>(bytes.to_vec()), pump)),
                    Out::Full(..) | Out::Head(_) | Out::End => None,
                }
            });
            // A body the core already encoded must not be encoded again.
            let encode = match head.header("content-encoding") {
                Some(_) => EncodeBody::Manual,
                None => EncodeBody::Automatic,
            };
            Ok(Response::from_stream(chunks)?
                .with_status(head.status)
                .with_headers(headers_of(&head.headers))
                .with_encode_body(encode))
        }
        Out::Chunk(_) | Out::End => Response::error("internal error: no response", 500),
    }
}
