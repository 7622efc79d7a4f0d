//! The session's own steps once a request is under way: sending it
//! upstream and falling back to the next replica, the upstream's head,
//! body, end or failure, and everything written to the client — stream
//! events, keep-alives, the end, and the one place an error becomes a
//! response ([`Session::fail`]).

use bytes::{Bytes, BytesMut};

use crate::core::config::MAX_UPSTREAM_ERROR_BYTES;
use crate::core::error::{Error, ErrorKind};
use crate::core::format::Stats;
use crate::core::http::header;
use crate::core::openai;
use crate::core::prefetch;
use crate::core::restream::{self, Ending};
use crate::core::resume::End;
use crate::core::route;
use crate::core::status::Stage;
use crate::core::Millis;

use super::action::Action;
use super::intake::Route;
use super::response::{Meta, Sent};
use super::timers::Timer;
use super::upstream::Call;
use super::{Phase, Session, HEALTH_TIMEOUT_MS};

impl Session {
    pub(super) fn send_upstream(&mut self, now: Millis, call: Call) {
        self.upstream
            .send(&mut self.actions, &self.config, now, call);
        let wait = match self.route {
            Some(Route::Health) => HEALTH_TIMEOUT_MS,
            Some(Route::Prefetch { .. }) => prefetch::TIMEOUT_MS,
            Some(Route::Generate { stream: false, .. }) => self.config.non_stream_timeout_ms,
            _ => self.config.first_byte_timeout_ms,
        };
        self.timers.set(Timer::Upstream, now, wait);
        self.phase = Phase::AwaitingHead;
        self.enter_stage(now, Stage::Waiting);
    }

    pub(super) fn cancel_upstream(&mut self) {
        self.upstream.cancel(&mut self.actions);
        self.timers.stop(Timer::Upstream);
    }

    /// The upstream ended or failed on its own.
    pub(super) fn upstream_closed(&mut self) {
        self.upstream.closed();
        self.timers.stop(Timer::Upstream);
    }

    /// The current replica failed before its first byte: marks it down and,
    /// when another replica is left, sends the request there instead.
    /// Returns whether it did.
    pub(super) fn fall_back(&mut self, now: Millis) -> bool {
        self.upstream
            .report(&mut self.actions, &self.config, false, self.last_now);
        match self.upstream.next_replica(&mut self.actions) {
            Some(call) => {
                self.send_upstream(now, call);
                true
            }
            None => false,
        }
    }

    pub(super) fn on_upstream_head(
        &mut self,
        now: Millis,
        status: u16,
        headers: &[(String, String)],
    ) {
        if !matches!(self.phase, Phase::AwaitingHead) {
            return;
        }
        let retry = route::RETRY_STATUSES.contains(&status);
        if retry && self.fall_back(now) {
            return;
        }
        self.upstream
            .report(&mut self.actions, &self.config, !retry, self.last_now);
        self.upstream.answered(now);
        self.timers
            .set(Timer::Upstream, now, self.config.idle_timeout_ms);
        let Some(route) = self.route else { return };
        match route {
            Route::Prefetch { .. } => {
                // The prompt is processed: the warming is done.
                self.cancel_upstream();
                self.finish();
            }
            Route::Health => {
                self.cancel_upstream();
                self.answer_health((200..300).contains(&status), true);
            }
            _ if !(200..300).contains(&status) => {
                self.phase = Phase::ReadingError {
                    status,
                    body: Vec::new(),
                };
            }
            Route::Generate { stream: true, .. } => {
                self.start_events();
                self.enter_stage(now, Stage::Prefill);
                let held = self.held.take();
                let mut restream = held.unwrap_or_else(|| self.new_restream());
                if let Some(r) = self.cache.as_mut().and_then(|c| c.take_recorder()) {
                    restream.record_into(r);
                }
                self.phase = Phase::Streaming(restream);
            }
            Route::Generate { .. }
            | Route::Models
            | Route::Page(_)
            | Route::Preflight
            | Route::Socket
            | Route::ReadStream
            | Route::CancelStream => {
                let content_type = header(headers, "content-type").unwrap_or("application/json");
                let meta = self.meta();
                self.response
                    .start_passthrough(&mut self.actions, status, content_type, meta);
                self.phase = Phase::Passthrough;
            }
        }
    }

    pub(super) fn on_upstream_chunk(&mut self, now: Millis, chunk: &[u8]) {
        if !self.upstream.is_open() {
            return;
        }
        self.timers
            .set(Timer::Upstream, now, self.config.idle_timeout_ms);
        match &mut self.phase {
            Phase::ReadingError { body, .. } => {
                let room = MAX_UPSTREAM_ERROR_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    self.cancel_upstream();
                    self.finish_upstream_error();
                }
            }
            Phase::Streaming(_) => self.feed_stream(now, chunk),
            Phase::Passthrough => {
                if let Some(c) = &mut self.cache {
                    c.record(chunk);
                }
                self.response.emit(&mut self.actions, now, chunk);
            }
            Phase::Idle
            | Phase::Admitting { .. }
            | Phase::ReadingBody { .. }
            | Phase::CacheLookup
            | Phase::PrefetchLookup { .. }
            | Phase::StreamLookup
            | Phase::AwaitingHead
            | Phase::Finished => {}
        }
    }

    pub(super) fn on_upstream_end(&mut self, now: Millis) {
        match &self.phase {
            Phase::ReadingError { .. } => self.finish_upstream_error(),
            Phase::Streaming(restream) => match restream.ending() {
                Ending::Done | Ending::FinishedWithoutDone => {
                    self.store_answer();
                    self.end_stream(now);
                }
                Ending::Truncated if self.fail_over(now) => {}
                Ending::Truncated => {
                    let detail = if self.responses() {
                        "the upstream ended the stream without response.completed"
                    } else {
                        "the upstream ended the stream without [DONE] or a finish_reason for every choice"
                    };
                    self.fail(Error::new(ErrorKind::UpstreamStreamBroken {
                        detail: detail.into(),
                    }))
                }
                Ending::Broken => self.fail_broken_finish(),
            },
            Phase::Passthrough => {
                self.store_answer();
                self.end_stream(now);
            }
            Phase::AwaitingHead => {
                self.on_upstream_failed(now, "connection closed before a response")
            }
            Phase::Idle
            | Phase::Admitting { .. }
            | Phase::ReadingBody { .. }
            | Phase::CacheLookup
            | Phase::PrefetchLookup { .. }
            | Phase::StreamLookup
            | Phase::Finished => {}
        }
    }

    pub(super) fn on_upstream_failed(&mut self, now: Millis, detail: &str) {
        let awaiting_head = matches!(self.phase, Phase::AwaitingHead);
        if awaiting_head && self.fall_back(now) {
            return;
        }
        if matches!(self.phase, Phase::Streaming(_)) && self.fail_over(now) {
            return;
        }
        match (&self.phase, self.route) {
            (Phase::AwaitingHead, Some(Route::Health)) => self.answer_health(false, true),
            (Phase::AwaitingHead, _) => self.fail(Error::new(ErrorKind::UpstreamUnreachable {
                detail: detail.into(),
            })),
            (Phase::ReadingError { .. }, _) => self.finish_upstream_error(),
            (Phase::Streaming(_), _) => self.fail(Error::new(ErrorKind::UpstreamStreamBroken {
                detail: detail.into(),
            })),
            (Phase::Passthrough, _) => self.fail(Error::new(ErrorKind::UpstreamStreamBroken {
                detail: detail.into(),
            })),
            _ => {}
        }
    }

    fn finish_upstream_error(&mut self) {
        if let Phase::ReadingError { status, body } = &self.phase {
            if matches!(status, 401 | 403) {
                return self.fail(Error::new(ErrorKind::UpstreamAuthFailed));
            }
            let (message, error_type) = openai::upstream_error_message(*status, body);
            let status = *status;
            self.fail(Error::new(ErrorKind::UpstreamStatus {
                status,
                message,
                error_type,
            }));
        }
    }

    /// `/healthz`: ok or degraded, and nothing else (it needs no key). A
    /// fresh probe's result is reported so the next few seconds of
    /// `/healthz` are answered without one.
    pub(super) fn answer_health(&mut self, ok: bool, probed: bool) {
        if probed {
            self.actions.push_back(Action::HealthProbe { ok });
        }
        let body = serde_json::json!({
            "status": if ok { "ok" } else { "degraded" },
            "upstream": { "reachable": ok },
        });
        let status = if ok { 200 } else { 503 };
        let meta = self.json_meta();
        self.response.json(&mut self.actions, status, &body, meta);
        self.finish();
    }

    /// `X-Cache` and `Server-Timing` for this request as it stands, when
    /// the deployment shows them (`DEBUG_HEADERS`).
    fn meta(&self) -> Meta {
        let stream = self.stream_id().map(str::to_owned);
        if !self.config.debug_headers {
            return Meta {
                stream,
                ..Meta::default()
            };
        }
        let x_cache = match (&self.cache, self.route) {
            (Some(c), _) => Some(c.x_cache()),
            (None, Some(Route::Generate { .. })) => Some("bypass"),
            (None, _) => None,
        };
        let timing = match &self.cache {
            Some(c) if c.is_hit() => c.timing(),
            _ => {
                let mut t = self.upstream.timing(self.received_at);
                if let Some(lookup) = self.cache.as_ref().and_then(|c| c.timing()) {
                    t.push_str(", ");
                    t.push_str(&lookup);
                }
                Some(t)
            }
        };
        Meta {
            timing,
            x_cache,
            retry_after: None,
            stream,
        }
    }

    /// [`Session::meta`] for a complete JSON answer: `Server-Timing` only
    /// when it came from the cache.
    pub(super) fn json_meta(&self) -> Meta {
        let hit = self.cache.as_ref().is_some_and(|c| c.is_hit());
        let meta = self.meta();
        Meta {
            timing: meta.timing.filter(|_| hit),
            ..meta
        }
    }

    pub(super) fn start_events(&mut self) {
        if self.response.sent() == Sent::Nothing {
            let meta = self.meta();
            self.response.start_events(&mut self.actions, meta);
        }
    }

    pub(super) fn saw_content(&mut self, now: Millis, content_events: u32) {
        if content_events > 0 && self.first_content_at.is_none() {
            self.first_content_at = Some(now);
        }
        if content_events > 0 {
            self.watch_rate(now);
            self.on_generating();
        }
    }

    /// Queues bytes of a streamed answer (see `Response::write`) and pushes
    /// the next keep-alive back.
    pub(super) fn write(&mut self, now: Millis, bytes: &[u8], urgent: bool) {
        self.response.write(&mut self.actions, now, bytes, urgent);
        let interval = self.config.keepalive_interval_ms;
        self.timers.push_back(Timer::KeepAlive, now, interval);
    }

    /// Re-streams upstream (or replayed) event-stream bytes to the client.
    pub(super) fn feed_stream(&mut self, now: Millis, chunk: &[u8]) {
        let Phase::Streaming(restream) = &mut self.phase else {
            return;
        };
        match restream.push(chunk) {
            Ok(out) => {
                let held = restream.holds_break();
                for progress in out.progress {
                    self.on_progress(now, progress);
                }
                self.saw_content(now, out.content_events);
                if !out.bytes.is_empty() {
                    self.write(now, &out.bytes, false);
                }
                self.log_events(now);
                if held && self.on_break(now) {
                    return;
                }
                let Phase::Streaming(restream) = &self.phase else {
                    return;
                };
                let done = restream.done();
                let broken = restream.ending() == Ending::Broken;
                if done {
                    self.cancel_upstream();
                    if broken {
                        return self.fail_broken_finish();
                    }
                    self.store_answer();
                    self.end_stream(now);
                }
            }
            Err(e) => self.fail(Error::new(ErrorKind::UpstreamStreamBroken {
                detail: e.to_string(),
            })),
        }
    }

    /// A choice ended with a finish reason that is not a clean end: the
    /// stream ends with an error event, and nothing is stored.
    fn fail_broken_finish(&mut self) {
        let reason = match &self.phase {
            Phase::Streaming(r) => r.broken_finish().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        let detail = match (self.responses(), reason.as_str()) {
            (true, "failed") => "the upstream ended the response with response.failed".into(),
            (true, _) => "the upstream ended the response with an error event".into(),
            (false, _) => format!("the upstream ended the answer with finish_reason '{reason}'"),
        };
        self.fail(Error::new(ErrorKind::UpstreamStreamBroken { detail }));
    }

    pub(super) fn end_stream(&mut self, now: Millis) {
        self.end_log(now, End::Done);
        if let Phase::Streaming(restream) = &self.phase {
            let mut end = BytesMut::new();
            let ttft_ms = self.time_to_first_content().unwrap_or(0);
            restream.write_end(
                &mut end,
                Stats {
                    tokens: restream.content_events,
                    ttft_ms,
                    duration_ms: now.saturating_sub(self.received_at),
                    failovers: self.failovers,
                },
            );
            self.response.write_last(&mut self.actions, now, &end);
        }
        self.response.flush(&mut self.actions, now);
        self.response
            .remember_link(&mut self.actions, &self.kv_scope);
        self.response.close(&mut self.actions);
        self.finish();
    }

    /// The session is over: nothing more happens, and a generation's
    /// lease goes back to its key.
    pub(super) fn finish(&mut self) {
        self.phase = Phase::Finished;
        self.timers.stop_all();
        if let Some((key, lease)) = self.lease.take() {
            self.actions.push_back(Action::Release { key, lease });
        }
    }

    /// `error` (the `{"error":{...}}` object) as the stream's error event:
    /// the format's, or in a Responses API stream in the `openai` format
    /// the API's own `error` event, numbered after the last one.
    pub(super) fn error_event(&self, error: &serde_json::Value) -> Bytes {
        match &self.phase {
            Phase::Streaming(r) => r.error_event(error),
            _ => (self.responses() && self.response.format().is_openai())
                .then(|| restream::response_error_event(error, None)),
        }
        .unwrap_or_else(|| self.response.error_event(error))
    }

    /// The one place an error becomes a response: JSON with the error's
    /// status before anything was sent, an error event (then the end) once
    /// an event stream has started, an abort once a passed-through body
    /// has.
    pub(super) fn fail(&mut self, error: Error) {
        self.cancel_upstream();
        let now = self.last_now;
        self.end_log(
            now,
            End::Failed {
                error: error.to_json(),
            },
        );
        match self.response.sent() {
            Sent::Answered => self.finish(),
            Sent::Nothing => {
                let meta = Meta {
                    retry_after: error.retry_after_secs(),
                    ..self.json_meta()
                };
                self.response
                    .json(&mut self.actions, error.status(), &error.to_json(), meta);
                self.finish();
            }
            Sent::EventStream => {
                let event = self.error_event(&error.to_json());
                // What was held goes first, then the error, then the end.
                self.phase = Phase::Finished;
                self.write(now, &event, true);
                self.end_stream(now);
            }
            Sent::Body => {
                self.response.abort(&mut self.actions);
                self.finish();
            }
        }
    }
}
