//! The exact response cache: which requests may be answered from KV, the
//! key they are stored under, and the stored entry.
//!
//! A request is cacheable when its output is deterministic — `temperature`
//! is 0 or a `seed` is given — it asks for one choice, and it does not say
//! `Cache-Control: no-store` (`no-cache` skips the lookup but still
//! stores). The key hashes the caller's scope (its API key, or one shared
//! scope when the deployment opts in) with a canonical form of the request
//! body: every field except `IGNORED_FIELDS`, object keys sorted at every
//! depth, numbers as serde_json prints them. So the model, the messages or
//! prompt, and every sampling, length, stop, penalty, tool and format
//! parameter are part of it, including ones this code does not know.
//!
//! Only completed answers are stored (a finish reason seen, no upstream
//! failure, no tool-call or other non-text delta), as one KV value written
//! once at the end: there is never a partial entry. An entry is the text
//! pieces as the upstream streamed them, the finish reason and the usage,
//! as zlib-compressed JSON;
//! a hit is replayed from it as a stream in any format, or as JSON.
//!
//! A Responses API answer also keeps its typed events as they came
//! (`Entry::events`): a hit replays that same event sequence, and a
//! `stream: false` hit answers with the response object of its final
//! event. Only streamed Responses answers are stored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::core::compress::Encoder;
use crate::core::encoding::Coding;
use crate::core::openai::{CompletionRequest, Endpoint};

/// Prefix of every cache key; the version changes with the entry format.
pub const KEY_PREFIX: &str = "cache:v2:";
/// Largest entry stored, far below Workers KV's 25 MiB per value.
pub(crate) const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Compression level of stored entries: written once, read many times.
const ENTRY_LEVEL: u32 = 9;
/// How long a lookup may hold the request before it goes upstream anyway.
pub(crate) const LOOKUP_TIMEOUT_MS: u64 = 300;
/// Response header saying how the caches took part: `hit` (exact cache),
/// `prefix` (speculative prefix), `semantic` (a semantic match),
/// `semantic-prefix` (a semantic match's opening, continued upstream),
/// `miss` (looked up, not found) or `bypass` (not cacheable).
pub(crate) const X_CACHE: &str = "x-cache";

/// Request fields that do not change the generated output.
pub(crate) const IGNORED_FIELDS: &[&str] = &[
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
];

/// What the cache may do for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) key: String,
    /// Look the key up before going upstream (false for `no-cache`).
    pub(crate) read: bool,
}

/// The cache plan for a validated request, or `None` when it is not
/// cacheable. `scope` is the caller's API key (or `None` for a shared
/// cache).
pub(crate) fn plan(
    directives: Directives,
    request: &CompletionRequest,
    scope: Option<&str>,
) -> Option<Plan> {
    if directives.no_store {
        return None;
    }
    let body = &request.body;
    let deterministic = body
        .get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|t| t == 0.0)
        || body.get("seed").is_some_and(Value::is_number);
    if !deterministic || !one_choice(body) {
        return None;
    }
    Some(Plan {
        key: key(request.endpoint, &request.body, scope),
        read: !directives.no_cache,
    })
}

/// The request `Cache-Control` directives the caches obey, read once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    /// `no-store`: neither read nor write any cache.
    pub(crate) no_store: bool,
    /// `no-cache`: do not answer from the cache, but store the answer.
    pub(crate) no_cache: bool,
}

impl Directives {
    /// Reads a `Cache-Control` header value (absent = no directives).
    pub(crate) fn parse(value: Option<&str>) -> Self {
        let has = |name: &str| {
            value.is_some_and(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case(name)))
        };
        Self {
            no_store: has("no-store"),
            no_cache: has("no-cache"),
        }
    }
}

/// Whether the request asks for one answer (`n` absent, null or 1, and one
/// prompt): only such an answer is stored or speculated.
pub(crate) fn one_choice(body: &Map<String, Value>) -> bool {
    crate::core::openai::choices(body) == 1
}

/// [`KEY_PREFIX`] + hex SHA-256 of the scope and the canonical request.
pub(crate) fn key(endpoint: Endpoint, body: &Map<String, Value>, scope: Option<&str>) -> String {
    let mut canonical = String::new();
    canonical.push_str(endpoint.path());
    canonical.push('\n');
    let kept: Map<String, Value> = body
        .iter()
        .filter(|(k, _)| !IGNORED_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    write_canonical(&mut canonical, &Value::Object(kept));
    let mut hash = scoped_hash(scope);
    hash.update(canonical.as_bytes());
    let mut out = String::with_capacity(KEY_PREFIX.len() + 64);
    out.push_str(KEY_PREFIX);
    out.push_str(&crate::core::hex(&hash.finalize()));
    out
}

/// A hash started with the scope: the API key (itself hashed, so no key is
/// ever part of a KV key) or the shared scope.
pub(crate) fn scoped_hash(scope: Option<&str>) -> Sha256 {
    let mut hash = Sha256::new();
    match scope {
        Some(s) => {
            hash.update(b"key\0");
            hash.update(Sha256::digest(s.as_bytes()));
        }
        None => hash.update(b"shared\0"),
    }
    hash
}

/// JSON with object keys sorted at every depth.
pub(crate) fn write_canonical(out: &mut String, v: &Value) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(out, &map[k]);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Entry {
    /// The model the upstream named.
    pub model: String,
    /// Unix seconds when it was generated.
    pub created: u64,
    /// The text, in the pieces the upstream streamed it in.
    pub pieces: Vec<String>,
    /// Why the upstream stopped (`stop`, `length`, …).
    pub finish_reason: String,
    /// The upstream's usage object, when it sent one.
    #[serde(default)]
    pub usage: Option<Value>,
    /// Its tier: times it was served and written back, up to
    /// [`TOP_TIER`] ([`tier_ttl`]).
    #[serde(default)]
    pub hits: u32,
    /// Unix seconds when the store forgets it, as last written (0: not
    /// known, an entry written before it was recorded).
    #[serde(default)]
    pub expires: u64,
    /// A Responses API answer's typed events, each event's data as it
    /// came (empty for chat and completions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// The tier at which an entry lives longest ([`tier_ttl`]).
pub const TOP_TIER: u32 = 3;

/// How long an entry of tier `hits` lives, from `CACHE_TTL_SECS` (`base`):
/// half of it when never served, the whole from its first hit, twice from
/// its second, four times from its third (at most thirty days). Each hit
/// that finds the entry below the top tier moves it up one, so an answer
/// asked for often stays and one asked once makes room sooner.
pub fn tier_ttl(base: u64, hits: u32) -> u64 {
    let ttl = match hits {
        0 => base / 2,
        1 => base,
        2 => base.saturating_mul(2),
        _ => base.saturating_mul(4),
    };
    ttl.clamp(1, crate::core::config::MAX_CACHE_TTL_SECS.max(base))
}

impl Entry {
    /// The entry as it is written back after serving it at `now_secs`,
    /// with its TTL, when that moves it up a tier or it has used up half
    /// its lifetime; `None` when the stored one is good as it is. So a
    /// popular entry is rewritten three times while it climbs, then about
    /// once per half lifetime, never once per hit.
    pub(crate) fn promoted(&self, now_secs: u64, base: u64) -> Option<(Entry, u64)> {
        let hits = (self.hits + 1).min(TOP_TIER);
        let ttl = tier_ttl(base, hits);
        let climbs = hits > self.hits;
        let left = self.expires.saturating_sub(now_secs);
        if !climbs && left >= ttl / 2 {
            return None;
        }
        let entry = Entry {
            hits,
            expires: now_secs.saturating_add(ttl),
            ..self.clone()
        };
        Some((entry, ttl))
    }
}

impl Entry {
    /// The stored form: the entry's JSON, zlib-compressed.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() / 3 + 16);
        let mut encoder = Encoder::new(Coding::Deflate, ENTRY_LEVEL);
        encoder.encode_and_flush(&json, &mut out);
        encoder.finish(&mut out);
        out
    }

    /// An entry from its stored form; `None` for anything else (a damaged
    /// or older value, or one that inflates past `MAX_ENTRY_BYTES`).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let json =
            miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(bytes, MAX_ENTRY_BYTES * 2)
                .ok()?;
        serde_json::from_slice(&json).ok()
    }

    fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.pieces.concat().as_bytes());
        h.update(self.created.to_be_bytes());
        let d = h.finalize();
        format!("cmpl-cache-{}", crate::core::hex(&d[..12]))
    }

    /// The entry as an upstream event stream (`data: …` events ending in
    /// `[DONE]`), to be re-streamed in the client's format.
    pub(crate) fn to_sse(&self, endpoint: Endpoint) -> Vec<u8> {
        self.write_sse(endpoint, true)
    }

    /// Only the opening of such a stream: the role and the text pieces,
    /// with no finish, usage or `[DONE]` (a speculative prefix, which the
    /// upstream continues).
    pub(crate) fn to_sse_opening(&self, endpoint: Endpoint) -> Vec<u8> {
        self.write_sse(endpoint, false)
    }

    fn write_sse(&self, endpoint: Endpoint, complete: bool) -> Vec<u8> {
        if endpoint == Endpoint::Responses {
            return self.write_events();
        }
        let id = self.id();
        let object = match endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions | Endpoint::Responses => "text_completion",
        };
        let event = |choices: Value, usage: Option<&Value>| {
            let mut e = serde_json::json!({
                "id": id, "object": object, "created": self.created, "model": self.model,
                "choices": choices,
            });
            if let Some(u) = usage {
                e["usage"] = u.clone();
            }
            format!("data: {e}\n\n")
        };
        let piece = |text: &str, finish: Option<&str>| match endpoint {
            Endpoint::Chat => {
                serde_json::json!([{"index": 0, "delta": {"content": text}, "finish_reason": finish}])
            }
            Endpoint::Completions | Endpoint::Responses => {
                serde_json::json!([{"index": 0, "text": text, "finish_reason": finish}])
            }
        };
        let mut out = String::new();
        if endpoint == Endpoint::Chat {
            out.push_str(&event(
                serde_json::json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
                None,
            ));
        }
        for p in &self.pieces {
            out.push_str(&event(piece(p, None), None));
        }
        if !complete {
            return out.into_bytes();
        }
        out.push_str(&event(piece("", Some(&self.finish_reason)), None));
        if let Some(u) = &self.usage {
            out.push_str(&event(serde_json::json!([]), Some(u)));
        }
        out.push_str("data: [DONE]\n\n");
        out.into_bytes()
    }

    /// A Responses API answer's stored events, each named by its type.
    fn write_events(&self) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        for data in &self.events {
            let name = serde_json::from_str::<TypeView>(data).ok().map(|v| v.kind);
            crate::core::sse::write_event(&mut out, name.as_deref(), data);
        }
        out.to_vec()
    }

    /// The entry as a complete (`stream: false`) response body.
    pub(crate) fn to_json(&self, endpoint: Endpoint) -> Value {
        if endpoint == Endpoint::Responses {
            // The final event's response object is the whole answer.
            return self
                .events
                .last()
                .and_then(|e| serde_json::from_str::<Value>(e).ok())
                .and_then(|mut v| v.get_mut("response").map(Value::take))
                .unwrap_or_default();
        }
        let text = self.pieces.concat();
        let (object, choice) = match endpoint {
            Endpoint::Chat => (
                "chat.completion",
                serde_json::json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": self.finish_reason}),
            ),
            Endpoint::Completions | Endpoint::Responses => (
                "text_completion",
                serde_json::json!({"index": 0, "text": text, "finish_reason": self.finish_reason}),
            ),
        };
        let mut v = serde_json::json!({
            "id": self.id(), "object": object, "created": self.created, "model": self.model,
            "choices": [choice],
        });
        if let Some(u) = &self.usage {
            v["usage"] = u.clone();
        }
        v
    }

    /// An entry from a complete (`stream: false`) upstream answer, when it
    /// holds exactly one text choice that finished cleanly (a Responses
    /// API answer has no events to replay as a stream: not stored).
    pub(crate) fn from_json(endpoint: Endpoint, body: &[u8], created: u64) -> Option<Self> {
        if endpoint == Endpoint::Responses {
            return None;
        }
        let v: Value = serde_json::from_slice(body).ok()?;
        let choices = v.get("choices")?.as_array()?;
        let [choice] = choices.as_slice() else {
            return None;
        };
        let message = choice.get("message");
        if message.is_some_and(|m| m.get("tool_calls").is_some_and(|t| !t.is_null())) {
            return None;
        }
        let text = message
            .and_then(|m| m.get("content"))
            .or_else(|| choice.get("text"))?
            .as_str()?;
        Some(Entry {
            hits: 0,
            expires: 0,
            model: v.get("model").and_then(Value::as_str).unwrap_or("").into(),
            created,
            pieces: vec![text.to_owned()],
            finish_reason: choice
                .get("finish_reason")?
                .as_str()
                .filter(|f| crate::core::openai::storable_finish(f))?
                .to_owned(),
            usage: v.get("usage").filter(|u| !u.is_null()).cloned(),
            events: Vec::new(),
        })
    }
}

/// An event's `type`.
#[derive(Deserialize)]
struct TypeView {
    #[serde(rename = "type")]
    kind: String,
}

/// Collects a streamed answer while it passes through, for the cache.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    entry: Entry,
    bytes: usize,
    /// Keep only this many pieces (a speculative prefix).
    max_pieces: Option<usize>,
    /// Something made the answer unfit to store (a non-text delta, an
    /// error event, too large).
    spoiled: bool,
    /// The answer is a Responses API stream.
    responses: bool,
}

impl Recorder {
    pub(crate) fn new(created: u64) -> Self {
        Self {
            entry: Entry {
                created,
                ..Entry::default()
            },
            ..Self::default()
        }
    }

    /// Keeps only the first `n` text pieces.
    pub(crate) fn keep_pieces(mut self, n: usize) -> Self {
        self.max_pieces = Some(n);
        self
    }

    /// Records a Responses API stream (see [`Recorder::event`]).
    pub(crate) fn responses(mut self) -> Self {
        self.responses = true;
        self
    }

    /// One upstream event's data.
    pub(crate) fn event(&mut self, data: &str) {
        if self.spoiled || data == "[DONE]" {
            return;
        }
        if self.responses {
            return self.response_event(data);
        }
        let Some(parts) = crate::core::openai::chunk_parts(data) else {
            return;
        };
        if parts.error.is_some() || parts.other_delta.is_some() {
            self.spoiled = true;
            return;
        }
        if self.entry.model.is_empty() {
            if let Some(m) = crate::core::openai::chunk_model(data) {
                self.entry.model = m;
            }
        }
        let room = self.max_pieces.is_none_or(|n| self.entry.pieces.len() < n);
        if !parts.text.is_empty() && room {
            self.bytes += parts.text.len() + 8;
            self.entry.pieces.push(parts.text.into_owned());
        }
        if let Some(f) = parts.finish_reason {
            self.entry.finish_reason = f.into_owned();
        }
        if let Some(u) = parts.usage {
            self.entry.usage = serde_json::from_str(u.get()).ok();
        }
        if self.bytes > MAX_ENTRY_BYTES {
            self.spoiled = true;
        }
    }

    /// One typed event: kept whole; its text kept as a piece. Content that
    /// is not text (a function call, reasoning) or an error spoils it,
    /// as a chat answer's non-text delta does.
    fn response_event(&mut self, data: &str) {
        use crate::core::openai::ResponseKind;
        let Some(facts) = crate::core::openai::inspect_response_event(data) else {
            return;
        };
        match facts.kind {
            ResponseKind::OtherContent | ResponseKind::Failed | ResponseKind::Error => {
                self.spoiled = true;
                return;
            }
            ResponseKind::Text if !facts.text.is_empty() => {
                self.entry.pieces.push(facts.text.clone().into_owned());
            }
            ResponseKind::Completed | ResponseKind::Incomplete => {
                self.entry.finish_reason = facts.finish_reason().unwrap_or_default().into_owned();
                self.entry.usage = facts.usage.and_then(|u| serde_json::from_str(u.get()).ok());
                if let Some(m) = &facts.model {
                    self.entry.model = m.clone().into_owned();
                }
            }
            ResponseKind::Text | ResponseKind::Other => {}
        }
        self.bytes += data.len() + 8;
        self.entry.events.push(data.to_owned());
        if self.bytes > MAX_ENTRY_BYTES {
            self.spoiled = true;
        }
    }

    /// The entry, when the answer completed cleanly and may be stored.
    pub(crate) fn finish(self) -> Option<Entry> {
        let storable = crate::core::openai::storable_finish(&self.entry.finish_reason);
        (!self.spoiled && storable).then_some(self.entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::http::RequestHead;
    use crate::core::openai::parse_request;

    fn req(body: &str, headers: &[(&str, &str)]) -> (RequestHead, CompletionRequest) {
        let head = RequestHead::new(
            "POST",
            "/v1/chat/completions",
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        (
            head,
            parse_request(Endpoint::Chat, body.as_bytes()).unwrap(),
        )
    }

    /// Found by fuzzing (`fuzz/regressions/kv_records/`): a number in the
    /// stored usage must come back as the same number.
    #[test]
    fn a_stored_float_survives_its_round_trip() {
        let json = format!(
            r#"{{"model":"m","created":3,"pieces":["a"],"finish_reason":"stop","usage":{{"x":{}}}}}"#,
            "4".repeat(86)
        );
        let entry: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(Entry::decode(&entry.encode()), Some(entry));
    }

    fn plan_of(body: &str, headers: &[(&str, &str)], scope: Option<&str>) -> Option<Plan> {
        let (h, r) = req(body, headers);
        plan(Directives::parse(h.header("cache-control")), &r, scope)
    }

    const MSG: &str = r#""model":"m","messages":[{"role":"user","content":"hi"}]"#;

    #[test]
    fn what_is_cacheable() {
        let k = Some("k1");
        assert!(plan_of(&format!("{{{MSG},\"temperature\":0}}"), &[], k).is_some());
        assert!(plan_of(&format!("{{{MSG},\"temperature\":0.0}}"), &[], k).is_some());
        assert!(plan_of(&format!("{{{MSG},\"seed\":7,\"temperature\":0.9}}"), &[], k).is_some());
        assert!(
            plan_of(&format!("{{{MSG}}}"), &[], k).is_none(),
            "default temperature samples"
        );
        assert!(plan_of(&format!("{{{MSG},\"temperature\":0.2}}"), &[], k).is_none());
        assert!(plan_of(&format!("{{{MSG},\"temperature\":0,\"n\":2}}"), &[], k).is_none());
        assert!(plan_of(&format!("{{{MSG},\"temperature\":0,\"n\":1}}"), &[], k).is_some());
        let body = format!("{{{MSG},\"temperature\":0}}");
        assert!(plan_of(&body, &[("Cache-Control", "no-store")], k).is_none());
        assert!(plan_of(&body, &[("cache-control", "max-age=0, No-Store")], k).is_none());
        let p = plan_of(&body, &[("cache-control", "no-cache")], k).unwrap();
        assert!(!p.read, "no-cache skips the lookup but stores");
        assert!(plan_of(&body, &[], k).unwrap().read);
    }

    #[test]
    fn key_ignores_order_stream_and_user_but_not_parameters() {
        let k = Some("k1");
        let base = plan_of(
            &format!("{{{MSG},\"temperature\":0,\"max_tokens\":5}}"),
            &[],
            k,
        )
        .unwrap()
        .key;
        assert!(base.starts_with(KEY_PREFIX) && base.len() == KEY_PREFIX.len() + 64);
        let reordered = r#"{"max_tokens":5,"temperature":0,"messages":[{"content":"hi","role":"user"}],"model":"m","stream":true,"user":"u","stream_options":{"include_usage":true}}"#;
        assert_eq!(plan_of(reordered, &[], k).unwrap().key, base);
        for changed in [
            r#""temperature":0,"max_tokens":6"#,
            r#""temperature":0,"max_tokens":5,"stop":["x"]"#,
            r#""temperature":0,"max_tokens":5,"top_p":0.5"#,
            r#""temperature":0,"max_tokens":5,"response_format":{"type":"json_object"}"#,
            r#""temperature":0,"max_tokens":5,"some_future_knob":1"#,
        ] {
            assert_ne!(
                plan_of(&format!("{{{MSG},{changed}}}"), &[], k)
                    .unwrap()
                    .key,
                base,
                "{changed}"
            );
        }
        let other_model = r#"{"model":"m2","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":5}"#;
        assert_ne!(plan_of(other_model, &[], k).unwrap().key, base);
        let other_text = r#"{"model":"m","messages":[{"role":"user","content":"hi!"}],"temperature":0,"max_tokens":5}"#;
        assert_ne!(plan_of(other_text, &[], k).unwrap().key, base);
    }

    #[test]
    fn scopes_do_not_share_entries() {
        let body = format!("{{{MSG},\"temperature\":0}}");
        let a = plan_of(&body, &[], Some("key-a")).unwrap().key;
        let b = plan_of(&body, &[], Some("key-b")).unwrap().key;
        let shared = plan_of(&body, &[], None).unwrap().key;
        assert_ne!(a, b);
        assert_ne!(a, shared);
        assert!(!a.contains("key-a"));
        let (h, r) = req(&body, &[]);
        let completions = key(Endpoint::Completions, &r.body, Some("key-a"));
        assert_ne!(
            completions,
            plan(
                Directives::parse(h.header("cache-control")),
                &r,
                Some("key-a")
            )
            .unwrap()
            .key
        );
    }

    #[test]
    fn recorder_keeps_only_completed_text_answers() {
        let mut r = Recorder::new(100);
        r.event(r#"{"model":"smol","choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}"#);
        r.event(r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#);
        r.event(r#"{"choices":[{"index":0,"delta":{"content":"lo"}}]}"#);
        r.event(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#);
        r.event(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        );
        r.event("[DONE]");
        let e = r.finish().unwrap();
        assert_eq!(e.pieces, ["Hel", "lo"]);
        assert_eq!(e.finish_reason, "stop");
        assert_eq!(e.model, "smol");
        assert_eq!(e.usage.as_ref().unwrap()["completion_tokens"], 2);
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        assert!(
            Entry::decode(b"{\"pieces\":[]}").is_none(),
            "stored entries are compressed"
        );
        let long = Entry {
            pieces: vec![" the quick brown fox".into(); 200],
            ..e.clone()
        };
        let stored = long.encode();
        assert!(stored.len() * 4 < serde_json::to_vec(&long).unwrap().len());
        assert_eq!(Entry::decode(&stored).unwrap(), long);
        assert!(Entry::decode(&stored[..stored.len() / 2]).is_none());

        let mut cut = Recorder::new(1);
        cut.event(r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#);
        assert!(cut.finish().is_none(), "no finish reason: never stored");

        let mut tools = Recorder::new(1);
        tools.event(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"f"}}]}}]}"#);
        tools.event(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#);
        assert!(tools.finish().is_none());

        let mut error = Recorder::new(1);
        error.event(r#"{"error":{"message":"boom"}}"#);
        error.event(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#);
        assert!(error.finish().is_none());
    }

    #[test]
    fn entries_served_often_live_longer_and_are_rewritten_rarely() {
        let base = 1000;
        assert_eq!(
            (0..=4).map(|h| tier_ttl(base, h)).collect::<Vec<_>>(),
            [500, 1000, 2000, 4000, 4000]
        );
        assert_eq!(tier_ttl(1, 0), 1);
        let max = crate::core::config::MAX_CACHE_TTL_SECS;
        assert_eq!(tier_ttl(max, TOP_TIER), max);
        // Stored at t=0 for half the base, then served every 10 s: each
        // hit below the top tier writes it back a tier up; at the top, it
        // is written only once half its life is gone.
        let mut e = Entry {
            expires: 500,
            ..Entry::default()
        };
        let mut writes = Vec::new();
        for now in (0..20_000).step_by(10) {
            assert!(e.expires > now, "a served entry never expires");
            if let Some((next, ttl)) = e.promoted(now, base) {
                assert_eq!(next.expires, now + ttl);
                writes.push((now, next.hits, ttl));
                e = next;
            }
        }
        assert_eq!(&writes[..3], [(0, 1, 1000), (10, 2, 2000), (20, 3, 4000)]);
        let renewals: Vec<u64> = writes[2..].windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert!(
            !renewals.is_empty() && renewals.iter().all(|&gap| gap == 2010),
            "{renewals:?}"
        );
        // An entry stored before tiers: one write, then as any other.
        assert!(Entry::default().promoted(10, base).is_some());
    }

    #[test]
    fn replays_as_stream_and_json() {
        let e = Entry {
            model: "smol".into(),
            created: 5,
            pieces: vec!["Hel".into(), "lo".into()],
            finish_reason: "length".into(),
            usage: Some(serde_json::json!({"completion_tokens": 2})),
            ..Entry::default()
        };
        let sse = String::from_utf8(e.to_sse(Endpoint::Chat)).unwrap();
        let mut again = Recorder::new(5);
        for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
            again.event(line);
        }
        assert_eq!(again.finish().unwrap(), e);
        assert!(sse.ends_with("data: [DONE]\n\n"));
        let json = e.to_json(Endpoint::Chat);
        assert_eq!(json["choices"][0]["message"]["content"], "Hello");
        assert_eq!(json["usage"]["completion_tokens"], 2);
        let back = Entry::from_json(Endpoint::Chat, json.to_string().as_bytes(), 5).unwrap();
        assert_eq!(back.pieces.concat(), "Hello");
        assert_eq!(back.finish_reason, "length");
        let text = e.to_json(Endpoint::Completions);
        assert_eq!(text["choices"][0]["text"], "Hello");
        let sse = String::from_utf8(e.to_sse(Endpoint::Completions)).unwrap();
        assert!(sse.contains(r#""text":"Hel""#));
    }

    #[test]
    fn a_responses_answer_keeps_its_typed_events() {
        let vector = include_str!("../../tests/vectors/llamacpp_responses.sse");
        let mut r = Recorder::new(7).responses();
        for data in vector.lines().filter_map(|l| l.strip_prefix("data: ")) {
            r.event(data);
        }
        let e = Entry::decode(&r.finish().unwrap().encode()).unwrap();
        assert_eq!(e.to_sse(Endpoint::Responses), vector.as_bytes());
        assert_eq!(e.finish_reason, "stop");
        assert_eq!(e.usage.as_ref().unwrap()["output_tokens"], 8);
        let json = e.to_json(Endpoint::Responses);
        assert_eq!(json["object"], "response");
        assert_eq!(json["output"][0]["content"][0]["text"], e.pieces.concat());
        assert!(Entry::from_json(Endpoint::Responses, json.to_string().as_bytes(), 1).is_none());

        let mut cut = Recorder::new(7).responses();
        for data in vector
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .take(8)
        {
            cut.event(data);
        }
        assert!(cut.finish().is_none(), "no final event: never stored");
        let vllm = include_str!("../../tests/vectors/vllm_responses.sse");
        let mut call = Recorder::new(7).responses();
        for data in vllm.lines().filter_map(|l| l.strip_prefix("data: ")) {
            call.event(data);
        }
        assert!(call.finish().is_none(), "a function call is not stored");
    }
}
