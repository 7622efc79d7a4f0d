//! Cloudflare Workers adapter: translates the platform's request into the
//! core's nouns and gives the shared pump ([`super::pump`]) the Workers
//! I/O — `fetch` with an `AbortController`, `Delay` timers, the `KV`
//! binding — then answers with the pump's response. No policy lives here.
//!
//! Client disconnects: workerd cancels the response stream, which drops the
//! pump; the session's `CancelUpstream` then aborts the upstream fetch,
//! which closes the connection to the model server. KV: the `KV` binding
//! (absent = every read answers "not known"); writes run under
//! `ctx.wait_until` so they finish after the response.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use worker::kv::KvStore;
use worker::{
    event, js_sys, AbortController, Context, Date, EncodeBody, Env, Fetch, Headers, Method,
    ObjectNamespace, Request, RequestInit, Response, Result,
};

use worker::wasm_bindgen::prelude::wasm_bindgen;

use super::pump::{self, Boxed, Platform, Pump, Reply, UpstreamResponse};
use super::quota_object::{ask_line, release_line, verdict_of};
use crate::core::config::{vars, Config};
use crate::core::http::{ClientInfo, RequestHead, UpstreamRequest};
use crate::core::quota::{Ask, Lease, Verdict};
use crate::core::session::Session;
use crate::core::Millis;

/// The KV namespace binding (optional) unless `KV_STORE` names another.
const KV_BINDING: &str = "KV";
/// The Durable Object namespace of the per-key limits records, needed when
/// `RATE_LIMIT_RPM` or `MAX_STREAMS_PER_KEY` is set.
const QUOTA_BINDING: &str = "QUOTA";

/// The Workers side of the pump.
struct Workers {
    ctx: Rc<Context>,
    /// The client's request body, until the session asks for it.
    request_body: Option<pump::BodyStream>,
    kv: Option<KvStore>,
    /// The per-key limits records.
    quota: Option<ObjectNamespace>,
    /// Aborts the upstream fetch under way.
    abort: Option<AbortController>,
}

impl Platform for Workers {
    fn now(&self) -> Millis {
        Date::now().as_millis()
    }

    fn take_request_body(&mut self) -> Option<pump::BodyStream> {
        self.request_body.take()
    }

    fn fetch(
        &mut self,
        req: UpstreamRequest,
    ) -> std::result::Result<Boxed<std::result::Result<UpstreamResponse, String>>, String> {
        let mut init = RequestInit::new();
        init.with_method(Method::from(req.method.to_string()))
            .with_headers(headers_of(&req.headers));
        if !req.body.is_empty() {
            init.with_body(Some(js_sys::Uint8Array::from(&req.body[..]).into()));
        }
        let request = Request::new_with_init(&req.url, &init).map_err(|e| e.to_string())?;
        let controller = AbortController::default();
        let signal = controller.signal();
        self.abort = Some(controller);
        Ok(Box::pin(async move {
            let mut response = Fetch::Request(request)
                .send_with_signal(&signal)
                .await
                .map_err(|e| e.to_string())?;
            let body = response.stream().ok().map(|s| {
                let chunks = s.map(|c| c.map(Bytes::from).map_err(|e| e.to_string()));
                Box::pin(chunks) as pump::BodyStream
            });
            Ok(UpstreamResponse {
                status: response.status_code(),
                headers: response.headers().entries().collect(),
                body,
            })
        }))
    }

    fn abort(&mut self) {
        if let Some(controller) = self.abort.take() {
            controller.abort();
        }
    }

    fn kv_get(&self, key: String) -> Boxed<Option<Vec<u8>>> {
        let kv = self.kv.clone();
        Box::pin(async move { kv?.get(&key).bytes().await.ok().flatten() })
    }

    /// Workers KV expires values itself: no scope bookkeeping.
    fn kv_put(&mut self, key: String, value: Bytes, ttl_secs: u64, _scope: String) {
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
        self.ctx.wait_until(async move {
            ask_record(&ns, &key, release_line(lease)).await;
        });
    }

    fn sleep(&self, ms: Millis) -> Boxed<()> {
        Box::pin(worker::Delay::from(Duration::from_millis(ms)))
    }

    fn without_client(&mut self) -> Self {
        Self {
            ctx: self.ctx.clone(),
            request_body: None,
            kv: self.kv.clone(),
            quota: self.quota.clone(),
            abort: self.abort.take(),
        }
    }

    /// Under `ctx.wait_until`: the platform caps how long it runs after the
    /// response.
    fn spawn(&mut self, work: Boxed<()>) {
        self.ctx.wait_until(work);
    }
}

#[wasm_bindgen(wasm_bindgen = worker::wasm_bindgen)]
extern "C" {
    /// The platform's secure random source.
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues)]
    fn get_random_values(buf: &mut [u8]);
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

fn config(env: &Env) -> Config {
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

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, ctx: Context) -> Result<Response> {
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
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let mut head = RequestHead::new(&method, &path, headers);
    head.client = client_info(&req);
    get_random_values(&mut head.nonce);
    let config = config(&env);
    // Read only if the session asks for it, after the head passed.
    let request_body = match method.as_str() {
        "GET" | "HEAD" | "OPTIONS" => None,
        _ => req.stream().ok().map(|s| {
            let chunks = s.map(|c| c.map(Bytes::from).map_err(|e| e.to_string()));
            Box::pin(chunks) as pump::BodyStream
        }),
    };
    let kv = env
        .kv(config.kv_store.as_deref().unwrap_or(KV_BINDING))
        .ok();
    let quota = env.durable_object(QUOTA_BINDING).ok();
    let ctx = Rc::new(ctx);
    let platform = Workers {
        ctx: ctx.clone(),
        request_body,
        kv,
        quota,
        abort: None,
    };
    let session = Session::new(config).with_health(pump::health());
    match Pump::start(platform, session, head).await {
        Reply::Full(head, body, rest) => {
            if let Some(rest) = rest {
                // Answered early (a prefetch): the rest runs after the
                // response.
                ctx.wait_until(rest.run_to_end());
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
            let chunks = pump.into_chunks().map(|item| match item {
                Ok(bytes) => Ok(bytes.to_vec()),
                // An error item errors the body stream: workerd cuts
                // the response instead of ending it.
                Err(why) => Err(worker::Error::RustError(why.into())),
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
    }
}
