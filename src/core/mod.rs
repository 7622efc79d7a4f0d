//! The sans-IO core: everything that decides anything. No `async`, no
//! platform crate, no clock reads, no network. Adapters feed it inputs with
//! the current time and carry out the actions it returns.

pub(crate) mod access;
pub mod cache;
pub(crate) mod checksum;
pub(crate) mod compress;
pub mod config;
pub(crate) mod deflate;
pub(crate) mod encoding;
pub(crate) mod error;
pub(crate) mod expiring;
pub mod format;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod keyspace;
pub(crate) mod link;
pub(crate) mod openai;
pub mod pacing;
pub(crate) mod page;
pub(crate) mod prefetch;
pub(crate) mod prefix;
pub mod quota;
pub mod restream;
pub(crate) mod resume;
pub mod route;
pub mod semantic;
pub mod session;
pub mod socket;
pub mod sse;
pub(crate) mod status;
pub mod write_once;

/// Milliseconds on the adapter's clock (e.g. `Date.now()` on Workers). Only
/// differences matter; the core never reads a clock itself.
pub type Millis = u64;

/// Lower-case hex of `bytes` (KV keys and ids).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
