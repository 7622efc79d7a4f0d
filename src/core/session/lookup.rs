//! The caches' part in one request — the exact cache, a speculative
//! prefix or the semantic cache, never two — as a state machine: reading
//! the key while the upstream request waits, then either answered (or opened) from what was
//! stored, or gone upstream and recording the answer to store it once, or
//! gone upstream with nothing to store. The KV reads and writes themselves
//! are the session's actions.

use bytes::Bytes;

use crate::core::cache::{self, Entry, Recorder};
use crate::core::openai::{CompletionRequest, Endpoint};
use crate::core::semantic::{Found, Search};
use crate::core::Millis;

/// Which store the request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Store {
    /// The exact cache ([`crate::core::cache`]).
    Exact,
    /// A speculative prefix ([`crate::core::prefix`]).
    Prefix,
    /// The semantic cache ([`crate::core::semantic`]): its search rides
    /// along in [`Lookup::search`].
    Semantic,
}

#[derive(Debug)]
enum State {
    /// The key is being read; the upstream request waits for the answer.
    Reading {
        /// The upstream body, sent if the read finds nothing usable.
        upstream_body: Bytes,
        /// The parsed request, to ask for a continuation on a prefix (or
        /// semantic opening) hit.
        request: Option<CompletionRequest>,
    },
    /// Gone upstream after a miss (or without reading, for `no-cache`):
    /// the answer is recorded on its way through and stored once.
    Recording {
        /// Records a streamed answer; handed to the re-streamer.
        recorder: Option<Recorder>,
        /// A complete (`stream: false`) answer, up to the entry limit.
        body: Vec<u8>,
    },
    /// Gone upstream, storing nothing: the answer was stored already or
    /// outgrew the entry limit, or the stored prefix was too short to use
    /// (and is not to be replaced).
    NotStoring,
    /// Answered from the store (exact) or opened from it (prefix).
    Hit,
}

#[derive(Debug)]
pub(super) struct Lookup {
    store: Store,
    key: String,
    endpoint: Endpoint,
    stream: bool,
    started: Millis,
    /// How long the read took, once it answered (or gave up).
    took: Option<Millis>,
    state: State,
    /// The semantic cache's search (its match, whether a match only opens
    /// the answer), for [`Store::Semantic`].
    pub(super) search: Option<Box<Search>>,
}

impl Lookup {
    /// A request that uses `store` under `key`. With `read`, the key is
    /// read first and `upstream_body` waits for the answer; otherwise the
    /// request goes upstream at once and only its answer is stored.
    pub(super) fn new(
        store: Store,
        key: String,
        request: CompletionRequest,
        upstream_body: Bytes,
        read: bool,
        now: Millis,
        prefix_tokens: usize,
    ) -> Self {
        let (endpoint, stream) = (request.endpoint, request.stream);
        let state = if read {
            State::Reading {
                upstream_body,
                request: matches!(store, Store::Prefix | Store::Semantic).then_some(request),
            }
        } else {
            Self::recording(store, endpoint, now, prefix_tokens)
        };
        Self {
            store,
            key,
            endpoint,
            stream,
            started: now,
            took: None,
            state,
            search: None,
        }
    }

    /// Recording an answer to a request that came at `received`.
    fn recording(
        store: Store,
        endpoint: Endpoint,
        received: Millis,
        prefix_tokens: usize,
    ) -> State {
        let mut recorder = Recorder::new(received / 1000);
        if endpoint == Endpoint::Responses {
            recorder = recorder.responses();
        }
        State::Recording {
            recorder: Some(match store {
                Store::Exact | Store::Semantic => recorder,
                Store::Prefix => recorder.keep_pieces(prefix_tokens),
            }),
            body: Vec::new(),
        }
    }

    pub(super) fn store(&self) -> Store {
        self.store
    }

    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// The semantic match, once one was chosen.
    pub(super) fn found(&self) -> Option<&Found> {
        self.search.as_deref().and_then(Search::found)
    }

    /// The key the answer being served was read from: the semantic match's,
    /// or this request's own.
    pub(super) fn read_key(&self) -> &str {
        self.found().map_or(self.key.as_str(), |f| f.key.as_str())
    }

    /// A semantic match only opens the answer, which the upstream
    /// continues (`X-Tokenedge-Cache: semantic-prefix`).
    pub(super) fn opening(&self) -> bool {
        self.search.as_deref().is_some_and(Search::opening)
    }

    pub(super) fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    pub(super) fn stream(&self) -> bool {
        self.stream
    }

    /// The read found nothing usable (or gave up): returns the upstream
    /// body to send now. `record` is false when what was found must not be
    /// replaced.
    pub(super) fn missed(&mut self, now: Millis, record: bool, prefix_tokens: usize) -> Bytes {
        let State::Reading { upstream_body, .. } =
            std::mem::replace(&mut self.state, State::NotStoring)
        else {
            return Bytes::new();
        };
        self.took = Some(now.saturating_sub(self.started));
        if record {
            self.state = Self::recording(self.store, self.endpoint, self.started, prefix_tokens);
        }
        upstream_body
    }

    /// The parsed request, while a prefix's read is under way.
    pub(super) fn request(&self) -> Option<&CompletionRequest> {
        match &self.state {
            State::Reading { request, .. } => request.as_ref(),
            _ => None,
        }
    }

    /// The read found a usable entry: returns the parsed request (kept for
    /// a prefix, to ask for its continuation).
    pub(super) fn hit(&mut self, now: Millis) -> Option<CompletionRequest> {
        let State::Reading { request, .. } = std::mem::replace(&mut self.state, State::Hit) else {
            return None;
        };
        self.took = Some(now.saturating_sub(self.started));
        request
    }

    pub(super) fn is_hit(&self) -> bool {
        matches!(self.state, State::Hit)
    }

    /// The recorder for a streamed answer, while one is wanted.
    pub(super) fn take_recorder(&mut self) -> Option<Recorder> {
        match &mut self.state {
            State::Recording { recorder, .. } => recorder.take(),
            _ => None,
        }
    }

    /// Keeps a copy of a complete (`stream: false`) answer as it passes.
    pub(super) fn record(&mut self, chunk: &[u8]) {
        let State::Recording { body, .. } = &mut self.state else {
            return;
        };
        if body.len().saturating_add(chunk.len()) <= cache::MAX_ENTRY_BYTES {
            body.extend_from_slice(chunk);
        } else {
            self.state = State::NotStoring;
        }
    }

    /// The answer completed upstream: the entry to store (once) under
    /// [`Lookup::key`], given the re-streamer's recorder for a stream.
    pub(super) fn finish(&mut self, recorder: Option<Recorder>) -> Option<Entry> {
        let State::Recording { body, .. } = std::mem::replace(&mut self.state, State::NotStoring)
        else {
            return None;
        };
        match (self.stream, self.store) {
            (true, Store::Exact | Store::Semantic) => recorder.and_then(Recorder::finish),
            (true, Store::Prefix) => recorder
                .and_then(Recorder::finish)
                .filter(|e| !e.pieces.is_empty())
                .map(|e| Entry { usage: None, ..e }),
            (false, _) => Entry::from_json(self.endpoint, &body, self.started / 1000),
        }
    }

    /// `X-Cache`: `hit`, `prefix`, `semantic`, `semantic-prefix` or `miss`.
    pub(super) fn x_cache(&self) -> &'static str {
        match (self.is_hit(), self.store) {
            (true, Store::Prefix) => "prefix",
            (true, Store::Exact) => "hit",
            (true, Store::Semantic) if self.opening() => "semantic-prefix",
            (true, Store::Semantic) => "semantic",
            (false, _) => "miss",
        }
    }

    /// The `Server-Timing` entry: the lookup was all there was on a hit;
    /// on a miss it comes after the edge and upstream entries. A semantic
    /// hit adds the matched question's similarity (`similarity;desc=0.953`).
    pub(super) fn timing(&self) -> Option<String> {
        let ms = self.took?;
        let desc = self.x_cache();
        match (self.found(), self.is_hit()) {
            (Some(found), true) => Some(format!(
                "cache;desc={desc};dur={ms}, similarity;desc={:.3}",
                found.similarity
            )),
            _ => Some(format!("cache;desc={desc};dur={ms}")),
        }
    }
}
