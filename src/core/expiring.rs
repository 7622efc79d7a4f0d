//! A stored value with its expiry in front, for stores that keep values
//! until they are deleted (Spin's key-value store, a Durable Object's
//! storage): 8 bytes of expiry time (milliseconds on the adapter's clock,
//! big-endian), then the value. An expired or damaged value reads as
//! absent.
// Only the adapters store values this way.
#![cfg_attr(not(any(feature = "workers", feature = "spin")), allow(dead_code))]

use crate::core::Millis;

/// Bytes of expiry time in front of every stored value.
const LEN: usize = 8;

/// When a value written at `now` to last `ttl_secs` expires.
/// How late a store's sweep of an expired value may come (Spin's keyspace
/// index, a Durable Object's alarm): when a value is written again, its
/// sweep moves this far past the new expiry, so a value rewritten at every
/// checkpoint moves it about once a minute instead of at every write.
pub(crate) const SWEEP_SLACK_MS: Millis = 60_000;

/// When to sweep a value written again to expire at `expiry`, its sweep
/// being set for `set`: `None` while that comes late enough.
pub(crate) fn later_sweep(set: Millis, expiry: Millis) -> Option<Millis> {
    (set < expiry).then(|| expiry.saturating_add(SWEEP_SLACK_MS))
}

pub(crate) fn after(now: Millis, ttl_secs: u64) -> Millis {
    now.saturating_add(ttl_secs.saturating_mul(1000))
}

/// `value` as stored to expire at `expiry`.
pub(crate) fn stored(value: &[u8], expiry: Millis) -> Vec<u8> {
    let mut stored = Vec::with_capacity(LEN + value.len());
    stored.extend_from_slice(&expiry.to_be_bytes());
    stored.extend_from_slice(value);
    stored
}

/// A stored value without its expiry, unless it has expired at `now`.
pub(crate) fn unexpired(stored: &[u8], now: Millis) -> Option<&[u8]> {
    let (expiry, value) = stored.split_at_checked(LEN)?;
    let expiry = Millis::from_be_bytes(expiry.try_into().ok()?);
    (expiry > now).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_reads_until_it_expires() {
        let s = stored(b"abc", after(1_000, 2));
        assert_eq!(unexpired(&s, 2_999), Some(&b"abc"[..]));
        assert_eq!(unexpired(&s, 3_000), None);
        assert_eq!(unexpired(&stored(b"", Millis::MAX), 0), Some(&b""[..]));
        assert_eq!(unexpired(b"short", 0), None, "damaged");
    }
}
