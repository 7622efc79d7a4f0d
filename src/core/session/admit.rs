//! The session's step between a head that passed and reading its body:
//! counting the request against its key's limits (`RATE_LIMIT_RPM`,
//! `MAX_STREAMS_PER_KEY`), when the deployment sets any. A refusal is
//! answered before a byte of the body is read.

use crate::core::error::{Error, ErrorKind, Limit};
use crate::core::quota::{self, Ask, Verdict};
use crate::core::Millis;

use super::action::Action;
use super::intake::{Intake, Route};
use super::timers::Timer;
use super::{Phase, Session};

impl Session {
    /// Asks the store about this request if a limit applies, else reads
    /// the body at once.
    pub(super) fn admit(&mut self, now: Millis, intake: Box<Intake>, route: Route) {
        let ask = Ask {
            rpm: self.config.rate_limit_rpm,
            streams: self.config.max_streams_per_key,
            // A prefetch is one token and nobody waits for it: it counts
            // against the rate only.
            lease: matches!(route, Route::Generate { .. }),
        };
        if !ask.limits() {
            return self.read_body(now, intake, route);
        }
        let key = quota::record_key(intake.key.as_deref());
        self.phase = Phase::Admitting {
            intake,
            route,
            key: key.clone(),
        };
        self.timers.set(Timer::Admit, now, quota::ADMIT_TIMEOUT_MS);
        self.actions.push_back(Action::Admit { key, ask });
    }

    /// The store's verdict (or [`Verdict::Unknown`] when it took too long).
    pub(super) fn on_admission(&mut self, now: Millis, verdict: Verdict) {
        let (intake, route, key) = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Admitting { intake, route, key } => (intake, route, key),
            other => {
                self.phase = other;
                // Too late: the request went on without it (or is over), so
                // a lease it was given goes straight back.
                if let (Verdict::Admitted { lease: Some(lease) }, Some(key)) =
                    (verdict, self.late_admission_key.take())
                {
                    self.actions.push_back(Action::Release { key, lease });
                }
                return;
            }
        };
        self.timers.stop(Timer::Admit);
        let (limit, retry_after_secs) = match verdict {
            Verdict::Admitted { lease } => {
                self.lease = lease.map(|l| (key, l));
                return self.read_body(now, intake, route);
            }
            Verdict::Unknown => {
                self.late_admission_key = Some(key);
                return self.read_body(now, intake, route);
            }
            Verdict::OverRate { retry_after_secs } => {
                (Limit::Rate(self.config.rate_limit_rpm), retry_after_secs)
            }
            Verdict::OverStreams { retry_after_secs } => (
                Limit::Streams(self.config.max_streams_per_key),
                retry_after_secs,
            ),
        };
        self.fail(Error::new(ErrorKind::RateLimited {
            limit,
            retry_after_secs,
        }));
    }

    /// Asks for the body of a request that passed every check on its head
    /// (or takes the one given with the head).
    fn read_body(&mut self, now: Millis, intake: Box<Intake>, route: Route) {
        self.phase = Phase::ReadingBody { intake, route };
        match self.early_body.take() {
            Some(body) => self.on_request_body(now, &body),
            None => {
                let limit = self.config.max_body_bytes;
                self.actions.push_back(Action::ReadBody { limit });
            }
        }
    }
}
