//! The session's steps for resumable streams (see `crate::core::resume`):
//! a generating request keeps its stream's record and outlives its client
//! for the grace period; a reader replays a record after its cursor and
//! follows it to the end; a cancel marks a stream for its generating
//! request to stop.

use bytes::{Bytes, BytesMut};

use crate::core::error::{Error, ErrorKind};
use crate::core::format::Stats;
use crate::core::openai::Endpoint;
use crate::core::restream::Restream;
use crate::core::resume::{self, Cursor, End, Log, Record};
use crate::core::Millis;

use super::action::{Action, Gate, KvRead, Purpose};
use super::failover;
use super::intake::{Intake, Route};
use super::response::Sent;
use super::timers::Timer;
use super::{Phase, Session};

/// A session's part in a resumable stream.
#[derive(Debug)]
pub(super) enum Resume {
    /// It generates the stream and keeps its record.
    Writer {
        log: Log,
        /// Its client left; it goes on for the grace period.
        detached: bool,
    },
    /// It reads another request's stream.
    Reader(Reader),
    /// It cancels one.
    Cancel { id: String },
}

#[derive(Debug)]
pub(super) struct Reader {
    pub(super) id: String,
    key: String,
    /// The last event the reader has (resolved against the record when it
    /// is first read).
    cursor: Cursor,
    /// Events of the record fed to the re-streamer so far.
    fed: usize,
    object: String,
    /// When it last told the writer it is here.
    marked_at: Option<Millis>,
    /// The stream's endpoint, when this reader could finish the answer
    /// itself should its generation be lost (`takeover`).
    pub(super) continues: Option<Endpoint>,
    /// The events of a lost generation's record, while its request is
    /// read for the takeover.
    pub(super) lost: Option<Vec<String>>,
}

/// The `object` of an endpoint's stream chunks.
pub(super) fn object_of(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "chat.completion.chunk",
        Endpoint::Completions => "text_completion",
        Endpoint::Responses => "response",
    }
}

/// The endpoint whose stream chunks have this `object`.
fn endpoint_of(object: &str) -> Endpoint {
    match object {
        "text_completion" => Endpoint::Completions,
        "response" => Endpoint::Responses,
        _ => Endpoint::Chat,
    }
}

impl Session {
    /// A streamed generation is starting: give it a stream id and a log,
    /// when the deployment keeps streams.
    pub(super) fn start_log(&mut self, now: Millis, intake: &Intake, endpoint: Endpoint) {
        if !self.config.resume {
            return;
        }
        let log = Log::new(
            resume::new_id(&intake.nonce),
            self.kv_scope.clone(),
            self.response.choices(),
            object_of(endpoint),
            resume::intervals(self.config.fast_stream_store).0,
        );
        self.become_writer(now, log);
    }

    /// This session keeps `log` from now on. Its record is written at
    /// once: a reader finds the stream before its first event, and a record
    /// taken over is fresh again, so other readers follow it instead of
    /// taking it over too.
    pub(super) fn become_writer(&mut self, now: Millis, log: Log) {
        self.resume = Some(Box::new(Resume::Writer {
            log,
            detached: false,
        }));
        self.checkpoint(now, true);
        self.timers
            .set(Timer::CancelPoll, now, resume::CANCEL_POLL_MS);
    }

    /// The id of the stream this response carries, if any.
    pub(super) fn stream_id(&self) -> Option<&str> {
        match self.resume.as_deref()? {
            Resume::Writer { log, .. } => Some(&log.id),
            Resume::Reader(r) => Some(&r.id),
            Resume::Cancel { .. } => None,
        }
    }

    /// A re-streamer for this response: numbered (and logging, for a
    /// writer) when the stream is resumable.
    pub(super) fn new_restream(&self) -> Box<Restream> {
        let mut r = Restream::new(self.response.format()).expecting(self.response.choices());
        if self.responses() {
            r = r.responses();
        }
        if self.keeps_text() {
            r = r.keeping_text();
        }
        Box::new(match self.resume.as_deref() {
            Some(Resume::Writer { .. }) => r.numbered(true),
            Some(Resume::Reader(reader)) => {
                let r = match reader.continues {
                    Some(_) => r.keeping_text(),
                    None => r,
                };
                // Resolved to an event number when the record was read.
                let (Cursor::Event(n) | Cursor::Sequence(n)) = reader.cursor;
                r.numbered(false).skipping_through(n)
            }
            _ => r,
        })
    }

    /// Moves the events the re-streamer numbered into the log, and writes
    /// the record if a checkpoint is due.
    pub(super) fn log_events(&mut self, now: Millis) {
        let Some(Resume::Writer { log, .. }) = self.resume.as_deref_mut() else {
            return;
        };
        if let Phase::Streaming(r) = &mut self.phase {
            log.extend(r.take_logged());
        }
        self.checkpoint(now, false);
    }

    /// Writes the record when due (at once when `force`).
    pub(super) fn checkpoint(&mut self, now: Millis, force: bool) {
        let Some(Resume::Writer { log, .. }) = self.resume.as_deref_mut() else {
            return;
        };
        if let Some(record) = log.checkpoint(now, force) {
            self.actions.push_back(Action::KvPut {
                key: resume::record_key(&log.id).unwrap_or_default(),
                value: record.into(),
                ttl_secs: self.config.resume_ttl_secs,
                scope: self.kv_scope.clone(),
                gate: Gate::Free,
            });
        }
    }

    /// The stream ended (`end`): the log says so and is written now.
    pub(super) fn end_log(&mut self, now: Millis, end: End) {
        if let Some(Resume::Writer { log, .. }) = self.resume.as_deref_mut() {
            if let Phase::Streaming(r) = &mut self.phase {
                log.extend(r.take_logged());
            }
            if log.ended() {
                return;
            }
            log.end(end);
            self.checkpoint(now, true);
        }
    }

    /// When the record is next due, for the timer table.
    pub(super) fn checkpoint_deadline(&self) -> Option<Millis> {
        match self.resume.as_deref() {
            Some(Resume::Writer { log, .. }) => log.next_checkpoint(),
            _ => None,
        }
    }

    /// The client left. A generation that keeps its stream goes on for the
    /// grace period (returns true); anything else ends.
    pub(super) fn detach(&mut self, now: Millis) -> bool {
        let generating = matches!(
            self.phase,
            Phase::CacheLookup | Phase::AwaitingHead | Phase::Streaming(_)
        );
        let grace_ms = self.config.resume_grace_secs.saturating_mul(1000);
        let Some(Resume::Writer { log, detached }) = self.resume.as_deref_mut() else {
            return false;
        };
        if !generating || log.ended() || grace_ms == 0 {
            return false;
        }
        *detached = true;
        self.response.detach();
        self.timers.stop(Timer::KeepAlive);
        self.timers.set(Timer::Grace, now, grace_ms);
        self.checkpoint(now, true);
        true
    }

    /// The resume timers: a reader's next read; a writer's checkpoint,
    /// cancel poll and grace period.
    pub(super) fn on_resume_timeout(&mut self, now: Millis) {
        if self.timers.expired(Timer::Tail, now) {
            self.timers.stop(Timer::Tail);
            self.read_record();
        }
        let Some(Resume::Writer { log, .. }) = self.resume.as_deref() else {
            return;
        };
        let id = log.id.clone();
        if self.timers.expired(Timer::Checkpoint, now) {
            self.checkpoint(now, false);
        }
        if self.timers.expired(Timer::CancelPoll, now) {
            self.timers
                .set(Timer::CancelPoll, now, resume::CANCEL_POLL_MS);
            self.actions.push_back(Action::KvGet {
                key: resume::cancel_key(&id),
                read: KvRead(Purpose::CancelMark),
            });
        }
        if self.timers.expired(Timer::Grace, now) {
            self.timers.stop(Timer::Grace);
            self.actions.push_back(Action::KvGet {
                key: resume::reader_key(&id),
                read: KvRead(Purpose::ReaderMark),
            });
        }
    }

    /// The answer to a writer's look for its cancel mark.
    pub(super) fn on_cancel_mark(&mut self, now: Millis, value: Option<Bytes>) {
        if value.is_some() && !self.is_finished() {
            self.cancelled(now);
        }
    }

    /// The answer to a detached writer's look for a reader, at the end of
    /// its grace period: one that was here lately gives it another.
    pub(super) fn on_reader_mark(&mut self, now: Millis, value: Option<Bytes>) {
        if self.is_finished() {
            return;
        }
        if value.is_some() {
            let grace_ms = self.config.resume_grace_secs.saturating_mul(1000);
            self.timers.set(Timer::Grace, now, grace_ms);
        } else {
            self.cancelled(now);
        }
    }

    /// Stops the generation: the upstream is cancelled, the client (if it
    /// is still here) gets the format's cancelled end, and the record says
    /// it was cancelled.
    fn cancelled(&mut self, now: Millis) {
        self.cancel_upstream();
        let object = match self.route {
            Some(Route::Generate { endpoint, .. }) => object_of(endpoint),
            _ => object_of(Endpoint::Chat),
        };
        self.end_log(now, End::Cancelled);
        self.write_cancelled_end(now, object);
    }

    fn write_cancelled_end(&mut self, now: Millis, object: &str) {
        self.start_events();
        if !matches!(self.phase, Phase::Streaming(_)) {
            self.phase = Phase::Streaming(self.new_restream());
        }
        if let Phase::Streaming(r) = &self.phase {
            let mut end = BytesMut::new();
            let stats = Stats {
                tokens: r.content_events,
                ttft_ms: self.time_to_first_content().unwrap_or(0),
                duration_ms: now.saturating_sub(self.received_at),
                failovers: self.failovers,
            };
            r.write_cancelled(&mut end, object, stats);
            self.response.write_last(&mut self.actions, now, &end);
        }
        self.response.flush(&mut self.actions, now);
        self.response.close(&mut self.actions);
        self.finish();
    }

    // ---- readers and cancels -------------------------------------------

    /// `GET /v1/streams/{id}`: reads the stream's record.
    pub(super) fn read_stream(&mut self, now: Millis, mut intake: Intake) {
        let cursor = match std::mem::replace(&mut intake.cursor, Ok(Cursor::Event(0))) {
            Ok(c) => c,
            Err(e) => return self.fail(e),
        };
        let id = intake.stream.take().unwrap_or_default();
        let key = match resume::record_key(&id).filter(|_| self.config.resume) {
            Some(k) => k,
            None => return self.fail(Error::new(ErrorKind::StreamNotFound { id })),
        };
        let format = match std::mem::replace(&mut intake.format, Ok(Default::default())) {
            Ok(f) => f,
            Err(e) => return self.fail(e),
        };
        self.response.set_stream(
            format,
            intake.flush_rule,
            1,
            intake.link,
            intake.link_key.take(),
        );
        self.resume = Some(Box::new(Resume::Reader(Reader {
            id,
            key,
            cursor,
            fed: 0,
            object: String::new(),
            marked_at: None,
            continues: None,
            lost: None,
        })));
        self.phase = Phase::StreamLookup;
        self.timers.set(Timer::Lookup, now, resume::READ_TIMEOUT_MS);
        self.read_record();
    }

    /// `POST /v1/streams/{id}/cancel`: reads the record to check whose it
    /// is, then marks it.
    pub(super) fn cancel_stream(&mut self, now: Millis, mut intake: Intake) {
        let id = intake.stream.take().unwrap_or_default();
        let key = match resume::record_key(&id).filter(|_| self.config.resume) {
            Some(k) => k,
            None => return self.fail(Error::new(ErrorKind::StreamNotFound { id })),
        };
        self.resume = Some(Box::new(Resume::Cancel { id }));
        self.phase = Phase::StreamLookup;
        self.timers.set(Timer::Lookup, now, resume::READ_TIMEOUT_MS);
        self.actions.push_back(Action::KvGet {
            key,
            read: KvRead(Purpose::Stream),
        });
    }

    fn read_record(&mut self) {
        if let Some(Resume::Reader(r)) = self.resume.as_deref() {
            self.actions.push_back(Action::KvGet {
                key: r.key.clone(),
                read: KvRead(Purpose::Stream),
            });
        }
    }

    /// The store gave no answer in time to a reader's or a cancel's first
    /// read.
    pub(super) fn stream_lookup_timed_out(&mut self) {
        self.fail(Error::new(ErrorKind::StreamStoreUnavailable));
    }

    /// A stream record (or its absence), for a reader or a cancel.
    pub(super) fn on_record(&mut self, now: Millis, value: Option<Bytes>) {
        let first = matches!(self.phase, Phase::StreamLookup);
        if !first && !matches!(self.phase, Phase::Streaming(_)) {
            return;
        }
        self.timers.stop(Timer::Lookup);
        let record = value
            .as_deref()
            .and_then(Record::decode)
            .filter(|r| r.head.scope == self.kv_scope);
        match self.resume.as_deref() {
            Some(Resume::Cancel { id }) => {
                let id = id.clone();
                self.answer_cancel(id, record)
            }
            Some(Resume::Reader(r)) => {
                let id = r.id.clone();
                match record {
                    None if first => self.fail(Error::new(ErrorKind::StreamNotFound { id })),
                    None => self.fail(resume::lost()),
                    Some(record) => self.follow(now, record, first),
                }
            }
            _ => {}
        }
    }

    fn answer_cancel(&mut self, id: String, record: Option<Record>) {
        let Some(record) = record else {
            return self.fail(Error::new(ErrorKind::StreamNotFound { id }));
        };
        let (status, state) = match &record.head.end {
            Some(End::Done) => (200, "completed"),
            Some(End::Failed { .. }) => (200, "failed"),
            Some(End::Cancelled) => (200, "cancelled"),
            None => {
                self.actions.push_back(Action::KvPut {
                    key: resume::cancel_key(&id),
                    value: Bytes::from_static(b"1"),
                    ttl_secs: self.config.resume_ttl_secs,
                    scope: self.kv_scope.clone(),
                    gate: Gate::Free,
                });
                (202, "cancelling")
            }
        };
        let body = serde_json::json!({"id": id, "object": "stream", "status": state});
        self.response
            .json(&mut self.actions, status, &body, Default::default());
        self.finish();
    }

    /// Whether this stream is a Responses API one: the request's, or the
    /// stream a reader follows.
    pub(super) fn responses(&self) -> bool {
        match (self.route, self.resume.as_deref()) {
            (Some(Route::Generate { endpoint, .. }), _) => endpoint == Endpoint::Responses,
            (_, Some(Resume::Reader(reader))) => endpoint_of(&reader.object) == Endpoint::Responses,
            _ => false,
        }
    }

    /// Replays what the reader does not have yet, then ends, or reads the
    /// record again soon.
    fn follow(&mut self, now: Millis, record: Record, first: bool) {
        let Some(Resume::Reader(reader)) = self.resume.as_deref_mut() else {
            return;
        };
        let last = record.events.len() as u64;
        if first {
            let cursor = reader.cursor.resolve(&record.events);
            reader.cursor = Cursor::Event(cursor);
            if record.head.end.is_some() && cursor > last {
                return self.fail(resume::past_the_end(cursor, last));
            }
            if record.head.choices > 1 && !self.response.format().is_openai() {
                return self.fail(Error::invalid(
                    "This stream carries several choices: read it in the openai format",
                    Some("X-Tokenedge-Format"),
                ));
            }
            reader.object = record.head.object.clone();
            let endpoint = endpoint_of(&reader.object);
            let one = record.head.choices == 1 && !record.head.overflow;
            if one && failover::continues(self.config.dialect, endpoint) {
                reader.continues = Some(endpoint);
            }
            self.response.set_choices(record.head.choices);
            self.start_events();
            self.phase = Phase::Streaming(self.new_restream());
            if self.response.format().is_event_stream() {
                let interval = self.config.keepalive_interval_ms;
                self.timers.set(Timer::KeepAlive, now, interval);
            }
        }
        let Some(Resume::Reader(reader)) = self.resume.as_deref_mut() else {
            return;
        };
        let new = record.events.get(reader.fed..).unwrap_or_default().concat();
        reader.fed = record.events.len().max(reader.fed);
        let mark = record.head.end.is_none()
            && reader
                .marked_at
                .is_none_or(|t| now.saturating_sub(t) >= resume::HEARTBEAT_MS);
        if mark {
            reader.marked_at = Some(now);
            let key = resume::reader_key(&reader.id);
            let ttl_secs = self.config.resume_grace_secs.max(1);
            self.actions.push_back(Action::KvPut {
                key,
                value: Bytes::from_static(b"1"),
                ttl_secs,
                scope: self.kv_scope.clone(),
                gate: Gate::Free,
            });
        }
        let object = reader.object.clone();
        if !new.is_empty() {
            self.feed_stream(now, new.as_bytes());
        }
        if self.is_finished() {
            return;
        }
        let overflow = record.head.overflow;
        let lost = record.lost(now);
        if lost {
            return self.take_over(record);
        }
        match record.head.end {
            Some(_) if overflow => self.fail(Error::new(ErrorKind::UpstreamStreamBroken {
                detail: format!("the stream is too long to resume past event {last}"),
            })),
            Some(End::Done) => self.end_stream(now),
            Some(End::Failed { error }) => {
                let event = self.error_event(&error);
                self.end_with_stored_error(now, &event);
            }
            Some(End::Cancelled) => self.write_cancelled_end(now, &object),
            None => {
                let every_ms = resume::intervals(self.config.fast_stream_store).1;
                self.timers.set(Timer::Tail, now, every_ms);
            }
        }
    }

    /// Writes a stored error event, then the end.
    fn end_with_stored_error(&mut self, now: Millis, event: &[u8]) {
        if self.response.sent() != Sent::EventStream {
            return;
        }
        self.phase = Phase::Finished;
        self.write(now, event, true);
        self.end_stream(now);
    }
}
