//! One client request, from its head to the last byte of its response, as a
//! deterministic state machine.
//!
//! The adapter drives it like this (the only I/O loop there is):
//!
//! ```text
//! let mut s = Session::new(config);
//! s.handle_request(now, head, body);
//! loop {
//!     while let Some(action) = s.poll_action() {
//!         match action {
//!             SendUpstream(req)  => start the fetch; later report
//!                                   handle_upstream_head / _chunk / _end / _failed
//!             CancelUpstream     => abort the fetch, stop reading its body
//!             Respond(head, body)=> send the whole response; done
//!             RespondHead(head)  => start a streamed response
//!             RespondChunk(b)    => write b to the client now
//!             RespondEnd         => finish the streamed response; done
//!             KvGet { key }      => read it; report handle_kv_value
//!             KvPut / KvDelete   => write it in the background
//!             ReplicaHealth{..}  => update the deployment's replica health
//!         }
//!     }
//!     wait for: upstream I/O, the client going away
//!               (handle_downstream_closed), the platform taking the
//!               bytes written (handle_downstream_drained), a KV answer,
//!               or poll_timeout() (handle_timeout)
//! }
//! ```
//!
//! What it decides: routing, auth, CORS, validation, the upstream request,
//! response headers, when to answer an error as JSON and when as an SSE
//! error event, keep-alives, first-byte and idle timeouts, and that a
//! stream never ends silently truncated; the response format, and when to
//! flush and how hard to compress ([`crate::core::pacing`]); the exact
//! cache and speculative prefixes ([`crate::core::cache`],
//! [`crate::core::prefix`]), prefix warming ([`crate::core::prefetch`]),
//! and which replica to use and when to fall back to the next
//! ([`crate::core::route`]). What it does not do: any I/O, any clock read.
//!
//! A `Respond` normally ends the session; a prefetch is answered early and
//! goes on in the background (`is_finished()` is still false after it):
//! the adapter keeps driving it, after the response, until it finishes.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::core::access;
use crate::core::cache::{self, Entry, Recorder};
use crate::core::compress::{Encoder, FlushMode, DEFAULT_LEVEL};
use crate::core::config::{Config, MAX_UPSTREAM_ERROR_BYTES};
use crate::core::encoding::{self, Coding};
use crate::core::error::{Error, ErrorKind};
use crate::core::format::{self, Format, Stats};
use crate::core::http::{header, Headers, RequestHead, ResponseHead, UpstreamRequest};
use crate::core::link::{self, LinkEstimate, Remembered};
use crate::core::openai::{self, Endpoint};
use crate::core::pacing::{self, Pacer, Rule};
use crate::core::prefetch;
use crate::core::prefix;
use crate::core::restream::{Ending, Restream};
use crate::core::route::{self, Health};
use crate::core::Millis;

/// How long `/healthz` waits for the upstream before calling it unreachable.
pub const HEALTH_TIMEOUT_MS: Millis = 5_000;
/// The SSE comment sent while the client would otherwise see nothing.
pub const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// What the adapter must do next. Every variant must be carried out in the
/// order returned.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this request upstream. Report its response head with
    /// [`Session::handle_upstream_head`], each body chunk as it arrives with
    /// [`Session::handle_upstream_chunk`], its end with
    /// [`Session::handle_upstream_end`], or a connection or read failure with
    /// [`Session::handle_upstream_failed`].
    SendUpstream(UpstreamRequest),
    /// Abort the upstream request and stop reading its body: its answer is
    /// no longer needed (the client left, or the session already answered).
    CancelUpstream,
    /// Send this complete response. The session is over.
    Respond(ResponseHead, Bytes),
    /// Start a streamed response with this head; chunks follow.
    RespondHead(ResponseHead),
    /// Write these bytes to the client now, without buffering.
    RespondChunk(Bytes),
    /// End the streamed response. The session is over.
    RespondEnd,
    /// Read this key from the KV store and report the value (or its
    /// absence, or a failure, as `None`) with [`Session::handle_kv_value`].
    /// Nothing waits for it: an answer that comes late is ignored.
    KvGet { key: String },
    /// Write this value with this time-to-live, in the background. A
    /// failure is ignored.
    KvPut {
        key: String,
        value: Bytes,
        ttl_secs: u64,
    },
    /// Delete this key, in the background. A failure is ignored.
    KvDelete { key: String },
    /// Record in the deployment's replica health (the [`Health`] the
    /// adapter keeps across requests) that this replica answered (`up`) or
    /// failed.
    ReplicaHealth { replica: String, up: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Generate { endpoint: Endpoint, stream: bool },
    Models,
    Health,
    Prefetch { endpoint: Endpoint },
}

#[derive(Debug)]
enum Phase {
    /// Waiting for `handle_request`.
    Idle,
    /// Waiting (briefly) for the exact cache's answer before going upstream.
    CacheLookup,
    /// A prefetch, answered: waiting (briefly) for its debounce marker.
    PrefetchLookup {
        key: String,
        started: Millis,
        body: Bytes,
    },
    /// Upstream request sent, no response head yet.
    AwaitingHead,
    /// Upstream answered non-2xx; collecting its body for the message.
    ReadingError { status: u16, body: Vec<u8> },
    /// Re-streaming an upstream event stream.
    Streaming(Box<Restream>),
    /// Piping a non-SSE upstream body through unchanged.
    Passthrough,
    /// Answered (or the client left); nothing more happens.
    Finished,
}

/// What the client has been sent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Downstream {
    NothingSent,
    /// An SSE head went out: errors become SSE error events.
    EventStream,
    /// Another streamed body (JSON pass-through) is under way.
    Body,
    /// A complete answer went out early; the session carries on in the
    /// background (a prefetch) and never writes to the client again.
    Answered,
}

/// One request's state. See the module docs for the driver loop.
pub struct Session {
    config: Config,
    cors: Headers,
    /// Content coding negotiated for streamed responses.
    coding: Coding,
    /// The response's compression context, once its head is out.
    encoder: Option<Encoder>,
    format: Format,
    flush_rule: Rule,
    /// What the request said about the link; completed by KV.
    link: LinkEstimate,
    /// KV key of this client's remembered link, and what it held.
    link_key: Option<String>,
    link_stored: Option<Remembered>,
    /// Flush policy of the streamed response, once its head is out.
    pacer: Option<Pacer>,
    route: Option<Route>,
    phase: Phase,
    downstream: Downstream,
    upstream_open: bool,
    actions: VecDeque<Action>,
    received_at: Millis,
    /// The latest `now` any input brought.
    last_now: Millis,
    upstream_sent_at: Millis,
    upstream_head_at: Option<Millis>,
    first_content_at: Option<Millis>,
    /// Upstream must send something by then (first byte, then idle limit).
    upstream_deadline: Option<Millis>,
    /// Next keep-alive comment, for event streams only.
    keepalive_at: Option<Millis>,
    /// The exact cache's part in this request, when it is cacheable.
    cache: Option<Box<CacheState>>,
    /// Replica health as the deployment knew it when the request came.
    health: Health,
    /// Indexes into `config.upstream_urls`, in the order to try them.
    replicas: Vec<usize>,
    /// Which entry of `replicas` the current upstream request went to.
    attempt: usize,
    /// The upstream request as sent, kept to send it again elsewhere.
    upstream_request: Option<(&'static str, String, Bytes, bool)>,
}

/// Which KV lookup a request makes before it goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// The exact cache ([`crate::core::cache`]).
    Exact,
    /// A speculative prefix ([`crate::core::prefix`]).
    Prefix,
}

/// A request the cache takes part in: its key, the upstream request held
/// during the lookup, and the answer recorded on its way through.
struct CacheState {
    lookup: Lookup,
    key: String,
    endpoint: Endpoint,
    stream: bool,
    lookup_started: Millis,
    lookup_ms: Option<Millis>,
    hit: bool,
    /// The upstream body, sent when the lookup misses.
    pending: Option<Bytes>,
    /// The parsed request, to ask for a continuation on a prefix hit.
    request: Option<openai::CompletionRequest>,
    /// Records a streamed answer; handed to the re-streamer.
    recorder: Option<Recorder>,
    /// A complete (`stream: false`) answer, up to the entry limit.
    body: Vec<u8>,
    spoiled: bool,
    /// After a prefix hit: the re-streamer that carried the prefix, to
    /// carry the continuation.
    prefilled: Option<Box<Restream>>,
}

impl CacheState {
    /// The lookup answered with something usable: no upstream request for
    /// the original body any more.
    fn hit(&mut self, now: Millis) {
        self.lookup_ms = Some(now.saturating_sub(self.lookup_started));
        self.hit = true;
        self.pending = None;
    }
}

impl Session {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            cors: Headers::new(),
            coding: Coding::Identity,
            encoder: None,
            format: Format::OpenAi,
            flush_rule: Rule::Adaptive,
            link: LinkEstimate::default(),
            link_key: None,
            link_stored: None,
            pacer: None,
            route: None,
            phase: Phase::Idle,
            downstream: Downstream::NothingSent,
            upstream_open: false,
            actions: VecDeque::new(),
            received_at: 0,
            last_now: 0,
            upstream_sent_at: 0,
            upstream_head_at: None,
            first_content_at: None,
            upstream_deadline: None,
            keepalive_at: None,
            cache: None,
            health: Health::default(),
            replicas: Vec::new(),
            attempt: 0,
            upstream_request: None,
        }
    }

    /// Gives the session the deployment's replica health (see
    /// [`crate::core::route`]); without it every replica counts as up.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// The next thing the adapter must do, or `None` to wait for input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Session::handle_timeout`] if no other input came.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let flush = self.pacer.as_ref().and_then(Pacer::poll_timeout);
        let lookup = match (&self.phase, &self.cache) {
            (Phase::CacheLookup, Some(c)) => Some(c.lookup_started + cache::LOOKUP_TIMEOUT_MS),
            (Phase::PrefetchLookup { started, .. }, _) => Some(started + cache::LOOKUP_TIMEOUT_MS),
            _ => None,
        };
        [self.upstream_deadline, self.keepalive_at, flush, lookup]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the session has answered (or lost its client) for good.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Time from the request to the first generated content, once known.
    pub fn time_to_first_content(&self) -> Option<Millis> {
        self.first_content_at
            .map(|t| t.saturating_sub(self.received_at))
    }

    /// A request arrived, with its whole body.
    pub fn handle_request(&mut self, now: Millis, req: RequestHead, body: Bytes) {
        self.last_now = self.last_now.max(now);
        if !matches!(self.phase, Phase::Idle) {
            return;
        }
        self.received_at = now;
        self.cors = access::cors_headers(&self.config.cors_origins, &req);
        self.coding = encoding::negotiate(req.header("accept-encoding"));
        if req.method == "OPTIONS" {
            let head = ResponseHead {
                status: 204,
                headers: access::preflight_headers(&self.config.cors_origins, &req),
            };
            return self.respond(head, Bytes::new());
        }
        let (route, method) = match req.path.as_str() {
            "/healthz" => (Route::Health, "GET"),
            "/v1/models" => (Route::Models, "GET"),
            prefetch::PATH => (
                Route::Prefetch {
                    endpoint: prefetch::endpoint_of(&body),
                },
                "POST",
            ),
            "/v1/chat/completions" => (
                Route::Generate {
                    endpoint: Endpoint::Chat,
                    stream: false,
                },
                "POST",
            ),
            "/v1/completions" => (
                Route::Generate {
                    endpoint: Endpoint::Completions,
                    stream: false,
                },
                "POST",
            ),
            _ => {
                return self.fail(Error::new(ErrorKind::NotFound {
                    path: req.path.clone(),
                }))
            }
        };
        if req.method != method && !(method == "GET" && req.method == "HEAD") {
            return self.fail(Error::new(ErrorKind::MethodNotAllowed {
                method: req.method.clone(),
                path: req.path.clone(),
            }));
        }
        if route != Route::Health && !access::authorized(&self.config, &req) {
            return self.fail(Error::new(ErrorKind::InvalidApiKey));
        }
        if self.config.upstream_urls.is_empty() {
            return self.fail(Error::new(ErrorKind::Misconfigured {
                detail: "UPSTREAM_URL is not set".into(),
            }));
        }
        match route {
            Route::Health | Route::Models => {
                self.route = Some(route);
                self.pick_replicas(now, &[]);
                self.send_upstream(now, "GET", "/v1/models", Bytes::new(), false);
            }
            Route::Prefetch { endpoint } => {
                let request = match self
                    .check_body(&req, &body)
                    .and_then(|()| openai::parse_request(endpoint, &body))
                {
                    Ok(r) => r,
                    Err(e) => return self.fail(e),
                };
                self.route = Some(route);
                self.pick_replicas(now, &route::affinity(endpoint, &request.body));
                let key = prefetch::key(&request);
                self.phase = Phase::PrefetchLookup {
                    key: key.clone(),
                    started: now,
                    body: prefetch::warm_body(&request).into(),
                };
                // Answered at once; the rest happens in the background.
                let mut headers: Headers = vec![
                    ("content-type".into(), "application/json".into()),
                    ("cache-control".into(), "no-store".into()),
                ];
                headers.extend(self.cors.iter().cloned());
                let body = serde_json::json!({"object": "prefetch", "status": "accepted"});
                let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
                bytes.push(b'\n');
                self.actions.push_back(Action::Respond(
                    ResponseHead {
                        status: 202,
                        headers,
                    },
                    bytes.into(),
                ));
                self.downstream = Downstream::Answered;
                self.actions.push_back(Action::KvGet { key });
            }
            Route::Generate { endpoint, .. } => {
                if let Err(e) = self.check_body(&req, &body) {
                    return self.fail(e);
                }
                let request = match openai::parse_request(endpoint, &body) {
                    Ok(r) => r,
                    Err(e) => return self.fail(e),
                };
                if request.stream {
                    let chosen = Format::from_header(req.header(format::HEADER))
                        .and_then(|f| f.check_request(&request.body).map(|()| f));
                    match chosen {
                        Ok(f) => self.format = f,
                        Err(e) => return self.fail(e),
                    }
                    self.flush_rule = Rule::from_header(req.header(pacing::FLUSH_HEADER));
                    self.link = LinkEstimate::from_request(&req);
                    self.link_key =
                        access::bearer(&req).and_then(|key| link::remember_key(key, req.client.ip));
                }
                self.route = Some(Route::Generate {
                    endpoint,
                    stream: request.stream,
                });
                self.pick_replicas(now, &route::affinity(endpoint, &request.body));
                let scope = (!self.config.cache_shared).then(|| access::bearer(&req).unwrap_or(""));
                let exact = (self.config.cache_ttl_secs > 0)
                    .then(|| cache::plan(&req, &request, scope))
                    .flatten();
                let lookup = match exact {
                    Some(plan) => Some((Lookup::Exact, plan.key, plan.read)),
                    None => (self.config.cache_ttl_secs > 0)
                        .then(|| prefix::plan(&req, &request, &self.config, scope))
                        .flatten()
                        .map(|key| (Lookup::Prefix, key, true)),
                };
                let body: Bytes = request.upstream_body().into();
                let Some((lookup, key, read)) = lookup else {
                    self.send_upstream(now, "POST", endpoint.path(), body, request.stream);
                    self.start_keepalives(now, request.stream);
                    return self.read_link();
                };
                let recorder = match lookup {
                    Lookup::Exact => Recorder::new(now / 1000),
                    Lookup::Prefix => {
                        Recorder::new(now / 1000).keep_pieces(self.config.prefix_tokens)
                    }
                };
                let stream = request.stream;
                self.cache = Some(Box::new(CacheState {
                    lookup,
                    key: key.clone(),
                    endpoint,
                    stream,
                    lookup_started: now,
                    lookup_ms: None,
                    hit: false,
                    pending: None,
                    request: (lookup == Lookup::Prefix).then_some(request),
                    recorder: Some(recorder),
                    body: Vec::new(),
                    spoiled: false,
                    prefilled: None,
                }));
                if read {
                    if let Some(c) = &mut self.cache {
                        c.pending = Some(body);
                    }
                    self.phase = Phase::CacheLookup;
                    self.actions.push_back(Action::KvGet { key });
                } else {
                    self.send_upstream(now, "POST", endpoint.path(), body, stream);
                }
                self.start_keepalives(now, stream);
                self.read_link();
            }
        }
    }

    fn start_keepalives(&mut self, now: Millis, stream: bool) {
        if stream && self.format.is_event_stream() {
            self.keepalive_at = Some(now + self.config.keepalive_interval_ms);
        }
    }

    fn read_link(&mut self) {
        if let Some(key) = &self.link_key {
            let key = key.clone();
            self.actions.push_back(Action::KvGet { key });
        }
    }

    fn check_body(&self, req: &RequestHead, body: &[u8]) -> Result<(), Error> {
        let limit = self.config.max_body_bytes;
        let declared = req
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        if body.len() > limit || declared.is_some_and(|n| n > limit) {
            return Err(Error::new(ErrorKind::PayloadTooLarge { limit }));
        }
        let content_type = req.header("content-type");
        let is_json = content_type
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(Error::new(ErrorKind::UnsupportedMediaType {
                content_type: content_type.map(str::to_owned),
            }));
        }
        Ok(())
    }

    fn pick_replicas(&mut self, now: Millis, affinity: &[u8]) {
        self.replicas = route::order(&self.config.upstream_urls, affinity, &self.health, now);
        self.attempt = 0;
    }

    /// The replica the current upstream request goes to.
    fn replica(&self) -> &str {
        self.replicas
            .get(self.attempt)
            .and_then(|&i| self.config.upstream_urls.get(i))
            .map_or("", String::as_str)
    }

    /// Reports the current replica's health when it changed.
    fn report_replica(&mut self, up: bool) {
        if self.health.is_up(self.replica(), self.last_now) != up {
            let replica = self.replica().to_owned();
            self.health.report(&replica, up, self.last_now);
            self.actions
                .push_back(Action::ReplicaHealth { replica, up });
        }
    }

    /// The current replica failed before its first byte: marks it down and,
    /// when another replica is left, sends the request there instead.
    /// Returns whether it did.
    fn fall_back(&mut self, now: Millis) -> bool {
        self.report_replica(false);
        if self.attempt + 1 >= self.replicas.len() {
            return false;
        }
        let Some((method, path, body, stream)) = self.upstream_request.take() else {
            return false;
        };
        self.cancel_upstream();
        self.attempt += 1;
        self.send_upstream(now, method, &path, body, stream);
        true
    }

    fn send_upstream(
        &mut self,
        now: Millis,
        method: &'static str,
        path: &str,
        body: Bytes,
        stream: bool,
    ) {
        let mut headers: Headers = vec![
            (
                "accept".into(),
                if stream {
                    "text/event-stream"
                } else {
                    "application/json"
                }
                .into(),
            ),
            (
                "user-agent".into(),
                concat!("tokenedge/", env!("CARGO_PKG_VERSION")).into(),
            ),
        ];
        if !body.is_empty() {
            headers.push(("content-type".into(), "application/json".into()));
        }
        if let Some(key) = &self.config.upstream_api_key {
            headers.push(("authorization".into(), format!("Bearer {key}")));
        }
        let url = format!("{}{}", self.replica(), path);
        self.upstream_request = Some((method, path.to_owned(), body.clone(), stream));
        self.actions
            .push_back(Action::SendUpstream(UpstreamRequest {
                method,
                url,
                headers,
                body,
            }));
        self.upstream_open = true;
        self.upstream_sent_at = now;
        let wait = if self.route == Some(Route::Health) {
            HEALTH_TIMEOUT_MS
        } else {
            self.config.first_byte_timeout_ms
        };
        self.upstream_deadline = Some(now + wait);
        self.phase = Phase::AwaitingHead;
    }

    /// The upstream's response head arrived.
    pub fn handle_upstream_head(&mut self, now: Millis, status: u16, headers: &[(String, String)]) {
        self.last_now = self.last_now.max(now);
        if !matches!(self.phase, Phase::AwaitingHead) {
            return;
        }
        if route::RETRY_STATUSES.contains(&status) && self.fall_back(now) {
            return;
        }
        self.report_replica(!route::RETRY_STATUSES.contains(&status));
        self.upstream_head_at = Some(now);
        self.upstream_deadline = Some(now + self.config.idle_timeout_ms);
        let Some(route) = self.route else { return };
        if let Route::Prefetch { .. } = route {
            // The prompt is processed: the warming is done.
            self.cancel_upstream();
            return self.finish();
        }
        if route == Route::Health {
            let ok = (200..300).contains(&status);
            let body = serde_json::json!({
                "status": if ok { "ok" } else { "degraded" },
                "upstream": { "reachable": true, "status": status, "latency_ms": now.saturating_sub(self.upstream_sent_at) },
            });
            self.cancel_upstream();
            return self.respond_json(if ok { 200 } else { 503 }, &body);
        }
        if !(200..300).contains(&status) {
            self.phase = Phase::ReadingError {
                status,
                body: Vec::new(),
            };
            return;
        }
        match route {
            Route::Generate { stream: true, .. } => {
                self.start_event_stream();
                let prefilled = self.cache.as_mut().and_then(|c| c.prefilled.take());
                let mut restream =
                    prefilled.unwrap_or_else(|| Box::new(Restream::new(self.format)));
                if let Some(r) = self
                    .cache
                    .as_mut()
                    .filter(|c| !c.hit)
                    .and_then(|c| c.recorder.take())
                {
                    restream.record_into(r);
                }
                self.phase = Phase::Streaming(restream);
            }
            _ => {
                let content_type = header(headers, "content-type").unwrap_or("application/json");
                let mut h = vec![
                    ("content-type".into(), content_type.to_owned()),
                    ("cache-control".into(), "no-store".into()),
                    ("server-timing".into(), self.server_timing()),
                ];
                self.cache_header(&mut h);
                self.start_encoding(&mut h);
                h.extend(self.cors.iter().cloned());
                self.actions
                    .push_back(Action::RespondHead(ResponseHead { status, headers: h }));
                self.downstream = Downstream::Body;
                self.phase = Phase::Passthrough;
            }
        }
    }

    /// A chunk of the upstream body arrived (any size, any split).
    pub fn handle_upstream_chunk(&mut self, now: Millis, chunk: Bytes) {
        self.last_now = self.last_now.max(now);
        if !self.upstream_open {
            return;
        }
        self.upstream_deadline = Some(now + self.config.idle_timeout_ms);
        match &mut self.phase {
            Phase::ReadingError { body, .. } => {
                let room = MAX_UPSTREAM_ERROR_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    self.cancel_upstream();
                    self.finish_upstream_error();
                }
            }
            Phase::Streaming(_) => self.feed_stream(now, &chunk),
            Phase::Passthrough => {
                self.record(&chunk);
                self.emit(now, &chunk);
            }
            Phase::Idle
            | Phase::CacheLookup
            | Phase::PrefetchLookup { .. }
            | Phase::AwaitingHead
            | Phase::Finished => {}
        }
    }

    /// The upstream body ended cleanly.
    pub fn handle_upstream_end(&mut self, now: Millis) {
        self.last_now = self.last_now.max(now);
        if !self.upstream_open {
            return;
        }
        self.upstream_open = false;
        self.upstream_deadline = None;
        match &self.phase {
            Phase::ReadingError { .. } => self.finish_upstream_error(),
            Phase::Streaming(restream) => match restream.ending() {
                Ending::Done | Ending::FinishedWithoutDone => {
                    self.store_answer();
                    self.end_stream(now)
                }
                Ending::Truncated => self.fail(Error::new(ErrorKind::UpstreamStreamBroken {
                    detail: "the upstream ended the stream without [DONE] or a finish_reason"
                        .into(),
                })),
            },
            Phase::Passthrough => {
                self.store_answer();
                self.end_stream(now)
            }
            Phase::AwaitingHead => {
                self.handle_upstream_failed(now, "connection closed before a response")
            }
            Phase::Idle | Phase::CacheLookup | Phase::PrefetchLookup { .. } | Phase::Finished => {}
        }
    }

    /// The upstream could not be reached, or its body failed mid-way.
    pub fn handle_upstream_failed(&mut self, now: Millis, detail: &str) {
        self.last_now = self.last_now.max(now);
        if !self.upstream_open {
            return;
        }
        self.upstream_open = false;
        self.upstream_deadline = None;
        if matches!(self.phase, Phase::AwaitingHead) && self.fall_back(now) {
            return;
        }
        match (&self.phase, self.route) {
            (Phase::AwaitingHead, Some(Route::Health)) => self.respond_json(
                503,
                &serde_json::json!({"status": "degraded", "upstream": {"reachable": false, "error": detail}}),
            ),
            (Phase::AwaitingHead, _) => self.fail(Error::new(ErrorKind::UpstreamUnreachable { detail: detail.into() })),
            (Phase::ReadingError { .. }, _) => self.finish_upstream_error(),
            (Phase::Streaming(_), _) => self.fail(Error::new(ErrorKind::UpstreamStreamBroken { detail: detail.into() })),
            (Phase::Passthrough, _) => self.end_stream(now),
            _ => {}
        }
    }

    /// The client went away. Not an error: the upstream is cancelled and the
    /// session ends without another byte.
    pub fn handle_downstream_closed(&mut self, _now: Millis) {
        if self.is_finished() {
            return;
        }
        self.actions.clear();
        self.cancel_upstream();
        self.finish();
    }

    /// The platform has taken every byte of the response written so far
    /// (it pulled for more). Lets the pacer measure the drain rate and
    /// release events it held back for a busy link.
    pub fn handle_downstream_drained(&mut self, now: Millis) {
        self.last_now = self.last_now.max(now);
        if self.is_finished() {
            return;
        }
        if self.pacer.as_mut().is_some_and(|p| p.drained(now)) {
            self.flush(now);
        }
    }

    /// The answer to an [`Action::KvGet`]: the stored value, or `None` when
    /// the key is absent or the store failed (both mean "not known").
    pub fn handle_kv_value(&mut self, now: Millis, key: &str, value: Option<Bytes>) {
        self.last_now = self.last_now.max(now);
        if let Phase::PrefetchLookup { key: k, .. } = &self.phase {
            if k == key {
                return match value {
                    Some(_) => self.finish(), // warmed recently
                    None => self.warm(now),
                };
            }
        }
        if matches!(self.phase, Phase::CacheLookup)
            && self.cache.as_ref().is_some_and(|c| c.key == key)
        {
            let entry = value.as_deref().and_then(Entry::decode);
            if value.is_some() && entry.is_none() {
                // Unreadable (an older format): drop it.
                self.actions.push_back(Action::KvDelete {
                    key: key.to_owned(),
                });
            }
            let lookup = self.cache.as_ref().map(|c| c.lookup);
            return match (entry, lookup) {
                (Some(entry), Some(Lookup::Exact)) => self.replay(now, entry),
                (Some(entry), Some(Lookup::Prefix)) if !entry.pieces.is_empty() => {
                    self.speculate(now, entry)
                }
                _ => self.cache_missed(now),
            };
        }
        if self.link_key.as_deref() != Some(key) || self.link_stored.is_some() {
            return;
        }
        let Some(r) = value.and_then(|v| serde_json::from_slice::<Remembered>(&v).ok()) else {
            return;
        };
        self.link_stored = Some(r);
        // Too late for a response whose pacer already runs: the next one
        // benefits.
        if self.pacer.is_none() {
            self.link = self.link.with_remembered(r);
        }
    }

    /// The time returned by [`Session::poll_timeout`] has come.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.last_now = self.last_now.max(now);
        if self.is_finished() {
            return;
        }
        if self
            .pacer
            .as_ref()
            .and_then(Pacer::poll_timeout)
            .is_some_and(|t| now >= t)
        {
            self.flush(now);
        }
        if matches!(self.phase, Phase::CacheLookup)
            && self
                .cache
                .as_ref()
                .is_some_and(|c| now >= c.lookup_started + cache::LOOKUP_TIMEOUT_MS)
        {
            self.cache_missed(now);
        }
        if matches!(&self.phase, Phase::PrefetchLookup { started, .. } if now >= started + cache::LOOKUP_TIMEOUT_MS)
        {
            self.warm(now);
        }
        if self.upstream_deadline.is_some_and(|d| now >= d) {
            self.upstream_deadline = None;
            if matches!(self.phase, Phase::AwaitingHead) && self.fall_back(now) {
                return;
            }
            return match (&self.phase, self.route) {
                (Phase::AwaitingHead, Some(Route::Health)) => {
                    self.cancel_upstream();
                    self.respond_json(
                        503,
                        &serde_json::json!({"status": "degraded", "upstream": {"reachable": false, "error": "timed out"}}),
                    )
                }
                (Phase::AwaitingHead, _) => {
                    let after_ms = self.config.first_byte_timeout_ms;
                    self.fail(Error::new(ErrorKind::UpstreamTimeout { after_ms }))
                }
                _ => {
                    let after_ms = self.config.idle_timeout_ms;
                    self.fail(Error::new(ErrorKind::UpstreamTimeout { after_ms }))
                }
            };
        }
        if self.keepalive_at.is_some_and(|k| now >= k) {
            if self.downstream == Downstream::NothingSent {
                // Commit to an event stream now so the client's connection
                // stays alive; a later upstream error becomes an error event.
                self.start_event_stream();
            }
            self.write(now, Bytes::from_static(KEEPALIVE_COMMENT), true);
        }
    }

    // ---- helpers -------------------------------------------------------

    fn server_timing(&self) -> String {
        if let Some(c) = self.cache.as_ref().filter(|c| c.hit) {
            // Answered from the cache (or started from it, for a prefix,
            // before the upstream was asked): the lookup is all there was.
            let desc = match c.lookup {
                Lookup::Exact => "hit",
                Lookup::Prefix => "prefix",
            };
            return format!("cache;desc={desc};dur={}", c.lookup_ms.unwrap_or(0));
        }
        let edge = self.upstream_sent_at.saturating_sub(self.received_at);
        let mut t = match self.upstream_head_at {
            Some(h) => format!(
                "edge;dur={edge}, upstream;dur={}",
                h.saturating_sub(self.upstream_sent_at)
            ),
            None => format!("edge;dur={edge}"),
        };
        if let Some(ms) = self.cache.as_ref().and_then(|c| c.lookup_ms) {
            t.push_str(&format!(", cache;desc=miss;dur={ms}"));
        }
        t
    }

    /// `X-Cache` on answers to generation requests: `hit` (exact cache),
    /// `prefix` (speculative prefix), `miss` (looked up, not found) or
    /// `bypass` (not cacheable).
    fn cache_header(&self, headers: &mut Headers) {
        let v = match &self.cache {
            Some(c) if c.hit && c.lookup == Lookup::Prefix => "prefix",
            Some(c) if c.hit => "hit",
            Some(_) => "miss",
            None if matches!(self.route, Some(Route::Generate { .. })) => "bypass",
            None => return,
        };
        headers.push((cache::X_CACHE.into(), v.into()));
    }

    /// Re-streams upstream (or replayed) event-stream bytes to the client.
    fn feed_stream(&mut self, now: Millis, chunk: &[u8]) {
        let Phase::Streaming(restream) = &mut self.phase else {
            return;
        };
        match restream.push(chunk) {
            Ok(out) => {
                let done = restream.done();
                if out.content_events > 0 && self.first_content_at.is_none() {
                    self.first_content_at = Some(now);
                }
                if !out.bytes.is_empty() {
                    self.write(now, out.bytes, false);
                }
                if done {
                    self.cancel_upstream();
                    self.store_answer();
                    self.end_stream(now);
                }
            }
            Err(e) => self.fail(Error::new(ErrorKind::UpstreamStreamBroken {
                detail: e.to_string(),
            })),
        }
    }

    /// Keeps a copy of a complete (`stream: false`) answer as it passes;
    /// streamed answers are recorded by the re-streamer.
    fn record(&mut self, chunk: &[u8]) {
        let Some(c) = self.cache.as_deref_mut().filter(|c| !c.hit && !c.spoiled) else {
            return;
        };
        if c.body.len() + chunk.len() <= cache::MAX_ENTRY_BYTES {
            c.body.extend_from_slice(chunk);
        } else {
            c.spoiled = true;
        }
    }

    /// Stores the answer of a request that completed upstream: one write,
    /// of a whole answer (or of its opening, for a prefix), or nothing.
    fn store_answer(&mut self) {
        let ttl_secs = self.config.cache_ttl_secs;
        let recorder = match &mut self.phase {
            Phase::Streaming(r) => r.take_recorder(),
            _ => None,
        };
        let Some(c) = self.cache.as_deref_mut().filter(|c| !c.hit && !c.spoiled) else {
            return;
        };
        c.spoiled = true; // stored once
        let entry = match (c.stream, c.lookup) {
            (true, Lookup::Exact) => recorder.and_then(Recorder::finish),
            (true, Lookup::Prefix) => recorder
                .and_then(Recorder::finish)
                .filter(|e| !e.pieces.is_empty())
                .map(|e| Entry { usage: None, ..e }),
            (false, _) => Entry::from_json(&std::mem::take(&mut c.body), c.lookup_started / 1000),
        };
        if let Some(entry) = entry {
            self.actions.push_back(Action::KvPut {
                key: c.key.clone(),
                value: entry.encode().into(),
                ttl_secs,
            });
        }
    }

    /// Sends a prefetch's warming request, and marks its prefix as warmed.
    fn warm(&mut self, now: Millis) {
        let Phase::PrefetchLookup { key, body, .. } =
            std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return;
        };
        let Some(Route::Prefetch { endpoint }) = self.route else {
            return;
        };
        if self.config.prefetch_window_secs > 0 {
            self.actions.push_back(Action::KvPut {
                key,
                value: Bytes::from_static(b"1"),
                ttl_secs: self.config.prefetch_window_secs,
            });
        }
        self.send_upstream(now, "POST", endpoint.path(), body, false);
    }

    /// A stored prefix was found: stream it now, then ask the upstream to
    /// continue after it.
    fn speculate(&mut self, now: Millis, mut entry: Entry) {
        let dialect = self.config.dialect;
        let Some(c) = self.cache.as_deref_mut() else {
            return;
        };
        // Never more than the request's length limit, and leave the
        // upstream at least one token to write.
        let limit = ["max_tokens", "max_completion_tokens"]
            .iter()
            .filter_map(|f| c.request.as_ref()?.body.get(*f)?.as_u64())
            .min();
        if let Some(limit) = limit {
            entry.pieces.truncate(limit.saturating_sub(1) as usize);
        }
        if entry.pieces.is_empty() {
            c.spoiled = true; // too short to use, and not to be replaced
            return self.cache_missed(now);
        }
        let Some(request) = c.request.take() else {
            return;
        };
        c.hit(now);
        let endpoint = c.endpoint;
        let tokens = entry.pieces.len() as u64;
        let continuation = prefix::continuation(&request, dialect, &entry.pieces.concat(), tokens);
        self.start_event_stream();
        let mut restream = Box::new(Restream::new(self.format));
        // Events this code wrote itself: they parse.
        if let Ok(out) = restream.push(&entry.to_sse_opening(endpoint)) {
            if out.content_events > 0 && self.first_content_at.is_none() {
                self.first_content_at = Some(now);
            }
            self.write(now, out.bytes, true);
        }
        restream.continuing(tokens);
        if let Some(c) = self.cache.as_deref_mut() {
            c.prefilled = Some(restream);
        }
        let body: Bytes = continuation.upstream_body().into();
        self.send_upstream(now, "POST", endpoint.path(), body, true);
    }

    /// The lookup found nothing (or took too long): go upstream.
    fn cache_missed(&mut self, now: Millis) {
        let Some(c) = self.cache.as_deref_mut() else {
            return;
        };
        c.lookup_ms = Some(now.saturating_sub(c.lookup_started));
        let (endpoint, stream) = (c.endpoint, c.stream);
        let body = c.pending.take().unwrap_or_default();
        self.send_upstream(now, "POST", endpoint.path(), body, stream);
    }

    /// Answers from a stored entry: as a stream through the same
    /// re-streaming, formats, pacing and compression as a live answer, or
    /// as JSON.
    fn replay(&mut self, now: Millis, entry: Entry) {
        let Some(c) = self.cache.as_deref_mut() else {
            return;
        };
        c.hit(now);
        let (endpoint, stream) = (c.endpoint, c.stream);
        if !stream {
            return self.respond_json(200, &entry.to_json(endpoint));
        }
        self.start_event_stream();
        self.phase = Phase::Streaming(Box::new(Restream::new(self.format)));
        self.feed_stream(now, &entry.to_sse(endpoint));
    }

    fn start_event_stream(&mut self) {
        if self.downstream != Downstream::NothingSent {
            return;
        }
        let mut headers: Headers = vec![
            ("content-type".into(), self.format.content_type().into()),
            ("cache-control".into(), "no-cache, no-transform".into()),
            ("x-accel-buffering".into(), "no".into()),
            ("server-timing".into(), self.server_timing()),
        ];
        self.cache_header(&mut headers);
        self.start_encoding(&mut headers);
        headers.extend(self.cors.iter().cloned());
        self.actions.push_back(Action::RespondHead(ResponseHead {
            status: 200,
            headers,
        }));
        self.downstream = Downstream::EventStream;
        self.pacer = Some(Pacer::new(self.flush_rule, self.link));
    }

    /// Announces the negotiated coding on a streamed head and opens the
    /// compression context for its body.
    fn start_encoding(&mut self, headers: &mut Headers) {
        headers.push(("vary".into(), "Accept-Encoding".into()));
        if let Some(token) = self.coding.header_value() {
            headers.push(("content-encoding".into(), token.into()));
            self.encoder = Some(Encoder::new(self.coding, DEFAULT_LEVEL));
        }
    }

    /// Sends body bytes through the response's encoder, flushed so the
    /// client can decode them at once.
    fn emit(&mut self, now: Millis, bytes: &[u8]) {
        let mut out = Vec::with_capacity(bytes.len() / 2 + 32);
        match &mut self.encoder {
            Some(encoder) => {
                if let Some(p) = &self.pacer {
                    encoder.set_level(p.level());
                }
                encoder.encode_and_flush(bytes, FlushMode::Sync, &mut out);
            }
            None => out.extend_from_slice(bytes),
        }
        if let Some(p) = &mut self.pacer {
            p.flushed(now, out.len());
        }
        self.actions.push_back(Action::RespondChunk(out.into()));
    }

    /// Queues bytes for a streamed response and flushes when the pacer says
    /// so (`urgent`: at once, for keep-alives and the end). Pushes the next
    /// keep-alive back.
    fn write(&mut self, now: Millis, bytes: Bytes, urgent: bool) {
        match &mut self.pacer {
            Some(p) => {
                if p.push(now, &bytes) || urgent {
                    self.flush(now);
                }
            }
            None => self.emit(now, &bytes),
        }
        if self.keepalive_at.is_some() {
            self.keepalive_at = Some(now + self.config.keepalive_interval_ms);
        }
    }

    /// Writes everything the pacer holds.
    fn flush(&mut self, now: Millis) {
        if let Some(pending) = self.pacer.as_mut().map(Pacer::take) {
            if !pending.is_empty() {
                self.emit(now, &pending);
            }
        }
    }

    fn cancel_upstream(&mut self) {
        if self.upstream_open {
            self.upstream_open = false;
            self.actions.push_back(Action::CancelUpstream);
        }
        self.upstream_deadline = None;
    }

    fn finish(&mut self) {
        self.phase = Phase::Finished;
        self.upstream_deadline = None;
        self.keepalive_at = None;
    }

    fn end_stream(&mut self, now: Millis) {
        if let Phase::Streaming(restream) = &self.phase {
            let mut end = BytesMut::new();
            let ttft = self.time_to_first_content().unwrap_or(0);
            restream.write_end(
                &mut end,
                Stats {
                    tokens: restream.content_events,
                    ttft_ms: ttft,
                    duration_ms: now.saturating_sub(self.received_at),
                },
            );
            if let Some(p) = &mut self.pacer {
                let _ = p.push(now, &end);
            } else if !end.is_empty() {
                self.emit(now, &end);
            }
        }
        self.flush(now);
        self.remember_link();
        if let Some(mut encoder) = self.encoder.take() {
            let mut trailer = Vec::new();
            encoder.finish(&mut trailer);
            self.actions.push_back(Action::RespondChunk(trailer.into()));
        }
        self.actions.push_back(Action::RespondEnd);
        self.finish();
    }

    /// Stores this client's link estimate for its next stream, when it is
    /// first-hand and new.
    fn remember_link(&mut self) {
        let (Some(key), Some(p)) = (&self.link_key, &self.pacer) else {
            return;
        };
        if let Some(r) = p.estimate().to_remember(self.link_stored) {
            let value = serde_json::to_vec(&r).unwrap_or_default();
            self.actions.push_back(Action::KvPut {
                key: key.clone(),
                value: value.into(),
                ttl_secs: link::REMEMBER_TTL_SECS,
            });
        }
    }

    fn respond(&mut self, head: ResponseHead, body: Bytes) {
        self.actions.push_back(Action::Respond(head, body));
        self.finish();
    }

    fn respond_json(&mut self, status: u16, body: &serde_json::Value) {
        let mut headers: Headers = vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "no-store".into()),
        ];
        if self.cache.as_ref().is_some_and(|c| c.hit) {
            headers.push(("server-timing".into(), self.server_timing()));
        }
        self.cache_header(&mut headers);
        headers.extend(self.cors.iter().cloned());
        let mut bytes = serde_json::to_vec(body).unwrap_or_default();
        bytes.push(b'\n');
        self.respond(ResponseHead { status, headers }, bytes.into());
    }

    fn finish_upstream_error(&mut self) {
        if let Phase::ReadingError { status, body } = &self.phase {
            let (message, error_type) = openai::upstream_error_message(*status, body);
            let status = *status;
            self.fail(Error::new(ErrorKind::UpstreamStatus {
                status,
                message,
                error_type,
            }));
        }
    }

    /// The one place an error becomes a response: JSON with the error's
    /// status before anything was sent, an SSE error event (then the end)
    /// once an event stream has started.
    fn fail(&mut self, error: Error) {
        self.cancel_upstream();
        match self.downstream {
            Downstream::Answered => self.finish(),
            Downstream::NothingSent => self.respond_json(error.status(), &error.to_json()),
            Downstream::EventStream => {
                let mut event = BytesMut::new();
                self.format.write_error(&mut event, &error.to_json());
                // What was held goes first, then the error, then the end.
                self.phase = Phase::Finished;
                self.write(self.last_now, event.freeze(), true);
                self.end_stream(self.last_now);
            }
            Downstream::Body => self.end_stream(self.last_now),
        }
    }
}
