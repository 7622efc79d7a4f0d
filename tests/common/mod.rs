//! The simulated world the core's integration tests share: a scripted
//! upstream (the test feeds it), a virtual clock (the test passes `now`),
//! an in-memory KV store and a recording client.
#![allow(dead_code)]

use bytes::Bytes;
use serde_json::Value;
use tokenedge::core::config::Config;
use tokenedge::core::http::{RequestHead, ResponseHead, UpstreamRequest};
use tokenedge::core::quota::{Ask, Lease, Tally, Verdict};
use tokenedge::core::session::{Action, KvRead, Session};

/// Everything the session asked for, in order.
#[derive(Default, Debug)]
pub struct World {
    pub upstream: Vec<UpstreamRequest>,
    pub cancelled: bool,
    pub head: Option<ResponseHead>,
    pub body: Vec<u8>,
    pub ended: bool,
    /// The response was cut (`RespondAbort`) rather than ended.
    pub aborted: bool,
    /// (time, bytes) of each chunk the client received.
    pub chunks: Vec<(u64, Vec<u8>)>,
    /// An in-memory KV store, the keys read and the writes made.
    pub kv: std::collections::HashMap<String, Bytes>,
    pub kv_reads: Vec<String>,
    pub kv_writes: Vec<(String, Bytes, u64)>,
    /// When set, every KV read fails.
    pub kv_down: bool,
    /// Replica health reports, in order.
    pub health: Vec<(String, bool)>,
    /// Health probe results: (time, ok).
    pub probes: Vec<(u64, bool)>,
    /// The limit of a request body the session asked to read.
    pub body_wanted: Option<usize>,
    /// The per-key limits store: records, and what was asked of it.
    pub quotas: std::collections::HashMap<String, Tally>,
    pub admits: Vec<(String, Ask)>,
    pub releases: Vec<(String, Lease)>,
    /// When set, the limits store answers `Unknown`; when `quota_silent`,
    /// it does not answer at all (the admission waits in `pending_admit`).
    pub quota_down: bool,
    pub quota_silent: bool,
    pub pending_admit: Option<(String, Ask)>,
    /// The embeddings endpoint: its vector for each text (answered as a
    /// JSON number list); a text it does not know is answered 500. The
    /// requests it had, and whether it is down (the call fails) or silent
    /// (the call never answers).
    pub embeddings: std::collections::HashMap<String, Vec<f32>>,
    pub embeds: Vec<UpstreamRequest>,
    pub embeddings_down: bool,
    pub embeddings_silent: bool,
    pub pending_embed: Vec<UpstreamRequest>,
}

impl World {
    pub fn pump(&mut self, s: &mut Session, now: u64) {
        let mut reads = Vec::new();
        loop {
            self.pump_actions(s, now, &mut reads);
            if !self.quota_silent {
                if let Some((key, ask)) = self.pending_admit.take() {
                    let verdict = if self.quota_down {
                        Verdict::Unknown
                    } else {
                        self.quotas.entry(key).or_default().admit(now, ask)
                    };
                    s.handle_admission(now, verdict);
                    continue;
                }
            }
            if !self.embeddings_silent {
                if let Some(req) = self.pending_embed.pop() {
                    self.answer_embedding(s, now, &req);
                    continue;
                }
            }
            if reads.is_empty() {
                return;
            }
            for (key, read) in reads.drain(..) {
                let value = if self.kv_down {
                    None
                } else {
                    self.kv.get(&key).cloned()
                };
                self.kv_reads.push(key);
                s.handle_kv_value(now, read, value);
            }
        }
    }

    fn answer_embedding(&mut self, s: &mut Session, now: u64, req: &UpstreamRequest) {
        if self.embeddings_down {
            return s.handle_embedding_failed(now);
        }
        let asked: Value = serde_json::from_slice(&req.body).expect("a JSON embeddings request");
        let text = asked["input"].as_str().unwrap_or_default();
        match self.embeddings.get(text) {
            Some(v) => {
                let answer =
                    serde_json::json!({"object": "list", "data": [{"index": 0, "embedding": v}]});
                s.handle_embedding(now, 200, answer.to_string().as_bytes());
            }
            None => s.handle_embedding(now, 500, br#"{"error":{"message":"no"}}"#),
        }
    }

    pub fn pump_actions(&mut self, s: &mut Session, now: u64, reads: &mut Vec<(String, KvRead)>) {
        while let Some(a) = s.poll_action() {
            let to_client = matches!(
                a,
                Action::Respond(..)
                    | Action::RespondHead(_)
                    | Action::RespondChunk(_)
                    | Action::RespondEnd
                    | Action::RespondAbort
            );
            assert!(!(self.ended && to_client), "response after the end: {a:?}");
            match a {
                Action::SendUpstream(r) => self.upstream.push(r),
                Action::Embed(r) => {
                    self.embeds.push(r.clone());
                    self.pending_embed.push(r);
                }
                Action::CancelUpstream => self.cancelled = true,
                Action::Respond(h, b) => {
                    assert!(self.head.is_none());
                    self.head = Some(h);
                    self.body = b.to_vec();
                    self.ended = true;
                }
                Action::RespondHead(h) => {
                    assert!(self.head.is_none());
                    self.head = Some(h);
                }
                Action::RespondChunk(b) => {
                    assert!(self.head.is_some(), "chunk before head");
                    self.body.extend_from_slice(&b);
                    self.chunks.push((now, b.to_vec()));
                }
                Action::RespondEnd => self.ended = true,
                Action::RespondAbort => {
                    self.ended = true;
                    self.aborted = true;
                }
                Action::KvGet { key, read } => reads.push((key, read)),
                Action::KvPut {
                    key,
                    value,
                    ttl_secs,
                    ..
                } => {
                    self.kv.insert(key.clone(), value.clone());
                    self.kv_writes.push((key, value, ttl_secs));
                }
                Action::KvDelete { key } => {
                    self.kv.remove(&key);
                }
                Action::ReplicaHealth { replica, up } => self.health.push((replica, up)),
                Action::HealthProbe { ok } => self.probes.push((now, ok)),
                Action::ReadBody { limit } => self.body_wanted = Some(limit),
                Action::Admit { key, ask } => {
                    assert!(self.pending_admit.is_none(), "one admission at a time");
                    self.admits.push((key.clone(), ask));
                    self.pending_admit = Some((key, ask));
                }
                Action::Release { key, lease } => {
                    self.quotas
                        .entry(key.clone())
                        .or_default()
                        .release(now, lease);
                    self.releases.push((key, lease));
                }
            }
        }
    }

    /// The KV writes other than resumable streams' records and marks.
    pub fn stored(&self) -> Vec<&(String, Bytes, u64)> {
        self.kv_writes
            .iter()
            .filter(|(k, ..)| !k.starts_with("stream:"))
            .collect()
    }

    pub fn status(&self) -> u16 {
        self.head.as_ref().expect("no response head").status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.as_ref()?.header(name)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn config() -> Config {
    Config {
        upstream_urls: vec!["http://upstream:8081".into()],
        auth_off: true,
        // The tests read how each answer was served.
        debug_headers: true,
        // Resumable streams add ids, records and timers; tests/resume.rs
        // turns them on.
        resume: false,
        ..Config::default()
    }
}

pub fn post(path: &str, body: &str) -> (RequestHead, Bytes) {
    let head = RequestHead::new(
        "POST",
        path,
        vec![
            ("Content-Type".into(), "application/json".into()),
            ("Authorization".into(), "Bearer client-key".into()),
        ],
    );
    (head, Bytes::copy_from_slice(body.as_bytes()))
}

pub const CHAT_STREAM: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
pub const CHAT_JSON: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

pub fn start(cfg: Config, path: &str, body: &str) -> (Session, World) {
    let mut s = Session::new(cfg);
    let mut w = World::default();
    let (head, body) = post(path, body);
    s.handle_request(0, head, body);
    w.pump(&mut s, 0);
    (s, w)
}

pub fn sse_head() -> Vec<(String, String)> {
    vec![("content-type".into(), "text/event-stream".into())]
}

/// A JSON stream request with `extra` headers, not answered yet.
pub fn requesting(cfg: Config, extra: &[(&str, &str)]) -> (Session, World) {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut s = Session::new(cfg);
    let mut w = World::default();
    s.handle_request(
        0,
        RequestHead::new("POST", "/v1/chat/completions", headers),
        Bytes::from(CHAT_STREAM),
    );
    w.pump(&mut s, 0);
    (s, w)
}

/// [`requesting`], answered by an upstream SSE head at t=1.
pub fn streaming_with(cfg: Config, extra: &[(&str, &str)]) -> (Session, World) {
    let (mut s, mut w) = requesting(cfg, extra);
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    (s, w)
}

pub const CONTENT: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
pub const FINISH: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
pub const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n";

pub fn fire_timers(s: &mut Session, w: &mut World, until: u64) {
    while let Some(due) = s.poll_timeout().filter(|d| *d <= until) {
        s.handle_timeout(due);
        w.pump(s, due);
    }
}

/// Feeds each event of a vector `gap` ms apart from t=2, firing timers in
/// between, and reports the platform taking every chunk at once. Returns
/// the number of upstream events fed.
pub fn feed(s: &mut Session, w: &mut World, vector: &str, gap: u64) -> usize {
    let mut t = 2;
    let mut n = 0;
    for event in vector.split_inclusive("\n\n") {
        fire_timers(s, w, t);
        s.handle_upstream_chunk(t, Bytes::copy_from_slice(event.as_bytes()));
        w.pump(s, t);
        s.handle_downstream_drained(t);
        w.pump(s, t);
        t += gap;
        n += 1;
    }
    fire_timers(s, w, t + 10_000);
    n
}

pub const LLAMA_CHAT: &str = include_str!("../vectors/llamacpp_chat.sse");

/// The generated text of a vector, read with a JSON parser.
pub fn content_of(vector: &str) -> (String, usize) {
    let mut text = String::new();
    let mut events = 0;
    for line in vector.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            if !c.is_empty() {
                text.push_str(c);
                events += 1;
            }
        }
    }
    (text, events)
}

pub fn cached_request(
    cfg: Config,
    kv: &std::collections::HashMap<String, Bytes>,
    key: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> (Session, World) {
    let mut s = Session::new(cfg);
    let mut w = World {
        kv: kv.clone(),
        ..World::default()
    };
    let mut headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("Authorization".to_string(), format!("Bearer {key}")),
    ];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let head = RequestHead::new("POST", "/v1/chat/completions", headers);
    s.handle_request(0, head, Bytes::copy_from_slice(body.as_bytes()));
    w.pump(&mut s, 0);
    (s, w)
}
