//! What the session asks the adapter to do ([`Action`]), and the token a
//! KV read carries so its answer comes back to the right part
//! ([`KvRead`]).

use bytes::Bytes;

#[cfg(doc)]
use super::Session;
use crate::core::http::{ResponseHead, UpstreamRequest};
#[cfg(doc)]
use crate::core::keyspace::Keyspace;
#[cfg(doc)]
use crate::core::quota::Tally;
use crate::core::quota::{Ask, Lease};
#[cfg(doc)]
use crate::core::route::Health;
#[cfg(doc)]
use crate::core::write_once::WriteOnce;

/// What the adapter must do next. Every variant must be carried out in the
/// order returned, including after the client left: none may be dropped.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this request upstream. Report its response head with
    /// [`Session::handle_upstream_head`], each body chunk as it arrives with
    /// [`Session::handle_upstream_chunk`], its end with
    /// [`Session::handle_upstream_end`], or a connection or read failure with
    /// [`Session::handle_upstream_failed`].
    SendUpstream(UpstreamRequest),
    /// Send this request to the semantic cache's embeddings endpoint and
    /// report its status and whole body (read up to 256 KiB) with
    /// [`Session::handle_embedding`], or a failure (unreachable, a body
    /// past that size) with [`Session::handle_embedding_failed`]. Nothing
    /// waits for it past its timeout: a late answer is ignored.
    Embed(UpstreamRequest),
    /// Read the request body, at most `limit` bytes, and report it with
    /// [`Session::handle_request_body`] — or, as soon as it passes the
    /// limit, stop reading and report [`Session::handle_request_body_too_large`];
    /// a read failure is [`Session::handle_request_body_failed`]. Asked for
    /// only once the route, the key and the declared length passed.
    ReadBody {
        /// Most bytes to read.
        limit: usize,
    },
    /// Count this request against its key's limits: in the deployment's
    /// store, read the key's [`Tally`], call [`Tally::admit`] with the
    /// store's clock, write it back, and report the verdict with
    /// [`Session::handle_admission`] (a store that cannot be asked reports
    /// `Verdict::Unknown`). The session waits for it, briefly.
    Admit {
        /// The record's key (it names no API key: a hash of it).
        key: String,
        /// What the request asks.
        ask: Ask,
    },
    /// Return a generation's lease to its key's record ([`Tally::release`]),
    /// in the background. Carried out after the client left too.
    Release {
        /// The record's key.
        key: String,
        /// The lease the admission gave.
        lease: Lease,
    },
    /// Abort the upstream request and stop reading its body: its answer is
    /// no longer needed. Touches nothing else (KV reads under way go on).
    CancelUpstream,
    /// Send this complete response.
    Respond(ResponseHead, Bytes),
    /// Start a streamed response with this head; chunks follow.
    RespondHead(ResponseHead),
    /// Write these bytes to the client now, without buffering.
    RespondChunk(Bytes),
    /// End the streamed response.
    RespondEnd,
    /// End the streamed response as broken: stop it without its clean end
    /// (an HTTP/1.1 chunked body without its last chunk, an HTTP/2 reset),
    /// so the client sees an error, never a complete answer. Sent when a
    /// body passed through as the upstream wrote it (a `stream: false`
    /// answer, `/v1/models`) is cut: its bytes have no room for an error.
    RespondAbort,
    /// Read this key from the KV store and report the value (or its
    /// absence, or a failure, as `None`) with [`Session::handle_kv_value`],
    /// handing back `read`. Nothing waits for it: an answer that comes late
    /// is ignored.
    KvGet {
        /// The key to read.
        key: String,
        /// What the read is for; hand it back with the answer.
        read: KvRead,
    },
    /// Write this value with this time-to-live, in the background. A
    /// failure is ignored. A store without expiry of its own also records
    /// the key in `scope`'s [`Keyspace`] and deletes what that returns.
    KvPut {
        /// The key to write.
        key: String,
        /// The value.
        value: Bytes,
        /// Seconds until the store may forget it.
        ttl_secs: u64,
        /// Whose write this is ([`keyspace`](crate::core::keyspace)): a
        /// hash of the caller's API key.
        scope: String,
        /// How often the deployment writes `key` ([`Gate`]).
        gate: Gate,
    },
    /// Delete this key, in the background. A failure is ignored.
    KvDelete {
        /// The key to delete.
        key: String,
    },
    /// Record in the deployment's replica health (the [`Health`] the
    /// adapter keeps across requests) that this replica answered (`up`) or
    /// failed.
    ReplicaHealth {
        /// The replica's base URL, as configured.
        replica: String,
        /// Whether it answered.
        up: bool,
    },
    /// Record in the deployment's health (the same [`Health`]) the result
    /// of a `/healthz` probe of the upstream; `/healthz` answers from it
    /// for a few seconds instead of probing again.
    HealthProbe {
        /// Whether the upstream answered 2xx.
        ok: bool,
    },
}

/// How often the deployment (an isolate or instance) writes one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Every time it is asked.
    Free,
    /// A stored answer: only if the deployment's [`WriteOnce`] says it is
    /// the first write of the key lately (identical requests that ran
    /// together write it once).
    Once,
    /// A value rewritten by many requests (a semantic-cache bucket): at
    /// most once a second, Workers KV's limit per key; a write that comes
    /// sooner is dropped.
    Paced,
}

/// What a KV read is for, recorded when the session asked for it; the
/// adapter hands it back with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvRead(pub(super) Purpose);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// This client's remembered link.
    Link,
    /// The exact cache entry or stored prefix.
    Cache,
    /// A prefetch's debounce marker.
    PrefetchMarker,
    /// A stream's record, for a reader or a cancel.
    Stream,
    /// A generating request's cancel mark.
    CancelMark,
    /// Whether a reader came back to a generation whose client left.
    ReaderMark,
    /// The request of a stream whose generation was lost, for a reader
    /// that takes it over.
    StreamRequest,
    /// One table's bucket of the semantic index.
    SemanticBucket(u8),
}
