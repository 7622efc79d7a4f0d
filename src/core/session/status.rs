//! The session's status events (see `crate::core::status`): the stage a
//! streamed generation is in, told when the client would otherwise see
//! nothing, and in place of bare keep-alive comments.

use bytes::BytesMut;

use crate::core::status::{Progress, Stage, Status, STATUS_DELAY_MS};
use crate::core::Millis;

use super::response::Sent;
use super::timers::Timer;
use super::{Session, KEEPALIVE_COMMENT};

/// A streamed generation's stage, and the last progress its upstream
/// reported.
#[derive(Debug, Clone, Copy)]
pub(super) struct Told {
    stage: Stage,
    progress: Option<Progress>,
    /// A status went out: progress is told as it comes from now on.
    spoken: bool,
}

impl Session {
    /// A streamed generation in a format with a place for status events
    /// starts telling its stage.
    pub(super) fn start_status(&mut self) {
        if self.response.format().has_status() {
            self.told = Some(Told {
                stage: Stage::Waiting,
                progress: None,
                spoken: false,
            });
        }
    }

    /// The upstream was asked (`Stage::Waiting`) or answered
    /// (`Stage::Prefill`): the client hears of it if nothing else comes
    /// soon.
    pub(super) fn enter_stage(&mut self, now: Millis, stage: Stage) {
        let Some(told) = &mut self.told else { return };
        if told.stage == Stage::Generating {
            return; // a failover's next replica: the text goes on
        }
        told.stage = stage;
        self.timers.set(Timer::Status, now, STATUS_DELAY_MS);
    }

    /// The upstream reported how far through the prompt it is: told at
    /// once when the client already heard a status, else when the delay
    /// runs out (a short prompt's progress costs the client nothing).
    pub(super) fn on_progress(&mut self, now: Millis, progress: Progress) {
        let Some(told) = &mut self.told else { return };
        if told.stage == Stage::Generating {
            return;
        }
        told.stage = Stage::Prefill;
        told.progress = Some(progress);
        if told.spoken {
            self.tell_status(now);
        }
    }

    /// Text came: it says the rest.
    pub(super) fn on_generating(&mut self) {
        if let Some(told) = &mut self.told {
            told.stage = Stage::Generating;
            self.timers.stop(Timer::Status);
        }
    }

    /// `Timer::Status` fired: nothing came since the stage began. In the
    /// compact formats this commits to the stream (an upstream error that
    /// follows is an error event); `openai` is told only once it is
    /// committed, so an upstream's refusal keeps its HTTP status for the
    /// SDKs.
    pub(super) fn on_status_timer(&mut self, now: Millis) {
        self.timers.stop(Timer::Status);
        let openai = self.response.format().is_openai();
        if openai && self.response.sent() == Sent::Nothing {
            return;
        }
        self.tell_status(now);
    }

    /// `Timer::KeepAlive` fired: a status event where the format has
    /// one and the stream tells its stage, else a bare comment.
    pub(super) fn keep_alive(&mut self, now: Millis) {
        // Before anything was sent this commits to the stream, so the
        // client's connection stays alive; a later upstream error becomes
        // an error event.
        if self.told.is_some() {
            return self.tell_status(now);
        }
        self.start_events();
        self.write(now, KEEPALIVE_COMMENT, true);
    }

    fn tell_status(&mut self, now: Millis) {
        let Some(told) = &mut self.told else { return };
        told.spoken = true;
        let told = *told;
        let status = Status {
            phase: told.stage,
            progress: told.progress.filter(|_| told.stage == Stage::Prefill),
            elapsed_ms: now.saturating_sub(self.received_at),
        };
        self.start_events();
        let mut out = BytesMut::new();
        self.response.format().write_status(&mut out, &status);
        self.write(now, &out, true);
    }
}
