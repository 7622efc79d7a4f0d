//! Choosing the upstream replica for a request: rendezvous hashing on the
//! conversation prefix, replicas recently seen failing moved to the back,
//! and the order in which to fall back.
//!
//! Why the conversation prefix: an inference server keeps the KV state of
//! prompts it has seen (its prompt or prefix cache). A `/v1/prefetch` of
//! the conversation while the user types, and the request that follows
//! once they send, share everything but the message being typed, so
//! hashing that shared part sends both to the same replica — the one whose
//! cache now holds it. Rendezvous (highest-random-weight) hashing keeps the
//! assignment stable when a replica is added or removed: only the
//! conversations of that replica move.
//!
//! The affinity is the model and every message before the last user
//! message (for `/v1/completions`, the prompt up to its last line break).
//! A first turn without a system prompt therefore hashes on the model
//! alone; all such turns share one replica, which also shares their (empty)
//! prefix.
//!
//! [`Health`] is what a deployment's isolate or instance remembers between
//! requests: the adapter keeps one, gives each session a copy and applies
//! the [`crate::core::session::Action::ReplicaHealth`] reports back to it.
//! It does not probe replicas in the background; a replica marked down is
//! tried again after [`DOWN_FOR_MS`], or at once when every other one has
//! failed too.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::core::openai::Endpoint;
use crate::core::Millis;

/// How long a replica that failed stays at the back of the order.
pub const DOWN_FOR_MS: Millis = 30_000;
/// Most replicas one deployment may list (more are ignored).
pub(crate) const MAX_REPLICAS: usize = 16;
/// How long a `/healthz` probe's result is reused: unauthenticated callers
/// cannot make the function call the upstream more often than this.
pub(crate) const PROBE_FRESH_MS: Millis = 5_000;
/// Upstream statuses that mean "this replica cannot answer now" and are
/// worth another replica (before anything reached the client).
pub(crate) const RETRY_STATUSES: &[u16] = &[502, 503, 504];

/// The bytes a request's replica is chosen by: the model and the stable
/// part of its conversation (see the module docs).
pub(crate) fn affinity(endpoint: Endpoint, body: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(model) = body.get("model").and_then(Value::as_str) {
        out.extend_from_slice(model.as_bytes());
    }
    out.push(0);
    match endpoint {
        Endpoint::Chat => {
            let messages = body
                .get("messages")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let last_user = messages
                .iter()
                .rposition(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .unwrap_or(messages.len());
            for m in &messages[..last_user] {
                out.extend_from_slice(m.to_string().as_bytes());
                out.push(0);
            }
        }
        // The instructions and every input item before the last.
        Endpoint::Responses => {
            if let Some(instructions) = body.get("instructions").and_then(Value::as_str) {
                out.extend_from_slice(instructions.as_bytes());
                out.push(0);
            }
            if let Some(Value::Array(items)) = body.get("input") {
                for item in items.iter().take(items.len().saturating_sub(1)) {
                    out.extend_from_slice(item.to_string().as_bytes());
                    out.push(0);
                }
            }
        }
        Endpoint::Completions => {
            if let Some(prompt) = body.get("prompt").and_then(Value::as_str) {
                let stable = prompt.rfind('\n').map_or("", |i| &prompt[..i]);
                out.extend_from_slice(stable.as_bytes());
            }
        }
    }
    out
}

fn weight(affinity: &[u8], replica: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(affinity);
    h.update([0]);
    h.update(replica.as_bytes());
    h.finalize().into()
}

/// The replicas in the order to try them: by rendezvous weight for this
/// affinity, those marked down moved behind the healthy ones (kept, as a
/// last resort). Returns indexes into `replicas`.
pub(crate) fn order(
    replicas: &[String],
    affinity: &[u8],
    health: &Health,
    now: Millis,
) -> Vec<usize> {
    let mut ranked: Vec<(bool, [u8; 32], usize)> = replicas
        .iter()
        .take(MAX_REPLICAS)
        .enumerate()
        .map(|(i, r)| (!health.is_up(r, now), weight(affinity, r), i))
        .collect();
    // Healthy first (false < true), then the highest weight.
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    ranked.into_iter().map(|(_, _, i)| i).collect()
}

/// Which replicas failed recently, kept by the adapter across requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    down: Vec<(String, Millis)>,
    /// The last `/healthz` probe: when, and whether it was ok.
    probe: Option<(Millis, bool)>,
}

impl Health {
    /// Whether `replica` may be tried in its rendezvous place.
    pub(crate) fn is_up(&self, replica: &str, now: Millis) -> bool {
        !self
            .down
            .iter()
            .any(|(r, until)| r == replica && now < *until)
    }

    /// Records a `/healthz` probe's result.
    pub fn probed(&mut self, ok: bool, now: Millis) {
        self.probe = Some((now, ok));
    }

    /// The result of a probe made less than [`PROBE_FRESH_MS`] ago.
    pub(crate) fn recent_probe(&self, now: Millis) -> Option<bool> {
        self.probe
            .filter(|(at, _)| now >= *at && now - at < PROBE_FRESH_MS)
            .map(|(_, ok)| ok)
    }

    /// Applies one report: a replica answered (`up`) or failed.
    pub fn report(&mut self, replica: &str, up: bool, now: Millis) {
        self.down.retain(|(r, until)| r != replica && now < *until);
        if !up && self.down.len() < MAX_REPLICAS {
            self.down
                .push((replica.to_owned(), now.saturating_add(DOWN_FOR_MS)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn replicas(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://r{i}.example")).collect()
    }

    #[test]
    fn prefetch_and_request_share_affinity() {
        let typing = body(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "what is the capi"}]}));
        let sent = body(
            serde_json::json!({"model": "m", "temperature": 0.7, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "what is the capital of France?"}]}),
        );
        let other = body(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "be verbose"},
            {"role": "user", "content": "what is the capital of France?"}]}));
        let a = affinity(Endpoint::Chat, &typing);
        assert_eq!(a, affinity(Endpoint::Chat, &sent));
        assert_ne!(a, affinity(Endpoint::Chat, &other));
        let p1 = body(serde_json::json!({"model": "m", "prompt": "story:\nOnce upon"}));
        let p2 = body(serde_json::json!({"model": "m", "prompt": "story:\nOnce upon a time"}));
        assert_eq!(
            affinity(Endpoint::Completions, &p1),
            affinity(Endpoint::Completions, &p2)
        );
    }

    #[test]
    fn rendezvous_is_stable_and_spreads() {
        let rs = replicas(3);
        let h = Health::default();
        let mut firsts = [0usize; 3];
        for i in 0..300 {
            let a = format!("conversation {i}").into_bytes();
            let o = order(&rs, &a, &h, 0);
            assert_eq!(o, order(&rs, &a, &h, 0));
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2]);
            firsts[o[0]] += 1;
            // Removing a replica moves only its own conversations.
            let without_last: Vec<String> = rs[..2].to_vec();
            let o2 = order(&without_last, &a, &h, 0);
            if o[0] != 2 {
                assert_eq!(o2[0], o[0]);
            }
        }
        assert!(firsts.iter().all(|&n| n > 60), "{firsts:?}");
    }

    #[test]
    fn down_replicas_go_last_until_they_recover() {
        let rs = replicas(2);
        let a = b"x".to_vec();
        let mut h = Health::default();
        let first = order(&rs, &a, &h, 0)[0];
        h.report(&rs[first], false, 1_000);
        assert_eq!(order(&rs, &a, &h, 1_000), [1 - first, first]);
        // Back in place once the time is up, or once it answers.
        assert_eq!(order(&rs, &a, &h, 1_000 + DOWN_FOR_MS)[0], first);
        h.report(&rs[first], true, 2_000);
        assert_eq!(order(&rs, &a, &h, 2_000)[0], first);
        assert_eq!(h, Health::default());
    }
}
