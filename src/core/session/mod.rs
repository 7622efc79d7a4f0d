//! One client request, from its head to the last byte of its response, as a
//! deterministic state machine.
//!
//! The adapter drives it like this (the only I/O loop there is; both
//! adapters share it in `adapters::pump`):
//!
//! ```text
//! let mut s = Session::new(config);
//! s.handle_request_head(now, head);
//! loop {
//!     while let Some(action) = s.poll_action() {
//!         match action {
//!             ReadBody { limit } => read the request body, stopping past
//!                                   limit; report handle_request_body /
//!                                   _body_too_large / _body_failed
//!             SendUpstream(req)  => start the fetch; later report
//!                                   handle_upstream_head / _chunk / _end / _failed
//!             CancelUpstream     => abort the fetch, stop reading its body
//!             Respond(head, body)=> send the whole response
//!             RespondHead(head)  => start a streamed response
//!             RespondChunk(b)    => write b to the client now
//!             RespondEnd         => finish the streamed response
//!             RespondAbort       => cut it, so the client sees it broken
//!             KvGet { key, read }=> read it; report handle_kv_value(read, …)
//!             KvPut / KvDelete   => write it in the background
//!             ReplicaHealth{..}  => update the deployment's replica health
//!         }
//!     }
//!     if s.is_finished() && nothing is under way { break }
//!     wait for: upstream I/O, the client going away
//!               (handle_downstream_closed), the platform taking the
//!               bytes written (handle_downstream_drained), a KV answer,
//!               or poll_timeout() (handle_timeout)
//! }
//! ```
//!
//! What it decides: routing, auth, CORS, validation, the upstream request,
//! response headers, when to answer an error as JSON and when as an SSE
//! error event, keep-alives, timeouts, and that a stream never ends
//! silently truncated; the response format, and when to flush and how hard
//! to compress ([`crate::core::pacing`]); the exact cache and speculative
//! prefixes ([`crate::core::cache`], `crate::core::prefix`), prefix
//! warming (`crate::core::prefetch`), and which replica to use and when
//! to fall back to the next ([`crate::core::route`]). What it does not do:
//! any I/O, any clock read.
//!
//! Its parts, each a struct of its own that never reaches back here:
//! `intake` (the request head read once), `upstream` (replicas, the
//! request as sent, health), `response` (head, format, pacing,
//! compression, errors, the client's link), `lookup` (the caches' part, a
//! state enum) and `timers` (every deadline in one table). This file holds
//! the `handle_*`/`poll_*` surface and the order of the phases; `request`,
//! `relay` and `caching` hold the session's own steps, split by phase.
//!
//! A `Respond` normally ends the session; a prefetch is answered early and
//! goes on in the background (`is_finished()` is still false after it):
//! the adapter keeps driving it, after the response, until it finishes.

mod action;
mod admit;
mod caching;
mod failover;
mod intake;
mod lookup;
mod relay;
mod request;
mod response;
mod resume;
mod semantic;
mod status;
mod takeover;
mod timers;
mod upstream;

use std::collections::VecDeque;

use bytes::Bytes;

use crate::core::cache::Entry;
use crate::core::config::Config;
use crate::core::error::{Error, ErrorKind};
use crate::core::http::{RequestHead, ResponseHead};
use crate::core::keyspace;
use crate::core::prefetch;
use crate::core::quota::{Lease, Verdict};
use crate::core::restream::Restream;
use crate::core::route::Health;
use crate::core::socket;
use crate::core::Millis;

pub use action::{Action, Gate, KvRead};

use action::Purpose;
use intake::{Intake, Route};
use lookup::{Lookup, Store};
use response::Response;
use timers::{Timer, Timers};
use upstream::{Call, Upstream};

/// How long `/healthz` waits for the upstream before calling it unreachable.
pub const HEALTH_TIMEOUT_MS: Millis = 5_000;
/// The SSE comment sent while the client would otherwise see nothing.
pub const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

#[derive(Debug)]
enum Phase {
    /// Waiting for `handle_request` (or `handle_request_head`).
    Idle,
    /// The head passed every check; waiting (briefly) for the verdict on
    /// the key's limits (`key` is its record).
    Admitting {
        intake: Box<Intake>,
        route: Route,
        key: String,
    },
    /// The head passed every check; the body is being read.
    ReadingBody { intake: Box<Intake>, route: Route },
    /// Waiting (briefly) for the caches' answer before going upstream.
    CacheLookup,
    /// Waiting (briefly) for a stream's record (a reader or a cancel).
    StreamLookup,
    /// A prefetch, answered: waiting (briefly) for its debounce marker.
    PrefetchLookup { key: String, body: Bytes },
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

/// One request's state. See the module docs for the driver loop.
pub struct Session {
    config: Config,
    phase: Phase,
    /// Set once the request is known to be served (checks passed).
    route: Option<Route>,
    response: Response,
    upstream: Upstream,
    /// The caches' part in this request, when it is cacheable.
    cache: Option<Box<Lookup>>,
    timers: Timers,
    actions: VecDeque<Action>,
    /// The lease this generation holds on its key's record, and the record.
    lease: Option<(String, Lease)>,
    /// The record whose verdict came too late, so that a lease it still
    /// brings goes straight back.
    late_admission_key: Option<String>,
    /// A body given with the head ([`Session::handle_request`]) while the
    /// limits are asked.
    early_body: Option<Bytes>,
    /// Whose KV writes this request's are (see `keyspace`).
    kv_scope: String,
    /// Its part in a resumable stream (`resume`).
    resume: Option<Box<resume::Resume>>,
    /// The request, kept for a continuation on another replica
    /// (`failover`).
    continuable: Option<Box<crate::core::openai::CompletionRequest>>,
    /// The re-streamer that carries on when the upstream answers: the one
    /// that streamed a speculative prefix's opening, or a stream's that
    /// fails over to the next replica.
    held: Option<Box<Restream>>,
    /// Failovers so far.
    failovers: u32,
    /// Content events streamed when the current stall window began.
    stall_mark: u64,
    /// The stage a streamed generation tells its client (`status`).
    told: Option<status::Told>,
    received_at: Millis,
    /// The latest `now` any input brought.
    last_now: Millis,
    first_content_at: Option<Millis>,
}

impl Session {
    /// A session for one request, with every replica counted as up.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            phase: Phase::Idle,
            route: None,
            response: Response::default(),
            upstream: Upstream::default(),
            cache: None,
            timers: Timers::default(),
            actions: VecDeque::new(),
            lease: None,
            late_admission_key: None,
            early_body: None,
            kv_scope: String::new(),
            resume: None,
            continuable: None,
            held: None,
            failovers: 0,
            stall_mark: 0,
            told: None,
            received_at: 0,
            last_now: 0,
            first_content_at: None,
        }
    }

    /// Gives the session the deployment's replica health (see
    /// [`crate::core::route`]).
    pub fn with_health(mut self, health: Health) -> Self {
        self.upstream = Upstream::new(health);
        self
    }

    /// The next thing the adapter must do, or `None` to wait for input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Session::handle_timeout`] if no other input came.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.timers.next()
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

    /// A request arrived, with its whole body: [`Session::handle_request_head`]
    /// and, if the session asks for it, [`Session::handle_request_body`].
    pub fn handle_request(&mut self, now: Millis, req: RequestHead, body: Bytes) {
        self.enter(now);
        self.on_request_head(now, &req);
        match self.phase {
            Phase::ReadingBody { .. } => {
                self.actions
                    .retain(|a| !matches!(a, Action::ReadBody { .. }));
                self.on_request_body(now, &body);
            }
            Phase::Admitting { .. } => self.early_body = Some(body),
            _ => {}
        }
        self.leave();
    }

    /// A request's head arrived; nothing of its body has been read. The
    /// session answers, or asks for the body with [`Action::ReadBody`].
    pub fn handle_request_head(&mut self, now: Millis, req: RequestHead) {
        self.enter(now);
        self.on_request_head(now, &req);
        self.leave();
    }

    /// The verdict on an [`Action::Admit`].
    pub fn handle_admission(&mut self, now: Millis, verdict: Verdict) {
        self.enter(now);
        self.on_admission(now, verdict);
        self.leave();
    }

    /// The body asked for with [`Action::ReadBody`], whole.
    pub fn handle_request_body(&mut self, now: Millis, body: Bytes) {
        self.enter(now);
        self.on_request_body(now, &body);
        self.leave();
    }

    /// The body passed the [`Action::ReadBody`] limit; the rest was not
    /// read.
    pub fn handle_request_body_too_large(&mut self, now: Millis) {
        self.enter(now);
        if matches!(self.phase, Phase::ReadingBody { .. }) {
            let limit = self.config.max_body_bytes;
            self.fail(Error::new(ErrorKind::PayloadTooLarge { limit }));
        }
        self.leave();
    }

    /// The body could not be read to its end.
    pub fn handle_request_body_failed(&mut self, now: Millis, detail: &str) {
        self.enter(now);
        if matches!(self.phase, Phase::ReadingBody { .. }) {
            self.fail(Error::new(ErrorKind::BodyUnreadable {
                detail: detail.into(),
            }));
        }
        self.leave();
    }

    /// The upstream's response head arrived.
    pub fn handle_upstream_head(&mut self, now: Millis, status: u16, headers: &[(String, String)]) {
        self.enter(now);
        self.on_upstream_head(now, status, headers);
        self.leave();
    }

    /// A chunk of the upstream body arrived (any size, any split).
    pub fn handle_upstream_chunk(&mut self, now: Millis, chunk: Bytes) {
        self.enter(now);
        self.on_upstream_chunk(now, &chunk);
        self.leave();
    }

    /// The upstream body ended cleanly.
    pub fn handle_upstream_end(&mut self, now: Millis) {
        self.enter(now);
        if self.upstream.is_open() {
            self.upstream_closed();
            self.on_upstream_end(now);
        }
        self.leave();
    }

    /// The upstream could not be reached, or its body failed mid-way.
    pub fn handle_upstream_failed(&mut self, now: Millis, detail: &str) {
        self.enter(now);
        if self.upstream.is_open() {
            self.upstream_closed();
            self.on_upstream_failed(now, detail);
        }
        self.leave();
    }

    /// The client went away. Not an error: the session ends without
    /// another byte to the client (KV writes and health reports already
    /// asked for still stand), and the upstream is cancelled — unless the
    /// stream is resumable: then the generation goes on for the grace
    /// period (`RESUME_GRACE_SECS`), keeping its record, and the adapter
    /// must keep driving the session until [`Session::is_finished`].
    pub fn handle_downstream_closed(&mut self, now: Millis) {
        self.enter(now);
        if !self.is_finished() && self.detach(now) {
            self.actions.retain(|a| {
                !matches!(
                    a,
                    Action::Respond(..)
                        | Action::RespondHead(_)
                        | Action::RespondChunk(_)
                        | Action::RespondEnd
                        | Action::RespondAbort
                )
            });
        } else if !self.is_finished() {
            self.actions.retain(|a| {
                matches!(
                    a,
                    Action::KvPut { .. }
                        | Action::KvDelete { .. }
                        | Action::ReplicaHealth { .. }
                        | Action::HealthProbe { .. }
                        | Action::Release { .. }
                )
            });
            self.cancel_upstream();
            self.finish();
        }
        self.leave();
    }

    /// The platform has taken every byte of the response written so far
    /// (it pulled for more). Lets the pacer measure the drain rate and
    /// release events it held back for a busy link.
    pub fn handle_downstream_drained(&mut self, now: Millis) {
        self.enter(now);
        if !self.is_finished() && self.response.drained(now) {
            self.response.flush(&mut self.actions, now);
        }
        self.leave();
    }

    /// The answer to an [`Action::KvGet`]: `read` as it came with it, and
    /// the stored value, or `None` when the key is absent or the store
    /// failed (both mean "not known").
    pub fn handle_kv_value(&mut self, now: Millis, read: KvRead, value: Option<Bytes>) {
        self.enter(now);
        self.on_kv_value(now, read.0, value);
        self.leave();
    }

    /// The embeddings endpoint answered an [`Action::Embed`] with `status`
    /// and this whole body.
    pub fn handle_embedding(&mut self, now: Millis, status: u16, body: &[u8]) {
        self.enter(now);
        let ok = (200..300).contains(&status);
        self.on_embedding(now, ok.then_some(body));
        self.leave();
    }

    /// An [`Action::Embed`] failed: unreachable, or its body could not be
    /// read whole.
    pub fn handle_embedding_failed(&mut self, now: Millis) {
        self.enter(now);
        self.on_embedding(now, None);
        self.leave();
    }

    /// The time returned by [`Session::poll_timeout`] has come.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.enter(now);
        if !self.is_finished() {
            self.on_timeout(now);
        }
        self.leave();
    }

    // ---- every input ---------------------------------------------------

    fn enter(&mut self, now: Millis) {
        self.last_now = self.last_now.max(now);
    }

    /// After every input: the pacer's deadline joins the timer table.
    fn leave(&mut self) {
        if self.is_finished() {
            self.timers.stop_all();
        } else {
            self.timers
                .set_at(Timer::Flush, self.response.flush_deadline());
            self.timers
                .set_at(Timer::Checkpoint, self.checkpoint_deadline());
        }
    }

    // ---- request -------------------------------------------------------

    fn on_request_head(&mut self, now: Millis, req: &RequestHead) {
        if !matches!(self.phase, Phase::Idle) {
            return;
        }
        self.received_at = now;
        let (route, mut intake) = Intake::read(&self.config, req);
        self.kv_scope = keyspace::scope_of(intake.key.as_deref());
        self.response = Response::new(std::mem::take(&mut intake.cors), intake.coding);
        let route = match route {
            Ok(route) => route,
            Err(e) => return self.fail(e),
        };
        match route {
            Route::Preflight => {
                Response::empty(
                    &mut self.actions,
                    204,
                    std::mem::take(&mut intake.preflight),
                );
                self.finish();
            }
            Route::Page(asset) => {
                let body = match req.method.as_str() {
                    "HEAD" => Bytes::new(),
                    _ => Bytes::from_static(asset.body),
                };
                let head = ResponseHead {
                    status: 200,
                    headers: crate::core::page::headers(asset),
                };
                self.actions.push_back(Action::Respond(head, body));
                self.finish();
            }
            Route::Health | Route::Models => {
                self.route = Some(route);
                if route == Route::Health {
                    if let Some(ok) = self.upstream.recent_probe(now) {
                        return self.answer_health(ok, false);
                    }
                }
                self.upstream.pick(&self.config, &[], now);
                let call = Call {
                    method: "GET",
                    path: "/v1/models",
                    body: Bytes::new(),
                    stream: false,
                };
                self.send_upstream(now, call);
            }
            Route::Prefetch { .. } | Route::Generate { .. } => {
                if let Err(e) = intake.check_head(&self.config) {
                    return self.fail(e);
                }
                self.admit(now, Box::new(intake), route);
            }
            Route::Socket => self.accept_socket(req),
            // No body to check: it is read (within the limit) and ignored.
            Route::ReadStream | Route::CancelStream => {
                self.route = Some(route);
                self.admit(now, Box::new(intake), route);
            }
        }
    }

    /// `/v1/ws`: accepted (status 101, for the adapter to upgrade) where
    /// the runtime takes WebSockets.
    fn accept_socket(&mut self, req: &RequestHead) {
        if !self.config.sockets {
            return self.fail(Error::new(ErrorKind::NotImplemented {
                detail: "This runtime does not accept WebSockets: stream with \
                         POST /v1/chat/completions instead."
                    .into(),
            }));
        }
        if !socket::is_upgrade(req) {
            return self.fail(Error::new(ErrorKind::UpgradeRequired));
        }
        let head = ResponseHead {
            status: 101,
            headers: socket::accept_headers(req),
        };
        self.actions.push_back(Action::Respond(head, Bytes::new()));
        self.finish();
    }

    pub(super) fn on_request_body(&mut self, now: Millis, body: &[u8]) {
        let Phase::ReadingBody { intake, route } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return;
        };
        let limit = self.config.max_body_bytes;
        if body.len() > limit {
            return self.fail(Error::new(ErrorKind::PayloadTooLarge { limit }));
        }
        match route {
            Route::Prefetch { .. } => {
                let endpoint = prefetch::endpoint_of(body);
                self.prefetch(now, &intake, endpoint, body);
            }
            Route::Generate { endpoint, .. } => self.generate(now, *intake, endpoint, body),
            Route::ReadStream => self.read_stream(now, *intake),
            Route::CancelStream => self.cancel_stream(now, *intake),
            Route::Preflight | Route::Health | Route::Models | Route::Page(_) | Route::Socket => {}
        }
    }

    // ---- KV answers and timers -----------------------------------------

    fn on_kv_value(&mut self, now: Millis, purpose: Purpose, value: Option<Bytes>) {
        match purpose {
            Purpose::Link => self.response.link_read(value.as_deref()),
            Purpose::Stream => self.on_record(now, value),
            Purpose::CancelMark => self.on_cancel_mark(now, value),
            Purpose::ReaderMark => self.on_reader_mark(now, value),
            Purpose::StreamRequest => self.on_stream_request(now, value),
            Purpose::PrefetchMarker => {
                if matches!(self.phase, Phase::PrefetchLookup { .. }) {
                    self.timers.stop(Timer::Lookup);
                    match value {
                        Some(_) => self.finish(), // warmed recently
                        None => self.warm(now),
                    }
                }
            }
            Purpose::SemanticBucket(table) => self.on_bucket(now, table, value),
            Purpose::Cache => {
                let (Phase::CacheLookup, Some(c)) = (&self.phase, &self.cache) else {
                    return;
                };
                if c.store() == Store::Semantic && c.found().is_none() {
                    return;
                }
                self.timers.stop(Timer::Lookup);
                let entry = value.as_deref().and_then(Entry::decode);
                if value.is_some() && entry.is_none() {
                    // Unreadable (an older format): drop it.
                    let key = c.read_key().to_owned();
                    self.actions.push_back(Action::KvDelete { key });
                }
                match (entry, c.store()) {
                    (Some(entry), Store::Exact) => {
                        self.promote(now, &entry);
                        self.replay(now, entry)
                    }
                    (Some(mut entry), Store::Semantic) if c.opening() => {
                        self.promote(now, &entry);
                        entry.pieces.truncate(self.config.prefix_tokens);
                        self.speculate(now, entry)
                    }
                    (Some(mut entry), Store::Semantic) => {
                        self.promote(now, &entry);
                        Self::mark_semantic(&mut entry);
                        self.replay(now, entry)
                    }
                    (Some(entry), Store::Prefix) if !entry.pieces.is_empty() => {
                        self.speculate(now, entry)
                    }
                    _ => self.cache_missed(now, true),
                }
            }
        }
    }

    fn on_timeout(&mut self, now: Millis) {
        if self.timers.expired(Timer::Admit, now) {
            self.timers.stop(Timer::Admit);
            self.on_admission(now, Verdict::Unknown);
        }
        if self.timers.expired(Timer::Flush, now) {
            self.response.flush(&mut self.actions, now);
        }
        if self.timers.expired(Timer::Lookup, now) {
            self.timers.stop(Timer::Lookup);
            match self.phase {
                Phase::CacheLookup => self.cache_missed(now, self.may_record()),
                Phase::PrefetchLookup { .. } => self.warm(now),
                Phase::StreamLookup => self.stream_lookup_timed_out(),
                _ => {}
            }
        }
        self.on_resume_timeout(now);
        if self.is_finished() {
            return;
        }
        if self.timers.expired(Timer::Upstream, now) {
            self.timers.stop(Timer::Upstream);
            if let Some(Route::Prefetch { .. }) = self.route {
                // A slow warming is given up: not replayed, nobody marked down.
                self.cancel_upstream();
                return self.finish();
            }
            let awaiting_head = matches!(self.phase, Phase::AwaitingHead);
            match (awaiting_head, self.route) {
                (true, Some(Route::Health)) => {
                    self.cancel_upstream();
                    self.answer_health(false, true);
                }
                // A GET may be asked of the next replica.
                (true, Some(Route::Models)) if self.fall_back(now) => {}
                // A complete answer arrives when its generation is done: a
                // slow one says nothing about its replica's health.
                (true, Some(Route::Generate { stream: false, .. })) => {
                    let after_ms = self.config.non_stream_timeout_ms;
                    self.fail(Error::new(ErrorKind::UpstreamTimeout { after_ms }));
                }
                // A generation is never replayed elsewhere after a timeout
                // (the replica may still be working on it); the replica is
                // reported down for the requests that follow.
                (true, _) => {
                    self.upstream
                        .report(&mut self.actions, &self.config, false, self.last_now);
                    let after_ms = self.config.first_byte_timeout_ms;
                    self.fail(Error::new(ErrorKind::UpstreamTimeout { after_ms }));
                }
                // Mid-stream: the next replica continues, if one can.
                (false, _) if self.fail_over(now) => {}
                (false, _) => {
                    let after_ms = self.config.idle_timeout_ms;
                    self.fail(Error::new(ErrorKind::UpstreamTimeout { after_ms }));
                }
            }
            // A session that goes on still owes the timers due with this one.
            if self.is_finished() {
                return;
            }
        }
        if self.timers.expired(Timer::Stall, now) {
            self.timers.stop(Timer::Stall);
            self.check_rate(now);
        }
        if self.timers.expired(Timer::Status, now) {
            self.on_status_timer(now);
        }
        if self.timers.expired(Timer::KeepAlive, now) {
            self.keep_alive(now);
        }
    }
}
