//! Takeover: a reader that finds its stream's generation lost (the record
//! stopped being written without an end: on Spin, the instance that ran
//! it went away) finishes the answer itself, by the continuation a
//! failover uses (`failover`, `crate::core::prefix`): it reads the request
//! the writer kept, asks a replica to continue from the text in the
//! record, and becomes the stream's writer, so the record goes on from
//! where it stopped and other readers follow it as before. Only for an
//! answer of one choice that is all text, in a dialect that continues;
//! otherwise the reader gets the error event, as before.
//!
//! Two readers that find the same record lost within one poll may both
//! take it over; the first write of each makes the record fresh again, so
//! the window is one tail poll and a store round trip.

use bytes::Bytes;

use crate::core::openai::{self, CompletionRequest};
use crate::core::prefix;
use crate::core::resume::{self, Log, Record};
use crate::core::route;
use crate::core::Millis;

use super::action::{Action, Gate, KvRead, Purpose};
use super::failover;
use super::intake::Route;
use super::resume::{object_of, Resume};
use super::upstream::Call;
use super::{Phase, Session};

impl Session {
    /// A streamed generation whose answer could be continued keeps its
    /// request beside its record, for a reader that may have to take over.
    pub(super) fn keep_request(&mut self, request: &CompletionRequest) {
        let Some(Resume::Writer { log, .. }) = self.resume.as_deref() else {
            return;
        };
        let one = self.response.choices() == 1;
        if !one || !failover::continues(self.config.dialect, request.endpoint) {
            return;
        }
        let body = serde_json::to_vec(&request.body).unwrap_or_default();
        self.actions.push_back(Action::KvPut {
            key: resume::request_key(&log.id),
            value: body.into(),
            ttl_secs: self.config.resume_ttl_secs,
            scope: self.kv_scope.clone(),
            gate: Gate::Free,
        });
    }

    /// The reader's record was not written for too long: its generation
    /// is lost. Reads the request to continue it, when it can be.
    pub(super) fn take_over(&mut self, record: Record) {
        let Some(Resume::Reader(reader)) = self.resume.as_deref_mut() else {
            return;
        };
        let text = match &self.phase {
            Phase::Streaming(r) => r.text().is_some(),
            _ => false,
        };
        if reader.continues.is_none() || !text || record.head.overflow {
            return self.fail(resume::lost());
        }
        reader.lost = Some(record.events);
        self.actions.push_back(Action::KvGet {
            key: resume::request_key(&reader.id),
            read: KvRead(Purpose::StreamRequest),
        });
    }

    /// The lost generation's request (or its absence): the reader becomes
    /// the writer and a replica continues the answer.
    pub(super) fn on_stream_request(&mut self, now: Millis, value: Option<Bytes>) {
        let Some(Resume::Reader(reader)) = self.resume.as_deref_mut() else {
            return;
        };
        let (Some(endpoint), Some(events)) = (reader.continues, reader.lost.take()) else {
            return;
        };
        let id = reader.id.clone();
        let request = value.and_then(|v| openai::parse_request(endpoint, &v).ok());
        let (Some(request), Phase::Streaming(r)) = (request, &self.phase) else {
            return self.fail(resume::lost());
        };
        let Some(text) = r.text() else {
            return self.fail(resume::lost());
        };
        let tokens = r.content_events;
        // Nothing streamed yet: nothing to splice onto.
        let splice = r.events_forwarded > 0;
        let body = prefix::continuation(&request, self.config.dialect, text, tokens)
            .upstream_body(self.config.dialect);
        let every_ms = resume::intervals(self.config.fast_stream_store).0;
        let mut log = Log::new(id, self.kv_scope.clone(), 1, object_of(endpoint), every_ms);
        log.extend(events);
        self.become_writer(now, log);
        self.route = Some(Route::Generate {
            endpoint,
            stream: true,
        });
        self.allow_failover(&request);
        self.upstream
            .pick(&self.config, &route::affinity(endpoint, &request.body), now);
        let Phase::Streaming(mut restream) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        if splice {
            restream.continuing(tokens);
        }
        restream.log_from_now();
        self.held = Some(restream);
        self.send_upstream(now, Call::post(endpoint.path(), body.into(), true));
    }
}
