//! The downstream side of a session: the response head (one builder for
//! every kind of answer), the body's format, flush policy and compression
//! context, what the client has been sent so far, errors rendered as JSON
//! or as an in-stream event, and the client's link — what the request said,
//! what KV remembered, and what to remember for its next stream.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::core::compress::{Encoder, DEFAULT_LEVEL};
use crate::core::encoding::Coding;
use crate::core::format::Format;
use crate::core::http::{Headers, ResponseHead};
use crate::core::link::{self, LinkEstimate, Remembered};
use crate::core::pacing::{Pacer, Rule};
use crate::core::Millis;

use super::action::{Action, Gate};

/// What the client has been sent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    Nothing,
    /// An SSE (or other streamed-format) head went out: errors become
    /// in-stream error events.
    EventStream,
    /// Another streamed body (JSON pass-through) is under way.
    Body,
    /// A complete answer went out early; the session carries on in the
    /// background (a prefetch) and never writes to the client again.
    Answered,
}

/// The headers a response carries besides its content type: how long the
/// phases took and how the caches took part.
#[derive(Debug, Default)]
pub(super) struct Meta {
    pub(super) timing: Option<String>,
    pub(super) x_cache: Option<&'static str>,
    /// `Retry-After`, in seconds.
    pub(super) retry_after: Option<u64>,
    /// `X-Tokenedge-Stream`: the id to resume the stream with.
    pub(super) stream: Option<String>,
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Complete, small, not compressed.
    Json,
    /// A stream in the response's [`Format`].
    Events,
    /// The upstream's body passed through.
    Passthrough,
}

pub(super) struct Response {
    cors: Headers,
    /// The content coding negotiated for streamed bodies.
    coding: Coding,
    /// The body's compression context, once a streamed head is out.
    encoder: Option<Encoder>,
    format: Format,
    /// Answers the streamed request asks for (`n` × prompts).
    choices: u32,
    flush_rule: Rule,
    /// What the request said about the link, completed by KV.
    link: LinkEstimate,
    /// KV key of this client's remembered link, and what it held.
    link_key: Option<String>,
    link_stored: Option<Remembered>,
    /// The flush policy of the streamed body, once its head is out.
    pacer: Option<Pacer>,
    sent: Sent,
    /// The client left (see [`Response::detach`]).
    gone: bool,
}

impl Default for Response {
    fn default() -> Self {
        Self {
            cors: Headers::new(),
            coding: Coding::Identity,
            encoder: None,
            format: Format::OpenAi,
            choices: 1,
            flush_rule: Rule::Adaptive,
            link: LinkEstimate::default(),
            link_key: None,
            link_stored: None,
            pacer: None,
            sent: Sent::Nothing,
            gone: false,
        }
    }
}

impl Response {
    pub(super) fn new(cors: Headers, coding: Coding) -> Self {
        Self {
            cors,
            coding,
            ..Self::default()
        }
    }

    /// A streamed answer is wanted: how to frame and pace it, and where
    /// this client's link is remembered.
    pub(super) fn set_stream(
        &mut self,
        format: Format,
        flush_rule: Rule,
        choices: u32,
        link: LinkEstimate,
        link_key: Option<String>,
    ) {
        self.format = format;
        self.choices = choices;
        self.flush_rule = flush_rule;
        self.link = link;
        self.link_key = link_key;
    }

    /// A reader learns how many choices the stream it reads carries.
    pub(super) fn set_choices(&mut self, choices: u32) {
        self.choices = choices;
    }

    /// The client left, and the session goes on without it: nothing more
    /// is written (or held) for it.
    pub(super) fn detach(&mut self) {
        self.gone = true;
        self.pacer = None;
        self.encoder = None;
    }

    pub(super) fn format(&self) -> Format {
        self.format
    }

    /// The answers the streamed request asks for (`n` × prompts).
    pub(super) fn choices(&self) -> u32 {
        self.choices
    }

    pub(super) fn sent(&self) -> Sent {
        self.sent
    }

    /// The KV key of the remembered link, when it is to be read.
    pub(super) fn link_key(&self) -> Option<&str> {
        self.link_key.as_deref()
    }

    /// The remembered link came from KV (`None`: nothing known). Too late
    /// for a stream whose pacer already runs: the next one benefits.
    pub(super) fn link_read(&mut self, value: Option<&[u8]>) {
        if self.link_stored.is_some() {
            return;
        }
        let Some(r) = value.and_then(Remembered::decode) else {
            return;
        };
        self.link_stored = Some(r);
        if self.pacer.is_none() {
            self.link = self.link.with_remembered(r);
        }
    }

    /// Stores this client's link estimate for its next stream, when it is
    /// first-hand and new.
    pub(super) fn remember_link(&self, out: &mut VecDeque<Action>, scope: &str) {
        let (Some(key), Some(p)) = (&self.link_key, &self.pacer) else {
            return;
        };
        if let Some(r) = p.estimate().to_remember(p.fastest_kbps(), self.link_stored) {
            let value = serde_json::to_vec(&r).unwrap_or_default();
            out.push_back(Action::KvPut {
                key: key.clone(),
                value: value.into(),
                ttl_secs: link::REMEMBER_TTL_SECS,
                scope: scope.to_owned(),
                gate: Gate::Free,
            });
        }
    }

    /// The one head builder: content type and caching, then the meta
    /// headers, then (for streamed bodies) the coding, then CORS.
    fn head(&mut self, status: u16, kind: Kind, content_type: &str, meta: Meta) -> ResponseHead {
        let cache_control = match kind {
            Kind::Events => "no-cache, no-transform",
            Kind::Json | Kind::Passthrough => "no-store",
        };
        let mut headers: Headers = vec![
            ("content-type".into(), content_type.into()),
            ("cache-control".into(), cache_control.into()),
        ];
        if kind == Kind::Events {
            headers.push(("x-accel-buffering".into(), "no".into()));
            // iOS's URLSession holds back the first 512 bytes of a body it
            // may sniff; a stream's first token must not wait for them
            // (docs/clients.md).
            headers.push(("x-content-type-options".into(), "nosniff".into()));
        }
        if let Some(t) = meta.timing {
            headers.push(("server-timing".into(), t));
        }
        if let Some(x) = meta.x_cache {
            headers.push((crate::core::cache::X_CACHE.into(), x.into()));
        }
        if let Some(secs) = meta.retry_after {
            headers.push(("retry-after".into(), secs.to_string()));
        }
        if let Some(id) = meta.stream.filter(|_| kind == Kind::Events) {
            headers.push((crate::core::resume::HEADER.into(), id));
        }
        if kind != Kind::Json {
            headers.push(("vary".into(), "Accept-Encoding".into()));
            if let Some(token) = self.coding.header_value() {
                headers.push(("content-encoding".into(), token.into()));
                self.encoder = Some(Encoder::new(self.coding, DEFAULT_LEVEL));
            }
        }
        headers.extend(self.cors.iter().cloned());
        ResponseHead { status, headers }
    }

    /// A complete answer with no body (a preflight), with these headers.
    pub(super) fn empty(out: &mut VecDeque<Action>, status: u16, headers: Headers) {
        out.push_back(Action::Respond(
            ResponseHead { status, headers },
            Bytes::new(),
        ));
    }

    /// A complete JSON answer.
    pub(super) fn json(
        &mut self,
        out: &mut VecDeque<Action>,
        status: u16,
        body: &serde_json::Value,
        meta: Meta,
    ) {
        let head = self.head(status, Kind::Json, "application/json", meta);
        let mut bytes = serde_json::to_vec(body).unwrap_or_default();
        bytes.push(b'\n');
        out.push_back(Action::Respond(head, bytes.into()));
        self.sent = Sent::Answered;
    }

    /// Starts the streamed answer in the response's format, once.
    pub(super) fn start_events(&mut self, out: &mut VecDeque<Action>, meta: Meta) {
        if self.sent != Sent::Nothing {
            return;
        }
        let head = self.head(200, Kind::Events, self.format.content_type(), meta);
        out.push_back(Action::RespondHead(head));
        self.sent = Sent::EventStream;
        self.pacer = Some(Pacer::new(self.flush_rule, self.link));
    }

    /// Starts passing the upstream's body through.
    pub(super) fn start_passthrough(
        &mut self,
        out: &mut VecDeque<Action>,
        status: u16,
        content_type: &str,
        meta: Meta,
    ) {
        let head = self.head(status, Kind::Passthrough, content_type, meta);
        out.push_back(Action::RespondHead(head));
        self.sent = Sent::Body;
    }

    /// Sends body bytes through the encoder, flushed so the client can
    /// decode them at once.
    pub(super) fn emit(&mut self, out: &mut VecDeque<Action>, now: Millis, bytes: &[u8]) {
        if self.gone {
            return;
        }
        let mut wire = Vec::with_capacity(bytes.len() / 2 + 32);
        match &mut self.encoder {
            Some(encoder) => {
                if let Some(p) = &self.pacer {
                    encoder.set_level(p.level());
                }
                encoder.encode_and_flush(bytes, &mut wire);
            }
            None => wire.extend_from_slice(bytes),
        }
        if let Some(p) = &mut self.pacer {
            p.flushed(now, wire.len());
        }
        out.push_back(Action::RespondChunk(wire.into()));
    }

    /// Queues bytes of a streamed answer and flushes when the pacer says so
    /// (`urgent`: at once, for keep-alives and the end).
    pub(super) fn write(
        &mut self,
        out: &mut VecDeque<Action>,
        now: Millis,
        bytes: &[u8],
        urgent: bool,
    ) {
        match &mut self.pacer {
            Some(p) => {
                if p.push(now, bytes) || urgent {
                    self.flush(out, now);
                }
            }
            None => self.emit(out, now, bytes),
        }
    }

    /// Writes everything the pacer holds.
    pub(super) fn flush(&mut self, out: &mut VecDeque<Action>, now: Millis) {
        if let Some(pending) = self.pacer.as_mut().map(Pacer::take) {
            if !pending.is_empty() {
                self.emit(out, now, &pending);
            }
        }
    }

    /// Queues the last bytes of the stream, to go with the final flush.
    pub(super) fn write_last(&mut self, out: &mut VecDeque<Action>, now: Millis, bytes: &[u8]) {
        match &mut self.pacer {
            Some(p) => {
                let _ = p.push(now, bytes);
            }
            None if !bytes.is_empty() => self.emit(out, now, bytes),
            None => {}
        }
    }

    /// Ends the streamed body: the coding's trailer, then the end.
    pub(super) fn close(&mut self, out: &mut VecDeque<Action>) {
        if self.gone {
            return;
        }
        if let Some(mut encoder) = self.encoder.take() {
            let mut trailer = Vec::new();
            encoder.finish(&mut trailer);
            out.push_back(Action::RespondChunk(trailer.into()));
        }
        out.push_back(Action::RespondEnd);
    }

    /// Ends the streamed body as broken: no trailer, no clean end.
    pub(super) fn abort(&mut self, out: &mut VecDeque<Action>) {
        if self.gone {
            return;
        }
        self.encoder = None;
        out.push_back(Action::RespondAbort);
    }

    /// The pacer's next deadline.
    pub(super) fn flush_deadline(&self) -> Option<Millis> {
        self.pacer.as_ref().and_then(Pacer::poll_timeout)
    }

    /// The platform took what was written: returns whether held events are
    /// now due.
    pub(super) fn drained(&mut self, now: Millis) -> bool {
        self.pacer.as_mut().is_some_and(|p| p.drained(now))
    }

    /// `error` as an event of the response's format.
    pub(super) fn error_event(&self, error: &serde_json::Value) -> Bytes {
        let mut event = BytesMut::new();
        self.format.write_error(&mut event, error);
        event.freeze()
    }
}
