//! Mid-stream failover: when the upstream fails after the answer started
//! (its connection breaks, it goes silent past the idle limit, or it ends
//! without finishing), the next replica continues the answer from the text
//! already sent, by the same continuation a speculative prefix uses
//! (`crate::core::prefix`). The splice is the prefix's: the continuation's
//! role announcement is dropped and its usage counts the first half's
//! tokens, so the client sees one answer. At most `FAILOVER_BUDGET` times
//! per stream, and only while the answer is text of one choice that the
//! upstream's dialect can continue; otherwise the stream ends with the
//! error event, as before.

use crate::core::config::Dialect;
use crate::core::openai::{CompletionRequest, Endpoint};
use crate::core::prefix;
use crate::core::restream::Ending;
use crate::core::Millis;

use super::timers::Timer;
use super::{Phase, Session};

/// Whether an upstream of `dialect` continues an answer of `endpoint` from
/// its text (a completion's prompt always can; a chat needs a dialect that
/// continues a trailing assistant message; a Responses API stream is not
/// continued elsewhere: it falls back only before its first byte).
pub(super) fn continues(dialect: Dialect, endpoint: Endpoint) -> bool {
    match endpoint {
        Endpoint::Completions => true,
        Endpoint::Chat => dialect != Dialect::OpenAi,
        Endpoint::Responses => false,
    }
}

impl Session {
    /// Keeps what a failover needs, when this streamed generation could
    /// have one: another replica, budget, one choice, and a dialect that
    /// continues its endpoint.
    pub(super) fn allow_failover(&mut self, request: &CompletionRequest) {
        let possible = self.config.failover_budget > 0
            && self.config.upstream_urls.len() > 1
            && self.response.choices() == 1
            && continues(self.config.dialect, request.endpoint);
        if possible {
            self.continuable = Some(Box::new(request.clone()));
        }
    }

    /// Whether answers are kept as text for a failover.
    pub(super) fn keeps_text(&self) -> bool {
        self.continuable.is_some()
    }

    /// The upstream failed mid-stream: asks the next replica to continue
    /// the answer. Returns whether it did (else the caller ends the stream
    /// with the error).
    pub(super) fn fail_over(&mut self, now: Millis) -> bool {
        if self.failovers >= self.config.failover_budget {
            return false;
        }
        let (Some(request), Phase::Streaming(r)) = (self.continuable.as_deref(), &self.phase)
        else {
            return false;
        };
        // Only an answer still under way, or one whose break is held back:
        // one whose every choice finished (or that broke for the client to
        // see) is not continued.
        if r.ending() != Ending::Truncated && !r.holds_break() {
            return false;
        }
        let Some(text) = r.text() else {
            return false;
        };
        let tokens = r.content_events;
        let body = prefix::continuation(request, self.config.dialect, text, tokens)
            .upstream_body(self.config.dialect);
        self.upstream
            .report(&mut self.actions, &self.config, false, self.last_now);
        let Some(mut call) = self.upstream.next_replica(&mut self.actions) else {
            return false;
        };
        call.body = body.into();
        let Phase::Streaming(mut restream) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return false;
        };
        restream.continue_after_break();
        restream.continuing(tokens);
        self.held = Some(restream);
        self.failovers += 1;
        // The next replica's window starts with its first content.
        self.timers.stop(Timer::Stall);
        self.send_upstream(now, call);
        true
    }
}

impl Session {
    /// Content came: starts a stall window, when none is under way and a
    /// stalled stream could fail over.
    pub(super) fn watch_rate(&mut self, now: Millis) {
        let (min, secs) = (self.config.min_tokens_per_sec, self.config.stall_secs);
        if min == 0 || secs == 0 || self.continuable.is_none() {
            return;
        }
        if self.timers.is_set(Timer::Stall) {
            return;
        }
        if let Phase::Streaming(r) = &self.phase {
            self.stall_mark = r.content_events;
            self.timers
                .set(Timer::Stall, now, secs.saturating_mul(1000));
        }
    }

    /// The upstream broke a continuable answer (the event is held back):
    /// the next replica continues it (returns true), or the event goes out
    /// as it came.
    pub(super) fn on_break(&mut self, now: Millis) -> bool {
        if self.fail_over(now) {
            return true;
        }
        if let Phase::Streaming(r) = &mut self.phase {
            let released = r.release_break();
            if !released.is_empty() {
                self.write(now, &released, false);
            }
            self.log_events(now);
        }
        false
    }

    /// A stall window ended: an upstream that wrote fewer content events
    /// than the minimum rate asks for is stalled, and the next replica
    /// continues. Otherwise the next window starts.
    pub(super) fn check_rate(&mut self, now: Millis) {
        let Phase::Streaming(r) = &self.phase else {
            return;
        };
        let streamed = r.content_events.saturating_sub(self.stall_mark);
        let wanted = self
            .config
            .min_tokens_per_sec
            .saturating_mul(self.config.stall_secs);
        if streamed < wanted && self.fail_over(now) {
            return;
        }
        self.watch_rate(now);
    }
}
