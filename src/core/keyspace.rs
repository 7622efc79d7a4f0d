//! What one scope (an API key, hashed) has written to a store that has no
//! expiry of its own (Spin's), so that the store cannot grow without bound:
//! the keys written and when each expires, kept under [`index_key`].
//!
//! On each write the adapter reads the scope's [`Keyspace`], calls
//! [`Keyspace::record`], deletes the keys it returns (expired ones, and the
//! soonest to expire past [`MAX_KEYS_PER_SCOPE`]) and writes it back. One
//! key holder can then keep at most that many values alive, whatever it
//! sends; values nobody reads again are swept by the next write of their
//! scope. Concurrent writes of one scope may each miss the other's key (no
//! atomic update in the store); such a value is still deleted when it is
//! next read after its expiry.
//!
//! Workers KV expires values itself and needs none of this.

use crate::core::Millis;

/// Most values one scope keeps in a store without expiry.
pub const MAX_KEYS_PER_SCOPE: usize = 2048;

/// The scope of a caller's writes: a hash of its API key (`None`: the
/// keyless callers of an `AUTH=off` deployment, who share one).
pub(crate) fn scope_of(api_key: Option<&str>) -> String {
    let hash = crate::core::cache::scoped_hash(Some(api_key.unwrap_or("")));
    crate::core::hex(&sha2::Digest::finalize(hash)[..16])
}

/// The KV key of a scope's index. An index never expires (it must outlive
/// what it lists, to sweep it); there is one per API key, so they are few.
pub fn index_key(scope: &str) -> String {
    format!("keys:v1:{scope}")
}

/// The keys one scope wrote, each with its expiry (ms on the adapter's
/// clock), soonest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keyspace {
    entries: Vec<(Millis, String)>,
}

impl Keyspace {
    /// Reads a stored index; lines that do not parse are dropped (their
    /// values then expire unswept, or are deleted when read).
    pub fn decode(bytes: &[u8]) -> Self {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let mut entries: Vec<(Millis, String)> = text
            .lines()
            .filter_map(|line| {
                let (expiry, key) = line.split_once(' ')?;
                let ok = !key.is_empty() && !key.contains([' ', '\n', '\r']);
                Some((expiry.parse().ok()?, key.to_owned())).filter(|_| ok)
            })
            .collect();
        entries.sort();
        entries.dedup_by(|a, b| a.1 == b.1);
        entries.truncate(MAX_KEYS_PER_SCOPE);
        Self { entries }
    }

    /// The index as stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for (expiry, key) in &self.entries {
            out.push_str(&expiry.to_string());
            out.push(' ');
            out.push_str(key);
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Keys listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that `key` is written now, to expire at `expiry`; returns
    /// the keys to delete from the store: every listed key expired by
    /// `now`, then the soonest to expire while more than
    /// [`MAX_KEYS_PER_SCOPE`] are listed. Never returns `key` itself.
    pub fn record(&mut self, key: &str, expiry: Millis, now: Millis) -> Vec<String> {
        self.entries.retain(|(_, k)| k != key);
        let mut gone = Vec::new();
        self.entries.retain(|(e, k)| {
            let alive = *e > now;
            if !alive {
                gone.push(k.clone());
            }
            alive
        });
        let at = self.entries.partition_point(|(e, _)| *e <= expiry);
        self.entries.insert(at, (expiry, key.to_owned()));
        while self.entries.len() > MAX_KEYS_PER_SCOPE {
            let i = usize::from(self.entries[0].1 == key);
            gone.push(self.entries.remove(i).1);
        }
        gone
    }
}

/// Most keys [`Listed`] remembers; past that it forgets them all (their
/// next writes list them again).
const MAX_LISTED: usize = 256;

/// The keys one instance has listed in their scope's index, and until
/// when: a write of a key listed past the new value's expiry needs no index
/// read or write. A key's first listing is at its value's expiry (so a
/// value written once is swept as soon as it expires); a key written again
/// is listed `expiring::SWEEP_SLACK_MS` past its expiry, and swept at
/// most that late.
#[derive(Debug, Default)]
pub struct Listed {
    keys: std::collections::HashMap<String, Millis>,
}

impl Listed {
    /// The expiry to list `key` under, now written to expire at `expiry`;
    /// `None` when its index entry already outlasts the value.
    pub fn listing(&self, key: &str, expiry: Millis) -> Option<Millis> {
        match self.keys.get(key) {
            Some(&listed) => crate::core::expiring::later_sweep(listed, expiry),
            None => Some(expiry),
        }
    }

    /// The index now lists `key` until `until`.
    pub fn listed(&mut self, key: &str, until: Millis) {
        if self.keys.len() >= MAX_LISTED && !self.keys.contains_key(key) {
            self.keys.clear();
        }
        self.keys.insert(key.to_owned(), until);
    }

    /// `key` was deleted: its next write lists it afresh.
    pub fn forget(&mut self, key: &str) {
        self.keys.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_written_again_is_listed_a_minute_ahead_and_then_not_at_every_write() {
        use crate::core::expiring::SWEEP_SLACK_MS;
        let mut l = Listed::default();
        // First write: listed at its expiry, exactly.
        assert_eq!(l.listing("rec", 1_000), Some(1_000));
        l.listed("rec", 1_000);
        // The same expiry or an earlier one: nothing to list.
        assert_eq!(l.listing("rec", 1_000), None);
        // Written again to expire later: listed with the slack.
        assert_eq!(l.listing("rec", 1_100), Some(1_100 + SWEEP_SLACK_MS));
        l.listed("rec", 1_100 + SWEEP_SLACK_MS);
        // Every checkpoint within the slack: no index write.
        for t in (1_200..1_100 + SWEEP_SLACK_MS).step_by(100) {
            assert_eq!(l.listing("rec", t), None, "at {t}");
        }
        assert!(l.listing("rec", 1_200 + SWEEP_SLACK_MS).is_some());
        // Another key, and a deleted one, are listed at their expiry.
        assert_eq!(l.listing("other", 500), Some(500));
        l.forget("rec");
        assert_eq!(l.listing("rec", 2_000), Some(2_000));
    }

    #[test]
    fn listed_keys_are_bounded() {
        let mut l = Listed::default();
        for i in 0..MAX_LISTED + 10 {
            l.listed(&format!("k{i}"), 1_000);
        }
        assert!(l.keys.len() <= MAX_LISTED);
        // A forgotten key is listed afresh, never skipped.
        assert_eq!(l.listing("k0", 900), Some(900));
    }

    #[test]
    fn expired_keys_are_swept_by_the_next_write() {
        let mut k = Keyspace::default();
        assert!(k.record("a", 100, 0).is_empty());
        assert!(k.record("b", 300, 0).is_empty());
        assert_eq!(k.record("c", 500, 200), vec!["a".to_owned()]);
        assert_eq!(k.len(), 2);
        assert_eq!(Keyspace::decode(&k.encode()), k);
    }

    #[test]
    fn a_scope_keeps_at_most_the_cap_and_loses_the_soonest_to_expire() {
        let mut k = Keyspace::default();
        let mut deleted = Vec::new();
        for i in 0..(MAX_KEYS_PER_SCOPE as u64 + 10) {
            deleted.extend(k.record(&format!("k{i}"), 1_000 + i, 0));
        }
        assert_eq!(k.len(), MAX_KEYS_PER_SCOPE);
        let first: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        assert_eq!(deleted, first);
        // A rewrite of a listed key is not a new key.
        assert!(k.record("k20", 9_999, 0).is_empty());
        assert_eq!(k.len(), MAX_KEYS_PER_SCOPE);
    }

    #[test]
    fn the_key_written_is_never_deleted_even_when_it_expires_first() {
        let mut k = Keyspace::default();
        for i in 0..MAX_KEYS_PER_SCOPE as u64 {
            k.record(&format!("k{i}"), 10_000, 0);
        }
        let gone = k.record("short", 5, 0);
        assert_eq!(gone.len(), 1);
        assert_ne!(gone[0], "short");
    }

    #[test]
    fn damaged_lines_are_dropped() {
        let k = Keyspace::decode(b"12 a\nx b\n\n7 \n5 c\n5 c\n");
        assert_eq!(k.encode(), b"5 c\n12 a\n");
    }
}
