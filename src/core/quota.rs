//! Per-key limits: requests per minute (`RATE_LIMIT_RPM`) and generations
//! at once (`MAX_STREAMS_PER_KEY`), decided on one small record per key
//! ([`Tally`]) that a store keeps between requests — a Durable Object on
//! Workers, the key-value store on Spin. The store only reads the record,
//! calls [`Tally::admit`] or [`Tally::release`] with its clock, and writes
//! it back; everything decided is decided here.
//!
//! The rate is a GCRA (a leaky bucket kept as one timestamp, the
//! "theoretical arrival time"): a key may spend its whole minute's worth
//! at once, then one request every `60 s / rpm`, and a refusal says exactly
//! when the next request would pass. Generations at once are leases, each
//! an expiry time: a lease is returned when its generation ends, and one
//! whose release never came (an instance that died) lapses after
//! [`LEASE_MS`].

use crate::core::Millis;

/// The window a rate is counted over.
const MINUTE_MS: Millis = 60_000;
/// How long a lease counts if its release never comes: longer than any
/// healthy generation lasts without a byte (the timeouts are at most ten
/// minutes), short enough that a lost release does not lock a key out for
/// long.
pub const LEASE_MS: Millis = 15 * 60_000;
/// What a refusal for too many generations at once says to wait: a
/// generation's end cannot be foreseen, so a short, fixed pause.
pub const STREAMS_RETRY_AFTER_SECS: u64 = 2;
/// How long the store may keep a record nobody touches (the longest a
/// record still matters: a lease's life).
pub const RECORD_TTL_SECS: u64 = LEASE_MS / 1000;
/// How long a request waits for the store's verdict before going on
/// without it.
pub const ADMIT_TIMEOUT_MS: Millis = 2_000;
/// Most leases kept in one record (a bound on its size whatever the
/// configuration says).
const MAX_LEASES: usize = 10_000;

/// The record's key for a caller's API key (`None`: the keyless callers
/// of an `AUTH=off` deployment, who share one). A hash: no API key is ever
/// part of a store key.
pub(crate) fn record_key(api_key: Option<&str>) -> String {
    let hash = crate::core::cache::scoped_hash(Some(api_key.unwrap_or("")));
    format!("quota:{}", crate::core::hex(&sha2::Digest::finalize(hash)))
}

/// What one request asks of its key's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Requests per minute allowed (0: no rate limit).
    pub rpm: u32,
    /// Generations at once allowed (0: no limit).
    pub streams: u32,
    /// Whether this request holds a generation (and so takes a lease).
    pub lease: bool,
}

impl Ask {
    /// Whether anything is limited at all (else the store is not asked).
    pub fn limits(&self) -> bool {
        self.rpm > 0 || (self.streams > 0 && self.lease)
    }
}

/// The store's answer to an [`Ask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request may go on; `lease` is what to release at its end.
    Admitted {
        /// The lease taken, if one was asked for and generations are
        /// limited.
        lease: Option<Lease>,
    },
    /// Over the key's requests per minute: the next one passes after this
    /// many seconds.
    OverRate {
        /// Seconds until a request would pass (at least 1).
        retry_after_secs: u64,
    },
    /// The key already has its most generations at once.
    OverStreams {
        /// Seconds to wait before asking again.
        retry_after_secs: u64,
    },
    /// The store could not be asked (unreachable, too slow): the request
    /// goes on, as limits protect capacity and are not access control.
    Unknown,
}

/// A generation's claim on its key, returned with [`Tally::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// When the claim lapses by itself (the store's clock).
    pub expires: Millis,
}

/// One key's record: the rate's theoretical arrival time and the leases
/// held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// When the bucket is empty again; a request is refused while this is
    /// more than a minute's allowance ahead of now.
    tat: Millis,
    /// Expiry times of the leases held.
    leases: Vec<Millis>,
}

impl Tally {
    /// Reads a stored record; anything unreadable is a fresh record (a
    /// limit forgets rather than locking a key out).
    pub fn decode(bytes: &[u8]) -> Self {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let mut parts = text.split(' ');
        if parts.next() != Some("q1") {
            return Self::default();
        }
        let Some(Ok(tat)) = parts.next().map(str::parse) else {
            return Self::default();
        };
        let leases: Option<Vec<Millis>> = parts.map(|p| p.parse().ok()).collect();
        let mut leases = leases.unwrap_or_default();
        leases.truncate(MAX_LEASES);
        Self { tat, leases }
    }

    /// The record as stored.
    pub fn encode(&self) -> String {
        let mut out = format!("q1 {}", self.tat);
        for l in &self.leases {
            out.push(' ');
            out.push_str(&l.to_string());
        }
        out
    }

    /// Counts one request against `ask` at `now` (the store's clock). A
    /// refused request changes nothing: it neither spends the rate nor
    /// holds a lease.
    pub fn admit(&mut self, now: Millis, ask: Ask) -> Verdict {
        self.leases.retain(|&expires| expires > now);
        let streams_limited = ask.lease && ask.streams > 0;
        if streams_limited && self.leases.len() >= (ask.streams as usize).min(MAX_LEASES) {
            return Verdict::OverStreams {
                retry_after_secs: STREAMS_RETRY_AFTER_SECS,
            };
        }
        if ask.rpm > 0 {
            let interval = (MINUTE_MS / Millis::from(ask.rpm)).max(1);
            let burst = MINUTE_MS.saturating_sub(interval);
            let tat = self.tat.max(now);
            let ahead = tat - now;
            if ahead > burst {
                let wait_ms = ahead - burst;
                return Verdict::OverRate {
                    retry_after_secs: wait_ms.div_ceil(1000).max(1),
                };
            }
            self.tat = tat.saturating_add(interval);
        }
        let lease = streams_limited.then(|| {
            let expires = now.saturating_add(LEASE_MS);
            self.leases.push(expires);
            Lease { expires }
        });
        Verdict::Admitted { lease }
    }

    /// Returns a lease (one claim with its expiry time; a second release
    /// of the same lease finds nothing, or a twin, which is just as good).
    pub fn release(&mut self, now: Millis, lease: Lease) {
        if let Some(i) = self.leases.iter().position(|&e| e == lease.expires) {
            self.leases.swap_remove(i);
        }
        self.leases.retain(|&expires| expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Ask = Ask {
        rpm: 3,
        streams: 0,
        lease: false,
    };

    fn streams(n: u32) -> Ask {
        Ask {
            rpm: 0,
            streams: n,
            lease: true,
        }
    }

    #[test]
    fn a_minute_of_requests_at_once_then_one_per_interval() {
        let mut t = Tally::default();
        let now = 1_000_000;
        for _ in 0..3 {
            assert!(matches!(
                t.admit(now, RATE),
                Verdict::Admitted { lease: None }
            ));
        }
        // 3 per minute: the next one passes 20 s after the first.
        assert_eq!(
            t.admit(now, RATE),
            Verdict::OverRate {
                retry_after_secs: 20
            }
        );
        assert_eq!(
            t.admit(now + 19_500, RATE),
            Verdict::OverRate {
                retry_after_secs: 1
            }
        );
        assert!(matches!(
            t.admit(now + 20_000, RATE),
            Verdict::Admitted { .. }
        ));
        assert!(matches!(
            t.admit(now + 20_000, RATE),
            Verdict::OverRate { .. }
        ));
        // A quiet minute refills the whole allowance, and no more.
        let later = now + 200_000;
        for _ in 0..3 {
            assert!(matches!(t.admit(later, RATE), Verdict::Admitted { .. }));
        }
        assert!(matches!(t.admit(later, RATE), Verdict::OverRate { .. }));
    }

    #[test]
    fn refusals_spend_nothing() {
        let mut t = Tally::default();
        for _ in 0..3 {
            let _ = t.admit(0, RATE);
        }
        for _ in 0..100 {
            assert!(matches!(t.admit(10, RATE), Verdict::OverRate { .. }));
        }
        assert!(matches!(t.admit(20_000, RATE), Verdict::Admitted { .. }));
    }

    #[test]
    fn leases_are_counted_returned_and_lapse() {
        let mut t = Tally::default();
        let Verdict::Admitted { lease: Some(a) } = t.admit(5, streams(2)) else {
            panic!()
        };
        let Verdict::Admitted { lease: Some(_b) } = t.admit(6, streams(2)) else {
            panic!()
        };
        assert_eq!(
            t.admit(7, streams(2)),
            Verdict::OverStreams {
                retry_after_secs: STREAMS_RETRY_AFTER_SECS
            }
        );
        t.release(8, a);
        t.release(8, a);
        assert!(matches!(t.admit(9, streams(2)), Verdict::Admitted { .. }));
        assert!(matches!(
            t.admit(9, streams(2)),
            Verdict::OverStreams { .. }
        ));
        // Releases that never came lapse.
        assert!(matches!(
            t.admit(10 + LEASE_MS, streams(2)),
            Verdict::Admitted { .. }
        ));
    }

    #[test]
    fn a_request_without_a_generation_takes_no_lease() {
        let mut t = Tally::default();
        let ask = Ask {
            rpm: 0,
            streams: 1,
            lease: false,
        };
        assert!(!ask.limits());
        assert_eq!(t.admit(0, ask), Verdict::Admitted { lease: None });
        assert!(matches!(
            t.admit(0, streams(1)),
            Verdict::Admitted { lease: Some(_) }
        ));
    }

    #[test]
    fn records_round_trip_and_garbage_is_fresh() {
        let mut t = Tally::default();
        let _ = t.admit(1_000, RATE);
        let _ = t.admit(1_000, streams(4));
        let back = Tally::decode(t.encode().as_bytes());
        assert_eq!(back, t);
        for junk in [&b""[..], b"q1", b"q1 x", b"q2 5", b"\xff\xfe", b"q1 5 a"] {
            let d = Tally::decode(junk);
            assert!(d.leases.is_empty(), "{junk:?}");
        }
        assert_eq!(Tally::decode(b"q1 5 a").tat, 5);
    }

    #[test]
    fn huge_values_saturate() {
        let mut t = Tally::decode(format!("q1 {}", Millis::MAX).as_bytes());
        let ask = Ask {
            rpm: u32::MAX,
            streams: u32::MAX,
            lease: true,
        };
        assert!(matches!(
            t.admit(Millis::MAX - 1, ask),
            Verdict::Admitted { .. }
        ));
        let mut t = Tally::default();
        assert!(matches!(
            t.admit(Millis::MAX, ask),
            Verdict::Admitted { .. }
        ));
    }
}
