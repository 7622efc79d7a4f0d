//! The session's deadlines in one table: each [`Timer`] is set, stopped or
//! expired by name, and [`Timers::next`] is what `poll_timeout` returns.
//! Times derived from configuration saturate instead of overflowing.

use crate::core::Millis;

/// A named deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// The per-key limits' store gives no answer in time: the request
    /// goes on without it.
    Admit,
    /// A KV lookup holding the request (exact cache, prefix, prefetch
    /// marker) gives up and goes on without it.
    Lookup,
    /// The upstream must send something by then: its first byte (or the
    /// health check's answer), then each next byte within the idle limit.
    Upstream,
    /// The next SSE keep-alive comment, on event streams.
    KeepAlive,
    /// The pacer releases the events it holds.
    Flush,
    /// A generating request writes its stream's record (see
    /// `crate::core::resume`).
    Checkpoint,
    /// A generating request looks for its stream's cancel mark.
    CancelPoll,
    /// A generation whose client left has waited long enough for a reader.
    Grace,
    /// A reader of a live stream reads its record again.
    Tail,
    /// A stream's upstream has had its window to keep up the minimum rate
    /// (`failover`).
    Stall,
    /// A streamed generation's client hears which stage it is in
    /// (`status`).
    Status,
}

impl Timer {
    const VALUES: [Timer; 11] = [
        Timer::Admit,
        Timer::Lookup,
        Timer::Upstream,
        Timer::KeepAlive,
        Timer::Flush,
        Timer::Checkpoint,
        Timer::CancelPoll,
        Timer::Grace,
        Timer::Tail,
        Timer::Stall,
        Timer::Status,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// When each timer fires, if it is set.
#[derive(Debug, Default)]
pub(super) struct Timers {
    at: [Option<Millis>; Timer::VALUES.len()],
}

impl Timers {
    /// Sets `timer` to fire `delay` after `now`.
    pub(super) fn set(&mut self, timer: Timer, now: Millis, delay: Millis) {
        self.at[timer.index()] = Some(now.saturating_add(delay));
    }

    /// Sets `timer` to `at`, or stops it (`None`).
    pub(super) fn set_at(&mut self, timer: Timer, at: Option<Millis>) {
        self.at[timer.index()] = at;
    }

    /// Moves a running `timer` to `delay` after `now`; a stopped one stays
    /// stopped.
    pub(super) fn push_back(&mut self, timer: Timer, now: Millis, delay: Millis) {
        if self.is_set(timer) {
            self.set(timer, now, delay);
        }
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.at[timer.index()] = None;
    }

    pub(super) fn stop_all(&mut self) {
        self.at = Default::default();
    }

    pub(super) fn is_set(&self, timer: Timer) -> bool {
        self.at[timer.index()].is_some()
    }

    /// Whether `timer` is set and its time has come.
    pub(super) fn expired(&self, timer: Timer, now: Millis) -> bool {
        self.at[timer.index()].is_some_and(|at| now >= at)
    }

    /// The earliest deadline of any timer.
    pub(super) fn next(&self) -> Option<Millis> {
        self.at.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Upstream, 10, 100);
        t.set(Timer::KeepAlive, 10, 50);
        assert_eq!(t.next(), Some(60));
        assert!(t.expired(Timer::KeepAlive, 60) && !t.expired(Timer::Upstream, 60));
        t.push_back(Timer::Lookup, 60, 1);
        assert!(!t.is_set(Timer::Lookup), "a stopped timer stays stopped");
        t.push_back(Timer::KeepAlive, 60, 50);
        assert_eq!(t.next(), Some(110));
        t.set(Timer::Flush, Millis::MAX, 5);
        assert_eq!(t.next(), Some(110), "saturates instead of wrapping");
        t.stop_all();
        assert_eq!(t.next(), None);
    }
}
