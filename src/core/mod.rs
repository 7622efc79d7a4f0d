//! The sans-IO core: everything that decides anything. No `async`, no
//! platform crate, no clock reads, no network. Adapters feed it inputs with
//! the current time and carry out the actions it returns.

pub mod access;
pub mod cache;
pub mod compress;
pub mod config;
pub mod deflate;
pub mod encoding;
pub mod error;
pub mod format;
pub mod http;
pub mod link;
pub mod openai;
pub mod pacing;
pub mod prefetch;
pub mod prefix;
pub mod restream;
pub mod route;
pub mod session;
pub mod sse;

/// Milliseconds on the adapter's clock (e.g. `Date.now()` on Workers). Only
/// differences matter; the core never reads a clock itself.
pub type Millis = u64;

/// Lower-case hex of `bytes` (KV keys and ids).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
