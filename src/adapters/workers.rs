//! Cloudflare Workers adapter: translates the platform's request into the
//! core's nouns and gives the shared pump ([`super::pump`]) the Workers
//! I/O — `fetch` with an `AbortController`, `Delay` timers, the `KV`
//! binding — then answers with the pump's response. No policy lives here.
//!
//! Client disconnects: workerd cancels the response stream, which drops the
//! pump; the session's `CancelUpstream` then aborts the upstream fetch,
//! which closes the connection to the model server — unless the stream is
//! resumable: then the session goes on in the background. KV: the `KV`
//! binding (absent = every read answers "not known"); writes run under
//! `ctx.wait_until` so they finish after the response.
//!
//! Resumable streams: with the `STREAMS` binding, a generation request is
//! handed to the Durable Object that owns its stream
//! ([`super::stream_object`]), which runs the same session, so the
//! generation outlives the client's request; stream records live in that
//! object's storage. Without it, the session runs here and its records in
//! KV.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use worker::kv::KvStore;
use worker::{
    event, js_sys, AbortController, Context, EncodeBody, Env, Fetch, Headers, Method,
    ObjectNamespace, Request, RequestInit, Response, ResponseBody, Result,
};

use worker::wasm_bindgen::prelude::wasm_bindgen;

use super::body;
use super::pump::{self, Answer, Boxed, Platform, Pump, Reply, UpstreamResponse};
use super::quota_object::{ask_line, release_line, verdict_of};
use super::stream_object::{Own, Store};
use crate::core::config::{vars, Config};
use crate::core::http::{ClientInfo, RequestHead, UpstreamRequest};
use crate::core::quota::{Ask, Lease, Verdict};
use crate::core::resume;
use crate::core::session::Session;
use crate::core::socket;
use crate::core::Millis;

/// The KV namespace binding (optional) unless `KV_STORE` names another.
const KV_BINDING: &str = "KV";
/// The Durable Object namespace of the per-key limits records, needed when
/// `RATE_LIMIT_RPM` or `MAX_STREAMS_PER_KEY` is set.
const QUOTA_BINDING: &str = "QUOTA";
/// The Durable Object namespace that owns resumable streams (optional).
const STREAMS_BINDING: &str = "STREAMS";
/// What the Worker tells the stream's owner about a request it hands over:
/// its random bytes (so the owner draws the same stream id) and the
/// client's round-trip time. A client's own are dropped.
const NONCE_HEADER: &str = "x-tokenedge-nonce";
const RTT_HEADER: &str = "x-tokenedge-client-rtt";

/// Where work past the response runs: under the client request's
/// `waitUntil`, or in the object that owns the stream.
#[derive(Clone)]
pub(super) enum Background {
    Request(Rc<Context>),
    Object(Rc<worker::State>),
}

impl Background {
    pub(super) fn run(&self, work: impl std::future::Future<Output = ()> + 'static) {
        match self {
            Background::Request(ctx) => ctx.wait_until(work),
            Background::Object(state) => state.wait_until(work),
        }
    }
}

/// The Workers side of the pump.
pub(super) struct Workers {
    background: Background,
    /// The client's request body, until the session asks for it.
    request_body: Option<pump::BodyStream>,
    kv: Option<KvStore>,
    /// The per-key limits records.
    quota: Option<ObjectNamespace>,
    /// Aborts the upstream fetch under way; whether it has answered.
    abort: Option<(AbortController, Rc<Cell<bool>>)>,
    /// The stream owners, when the deployment has them.
    owners: Option<ObjectNamespace>,
    /// The stream whose owner this session runs in, and its storage.
    own: Option<(String, Own)>,
}

impl Workers {
    /// Where a stream key lives, when not in KV.
    fn stream_store(&self, key: &str) -> Option<Store> {
        let id = resume::stream_of_key(key)?;
        match (&self.own, &self.owners) {
            (Some((own, storage)), _) if own == id => Some(Store::Own(storage.clone())),
            (_, Some(owners)) => Some(Store::Owner {
                owners: owners.clone(),
                id: id.to_owned(),
            }),
            _ => None,
        }
    }
}

impl Platform for Workers {
    type Body = body::Body;

    /// `Date.now()` itself: `worker::Date::now` makes a `Date` object and
    /// asks it, two calls into JavaScript, and the pump asks on every wake.
    fn now(&self) -> Millis {
        js_sys::Date::now() as Millis
    }

    fn take_request_body(&mut self) -> Option<pump::BodyStream> {
        self.request_body.take()
    }

    fn fetch(&mut self, req: UpstreamRequest) -> std::result::Result<Answer<body::Body>, String> {
        let mut init = RequestInit::new();
        init.with_method(Method::from(req.method.to_string()))
            .with_headers(headers_of(&req.headers));
        if !req.body.is_empty() {
            init.with_body(Some(js_sys::Uint8Array::from(&req.body[..]).into()));
        }
        let request = Request::new_with_init(&req.url, &init).map_err(|e| e.to_string())?;
        let controller = AbortController::default();
        let signal = controller.signal();
        let answered = Rc::new(Cell::new(false));
        self.abort = Some((controller, answered.clone()));
        Ok(Box::pin(async move {
            let response = Fetch::Request(request)
                .send_with_signal(&signal)
                .await
                .map_err(|e| e.to_string())?;
            answered.set(true);
            let body = match response.body() {
                ResponseBody::Stream(stream) => body::Body::of(stream),
                _ => None,
            };
            Ok(UpstreamResponse {
                status: response.status_code(),
                headers: response.headers().entries().collect(),
                body,
            })
        }))
    }

    /// Only a request not answered yet: once it has answered, dropping
    /// its body cancelled it (see [`body`]), and an abort would only make
    /// an error for nobody.
    fn abort(&mut self) {
        if let Some((controller, answered)) = self.abort.take() {
            if !answered.get() {
                controller.abort();
            }
        }
    }

    fn kv_get(&self, key: String) -> Boxed<Option<Vec<u8>>> {
        if let Some(store) = self.stream_store(&key) {
            return Box::pin(async move { store.get(&key).await });
        }
        let kv = self.kv.clone();
        Box::pin(async move { kv?.get(&key).bytes().await.ok().flatten() })
    }

    /// Workers KV expires values itself: no scope bookkeeping.
    fn kv_put(&mut self, key: String, value: Bytes, ttl_secs: u64, _scope: String) {
        if let Some(store) = self.stream_store(&key) {
            return self
                .background
                .run(async move { store.put(&key, &value, ttl_secs).await });
        }
        let Some(kv) = self.kv.clone() else { return };
        self.background.run(async move {
            if let Ok(put) = kv.put_bytes(&key, &value) {
                // Workers KV refuses TTLs under 60 s.
                let _ = put.expiration_ttl(ttl_secs.max(60)).execute().await;
            }
        });
    }

    fn kv_delete(&mut self, key: String) {
        if let Some(store) = self.stream_store(&key) {
            return self.background.run(async move { store.delete(&key).await });
        }
        let Some(kv) = self.kv.clone() else { return };
        self.background.run(async move {
            let _ = kv.delete(&key).await;
        });
    }

    fn admit(&mut self, key: String, ask: Ask) -> Boxed<Verdict> {
        let quota = self.quota.clone();
        Box::pin(async move {
            let answer = match quota {
                Some(ns) => ask_record(&ns, &key, ask_line(ask)).await,
                None => None,
            };
            answer.map_or(Verdict::Unknown, |a| verdict_of(&a))
        })
    }

    fn release(&mut self, key: String, lease: Lease) {
        let Some(ns) = self.quota.clone() else { return };
        self.background.run(async move {
            ask_record(&ns, &key, release_line(lease)).await;
        });
    }

    fn sleep(&self, ms: Millis) -> Boxed<()> {
        Box::pin(worker::Delay::from(Duration::from_millis(ms)))
    }

    fn without_client(&mut self) -> Self {
        Self {
            background: self.background.clone(),
            request_body: None,
            kv: self.kv.clone(),
            quota: self.quota.clone(),
            abort: self.abort.take(),
            owners: self.owners.clone(),
            own: self.own.clone(),
        }
    }

    /// Under the client request's `waitUntil` (the platform caps how long
    /// it runs after the response), or in the stream's owner (which pending
    /// I/O keeps alive).
    fn spawn(&mut self, work: Boxed<()>) {
        self.background.run(work);
    }
}

#[wasm_bindgen(wasm_bindgen = worker::wasm_bindgen)]
extern "C" {
    /// The platform's secure random source.
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues)]
    pub(super) fn get_random_values(buf: &mut [u8]);
}

/// Sends one line to a key's limits record and returns its answer.
async fn ask_record(ns: &ObjectNamespace, key: &str, line: String) -> Option<String> {
    let stub = ns.id_from_name(key).ok()?.get_stub().ok()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(line.into()));
    let req = Request::new_with_init("https://quota/", &init).ok()?;
    let mut response = stub.fetch_with_request(req).await.ok()?;
    response.text().await.ok()
}

thread_local! {
    /// The deployment's configuration, read once per isolate: an isolate
    /// runs one version of the worker, whose variables and secrets do not
    /// change under it, and reading them costs some forty calls into
    /// JavaScript per request.
    static CONFIG: std::cell::RefCell<Option<Config>> = const { std::cell::RefCell::new(None) };
}

/// The deployment's configuration (see [`CONFIG`]).
fn config(env: &Env) -> Config {
    if let Some(config) = CONFIG.with(|c| c.borrow().clone()) {
        return config;
    }
    let config = read_config(env);
    CONFIG.with(|c| *c.borrow_mut() = Some(config.clone()));
    config
}

fn read_config(env: &Env) -> Config {
    let mut config = Config::from_lookup(|name| {
        debug_assert!(vars::ALL.contains(&name));
        env.var(name)
            .map(|v| v.to_string())
            .or_else(|_| env.secret(name).map(|s| s.to_string()))
            .ok()
    });
    let limited = config.rate_limit_rpm > 0 || config.max_streams_per_key > 0;
    if limited && env.durable_object(QUOTA_BINDING).is_err() {
        config.problem.get_or_insert_with(|| {
            format!(
                "RATE_LIMIT_RPM and MAX_STREAMS_PER_KEY need the {QUOTA_BINDING} \
                 Durable Object binding (see wrangler.toml)"
            )
        });
    }
    // Stream records live in their owner's storage, which takes writes as
    // they come; in KV only one write per key per second.
    config.fast_stream_store = env.durable_object(STREAMS_BINDING).is_ok();
    config
}

fn headers_of(list: &[(String, String)]) -> Headers {
    let headers = Headers::new();
    for (k, v) in list {
        let _ = headers.append(k, v);
    }
    headers
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

/// The request's body as the pump reads it (none for methods without).
fn body_of(req: &Request, method: &str) -> Option<pump::BodyStream> {
    match method {
        "GET" | "HEAD" | "OPTIONS" => None,
        _ => body::read(&req.inner().body()?),
    }
}

/// The path with its query string, as the core reads it.
fn path_of(url: &worker::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

/// The platform's I/O for one session.
pub(super) fn platform(
    env: &Env,
    config: &Config,
    background: Background,
    request_body: Option<pump::BodyStream>,
    own: Option<(String, Own)>,
) -> Workers {
    Workers {
        background,
        request_body,
        kv: env
            .kv(config.kv_store.as_deref().unwrap_or(KV_BINDING))
            .ok(),
        quota: env.durable_object(QUOTA_BINDING).ok(),
        abort: None,
        owners: config
            .resume
            .then(|| env.durable_object(STREAMS_BINDING).ok())
            .flatten(),
        own,
    }
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    let url = req.url()?;
    let method = req.method().to_string();
    let mut headers: Vec<(String, String)> = req
        .headers()
        .entries()
        .filter(|(k, _)| !is_internal(k))
        .collect();
    // Cloudflare rewrites Accept-Encoding before the worker sees it; the
    // client's own header is in `cf.clientAcceptEncoding` (an empty string
    // when the client sent none).
    if let Some(original) = cf_field(&req, "clientAcceptEncoding").and_then(|v| v.as_string()) {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("accept-encoding"));
        if !original.is_empty() {
            headers.push(("accept-encoding".into(), original));
        }
    }
    let mut head = RequestHead::new(&method, &path_of(&url), headers);
    head.client = client_info(&req);
    get_random_values(&mut head.nonce);
    let mut config = config(&env);
    config.sockets = true;
    let background = Background::Request(Rc::new(ctx));
    let mut platform = platform(&env, &config, background.clone(), None, None);
    if let Some(owners) = platform.owners.as_ref() {
        if resume::owned(&method, url.path()) {
            return hand_over(owners, &head, &req).await;
        }
    }
    platform.request_body = body_of(&req, &method);
    // What a socket needs if the session accepts one (101).
    let upgrade =
        (head.path == socket::PATH).then(|| (env, head.clone(), background, config.clone()));
    let response = serve(platform, config, head).await?;
    match upgrade {
        Some((env, head, background, config)) if response.status_code() == 101 => {
            let headers = response.headers().clone();
            super::socket::accept(env, &config, &head, background, headers)
        }
        _ => Ok(response),
    }
}

/// Whether a header is one the Worker sets for a stream's owner.
fn is_internal(name: &str) -> bool {
    name.eq_ignore_ascii_case(NONCE_HEADER) || name.eq_ignore_ascii_case(RTT_HEADER)
}

/// Hands a generation request to the object that owns its stream and
/// answers with what the object answers.
async fn hand_over(
    owners: &ObjectNamespace,
    head: &RequestHead,
    req: &Request,
) -> Result<Response> {
    let id = resume::new_id(&head.nonce);
    let stub = owners.id_from_name(&id)?.get_stub()?;
    let headers = Headers::new();
    for (k, v) in &head.headers {
        if !k.eq_ignore_ascii_case("host") && !k.eq_ignore_ascii_case("content-length") {
            headers.append(k, v)?;
        }
    }
    headers.set(NONCE_HEADER, &crate::core::hex(&head.nonce))?;
    if let Some(rtt) = head.client.tcp_rtt_ms {
        headers.set(RTT_HEADER, &rtt.to_string())?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::from(head.method.clone()))
        .with_headers(headers)
        .with_body(req.inner().body().map(Into::into));
    let forwarded = Request::new_with_init(&format!("https://owner{}", head.path), &init)?;
    stub.fetch_with_request(forwarded).await
}

/// A request the Worker handed to the stream's owner: served there, with
/// the stream's record in the object's storage (`own`).
pub(super) async fn serve_owned(req: Request, env: Env, own: Own) -> Result<Response> {
    let url = req.url()?;
    let method = req.method().to_string();
    let all: Vec<(String, String)> = req.headers().entries().collect();
    let internal = |name: &str| {
        all.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let nonce = internal(NONCE_HEADER).unwrap_or_default();
    let rtt = internal(RTT_HEADER).and_then(|v| v.parse().ok());
    let headers = all
        .iter()
        .filter(|(k, _)| !is_internal(k))
        .cloned()
        .collect();
    let mut head = RequestHead::new(&method, &path_of(&url), headers);
    for (i, byte) in head.nonce.iter_mut().enumerate() {
        *byte = nonce
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    head.client = ClientInfo {
        ip: head
            .header("cf-connecting-ip")
            .and_then(|ip| ip.trim().parse().ok()),
        tcp_rtt_ms: rtt,
    };
    let config = config(&env);
    let request_body = body_of(&req, &method);
    let background = Background::Object(own.state.clone());
    let own = (resume::new_id(&head.nonce), own);
    let platform = platform(&env, &config, background, request_body, Some(own));
    serve(platform, config, head).await
}

/// Runs one session and answers with its response.
async fn serve(platform: Workers, config: Config, head: RequestHead) -> Result<Response> {
    let background = platform.background.clone();
    let session = Session::new(config).with_health(pump::health());
    match Pump::start(platform, session, head).await {
        Reply::Full(head, body, rest) => {
            if let Some(rest) = rest {
                // Answered early (a prefetch): the rest runs after the
                // response.
                background.run(rest.run_to_end());
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
        Reply::Stream(head, pump) => {
            // A body the core already encoded must not be encoded again.
            let encode = match head.header("content-encoding") {
                Some(_) => EncodeBody::Manual,
                None => EncodeBody::Automatic,
            };
            let body = ResponseBody::Stream(super::relay::respond(pump));
            Ok(Response::from_body(body)?
                .with_status(head.status)
                .with_headers(headers_of(&head.headers))
                .with_encode_body(encode))
        }
    }
}
