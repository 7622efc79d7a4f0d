//! The session's own steps for the semantic cache
//! ([`crate::core::semantic`]): the embeddings call, the bucket reads, the
//! read of the matched answer, and what a completed answer writes.
//!
//! The request waits in `Phase::CacheLookup` through all three reads; the
//! lookup timer covers each in turn (the embeddings endpoint's own timeout,
//! then the KV lookup's). Any failure or timeout sends the request
//! upstream: before the vector came, nothing is stored (there is nothing
//! to index it by); after it, the answer is stored and added to the
//! buckets that were read.

use bytes::Bytes;
use serde_json::Value;

use crate::core::cache::{self, Entry};
use crate::core::semantic::Search;
use crate::core::Millis;

use super::action::{Action, Gate, KvRead, Purpose};
use super::lookup::Lookup;
use super::timers::Timer;
use super::{Phase, Session};

impl Session {
    /// Starts a semantic lookup: the question goes to the embeddings
    /// endpoint before anything else.
    pub(super) fn start_semantic(&mut self, now: Millis, mut lookup: Lookup, search: Search) {
        let request = search.embedding_request(&self.config.semantic);
        lookup.search = Some(Box::new(search));
        self.cache = Some(Box::new(lookup));
        self.phase = Phase::CacheLookup;
        let Some(request) = request else {
            // No endpoint (the plan needs one): as if it had failed.
            return self.cache_missed(now, false);
        };
        self.timers
            .set(Timer::Lookup, now, self.config.semantic.timeout_ms);
        self.actions.push_back(Action::Embed(request));
    }

    /// The embeddings endpoint answered (`Some` with a 2xx body) or not.
    pub(super) fn on_embedding(&mut self, now: Millis, answer: Option<&[u8]>) {
        let Some(search) = self.waiting_search() else {
            return;
        };
        if search.has_vector() {
            return;
        }
        let Some(keys) = answer.and_then(|a| search.embedded(a)) else {
            self.timers.stop(Timer::Lookup);
            return self.cache_missed(now, false);
        };
        self.timers
            .set(Timer::Lookup, now, cache::LOOKUP_TIMEOUT_MS);
        for (table, key) in keys.into_iter().enumerate() {
            self.actions.push_back(Action::KvGet {
                key,
                read: KvRead(Purpose::SemanticBucket(table as u8)),
            });
        }
    }

    /// A bucket of the index was read; once all are, the best match (if
    /// any) is read, or the request goes upstream.
    pub(super) fn on_bucket(&mut self, now: Millis, table: u8, value: Option<Bytes>) {
        let threshold = self.config.semantic.threshold;
        let Some(search) = self.waiting_search() else {
            return;
        };
        if !search.has_vector()
            || !search.bucket_read(usize::from(table), value.as_deref(), now / 1000)
        {
            return;
        }
        match search.choose(threshold).map(|f| f.key.clone()) {
            Some(key) => {
                self.timers
                    .set(Timer::Lookup, now, cache::LOOKUP_TIMEOUT_MS);
                self.actions.push_back(Action::KvGet {
                    key,
                    read: KvRead(Purpose::Cache),
                });
            }
            None => {
                self.timers.stop(Timer::Lookup);
                self.cache_missed(now, true);
            }
        }
    }

    /// The search while it still decides (no match chosen yet).
    fn waiting_search(&mut self) -> Option<&mut Search> {
        if !matches!(self.phase, Phase::CacheLookup) {
            return None;
        }
        let c = self.cache.as_deref_mut()?;
        if c.found().is_some() {
            return None;
        }
        c.search.as_deref_mut()
    }

    /// Whether the lookup under way may record its answer if it gives up
    /// now: a semantic one only once its question has a vector.
    pub(super) fn may_record(&self) -> bool {
        self.cache
            .as_deref()
            .and_then(|c| c.search.as_deref())
            .is_none_or(Search::has_vector)
    }

    /// A matched answer, marked as one in its usage: the stored figures,
    /// plus `tokenedge.upstream_completion_tokens: 0` (nothing was
    /// generated for this request).
    pub(super) fn mark_semantic(entry: &mut Entry) {
        if let Some(Value::Object(usage)) = entry.usage.as_mut() {
            usage.insert(
                "tokenedge".into(),
                serde_json::json!({"cache": "semantic", "upstream_completion_tokens": 0}),
            );
        }
    }

    /// The bucket writes that index a stored answer.
    pub(super) fn index_answer(&mut self) {
        let Some(search) = self.cache.as_deref().and_then(|c| c.search.as_deref()) else {
            return;
        };
        // Records outlive the answers they point at, whatever tier those
        // reach: a record whose answer expired reads as a miss.
        let ttl_secs = cache::tier_ttl(self.config.cache_ttl_secs, cache::TOP_TIER);
        for (key, value) in search.additions(self.last_now / 1000, ttl_secs) {
            self.actions.push_back(Action::KvPut {
                key,
                value: value.into(),
                ttl_secs,
                scope: self.kv_scope.clone(),
                gate: Gate::Paced,
            });
        }
    }
}
