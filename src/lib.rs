//! tokenedge: an edge function that sits between mobile/web apps and an
//! OpenAI-compatible inference server, and re-streams generated tokens the
//! moment they are produced — sooner, smaller on the client's link, and
//! never silently cut.
//!
//! ```text
//! app ──HTTPS──▶ edge function ────────────────────────────────────▶ upstream replicas
//!                1 intake: route, auth, CORS, validate, size limits     (llama.cpp, vLLM,
//!                2 KV: exact cache? speculative prefix? client link      SGLang, TGI, …)
//!                3 route: pick a replica (prefix affinity, health),           │ SSE tokens
//!                  fall back before the first byte                            │
//!                4 parse upstream SSE (push parser)  ◀────────────────────────┘
//!                5 re-frame: OpenAI SSE field for field, or compact/ndjson/text
//!                6 pace flushes to the client's link; compress each flush
//!                  (gzip/deflate, one context, sync flush)
//!                7 store a completed answer (once)
//!      ◀─────────8 stream to the app, keep-alives, explicit errors
//! ```
//!
//! The crate is a sans-IO core ([`core`]) and two thin platform adapters:
//! Cloudflare Workers (feature `workers`, `wasm32-unknown-unknown`) and
//! Spin (feature `spin`, `wasm32-wasip2`). Both run the one driver loop
//! documented on [`core::session::Session`], shared in `adapters::pump`:
//! feed inputs with the current time, carry out each
//! [`core::session::Action`], wait for I/O or the next deadline. An
//! adapter only converts the platform's request and response and provides
//! its I/O (upstream fetch, timers, KV).
//!
//! What it does: the exact cache and speculative prefixes in the
//! platform's KV store, prefix warming (`/v1/prefetch`), replica routing
//! with fallback before the first byte, compression and coalescing adapted
//! to the client's link, keep-alives during long prefills.
//!
//! It also limits each API key's requests per minute and generations at
//! once, when the deployment asks.
//!
//! Streams are resumable: a client that drops reattaches and gets the rest,
//! each event once; a generation outlives its client for a grace period;
//! an upstream that fails mid-answer is continued on another replica, and
//! a generation that was lost is continued by its reader (see
//! `core::resume`). Where nothing can continue it, a broken stream ends
//! with an explicit error event, a broken passed-through body is cut. It
//! never reads a clock in the core, never forwards the client's
//! `Authorization` upstream, never stores a partial answer, and never ends
//! a broken stream as if it had completed.

#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_docs)]

pub mod core;

/// The platform adapters: conversions, and the I/O each runtime gives the
/// shared pump.
#[cfg(all(target_arch = "wasm32", any(feature = "workers", feature = "spin")))]
mod adapters {
    #[cfg(feature = "workers")]
    mod body;
    mod pump;
    #[cfg(feature = "workers")]
    mod quota_object;
    #[cfg(feature = "workers")]
    mod relay;
    #[cfg(feature = "workers")]
    mod socket;
    #[cfg(feature = "spin")]
    mod spin;
    #[cfg(feature = "workers")]
    mod stream_object;
    #[cfg(feature = "workers")]
    mod workers;
}
