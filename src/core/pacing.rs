//! The adaptive flush policy: when the events queued for the client are
//! compressed and written, and at what level.
//!
//! Every flush costs framing on the wire (TCP/IP, TLS record, HTTP/2 frame,
//! and the 5-byte sync marker: ≈ 95 B) on top of its compressed payload
//! (≈ 12 B per token event). On a fast link that is nothing, so every event
//! is flushed the moment it exists. On a slow link, flushing while the
//! link is still busy with the previous flush gains no time (the bytes
//! would only queue in the network) but costs framing; so the pacer keeps a
//! model of the link — when it will have sent what we gave it, from the
//! estimated bandwidth — and holds events until then, sending everything
//! that piled up in one flush. The queue therefore never grows beyond what
//! the link can carry in one flush time, and coalesced flushes make the
//! per-token cost fall as the link gets slower.
//!
//! On a link known to be slow (below [`SLOW_LINK_KBPS`]) bytes cost radio
//! time and money, so events are also gathered for [`SLOW_LINK_WINDOW_MS`]
//! even when the link is idle: a fixed, small lag for about half the bytes.
//!
//! Bounds: an event is never held longer than [`MAX_HOLD_MS`]. With
//! `Save-Data: on` events are gathered for at least [`SAVE_DATA_WINDOW_MS`].
//! Without any bandwidth figure nothing is held unless the platform has
//! not taken the previous bytes yet (`Pacer::drained`): more than the
//! in-flight limit undrained means the link is the bottleneck.

use bytes::BytesMut;

use crate::core::compress::DEFAULT_LEVEL;
use crate::core::link::{LinkEstimate, Source};
use crate::core::Millis;

/// Wire bytes per flush besides the payload: TCP/IP (40–60), TLS record
/// (~22), HTTP/2 frame header (9), sync-flush marker (5).
pub const FLUSH_OVERHEAD: u64 = 90;
/// The longest an event may wait for a flush.
pub const MAX_HOLD_MS: Millis = 250;
/// The gathering window with `Save-Data: on`.
pub const SAVE_DATA_WINDOW_MS: Millis = 200;
/// Below this bandwidth (kbit/s) the link, not the CPU, is what to save:
/// events are gathered for [`SLOW_LINK_WINDOW_MS`] and compressed harder.
pub const SLOW_LINK_KBPS: u32 = 2_000;
/// The display lag spent on fewer, fuller flushes on a slow link: at
/// 50 tok/s about 2.5 tokens per flush, which halves the per-token framing.
pub const SLOW_LINK_WINDOW_MS: Millis = 50;
/// Level used when bytes matter more than CPU.
pub const THOROUGH_LEVEL: u32 = 9;
/// Undrained bytes that mean "the link is behind" when nothing else is
/// known. At least one bandwidth-delay product is allowed in flight.
pub const MIN_IN_FLIGHT: usize = 16 * 1024;
/// Undrained bytes sampled over at least this long give a drain-rate figure.
const DRAIN_SAMPLE_MIN_BYTES: usize = 4 * 1024;
/// The least a drain must carry to say how fast the link took data (a
/// lower bound on its bandwidth, whatever the drain's length).
const RATE_SAMPLE_MIN_BYTES: usize = 1024;
const DRAIN_SAMPLE_MIN_MS: Millis = 20;

/// The request header that overrides the policy (for benchmarks and
/// debugging): `event` flushes every event, a number N flushes every N
/// events (held at most [`MAX_HOLD_MS`]), `adaptive` is the default.
pub(crate) const FLUSH_HEADER: &str = "x-tokenedge-flush";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Rule {
    #[default]
    Adaptive,
    EveryEvent,
    Events(u32),
}

impl Rule {
    /// Reads [`FLUSH_HEADER`]; unknown values fall back to adaptive.
    pub(crate) fn from_header(v: Option<&str>) -> Self {
        match v.map(|v| v.trim().to_ascii_lowercase()) {
            Some(v) if v == "event" => Self::EveryEvent,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n >= 1 => Self::Events(n.min(1000)),
                _ => Self::Adaptive,
            },
            None => Self::Adaptive,
        }
    }
}

/// The per-response flush state.
#[derive(Debug)]
pub(crate) struct Pacer {
    rule: Rule,
    estimate: LinkEstimate,
    pending: BytesMut,
    pending_events: u32,
    pending_since: Option<Millis>,
    flush_at: Option<Millis>,
    /// When the modelled link has sent everything flushed so far, in µs.
    link_free_us: u64,
    /// The next flush goes out while the link model says it is busy.
    backlogged: bool,
    in_flight: usize,
    in_flight_since: Option<Millis>,
    /// The fastest rate a drain of at least `RATE_SAMPLE_MIN_BYTES` showed
    /// (kbit/s).
    fastest_kbps: Option<u32>,
    /// Stream totals, for the stats and the benchmark.
    pub(crate) flushes: u64,
    pub(crate) wire_bytes: u64,
}

impl Pacer {
    pub(crate) fn new(rule: Rule, estimate: LinkEstimate) -> Self {
        Self {
            rule,
            estimate,
            pending: BytesMut::new(),
            pending_events: 0,
            pending_since: None,
            flush_at: None,
            link_free_us: 0,
            backlogged: false,
            in_flight: 0,
            in_flight_since: None,
            fastest_kbps: None,
            flushes: 0,
            wire_bytes: 0,
        }
    }

    pub(crate) fn estimate(&self) -> &LinkEstimate {
        &self.estimate
    }

    /// The fastest rate the link was seen to take data, if a drain showed.
    pub(crate) fn fastest_kbps(&self) -> Option<u32> {
        self.fastest_kbps
    }

    /// Queues one event's bytes. True when they (and anything queued
    /// before) should be flushed now; otherwise [`Pacer::poll_timeout`]
    /// says when.
    pub(crate) fn push(&mut self, now: Millis, bytes: &[u8]) -> bool {
        self.pending.extend_from_slice(bytes);
        self.pending_events += 1;
        let since = *self.pending_since.get_or_insert(now);
        let at = self.due_at(now, since);
        if at <= now {
            true
        } else {
            self.flush_at = Some(at);
            false
        }
    }

    fn due_at(&mut self, now: Millis, since: Millis) -> Millis {
        let latest = since.saturating_add(MAX_HOLD_MS);
        let at = match self.rule {
            Rule::EveryEvent => now,
            Rule::Events(n) if self.pending_events >= n => now,
            Rule::Events(_) => latest,
            Rule::Adaptive => {
                let mut at = now;
                let link_free = self.link_free_us.div_ceil(1000);
                self.backlogged = self.estimate.kbps.is_some() && link_free > now;
                if self.backlogged {
                    at = link_free;
                }
                if self.estimate.save_data {
                    at = at.max(since.saturating_add(SAVE_DATA_WINDOW_MS));
                } else if self.estimate.kbps.is_some_and(|k| k < SLOW_LINK_KBPS) {
                    at = at.max(since.saturating_add(SLOW_LINK_WINDOW_MS));
                }
                if self.in_flight > self.in_flight_limit() {
                    self.backlogged = true;
                    at = latest; // or sooner, when the platform drains
                }
                at
            }
        };
        at.min(latest)
    }

    /// The queued bytes to compress and write now.
    pub(crate) fn take(&mut self) -> BytesMut {
        self.pending_events = 0;
        self.pending_since = None;
        self.flush_at = None;
        self.pending.split()
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The compression level for the flush about to be made.
    pub(crate) fn level(&self) -> u32 {
        let slow = self.estimate.kbps.is_some_and(|k| k < SLOW_LINK_KBPS);
        if self.estimate.save_data || slow || self.backlogged {
            THOROUGH_LEVEL
        } else {
            DEFAULT_LEVEL
        }
    }

    /// A flush of `wire_len` payload bytes was handed to the platform.
    pub(crate) fn flushed(&mut self, now: Millis, wire_len: usize) {
        self.flushes += 1;
        self.wire_bytes += wire_len as u64;
        if let Some(kbps) = self.estimate.kbps {
            let start = self.link_free_us.max(now.saturating_mul(1000));
            let bits = (wire_len as u64).saturating_add(FLUSH_OVERHEAD) * 8;
            self.link_free_us = start.saturating_add(bits * 1000 / u64::from(kbps.max(1)));
        }
        self.in_flight += wire_len;
        self.in_flight_since.get_or_insert(now);
        self.backlogged = false;
    }

    /// The platform has taken every byte written so far. Returns true when
    /// queued events are now due. A long, large drain is a measurement of
    /// the link: it lowers the bandwidth estimate if it is below it.
    pub(crate) fn drained(&mut self, now: Millis) -> bool {
        if let Some(since) = self.in_flight_since.take() {
            let ms = now.saturating_sub(since);
            if self.in_flight >= RATE_SAMPLE_MIN_BYTES {
                let kbps = (self.in_flight as u64 * 8 / ms.max(1)).min(u64::from(u32::MAX)) as u32;
                self.fastest_kbps = self.fastest_kbps.max(Some(kbps));
            }
            if self.in_flight >= DRAIN_SAMPLE_MIN_BYTES && ms >= DRAIN_SAMPLE_MIN_MS {
                let kbps = (self.in_flight as u64 * 8 / ms).max(1) as u32;
                if self.estimate.kbps.is_none_or(|k| kbps < k) {
                    self.estimate.kbps = Some(kbps);
                    self.estimate.source = Source::Measured;
                }
            }
        }
        self.in_flight = 0;
        match self.pending_since {
            Some(since) if self.has_pending() => {
                let at = self.due_at(now, since);
                self.flush_at = Some(at);
                at <= now
            }
            _ => false,
        }
    }

    fn in_flight_limit(&self) -> usize {
        // Two bandwidth-delay products, when both are known.
        let bdp = match (self.estimate.kbps, self.estimate.rtt_ms) {
            (Some(k), Some(r)) => (u64::from(k) * u64::from(r) / 8) as usize * 2,
            _ => 0,
        };
        bdp.max(MIN_IN_FLIGHT)
    }

    /// When queued events must be flushed if nothing else happens.
    pub(crate) fn poll_timeout(&self) -> Option<Millis> {
        self.flush_at.filter(|_| self.has_pending())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(kbps: Option<u32>) -> Pacer {
        Pacer::new(
            Rule::Adaptive,
            LinkEstimate {
                kbps,
                source: if kbps.is_some() {
                    Source::App
                } else {
                    Source::Unknown
                },
                ..LinkEstimate::default()
            },
        )
    }

    /// Feeds `events` events of `size` bytes every `gap` ms, flushing as the
    /// pacer says with a wire size of `wire` bytes per event. Returns
    /// (flushes, max hold in ms).
    fn run(p: &mut Pacer, events: u64, gap: Millis, wire: usize) -> (u64, Millis) {
        let mut held_since = None;
        let mut max_hold = 0;
        let mut queued = 0;
        let mut t = 0;
        for _ in 0..events {
            // Timers first, as an adapter would fire them.
            while let Some(due) = p.poll_timeout().filter(|d| *d <= t) {
                max_hold = max_hold.max(due - held_since.unwrap_or(due));
                p.take();
                p.flushed(due, wire * queued);
                let _ = p.drained(due); // the platform takes bytes at once
                queued = 0;
                held_since = None;
            }
            queued += 1;
            held_since.get_or_insert(t);
            if p.push(t, &[0u8; 260]) {
                p.take();
                p.flushed(t, wire * queued);
                let _ = p.drained(t);
                queued = 0;
                held_since = None;
            }
            t += gap;
        }
        (p.flushes, max_hold)
    }

    #[test]
    fn fast_or_unknown_links_flush_every_event() {
        for kbps in [None, Some(100_000), Some(10_000)] {
            let mut p = at(kbps);
            assert_eq!(run(&mut p, 100, 20, 12), (100, 0), "{kbps:?}");
            assert_eq!(p.level(), DEFAULT_LEVEL);
        }
    }

    #[test]
    fn slow_links_coalesce_with_bounded_hold() {
        // 256 kbit/s = 32 B/ms; a 1-event flush is ~102 B = 3.2 ms of link,
        // so the link keeps up, but a slow link gathers 50 ms per flush.
        let mut p = at(Some(256));
        let (flushes, hold) = run(&mut p, 100, 10, 12);
        // (The last group is still queued when the run stops.)
        assert_eq!((flushes, hold), (19, SLOW_LINK_WINDOW_MS));
        // 10 Mbit/s is not slow: every event at once.
        assert_eq!(run(&mut at(Some(10_000)), 100, 10, 12).0, 100);
        // Identity-sized events (300 B + framing = 12 ms of link) at
        // 100 tok/s: the link is the bottleneck, flushes gather events.
        let mut p = at(Some(256));
        let (flushes, hold) = run(&mut p, 200, 10, 300);
        assert!(flushes < 200 * 3 / 4, "{flushes}");
        // The link runs at ~95 %: holds stay a few events long, not growing.
        assert!(hold <= 80, "held {hold} ms");
        assert_eq!(p.level(), THOROUGH_LEVEL);
        // An unpaced burst (a cache replay) on a slow link: few flushes.
        let mut p = at(Some(256));
        let (flushes, hold) = run(&mut p, 1000, 0, 12);
        assert!(flushes <= 2, "{flushes}");
        assert!(hold <= MAX_HOLD_MS);
    }

    #[test]
    fn save_data_gathers_and_fixed_rules_obey() {
        let mut p = Pacer::new(
            Rule::Adaptive,
            LinkEstimate {
                save_data: true,
                ..LinkEstimate::default()
            },
        );
        let (flushes, hold) = run(&mut p, 100, 20, 12);
        assert!((9..=11).contains(&flushes), "{flushes}");
        assert_eq!(hold, SAVE_DATA_WINDOW_MS);
        assert_eq!(
            run(
                &mut Pacer::new(Rule::Events(4), LinkEstimate::default()),
                100,
                20,
                12
            )
            .0,
            25
        );
        assert_eq!(
            run(
                &mut Pacer::new(
                    Rule::EveryEvent,
                    LinkEstimate {
                        kbps: Some(10),
                        ..LinkEstimate::default()
                    }
                ),
                10,
                0,
                12
            )
            .0,
            10
        );
        // A stalled stream still flushes a partial group.
        let mut p = Pacer::new(Rule::Events(4), LinkEstimate::default());
        assert!(!p.push(0, b"x"));
        assert_eq!(p.poll_timeout(), Some(MAX_HOLD_MS));
    }

    #[test]
    fn undrained_bytes_hold_and_a_drain_releases() {
        let mut p = at(None);
        assert!(p.push(0, b"a"));
        p.take();
        p.flushed(0, 20_000);
        // 20 KB not yet taken by the platform: hold.
        assert!(!p.push(1, b"b"));
        assert_eq!(p.poll_timeout(), Some(1 + MAX_HOLD_MS));
        // Taken after 100 ms: 1600 kbit/s measured; queued bytes go now.
        assert!(p.drained(100));
        assert_eq!(p.estimate().kbps, Some(1600));
        assert_eq!(p.estimate().source, Source::Measured);
        // A quick drain of a small flush measures nothing.
        let mut q = at(Some(5000));
        q.flushed(0, 100);
        assert!(!q.drained(1));
        assert_eq!(q.estimate().kbps, Some(5000));
    }

    #[test]
    fn rule_header() {
        assert_eq!(Rule::from_header(None), Rule::Adaptive);
        assert_eq!(Rule::from_header(Some("event")), Rule::EveryEvent);
        assert_eq!(Rule::from_header(Some(" 4 ")), Rule::Events(4));
        assert_eq!(Rule::from_header(Some("0")), Rule::Adaptive);
        assert_eq!(Rule::from_header(Some("fast")), Rule::Adaptive);
    }
}
