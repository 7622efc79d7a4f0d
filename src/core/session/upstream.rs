//! The upstream side of a session: which replicas to try and in what order,
//! the request as sent (to send it again to the next replica), whether it
//! is still open, its timings, and the health reports the deployment keeps.
//! It builds the [`Action`]s that touch the upstream; when to send, fall
//! back or give up is the session's call.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::core::config::Config;
use crate::core::http::{Headers, UpstreamRequest};
use crate::core::route::{self, Health};
use crate::core::Millis;

use super::action::Action;

/// An upstream request as the session asked for it, before a replica is
/// chosen.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) method: &'static str,
    pub(super) path: &'static str,
    pub(super) body: Bytes,
    /// An event stream is expected.
    pub(super) stream: bool,
}

impl Call {
    /// `POST` of a JSON body.
    pub(super) fn post(path: &'static str, body: Bytes, stream: bool) -> Self {
        Self {
            method: "POST",
            path,
            body,
            stream,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Upstream {
    /// Replica health as the deployment knew it when the request came,
    /// with this request's own reports applied.
    health: Health,
    /// Indexes into `config.upstream_urls`, in the order to try them.
    replicas: Vec<usize>,
    /// Which entry of `replicas` the current request went to.
    attempt: usize,
    /// The current request, kept to send it to the next replica.
    call: Option<Call>,
    /// A request was sent and its answer is still wanted.
    open: bool,
    sent_at: Millis,
    head_at: Option<Millis>,
}

impl Upstream {
    pub(super) fn new(health: Health) -> Self {
        Self {
            health,
            ..Self::default()
        }
    }

    /// Orders the replicas for a request with this routing affinity.
    pub(super) fn pick(&mut self, config: &Config, affinity: &[u8], now: Millis) {
        self.replicas = route::order(&config.upstream_urls, affinity, &self.health, now);
        self.attempt = 0;
    }

    pub(super) fn is_open(&self) -> bool {
        self.open
    }

    /// Sends `call` to the current replica.
    pub(super) fn send(
        &mut self,
        out: &mut VecDeque<Action>,
        config: &Config,
        now: Millis,
        call: Call,
    ) {
        let accept = if call.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut headers: Headers = vec![
            ("accept".into(), accept.into()),
            (
                "user-agent".into(),
                concat!("tokenedge/", env!("CARGO_PKG_VERSION")).into(),
            ),
        ];
        if !call.body.is_empty() {
            headers.push(("content-type".into(), "application/json".into()));
        }
        if let Some(key) = &config.upstream_api_key {
            headers.push(("authorization".into(), format!("Bearer {key}")));
        }
        out.push_back(Action::SendUpstream(UpstreamRequest {
            method: call.method,
            url: format!("{}{}", self.replica(config), call.path),
            headers,
            body: call.body.clone(),
        }));
        self.call = Some(call);
        self.open = true;
        self.sent_at = now;
    }

    /// Stops wanting the answer: asks the adapter to abort the request if
    /// one is open.
    pub(super) fn cancel(&mut self, out: &mut VecDeque<Action>) {
        if std::mem::take(&mut self.open) {
            out.push_back(Action::CancelUpstream);
        }
    }

    /// The upstream ended or failed on its own: nothing to abort.
    pub(super) fn closed(&mut self) {
        self.open = false;
    }

    /// The response head came.
    pub(super) fn answered(&mut self, now: Millis) {
        self.head_at = Some(now);
    }

    /// Records whether the current replica works, and reports it to the
    /// deployment when that changed what it knew.
    pub(super) fn report(
        &mut self,
        out: &mut VecDeque<Action>,
        config: &Config,
        up: bool,
        now: Millis,
    ) {
        let replica = self.replica(config);
        if self.health.is_up(replica, now) != up {
            let replica = replica.to_owned();
            self.health.report(&replica, up, now);
            out.push_back(Action::ReplicaHealth { replica, up });
        }
    }

    /// Moves on to the next replica, when there is one left, and returns
    /// the request to send it (the current one is cancelled).
    pub(super) fn next_replica(&mut self, out: &mut VecDeque<Action>) -> Option<Call> {
        if self.attempt.saturating_add(1) >= self.replicas.len() {
            return None;
        }
        let call = self.call.take()?;
        self.cancel(out);
        self.attempt += 1;
        Some(call)
    }

    /// `Server-Timing` entries: time at the edge before the upstream was
    /// asked, and the upstream's time to its response head.
    pub(super) fn timing(&self, received_at: Millis) -> String {
        let edge = self.sent_at.saturating_sub(received_at);
        match self.head_at {
            Some(h) => format!(
                "edge;dur={edge}, upstream;dur={}",
                h.saturating_sub(self.sent_at)
            ),
            None => format!("edge;dur={edge}"),
        }
    }

    /// A `/healthz` probe's result from the last few seconds, if any.
    pub(super) fn recent_probe(&self, now: Millis) -> Option<bool> {
        self.health.recent_probe(now)
    }

    /// The replica the current request goes to.
    fn replica<'a>(&self, config: &'a Config) -> &'a str {
        self.replicas
            .get(self.attempt)
            .and_then(|&i| config.upstream_urls.get(i))
            .map_or("", String::as_str)
    }
}
