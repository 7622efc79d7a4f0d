//! The session's own steps for a request whose head passed and whose body
//! came: a prefetch (answered at once, warmed in the background) or a
//! generation (its format, its replicas, and whether the caches are asked
//! before the upstream).

use bytes::Bytes;

use crate::core::cache;
use crate::core::format::Format;
use crate::core::openai::{self, CompletionRequest, Endpoint};
use crate::core::prefetch;
use crate::core::prefix;
use crate::core::route;
use crate::core::semantic::{self, Search};
use crate::core::Millis;

use super::action::{Action, KvRead, Purpose};
use super::intake::{Intake, Route};
use super::lookup::{Lookup, Store};
use super::response::Meta;
use super::timers::Timer;
use super::upstream::Call;
use super::{Phase, Session};

/// Which cache a generation asks before the upstream.
enum Planned {
    /// The semantic cache: its key comes with its search.
    Semantic(semantic::Plan),
    /// The exact cache or a prefix, under this key; read first or not.
    Keyed(Store, String, bool),
}

impl Session {
    /// Answers a prefetch at once, then looks up its debounce marker.
    pub(super) fn prefetch(
        &mut self,
        now: Millis,
        intake: &Intake,
        endpoint: Endpoint,
        body: &[u8],
    ) {
        let request = match intake.parse_body(&self.config, endpoint, body) {
            Ok(r) => r,
            Err(e) => return self.fail(e),
        };
        if let Err(e) = prefetch::check(&request) {
            return self.fail(e);
        }
        self.route = Some(Route::Prefetch { endpoint });
        self.upstream
            .pick(&self.config, &route::affinity(endpoint, &request.body), now);
        let key = prefetch::key(&request);
        self.phase = Phase::PrefetchLookup {
            key: key.clone(),
            body: prefetch::warm_body(&request, self.config.dialect).into(),
        };
        self.timers
            .set(Timer::Lookup, now, cache::LOOKUP_TIMEOUT_MS);
        // Answered at once; the rest happens in the background.
        let accepted = serde_json::json!({"object": "prefetch", "status": "accepted"});
        self.response
            .json(&mut self.actions, 202, &accepted, Meta::default());
        self.actions.push_back(Action::KvGet {
            key,
            read: KvRead(Purpose::PrefetchMarker),
        });
    }

    /// A generation request: its format, its replicas, and whether the
    /// caches are asked before the upstream.
    pub(super) fn generate(
        &mut self,
        now: Millis,
        mut intake: Intake,
        endpoint: Endpoint,
        body: &[u8],
    ) {
        let request = match intake.parse_body(&self.config, endpoint, body) {
            Ok(r) => r,
            Err(e) => return self.fail(e),
        };
        let stream = request.stream;
        if stream {
            let format = std::mem::replace(&mut intake.format, Ok(Format::OpenAi))
                .and_then(|f| f.check_request(&request.body).map(|()| f));
            match format {
                Ok(f) => self.response.set_stream(
                    f,
                    intake.flush_rule,
                    u32::try_from(openai::choices(&request.body)).unwrap_or(u32::MAX),
                    intake.link,
                    intake.link_key.take(),
                ),
                Err(e) => return self.fail(e),
            }
            self.start_status();
            self.start_log(now, &intake, endpoint);
            self.keep_request(&request);
            self.allow_failover(&request);
        }
        self.route = Some(Route::Generate { endpoint, stream });
        self.upstream
            .pick(&self.config, &route::affinity(endpoint, &request.body), now);
        let body: Bytes = request.upstream_body(self.config.dialect).into();
        match self.plan_lookup(&intake, &request) {
            None => self.send_upstream(now, Call::post(endpoint.path(), body, stream)),
            Some(Planned::Semantic(plan)) => {
                let search = Search::new(plan);
                let key = search.answer_key();
                let tokens = self.config.prefix_tokens;
                let lookup = Lookup::new(Store::Semantic, key, request, body, true, now, tokens);
                self.start_semantic(now, lookup, search);
            }
            Some(Planned::Keyed(store, key, read)) => {
                let tokens = self.config.prefix_tokens;
                let lookup = Lookup::new(store, key, request, body.clone(), read, now, tokens);
                if read {
                    self.phase = Phase::CacheLookup;
                    self.timers
                        .set(Timer::Lookup, now, cache::LOOKUP_TIMEOUT_MS);
                    self.actions.push_back(Action::KvGet {
                        key: lookup.key().to_owned(),
                        read: KvRead(Purpose::Cache),
                    });
                    self.cache = Some(Box::new(lookup));
                } else {
                    self.cache = Some(Box::new(lookup));
                    self.send_upstream(now, Call::post(endpoint.path(), body, stream));
                }
            }
        }
        if stream && (self.response.format().is_event_stream() || self.told.is_some()) {
            let interval = self.config.keepalive_interval_ms;
            self.timers.set(Timer::KeepAlive, now, interval);
        }
        if let Some(key) = self.response.link_key() {
            let key = key.to_owned();
            self.actions.push_back(Action::KvGet {
                key,
                read: KvRead(Purpose::Link),
            });
        }
    }

    /// Which store this request uses, under which key, and whether the key
    /// is read first: the semantic cache when the request may use it, else
    /// the exact cache when the request is deterministic, else a
    /// speculative prefix when it may have one.
    fn plan_lookup(&self, intake: &Intake, request: &CompletionRequest) -> Option<Planned> {
        if self.config.cache_ttl_secs == 0 {
            return None;
        }
        let scope = intake.scope(&self.config);
        let asked = intake.semantic_asked;
        let semantic = &self.config.semantic;
        // A match used as an opening needs an upstream that continues it.
        if let Some(plan) = semantic::plan(semantic, asked, intake.directives, request, scope)
            .filter(|p| !p.opening || prefix::continues(request, &self.config))
        {
            return Some(Planned::Semantic(plan));
        }
        if let Some(plan) = cache::plan(intake.directives, request, scope) {
            return Some(Planned::Keyed(Store::Exact, plan.key, plan.read));
        }
        prefix::plan(
            intake.directives,
            intake.prefix_asked,
            request,
            &self.config,
            scope,
        )
        .map(|key| Planned::Keyed(Store::Prefix, key, true))
    }
}
