//! The driver of a [`Session`] on a wasm runtime, shared by the Workers and
//! Spin adapters: [`Pump::step`] carries out each [`Action`] up to the first
//! that goes to the client or must be waited for, and the async loop waits
//! for the upstream, a KV read or the next deadline, and hands the platform
//! what goes to the client ([`Out`]). A runtime supplies only its I/O,
//! through [`Platform`]; no policy lives here either. On Workers, once the
//! response head is out, `super::relay` drives the same pump from the
//! runtime's events instead of the async loop.
//!
//! Client disconnects: the platform drops the response body, and with it
//! the [`Pump`]; its `Drop` tells the session and carries out what the
//! session still asks for — the `CancelUpstream` (which drops the upstream
//! futures and aborts the request), KV writes and health reports. Nothing
//! the session asked for is dropped.
//!
//! Request bodies: read only when the session asks (`ReadBody`, after the
//! head passed), as a stream cut off the moment it passes the limit.
//!
//! Drain: response bodies are pulled, so each pull after a chunk means the
//! platform took it; that is reported as `handle_downstream_drained`.

use std::cell::RefCell;
use std::future::{pending, Future};
use std::pin::{pin, Pin};

use bytes::{Bytes, BytesMut};
use futures_util::future::{select, select_all, Either};
use futures_util::{stream, Stream, StreamExt};

use crate::core::http::{RequestHead, ResponseHead, UpstreamRequest};
use crate::core::quota::{Ask, Lease, Verdict};
use crate::core::route::Health;
use crate::core::session::{Action, Gate, KvRead, Session};
use crate::core::write_once::WriteOnce;
use crate::core::Millis;

/// A future the pump owns (wasm runtimes are single-threaded: not `Send`).
pub(crate) type Boxed<T> = Pin<Box<dyn Future<Output = T>>>;
/// An upstream body, chunk by chunk; an error is a read failure.
pub(crate) type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>>>>;

/// An upstream request under way: its answer, once its head has come.
pub(crate) type Answer<B> = Boxed<Result<UpstreamResponse<B>, String>>;

/// What the upstream answered.
pub(crate) struct UpstreamResponse<B> {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    /// `None` when the runtime cannot read the body: it counts as ended.
    pub(crate) body: Option<B>,
}

/// The I/O a runtime provides. Every method only does what it says.
pub(crate) trait Platform {
    /// An upstream response's body as the runtime reads it.
    type Body: Stream<Item = Result<Bytes, String>> + Unpin + 'static;
    /// The runtime's wall clock, in milliseconds.
    fn now(&self) -> Millis;
    /// The client's request body, once (`None` when there is none).
    fn take_request_body(&mut self) -> Option<BodyStream>;
    /// Starts an upstream request; the future answers with its head.
    fn fetch(&mut self, req: UpstreamRequest) -> Result<Answer<Self::Body>, String>;
    /// The upstream request's futures were dropped: abort it for good, if
    /// the runtime needs more than that.
    fn abort(&mut self) {}
    /// Reads a key; a failure or a missing store reads as `None`.
    fn kv_get(&self, key: String) -> Boxed<Option<Vec<u8>>>;
    /// Writes in the background; a failure is ignored. `scope` is whose
    /// write it is, for a store that must bound each scope's keys itself.
    fn kv_put(&mut self, key: String, value: Bytes, ttl_secs: u64, scope: String);
    /// Deletes in the background; a failure is ignored.
    fn kv_delete(&mut self, key: String);
    /// Counts a request against its key's record in the deployment's
    /// limits store (see `Action::Admit`); a store that cannot be asked
    /// answers [`Verdict::Unknown`].
    fn admit(&mut self, key: String, ask: Ask) -> Boxed<Verdict>;
    /// Returns a lease to its key's record, in the background; a failure
    /// is ignored (the lease lapses by itself).
    fn release(&mut self, key: String, lease: Lease);
    /// Waits this long.
    fn sleep(&self, ms: Millis) -> Boxed<()>;
    /// The response is about to end: finish the background work the
    /// runtime would not wait for afterwards.
    fn settle(&mut self) -> Boxed<()> {
        Box::pin(async {})
    }
    /// The pump is going away: hand the background work left to the
    /// runtime.
    fn detach(&mut self) {}
    /// The same I/O for a session that goes on after its client left (the
    /// background work under way moves with it).
    fn without_client(&mut self) -> Self
    where
        Self: Sized;
    /// Runs `work` in the background, past the response.
    fn spawn(&mut self, work: Boxed<()>);
}

thread_local! {
    /// Replica health, kept for the life of the isolate or instance.
    static HEALTH: RefCell<Health> = RefCell::default();
    /// The stored answers written lately, each written once.
    static WRITTEN: RefCell<WriteOnce> = RefCell::default();
    /// The values many requests rewrite, each written once a second at most.
    static PACED: RefCell<WriteOnce> = RefCell::new(WriteOnce::with_window(1_000));
}

/// The deployment's replica health as this isolate or instance knows it.
pub(crate) fn health() -> Health {
    HEALTH.with(|h| h.borrow().clone())
}

/// What the pump hands to the platform.
pub(crate) enum Out {
    /// A complete response.
    Full(ResponseHead, Bytes),
    /// The head of a streamed response.
    Head(ResponseHead),
    /// The next chunk of a streamed response.
    Chunk(Bytes),
    /// The end of the response (or of the work after an early answer).
    End,
    /// The streamed response is broken: end it so the client sees that.
    Abort,
}

/// Why a streamed body stops without its clean end (the client sees an
/// error; see `Action::RespondAbort`).
pub(crate) const ABORTED: &str = "tokenedge: the upstream body was cut";

/// Largest embeddings answer read (see `Action::Embed`).
const MAX_EMBEDDING_BYTES: usize = 256 * 1024;

/// What the session asks of the pump's driver next (see [`Pump::step`]).
pub(super) enum Step {
    /// Something for the client.
    Out(Out),
    /// The response's end ([`Out::End`] or [`Out::Abort`]): settle first.
    End(Out),
    /// Read the request body, up to this many bytes.
    ReadBody(usize),
    /// Wait for what is under way, or until this deadline.
    Wait(Option<Millis>),
}

/// What woke the pump up.
pub(super) enum Wake<B> {
    Embedding(Result<(u16, Bytes), String>),
    Head(Result<UpstreamResponse<B>, String>),
    Chunk(Option<Result<Bytes, String>>),
    Kv(KvRead, Option<Vec<u8>>),
    Admission(Verdict),
    Timer,
}

/// Owns the session and its I/O for the life of one request.
///
/// The fields a driver of its own needs (see `super::relay`) are visible
/// to the adapters: it takes the futures out and wakes the pump itself.
pub(crate) struct Pump<P: Platform + 'static> {
    pub(super) session: Session,
    pub(super) platform: P,
    pub(super) head: Option<Answer<P::Body>>,
    pub(super) body: Option<P::Body>,
    /// Counts upstream requests sent and cancelled: an answer that comes
    /// for an older count is not wanted any more.
    pub(super) upstream_epoch: u32,
    /// KV reads under way (the link record and a cache entry can both be).
    pub(super) kv_reads: Vec<Boxed<(KvRead, Option<Vec<u8>>)>>,
    /// The limits store's verdict, while it is awaited.
    pub(super) admission: Option<Boxed<Verdict>>,
    /// The embeddings endpoint's whole answer, while it is awaited.
    pub(super) embedding: Option<Boxed<Result<(u16, Bytes), String>>>,
    /// A chunk went to the platform; its next pull means it was taken.
    pub(super) chunk_out: bool,
    /// Its driver has closed it already (see [`Pump::close`]).
    closed: bool,
    /// The platform timer under way and the time it was set for. Re-armed
    /// only when the session's deadline comes earlier than that: a later
    /// deadline lets it fire early, which the session takes as a timeout
    /// with nothing due. Most inputs push a deadline back (the idle
    /// timeout, the keep-alive), so a stream sets a timer now and then
    /// instead of one per chunk.
    alarm: Option<(Millis, Boxed<()>)>,
}

/// How the platform answers the client.
pub(crate) enum Reply<P: Platform + 'static> {
    /// A complete response. When the pump comes with it, the session goes
    /// on after the response (a prefetch): run [`Pump::run_to_end`] in the
    /// background.
    Full(ResponseHead, Bytes, Option<Pump<P>>),
    /// A streamed response: its body is [`Pump::into_chunks`].
    Stream(ResponseHead, Pump<P>),
}

impl<P: Platform + 'static> Pump<P> {
    /// Starts a session on `req` and runs it until it has a response head.
    /// The body is read only if the session asks for it.
    pub(crate) async fn start(platform: P, session: Session, req: RequestHead) -> Reply<P> {
        let mut pump = Pump {
            session,
            platform,
            head: None,
            body: None,
            upstream_epoch: 0,
            kv_reads: Vec::new(),
            admission: None,
            embedding: None,
            chunk_out: false,
            closed: false,
            alarm: None,
        };
        let now = pump.platform.now();
        pump.session.handle_request_head(now, req);
        match pump.next().await {
            Out::Full(head, body) => {
                let rest = (!pump.session.is_finished()).then_some(pump);
                Reply::Full(head, body, rest)
            }
            Out::Head(head) => Reply::Stream(head, pump),
            Out::Chunk(_) | Out::End | Out::Abort => {
                // The session answers every request before anything else.
                let head = ResponseHead {
                    status: 500,
                    headers: vec![("content-type".into(), "text/plain".into())],
                };
                Reply::Full(
                    head,
                    Bytes::from_static(b"internal error: no response"),
                    None,
                )
            }
        }
    }

    /// The streamed body: each chunk as the session writes it, and an
    /// error item ([`ABORTED`]) when the session cuts it.
    pub(crate) fn into_chunks(self) -> impl Stream<Item = Result<Bytes, &'static str>> {
        stream::unfold(Some(self), |pump| async move {
            let mut pump = pump?;
            match pump.next().await {
                Out::Chunk(bytes) => Some((Ok(bytes), Some(pump))),
                Out::Abort => Some((Err(ABORTED), None)),
                Out::Full(..) | Out::Head(_) | Out::End => None,
            }
        })
    }

    /// Drives a session answered early until it has finished.
    pub(crate) async fn run_to_end(mut self) {
        while !matches!(self.next().await, Out::End | Out::Abort) {}
    }

    /// Runs the session until it has something for the client.
    async fn next(&mut self) -> Out {
        if std::mem::take(&mut self.chunk_out) {
            let now = self.platform.now();
            self.session.handle_downstream_drained(now);
        }
        loop {
            match self.step() {
                Step::Out(out) => return out,
                Step::End(out) => {
                    self.platform.settle().await;
                    return out;
                }
                Step::ReadBody(limit) => self.read_body(limit).await,
                Step::Wait(None) if self.idle() => {
                    // Nothing can happen any more.
                    self.platform.settle().await;
                    return Out::End;
                }
                Step::Wait(deadline) => {
                    let wake = self.wait(deadline).await;
                    self.wake(wake);
                }
            }
        }
    }

    /// Carries out the session's actions up to the first that goes to the
    /// client or must be waited for. Upstream requests, KV reads and the
    /// like are started and left in the pump's fields.
    pub(super) fn step(&mut self) -> Step {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Respond(head, body) => return Step::Out(Out::Full(head, body)),
                Action::RespondHead(head) => return Step::Out(Out::Head(head)),
                Action::RespondChunk(bytes) => {
                    self.chunk_out = true;
                    return Step::Out(Out::Chunk(bytes));
                }
                Action::RespondEnd => return Step::End(Out::End),
                Action::RespondAbort => return Step::End(Out::Abort),
                Action::ReadBody { limit } => return Step::ReadBody(limit),
                Action::SendUpstream(req) => self.send(req),
                Action::Embed(req) => self.embed(req),
                Action::Admit { key, ask } => {
                    self.admission = Some(self.platform.admit(key, ask));
                }
                Action::KvGet { key, read } => {
                    let value = self.platform.kv_get(key);
                    self.kv_reads
                        .push(Box::pin(async move { (read, value.await) }));
                }
                other => self.background(other),
            }
        }
        Step::Wait(self.session.poll_timeout())
    }

    /// The client is gone, or its response has ended: what dropping the
    /// pump tells the session, for a driver that goes on driving it until
    /// the session has finished (see `super::relay`). Its `Drop` does
    /// nothing after this.
    #[cfg_attr(not(feature = "workers"), allow(dead_code))]
    pub(super) fn close(&mut self) {
        let now = self.platform.now();
        self.session.handle_downstream_closed(now);
        self.closed = true;
    }

    /// Whether nothing the pump started is under way.
    fn idle(&self) -> bool {
        self.head.is_none()
            && self.body.is_none()
            && self.kv_reads.is_empty()
            && self.admission.is_none()
            && self.embedding.is_none()
    }

    /// Reads the request body up to `limit` bytes and reports it; stops
    /// reading the moment it passes the limit.
    async fn read_body(&mut self, limit: usize) {
        let mut body = BytesMut::new();
        if let Some(mut chunks) = self.platform.take_request_body() {
            while let Some(chunk) = chunks.next().await {
                let t = self.platform.now();
                match chunk {
                    Ok(c) if body.len().saturating_add(c.len()) > limit => {
                        return self.session.handle_request_body_too_large(t);
                    }
                    Ok(c) => body.extend_from_slice(&c),
                    Err(e) => return self.session.handle_request_body_failed(t, &e),
                }
            }
        }
        let t = self.platform.now();
        self.session.handle_request_body(t, body.freeze());
    }

    /// Waits for the upstream, a KV read or the deadline, whichever first.
    async fn wait(&mut self, deadline: Option<Millis>) -> Wake<P::Body> {
        if let Some(at) = deadline {
            if self.alarm.as_ref().is_none_or(|(armed, _)| at < *armed) {
                let ms = at.saturating_sub(self.platform.now());
                self.alarm = Some((at, self.platform.sleep(ms)));
            }
        }
        let Pump {
            head,
            body,
            kv_reads,
            admission,
            embedding,
            alarm,
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
                let ((read, value), i, _) = select_all(kv_reads.iter_mut()).await;
                drop(kv_reads.swap_remove(i));
                Wake::Kv(read, value)
            }
        };
        // The limits' verdict and the embeddings answer: each asked at most
        // once, one after the other (the verdict before the body is read,
        // the embedding after), so they wait in one slot.
        let side = async {
            match (admission.as_mut(), embedding.as_mut()) {
                (Some(verdict), _) => Wake::Admission(verdict.await),
                (None, Some(answer)) => Wake::Embedding(answer.await),
                (None, None) => pending().await,
            }
        };
        // With no deadline, a timer still set fires as a timeout with
        // nothing due.
        let timer = async {
            match alarm.as_mut() {
                Some((_, sleep)) => sleep.await,
                None => pending().await,
            }
            Wake::Timer
        };
        let io = async {
            match select(pin!(upstream), pin!(kv)).await {
                Either::Left((w, _)) | Either::Right((w, _)) => w,
            }
        };
        let io = async {
            match select(pin!(io), pin!(side)).await {
                Either::Left((w, _)) | Either::Right((w, _)) => w,
            }
        };
        match select(pin!(io), pin!(timer)).await {
            Either::Left((w, _)) | Either::Right((w, _)) => w,
        }
    }

    /// Reports what woke the pump to the session.
    pub(super) fn wake(&mut self, wake: Wake<P::Body>) {
        let t = self.platform.now();
        match wake {
            Wake::Timer => {
                self.alarm = None;
                self.session.handle_timeout(t);
            }
            Wake::Head(Ok(response)) => {
                self.head = None;
                self.session
                    .handle_upstream_head(t, response.status, &response.headers);
                match response.body {
                    Some(body) => self.body = Some(body),
                    None => self.session.handle_upstream_end(t),
                }
            }
            Wake::Head(Err(e)) => {
                self.head = None;
                self.session.handle_upstream_failed(t, &e);
            }
            Wake::Chunk(Some(Ok(bytes))) => self.session.handle_upstream_chunk(t, bytes),
            Wake::Chunk(Some(Err(e))) => {
                self.body = None;
                self.session.handle_upstream_failed(t, &e);
            }
            Wake::Chunk(None) => {
                self.body = None;
                self.session.handle_upstream_end(t);
            }
            Wake::Embedding(answer) => {
                self.embedding = None;
                match answer {
                    Ok((status, body)) => self.session.handle_embedding(t, status, &body),
                    Err(_) => self.session.handle_embedding_failed(t),
                }
            }
            Wake::Admission(verdict) => {
                self.admission = None;
                self.session.handle_admission(t, verdict);
            }
            Wake::Kv(read, value) => {
                self.session
                    .handle_kv_value(t, read, value.map(Bytes::from));
            }
        }
    }

    /// Starts the embeddings call; its whole body is read, up to
    /// [`MAX_EMBEDDING_BYTES`].
    fn embed(&mut self, req: UpstreamRequest) {
        let head = match self.platform.fetch(req) {
            Ok(head) => head,
            Err(_) => {
                let now = self.platform.now();
                return self.session.handle_embedding_failed(now);
            }
        };
        self.embedding = Some(Box::pin(async move {
            let response = head.await?;
            let mut body = BytesMut::new();
            if let Some(mut chunks) = response.body {
                while let Some(chunk) = chunks.next().await {
                    body.extend_from_slice(&chunk?);
                    if body.len() > MAX_EMBEDDING_BYTES {
                        return Err("the embeddings answer is too large".into());
                    }
                }
            }
            Ok((response.status, body.freeze()))
        }));
    }

    fn send(&mut self, req: UpstreamRequest) {
        self.upstream_epoch = self.upstream_epoch.wrapping_add(1);
        match self.platform.fetch(req) {
            Ok(head) => self.head = Some(head),
            Err(e) => {
                let now = self.platform.now();
                self.session.handle_upstream_failed(now, &e);
            }
        }
    }
}

impl<P: Platform + 'static> Pump<P> {
    /// Carries out an action that does not wait for anything.
    fn background(&mut self, action: Action) {
        match action {
            Action::CancelUpstream => {
                // Only the upstream: KV reads under way are still wanted.
                self.head = None;
                self.body = None;
                self.upstream_epoch = self.upstream_epoch.wrapping_add(1);
                self.platform.abort();
            }
            Action::KvPut {
                key,
                value,
                ttl_secs,
                scope,
                gate,
            } => {
                let now = self.platform.now();
                let first = |gate: &'static std::thread::LocalKey<RefCell<WriteOnce>>| {
                    gate.with(|w| w.borrow_mut().first(&key, now))
                };
                let write = match gate {
                    Gate::Free => true,
                    Gate::Once => first(&WRITTEN),
                    Gate::Paced => first(&PACED),
                };
                if write {
                    self.platform.kv_put(key, value, ttl_secs, scope);
                }
            }
            Action::KvDelete { key } => self.platform.kv_delete(key),
            Action::Release { key, lease } => self.platform.release(key, lease),
            Action::ReplicaHealth { replica, up } => {
                let now = self.platform.now();
                HEALTH.with(|h| h.borrow_mut().report(&replica, up, now));
            }
            Action::HealthProbe { ok } => {
                let now = self.platform.now();
                HEALTH.with(|h| h.borrow_mut().probed(ok, now));
            }
            // After the client left nobody waits for a read, and nothing
            // goes to the client or upstream any more.
            Action::KvGet { .. }
            | Action::Admit { .. }
            | Action::ReadBody { .. }
            | Action::SendUpstream(_)
            | Action::Embed(_)
            | Action::Respond(..)
            | Action::RespondHead(_)
            | Action::RespondChunk(_)
            | Action::RespondEnd
            | Action::RespondAbort => {}
        }
    }
}

impl<P: Platform + 'static> Drop for Pump<P> {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // The platform dropped the body: the client is gone (or the
        // response finished, in which case the session ignores this).
        let now = self.platform.now();
        self.session.handle_downstream_closed(now);
        if !self.session.is_finished() {
            // A resumable generation goes on without its client: the rest
            // of the session moves to a pump of its own, in the background.
            let placeholder = Session::new(Default::default());
            let rest = Pump {
                session: std::mem::replace(&mut self.session, placeholder),
                platform: self.platform.without_client(),
                head: self.head.take(),
                body: self.body.take(),
                upstream_epoch: self.upstream_epoch,
                kv_reads: std::mem::take(&mut self.kv_reads),
                admission: self.admission.take(),
                embedding: self.embedding.take(),
                chunk_out: false,
                closed: false,
                alarm: None,
            };
            self.platform.spawn(Box::pin(rest.run_to_end()));
            return;
        }
        while let Some(action) = self.session.poll_action() {
            self.background(action);
        }
        self.platform.detach();
    }
}
