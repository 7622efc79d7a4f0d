//! Identical cacheable requests that run at the same time each generate
//! the same answer, and each would write it under the same key. Workers KV
//! takes about one write per second per key (the rest fail), and the second
//! write only repeats the first; so an isolate or instance remembers the
//! keys it wrote lately and writes each once ([`WriteOnce`], kept by the
//! adapters for their life, like the replica health). Across isolates the
//! store's own rule decides, harmlessly.

use std::collections::VecDeque;

use crate::core::Millis;

/// How long a written key is remembered.
pub const WINDOW_MS: Millis = 60_000;

/// Most keys remembered (the oldest go first).
const MAX_KEYS: usize = 512;

/// The keys written lately, oldest first.
#[derive(Debug, Default, Clone)]
pub struct WriteOnce {
    written: VecDeque<(Millis, String)>,
}

impl WriteOnce {
    /// Whether a write of `key` at `now` is the first within
    /// [`WINDOW_MS`]; if so it is remembered.
    pub fn first(&mut self, key: &str, now: Millis) -> bool {
        while self
            .written
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) >= WINDOW_MS)
        {
            self.written.pop_front();
        }
        if self.written.iter().any(|(_, k)| k == key) {
            return false;
        }
        if self.written.len() == MAX_KEYS {
            self.written.pop_front();
        }
        self.written.push_back((now, key.to_owned()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_written_once_per_window() {
        let mut w = WriteOnce::default();
        assert!(w.first("a", 0));
        assert!(!w.first("a", 10));
        assert!(w.first("b", 10));
        assert!(!w.first("a", WINDOW_MS - 1));
        assert!(w.first("a", WINDOW_MS));
    }

    #[test]
    fn memory_is_bounded() {
        let mut w = WriteOnce::default();
        for i in 0..(MAX_KEYS + 10) {
            assert!(w.first(&i.to_string(), 0));
        }
        assert_eq!(w.written.len(), MAX_KEYS);
        // The oldest were forgotten, the newest are not.
        assert!(w.first("0", 1));
        assert!(!w.first(&(MAX_KEYS + 9).to_string(), 1));
    }
}
