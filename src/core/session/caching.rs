//! The session's own steps for the caches and prefetch: going upstream
//! after a miss, replaying an exact hit, streaming a stored prefix and
//! asking for its continuation, storing a completed answer once, and
//! sending a prefetch's warming request.

use bytes::Bytes;

use crate::core::cache::{self, Entry};
use crate::core::prefix;
use crate::core::Millis;

use super::action::{Action, Gate};
use super::intake::Route;
use super::lookup::Store;
use super::upstream::Call;
use super::{Phase, Session};

impl Session {
    /// The lookup found nothing usable (or took too long): go upstream,
    /// recording the answer unless what was found must not be replaced.
    pub(super) fn cache_missed(&mut self, now: Millis, record: bool) {
        let Some(c) = self.cache.as_deref_mut() else {
            return;
        };
        let body = c.missed(now, record, self.config.prefix_tokens);
        let call = Call::post(c.endpoint().path(), body, c.stream());
        self.send_upstream(now, call);
    }

    /// Answers from a stored entry: as a stream through the same
    /// re-streaming, formats, pacing and compression as a live answer, or
    /// as JSON.
    pub(super) fn replay(&mut self, now: Millis, entry: Entry) {
        let Some(c) = self.cache.as_deref_mut() else {
            return;
        };
        let _ = c.hit(now);
        let (endpoint, stream) = (c.endpoint(), c.stream());
        if !stream {
            let meta = self.json_meta();
            self.response
                .json(&mut self.actions, 200, &entry.to_json(endpoint), meta);
            return self.finish();
        }
        self.start_events();
        self.phase = Phase::Streaming(self.new_restream());
        self.feed_stream(now, &entry.to_sse(endpoint));
    }

    /// A stored prefix was found: stream it now, then ask the upstream to
    /// continue after it.
    pub(super) fn speculate(&mut self, now: Millis, mut entry: Entry) {
        let Some(c) = self.cache.as_deref_mut() else {
            return;
        };
        if let Some(request) = c.request() {
            prefix::cut_opening(&mut entry.pieces, request);
        }
        if entry.pieces.is_empty() {
            // Too short to use, and not to be replaced.
            return self.cache_missed(now, false);
        }
        let Some(request) = c.hit(now) else {
            return;
        };
        let endpoint = c.endpoint();
        let tokens = entry.pieces.len() as u64;
        let continuation = prefix::continuation(
            &request,
            self.config.dialect,
            &entry.pieces.concat(),
            tokens,
        );
        self.start_events();
        self.phase = Phase::Streaming(self.new_restream());
        // Events this code wrote itself: they parse.
        self.feed_stream(now, &entry.to_sse_opening(endpoint));
        let Phase::Streaming(mut restream) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        restream.continuing(tokens);
        self.held = Some(restream);
        let body: Bytes = continuation.upstream_body(self.config.dialect).into();
        self.send_upstream(now, Call::post(endpoint.path(), body, true));
    }

    /// Stores the answer of a request that completed upstream: one write,
    /// of a whole answer (or of its opening, for a prefix), or nothing.
    pub(super) fn store_answer(&mut self) {
        let recorder = match &mut self.phase {
            Phase::Streaming(r) => r.take_recorder(),
            _ => None,
        };
        let Some(c) = self.cache.as_deref_mut() else {
            return;
        };
        if let Some(mut entry) = c.finish(recorder) {
            let semantic = c.store() == Store::Semantic;
            // A prefix is not rewritten by the requests it serves: it
            // keeps the whole base lifetime. Answers start a tier lower.
            let ttl_secs = match c.store() {
                Store::Prefix => self.config.cache_ttl_secs,
                Store::Exact | Store::Semantic => cache::tier_ttl(self.config.cache_ttl_secs, 0),
            };
            entry.expires = self.last_now / 1000 + ttl_secs;
            self.actions.push_back(Action::KvPut {
                key: c.key().to_owned(),
                value: entry.encode().into(),
                ttl_secs,
                scope: self.kv_scope.clone(),
                gate: Gate::Once,
            });
            if semantic {
                self.index_answer();
            }
        }
    }

    /// An answer read from the store is served: written back a tier up (or
    /// with its lifetime renewed) when [`Entry::promoted`] says so, under
    /// the key it was read from.
    pub(super) fn promote(&mut self, now: Millis, entry: &Entry) {
        let Some(c) = self.cache.as_deref() else {
            return;
        };
        let key = c.read_key().to_owned();
        let Some((entry, ttl_secs)) = entry.promoted(now / 1000, self.config.cache_ttl_secs) else {
            return;
        };
        self.actions.push_back(Action::KvPut {
            key,
            value: entry.encode().into(),
            ttl_secs,
            scope: self.kv_scope.clone(),
            gate: Gate::Once,
        });
    }

    /// Sends a prefetch's warming request, and marks its prefix as warmed.
    pub(super) fn warm(&mut self, now: Millis) {
        let Phase::PrefetchLookup { key, body } = std::mem::replace(&mut self.phase, Phase::Idle)
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
                scope: self.kv_scope.clone(),
                gate: Gate::Free,
            });
        }
        self.send_upstream(now, Call::post(endpoint.path(), body, false));
    }
}
