//! The semantic cache: an earlier answer to the same question asked in
//! other words, found by the question's embedding and replayed as a stream.
//!
//! ```text
//! request ─▶ plan: eligible? the question, its context hash
//!              │
//!              ▼
//!        POST EMBEDDINGS_URL (own timeout) ──fails──▶ upstream, nothing stored
//!              │ vector
//!              ▼
//!        read TABLES bucket values (index) ─▶ best record: cosine ≥ threshold
//!              │                               and not a minimal pair (guard)
//!              ├── none ──▶ upstream; a completed answer is stored once,
//!              │            and its record added to each bucket read
//!              ▼
//!        read the answer it points at (the exact cache's entry format)
//!              └─▶ replayed as a stream (X-Cache: semantic)
//! ```
//!
//! What is eligible (`plan`): chat requests with one choice, whose last
//! message is the user's, in plain text of at most `MAX_QUESTION_BYTES`,
//! with at most `SEMANTIC_MAX_TURNS` user turns, nothing that constrains
//! the output (tools, grammars, schemas, `stop`, `logit_bias`: the
//! speculative prefix's list), and no `Cache-Control` `no-store` or
//! `no-cache`; when the deployment has an embeddings endpoint and either
//! turns the cache on for every such request (`SEMANTIC_CACHE=on`, unless
//! the request says `X-Tokenedge-Cache: exact`) or the request asks
//! (`X-Tokenedge-Cache: semantic`).
//!
//! Partial reuse: with `X-Tokenedge-Cache: semantic-prefix` (or
//! `SEMANTIC_CACHE=prefix`), a match is not the answer but its opening: the
//! first `PREFIX_TOKENS` pieces are streamed at once while the upstream
//! continues them for this question, as a speculative prefix does
//! (`crate::core::prefix`); only streams whose upstream can continue an
//! assistant message take part.
//!
//! What is embedded is the last user message alone. Everything else that
//! shapes the answer — the scope (API key), the model, the system prompt,
//! the earlier turns, the length limit and every other field but the
//! sampling ones — is hashed into the *context*, which names every key
//! this cache reads or writes: a question is only ever matched against
//! questions asked of the same assistant in the same place. Sampling
//! fields (`temperature`, `seed`, …) are left out: a request that opts in
//! accepts an earlier answer to its question, drawn once.
//!
//! Nothing here does I/O; the session carries out the calls (`Search`
//! says what to read and write).

pub(crate) mod embedding;
pub(crate) mod guard;
pub(crate) mod index;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::core::cache::{self, Directives};
use crate::core::http::UpstreamRequest;
use crate::core::openai::{CompletionRequest, Endpoint};

use index::{Bucket, Record, Vector, TABLES};

/// Prefix of every key of the semantic cache; the version changes with
/// the bucket format, the hashing or the context.
pub(crate) const KEY_PREFIX: &str = "semantic:v1:";
/// Longest question embedded: longer ones are past what small embedding
/// models read (multilingual-e5-small stops at 512 tokens), so two that
/// differ only after that point would look the same.
pub(crate) const MAX_QUESTION_BYTES: usize = 1024;
/// Per-request switch: `semantic` (use it) or `exact` (do not).
pub(crate) const HEADER: &str = "x-tokenedge-cache";
/// Default similarity a stored question needs (see `docs/cache.md` for
/// how it was chosen on the labelled set).
pub const DEFAULT_THRESHOLD: f32 = 0.90;
/// Default time the embeddings endpoint has to answer.
pub const DEFAULT_TIMEOUT_MS: u64 = 300;
/// Default most user turns in an eligible conversation.
pub const DEFAULT_MAX_TURNS: usize = 1;
/// Default embedding model named in the request.
pub const DEFAULT_MODEL: &str = "multilingual-e5-small";
/// When requests use the semantic cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Never.
    Off,
    /// For every eligible request, unless it says `X-Tokenedge-Cache: exact`.
    On,
    /// Only for requests that say `X-Tokenedge-Cache: semantic` (or
    /// `semantic-prefix`).
    #[default]
    Request,
    /// For every eligible request, a match only as a speculative opening
    /// the upstream continues (as `X-Tokenedge-Cache: semantic-prefix`).
    Prefix,
}

/// What a request's `X-Tokenedge-Cache` header asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    /// `semantic`: a match answers.
    Answer,
    /// `semantic-prefix`: a match's opening is streamed while the upstream
    /// continues it for this question.
    Opening,
    /// `exact`: not the semantic cache.
    Exact,
}

/// The deployment's semantic-cache settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The embeddings endpoint (`EMBEDDINGS_URL`, a base URL or the whole
    /// `…/embeddings` URL); `None` turns the cache off.
    pub url: Option<String>,
    /// The model named in the embeddings request.
    pub model: String,
    /// Sent as `Authorization: Bearer …` to the embeddings endpoint.
    pub api_key: Option<String>,
    /// Time the endpoint has to answer; after it the request goes upstream.
    pub timeout_ms: u64,
    /// When requests use it.
    pub mode: Mode,
    /// Similarity a stored question needs to answer.
    pub threshold: f32,
    /// Most user turns in an eligible conversation.
    pub max_turns: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            url: None,
            model: DEFAULT_MODEL.into(),
            api_key: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            mode: Mode::Request,
            threshold: DEFAULT_THRESHOLD,
            max_turns: DEFAULT_MAX_TURNS,
        }
    }
}

impl Settings {
    /// From the deployment's variables (`get` gives a trimmed, non-empty
    /// value). Unusable values take their defaults.
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        use crate::core::config::vars;
        let url = get(vars::EMBEDDINGS_URL)
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .map(|u| {
                let u = u.trim_end_matches('/');
                if u.ends_with("/embeddings") {
                    u.to_owned()
                } else if u.ends_with("/v1") {
                    format!("{u}/embeddings")
                } else {
                    format!("{u}/v1/embeddings")
                }
            });
        let number = |name: &str| get(name).and_then(|v| v.parse::<f64>().ok());
        Self {
            url,
            model: get(vars::EMBEDDINGS_MODEL).unwrap_or_else(|| DEFAULT_MODEL.into()),
            api_key: get(vars::EMBEDDINGS_API_KEY),
            timeout_ms: number(vars::EMBEDDINGS_TIMEOUT_MS)
                .map_or(DEFAULT_TIMEOUT_MS, |v| v.clamp(1.0, 10_000.0) as u64),
            mode: match get(vars::SEMANTIC_CACHE)
                .map(|v| v.to_ascii_lowercase())
                .as_deref()
            {
                Some("on" | "1" | "true" | "yes") => Mode::On,
                Some("off" | "0" | "false" | "no") => Mode::Off,
                Some("prefix") => Mode::Prefix,
                _ => Mode::Request,
            },
            threshold: number(vars::SEMANTIC_THRESHOLD)
                .filter(|t| t.is_finite())
                .map_or(DEFAULT_THRESHOLD, |t| t.clamp(0.5, 1.0) as f32),
            max_turns: number(vars::SEMANTIC_MAX_TURNS)
                .map_or(DEFAULT_MAX_TURNS, |v| v.clamp(1.0, 64.0) as usize),
        }
    }
}

/// What the request's `X-Tokenedge-Cache` header asks, if it says.
pub(crate) fn asked(value: Option<&str>) -> Option<Asked> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("semantic") => Some(Asked::Answer),
        Some("semantic-prefix") => Some(Asked::Opening),
        Some("exact") => Some(Asked::Exact),
        _ => None,
    }
}

/// An eligible request's question and context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Hex SHA-256 of the scope and everything but the question.
    context: String,
    question: String,
    /// A match only opens the answer (a speculative prefix), which the
    /// upstream continues.
    pub(crate) opening: bool,
}

/// The semantic-cache plan for a validated request, or `None` when it may
/// not use the cache. `scope` is the caller's API key (or `None` for a
/// shared cache).
pub(crate) fn plan(
    settings: &Settings,
    asked: Option<Asked>,
    directives: Directives,
    request: &CompletionRequest,
    scope: Option<&str>,
) -> Option<Plan> {
    let opening = match (settings.mode, asked) {
        (Mode::Off, _) | (_, Some(Asked::Exact)) | (Mode::Request, None) => return None,
        (_, Some(Asked::Answer)) | (Mode::On, None) => false,
        (_, Some(Asked::Opening)) | (Mode::Prefix, None) => true,
    };
    if settings.url.is_none() || directives.no_store || directives.no_cache {
        return None;
    }
    let body = &request.body;
    if request.endpoint != Endpoint::Chat
        || !cache::one_choice(body)
        || crate::core::prefix::constrained(body)
    {
        return None;
    }
    let messages = body.get("messages")?.as_array()?;
    let (last, earlier) = messages.split_last()?;
    let turns = messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .count();
    if last.get("role")?.as_str()? != "user" || turns > settings.max_turns {
        return None;
    }
    let question = text_of(last.get("content")?)?;
    let question = question.trim();
    if question.is_empty() || question.len() > MAX_QUESTION_BYTES {
        return None;
    }
    let mut kept: Map<String, Value> = body
        .iter()
        .filter(|(k, _)| {
            !cache::IGNORED_FIELDS.contains(&k.as_str())
                && !crate::core::prefix::SAMPLING_FIELDS.contains(&k.as_str())
                && k.as_str() != "messages"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut last = last.as_object()?.clone();
    last.remove("content");
    let mut shape = earlier.to_vec();
    shape.push(Value::Object(last));
    kept.insert("messages".into(), Value::Array(shape));
    let mut canonical = String::new();
    cache::write_canonical(&mut canonical, &Value::Object(kept));
    let mut hash = cache::scoped_hash(scope);
    hash.update(b"semantic\0");
    hash.update(canonical.as_bytes());
    Some(Plan {
        context: crate::core::hex(&hash.finalize()),
        question: question.to_owned(),
        opening,
    })
}

/// A message's content as plain text: a string, or a list of only text
/// parts (joined by newlines); `None` when it holds anything else.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type")?.as_str()? {
                "text" => p.get("text")?.as_str(),
                _ => None,
            })
            .collect::<Option<Vec<&str>>>()
            .map(|t| t.join("\n")),
        _ => None,
    }
}

/// A match: the stored answer's key and how similar its question was.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found {
    pub(crate) key: String,
    pub(crate) similarity: f32,
}

/// One request's search: the embedding, the buckets read, the match; and
/// what to write when its own answer completes.
#[derive(Debug)]
pub(crate) struct Search {
    plan: Plan,
    /// The question's vector and its bucket in each table, once embedded.
    vector: Option<(Vector, [u8; TABLES])>,
    /// Each table's bucket, once read (`None`: not read, never written).
    tables: [Option<Bucket>; TABLES],
    /// The stored question it matched, once one did.
    found: Option<Found>,
}

impl Search {
    pub(crate) fn new(plan: Plan) -> Self {
        Self {
            plan,
            vector: None,
            tables: Default::default(),
            found: None,
        }
    }

    /// The request to the embeddings endpoint.
    pub(crate) fn embedding_request(&self, settings: &Settings) -> Option<UpstreamRequest> {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some(key) = &settings.api_key {
            headers.push(("authorization".into(), format!("Bearer {key}")));
        }
        Some(UpstreamRequest {
            method: "POST",
            url: settings.url.clone()?,
            headers,
            body: embedding::request_body(&settings.model, &self.plan.question).into(),
        })
    }

    /// The embeddings endpoint answered (2xx) with `answer`: the bucket
    /// keys to read, one per table in table order, or `None` when the
    /// answer holds no usable vector.
    pub(crate) fn embedded(&mut self, answer: &[u8]) -> Option<Vec<String>> {
        let unit = embedding::vector(answer)?;
        let buckets = index::buckets(&unit);
        self.vector = Some((Vector::new(&unit), buckets));
        Some(
            (0..TABLES)
                .map(|t| self.bucket_key(t, buckets[t]))
                .collect(),
        )
    }

    fn bucket_key(&self, table: usize, bucket: u8) -> String {
        format!("{KEY_PREFIX}{}:{table}:{bucket:02x}", self.plan.context)
    }

    fn answer_key_of(&self, id: &[u8; 16]) -> String {
        format!(
            "{KEY_PREFIX}{}:a:{}",
            self.plan.context,
            crate::core::hex(id)
        )
    }

    fn answer_id(&self) -> [u8; 16] {
        let digest = Sha256::digest(self.plan.question.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        id
    }

    /// The key this request's own answer is stored under.
    pub(crate) fn answer_key(&self) -> String {
        self.answer_key_of(&self.answer_id())
    }

    /// Table `table`'s bucket was read (`None`: absent or failed). Returns
    /// whether every table has been read.
    pub(crate) fn bucket_read(
        &mut self,
        table: usize,
        value: Option<&[u8]>,
        now_secs: u64,
    ) -> bool {
        if let Some(slot) = self.tables.get_mut(table) {
            *slot = Some(value.map_or_else(Bucket::default, |v| Bucket::decode(v, now_secs)));
        }
        self.tables.iter().all(Option::is_some)
    }

    /// Chooses the stored question most similar to this one among the
    /// buckets read, if it reaches `threshold` and its wording does not
    /// make it another question; returns it.
    pub(crate) fn choose(&mut self, threshold: f32) -> Option<&Found> {
        let (vector, _) = self.vector.as_ref()?;
        let best = self
            .tables
            .iter()
            .flatten()
            .flat_map(|b| &b.records)
            .map(|r| (r, r.vector.similarity(vector)))
            .filter(|(r, s)| {
                *s >= threshold && guard::same_question(&self.plan.question, &r.question)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(r, similarity)| Found {
                key: self.answer_key_of(&r.answer),
                similarity,
            });
        self.found = best;
        self.found.as_ref()
    }

    /// The match chosen, once one was.
    pub(crate) fn found(&self) -> Option<&Found> {
        self.found.as_ref()
    }

    /// Whether a match only opens the answer (`semantic-prefix`), for the
    /// upstream to continue.
    pub(crate) fn opening(&self) -> bool {
        self.plan.opening
    }

    /// The bucket values to write once this request's own answer is stored
    /// (for `ttl_secs` from `now_secs`): each bucket read, with this
    /// question added. Tables whose read did not come are left alone.
    pub(crate) fn additions(&self, now_secs: u64, ttl_secs: u64) -> Vec<(String, Vec<u8>)> {
        let Some((vector, buckets)) = &self.vector else {
            return Vec::new();
        };
        let record = Record {
            expiry: now_secs.saturating_add(ttl_secs),
            answer: self.answer_id(),
            vector: vector.clone(),
            question: self.plan.question.clone(),
        };
        self.tables
            .iter()
            .enumerate()
            .filter_map(|(t, read)| {
                let mut bucket = read.clone()?;
                bucket.insert(record.clone());
                Some((self.bucket_key(t, buckets[t]), bucket.encode()))
            })
            .collect()
    }

    /// Whether the question was embedded (so its answer can be indexed).
    pub(crate) fn has_vector(&self) -> bool {
        self.vector.is_some()
    }
}
