//! tokenedge: an edge function that sits between mobile/web apps and an
//! OpenAI-compatible inference server, and re-streams generated tokens the
//! moment they are produced.
//!
//! ```text
//! app ──HTTPS──▶ edge function ──────────────────────────────▶ upstream (llama.cpp,
//!                1 auth, CORS, validate, size limits              vLLM, SGLang, TGI, …)
//!                2 build the upstream request                          │ SSE tokens
//!                3 parse upstream SSE (push parser) ◀──────────────────┘
//!                4 re-frame: OpenAI SSE field for field, or compact/ndjson/text
//!                5 pace flushes to the client's link; compress each flush
//!                  (gzip/deflate, one context, sync flush)
//!      ◀─────────6 stream to the app, keep-alives, explicit errors
//! ```
//!
//! The crate is a sans-IO core ([`core`]) and thin platform adapters
//! (`adapters::workers` behind feature `workers` on `wasm32-unknown-unknown`).
//! An adapter's whole job is the loop documented on
//! [`core::session::Session`]: feed inputs with the current time, carry out
//! each [`core::session::Action`], wait for I/O or the next deadline.
//!
//! Streamed responses are compressed with gzip or deflate when the client
//! accepts it: one context per response, a sync flush at every flush point
//! so each token is decodable the moment it arrives. When to flush follows
//! the client's link ([`core::pacing`]): at once on a fast or unknown link,
//! fewer and fuller writes on a slow or busy one.
//!
//! What it does not do (yet): cache answers, route between replicas, resume
//! dropped streams, or retry. It never reads a
//! clock in the core, never forwards the client's `Authorization` upstream,
//! and never ends a broken stream as if it had completed.

#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_docs)]

pub mod core;

/// The platform adapters: conversions, and the I/O each runtime gives the
/// shared pump.
#[cfg(all(target_arch = "wasm32", any(feature = "workers", feature = "spin")))]
mod adapters {
    mod pump;
    #[cfg(feature = "spin")]
    mod spin;
    #[cfg(feature = "workers")]
    mod workers;
}
