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
#[derive(Debug, Clone)]
pub struct WriteOnce {
    written: VecDeque<(Millis, String)>,
    window: Millis,
}

impl Default for WriteOnce {
    fn default() -> Self {
        Self::with_window(WINDOW_MS)
    }
}

impl WriteOnce {
    /// Remembers each written key for `window` instead of [`WINDOW_MS`]
    /// (a second paces writes to Workers KV's limit per key).
    pub fn with_window(window: Millis) -> Self {
        Self {
            written: VecDeque::new(),
            window,
        }
    }

    /// Whether a write of `key` at `now` is the first within the window
    /// ([`WINDOW_MS`] by default); if so it is remembered.
    pub fn first(&mut self, key: &str, now: Millis) -> bool {
        let window = self.window;
        while self
            .written
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) >= window)
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
    fn a_paced_key_is_written_once_a_second() {
        let mut w = WriteOnce::with_window(1_000);
        assert!(w.first("a", 0));
        assert!(!w.first("a", 999));
        assert!(w.first("a", 1_000));
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
