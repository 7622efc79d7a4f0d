//! Deployment configuration, parsed from the platform's variables and
//! secrets. The adapters only hand over a lookup function; every default,
//! every parse rule and every limit is here.

/// Default request body limit: 1 MiB, far above any chat turn a mobile app
/// sends, far below what would let one client tie up the isolate's memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default time the upstream has to send its first byte (response head or
/// first event). Long prompts on a busy CPU server take tens of seconds.
pub const DEFAULT_FIRST_BYTE_TIMEOUT_MS: u64 = 120_000;
/// Default time a complete (`stream: false`) answer may take: it arrives
/// in one piece when the whole generation is done, so the first-byte limit
/// does not apply to it.
pub const DEFAULT_NON_STREAM_TIMEOUT_MS: u64 = 300_000;
/// Default longest silence once the stream has started.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Default interval of SSE keep-alive comments while waiting for the first
/// token: below the 30–60 s idle timeouts of common proxies and carriers.
pub const DEFAULT_KEEPALIVE_INTERVAL_MS: u64 = 15_000;
/// How long an exact-cache entry lives: a day.
pub const DEFAULT_CACHE_TTL_SECS: u64 = 86_400;
/// How many tokens of an earlier answer a speculative prefix holds.
pub const DEFAULT_PREFIX_TOKENS: usize = 16;
/// How long a warmed prefix is not warmed again.
pub const DEFAULT_PREFETCH_WINDOW_SECS: u64 = 60;
/// Default cap on `n` (choices per request): a chat app shows one; a few
/// alternatives are plenty, and each costs a whole generation.
pub const DEFAULT_MAX_N: u64 = 8;
/// Default cap on `max_tokens` / `max_completion_tokens`: above what chat
/// models write in one answer, far below what a runaway request costs.
pub const DEFAULT_MAX_TOKENS_CAP: u64 = 16_384;
/// How long a stream can be resumed (replayed) after it started.
pub const DEFAULT_RESUME_TTL_SECS: u64 = 600;
/// How long a generation whose client left goes on, waiting for a reader
/// to reattach.
pub const DEFAULT_RESUME_GRACE_SECS: u64 = 30;
/// Default number of times a stream may move to another replica
/// mid-answer.
pub const DEFAULT_FAILOVER_BUDGET: u32 = 1;
/// A stream whose upstream writes fewer content events than this per
/// second, over [`DEFAULT_STALL_SECS`], is stalled: it fails over when it
/// can.
pub const DEFAULT_MIN_TOKENS_PER_SEC: u64 = 1;
/// The window a stall is measured over.
pub const DEFAULT_STALL_SECS: u64 = 10;
/// Longest stall window accepted (the idle timeout covers the rest).
pub const MAX_STALL_SECS: u64 = 600;
/// Most failovers accepted per stream: each costs a prefill of the whole
/// conversation so far on another replica.
pub const MAX_FAILOVER_BUDGET: u32 = 3;
/// Longest resume lifetime accepted: a day.
pub const MAX_RESUME_TTL_SECS: u64 = 86_400;
/// Longest grace period accepted: ten minutes (it bills tokens nobody may
/// read).
pub const MAX_RESUME_GRACE_SECS: u64 = 600;
/// Largest `MAX_BODY_BYTES` accepted: a Workers isolate has 128 MB for
/// every request it serves.
pub const MAX_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Longest first-byte or idle timeout accepted: ten minutes. Longer only
/// ties up a connection the client has long given up on.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Longest keep-alive interval accepted: carrier NATs and proxies cut idle
/// connections after 30–60 s.
pub const MAX_KEEPALIVE_INTERVAL_MS: u64 = 60_000;
/// Longest cache or prefix lifetime accepted: thirty days.
pub const MAX_CACHE_TTL_SECS: u64 = 30 * 86_400;
/// Longest prefetch debounce window accepted: a day.
pub const MAX_PREFETCH_WINDOW_SECS: u64 = 86_400;
/// Longest upstream error body we read to extract its message.
pub const MAX_UPSTREAM_ERROR_BYTES: usize = 64 * 1024;

/// The variable names, as set in `wrangler.toml` / `spin.toml` or as secrets.
pub mod vars {
    /// The upstream's replicas (comma- or space-separated base URLs).
    pub const UPSTREAM_URL: &str = "UPSTREAM_URL";
    /// Bearer token sent upstream (a secret).
    pub const UPSTREAM_API_KEY: &str = "UPSTREAM_API_KEY";
    /// Keys the clients must send (comma-separated; a secret).
    pub const API_KEYS: &str = "API_KEYS";
    /// `off`: serve without keys when `API_KEYS` is empty (local runs).
    pub const AUTH: &str = "AUTH";
    /// Largest `n` a request may ask for.
    pub const MAX_N: &str = "MAX_N";
    /// Largest `max_tokens` / `max_completion_tokens` a request may ask for.
    pub const MAX_TOKENS_CAP: &str = "MAX_TOKENS_CAP";
    /// Browser origins allowed to call: `*` or a comma-separated list.
    pub const CORS_ORIGINS: &str = "CORS_ORIGINS";
    /// Largest request body accepted.
    pub const MAX_BODY_BYTES: &str = "MAX_BODY_BYTES";
    /// Time the upstream has for its first byte.
    pub const FIRST_BYTE_TIMEOUT_MS: &str = "FIRST_BYTE_TIMEOUT_MS";
    /// Longest upstream silence once it has started.
    pub const IDLE_TIMEOUT_MS: &str = "IDLE_TIMEOUT_MS";
    /// Time a complete (`stream: false`) answer may take.
    pub const NON_STREAM_TIMEOUT_MS: &str = "NON_STREAM_TIMEOUT_MS";
    /// Interval of keep-alive comments on a silent stream.
    pub const KEEPALIVE_INTERVAL_MS: &str = "KEEPALIVE_INTERVAL_MS";
    /// Lifetime of cache entries and prefixes; 0 turns the caches off.
    pub const CACHE_TTL_SECS: &str = "CACHE_TTL_SECS";
    /// `true`: one cache for every API key.
    pub const CACHE_SHARED: &str = "CACHE_SHARED";
    /// `off`, `on` or `request` ([`super::Speculate`]).
    pub const SPECULATIVE_PREFIX: &str = "SPECULATIVE_PREFIX";
    /// Tokens in a stored speculative prefix.
    pub const PREFIX_TOKENS: &str = "PREFIX_TOKENS";
    /// `openai`, `llama.cpp` or `vllm` ([`super::Dialect`]).
    pub const UPSTREAM_DIALECT: &str = "UPSTREAM_DIALECT";
    /// How long a warmed prefix is not warmed again.
    pub const PREFETCH_WINDOW_SECS: &str = "PREFETCH_WINDOW_SECS";
    /// The KV binding (Workers) or store label (Spin) to use.
    pub const KV_STORE: &str = "KV_STORE";
    /// Requests per minute one API key may make (0 or unset: no limit).
    pub const RATE_LIMIT_RPM: &str = "RATE_LIMIT_RPM";
    /// Generations one API key may have running at once (0 or unset: no
    /// limit).
    pub const MAX_STREAMS_PER_KEY: &str = "MAX_STREAMS_PER_KEY";
    /// `on`: answers carry `X-Cache` and `Server-Timing` (off by default:
    /// they let a key holder probe what others asked).
    pub const DEBUG_HEADERS: &str = "DEBUG_HEADERS";
    /// `off`: streams are not resumable, and a client that leaves cancels
    /// its generation at once.
    pub const RESUME: &str = "RESUME";
    /// How long a stream can be resumed after it started.
    pub const RESUME_TTL_SECS: &str = "RESUME_TTL_SECS";
    /// How long a generation goes on after its client left.
    pub const RESUME_GRACE_SECS: &str = "RESUME_GRACE_SECS";
    /// Times a stream may move to another replica mid-answer (0: never).
    pub const FAILOVER_BUDGET: &str = "FAILOVER_BUDGET";
    /// A stream slower than this many tokens per second over
    /// `STALL_SECS` fails over (0: never).
    pub const MIN_TOKENS_PER_SEC: &str = "MIN_TOKENS_PER_SEC";
    /// The window a stall is measured over (0: never).
    pub const STALL_SECS: &str = "STALL_SECS";
    /// `off`: no demo page at `/`.
    pub const PAGE: &str = "PAGE";
    /// The embeddings endpoint of the semantic cache (unset: no semantic
    /// cache).
    pub const EMBEDDINGS_URL: &str = "EMBEDDINGS_URL";
    /// The embedding model to name.
    pub const EMBEDDINGS_MODEL: &str = "EMBEDDINGS_MODEL";
    /// Bearer token for the embeddings endpoint (a secret).
    pub const EMBEDDINGS_API_KEY: &str = "EMBEDDINGS_API_KEY";
    /// Time the embeddings endpoint has to answer.
    pub const EMBEDDINGS_TIMEOUT_MS: &str = "EMBEDDINGS_TIMEOUT_MS";
    /// `off`, `on` or `request` ([`crate::core::semantic::Mode`]).
    pub const SEMANTIC_CACHE: &str = "SEMANTIC_CACHE";
    /// Similarity a stored question needs to answer another.
    pub const SEMANTIC_THRESHOLD: &str = "SEMANTIC_THRESHOLD";
    /// Most user turns in a conversation the semantic cache answers.
    pub const SEMANTIC_MAX_TURNS: &str = "SEMANTIC_MAX_TURNS";
    /// Every name, for adapters that read them all at once.
    pub const ALL: &[&str] = &[
        UPSTREAM_URL,
        UPSTREAM_API_KEY,
        API_KEYS,
        AUTH,
        MAX_N,
        MAX_TOKENS_CAP,
        CORS_ORIGINS,
        MAX_BODY_BYTES,
        FIRST_BYTE_TIMEOUT_MS,
        IDLE_TIMEOUT_MS,
        NON_STREAM_TIMEOUT_MS,
        KEEPALIVE_INTERVAL_MS,
        CACHE_TTL_SECS,
        CACHE_SHARED,
        SPECULATIVE_PREFIX,
        PREFIX_TOKENS,
        UPSTREAM_DIALECT,
        PREFETCH_WINDOW_SECS,
        KV_STORE,
        RATE_LIMIT_RPM,
        MAX_STREAMS_PER_KEY,
        DEBUG_HEADERS,
        RESUME,
        RESUME_TTL_SECS,
        RESUME_GRACE_SECS,
        FAILOVER_BUDGET,
        MIN_TOKENS_PER_SEC,
        STALL_SECS,
        PAGE,
        EMBEDDINGS_URL,
        EMBEDDINGS_MODEL,
        EMBEDDINGS_API_KEY,
        EMBEDDINGS_TIMEOUT_MS,
        SEMANTIC_CACHE,
        SEMANTIC_THRESHOLD,
        SEMANTIC_MAX_TURNS,
    ];
}

/// Which browser origins may call the function.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CorsOrigins {
    /// No CORS headers at all: browsers on other origins are refused.
    #[default]
    None,
    /// `*`: any origin (credentials are never allowed).
    Any,
    /// An exact list of origins such as `https://app.example.com`.
    List(Vec<String>),
}

impl CorsOrigins {
    /// The value for `Access-Control-Allow-Origin` given the request's
    /// `Origin`, or `None` when that origin is not allowed.
    pub fn allow(&self, origin: Option<&str>) -> Option<String> {
        match (self, origin) {
            (CorsOrigins::None, _) | (_, None) => None,
            (CorsOrigins::Any, Some(_)) => Some("*".into()),
            (CorsOrigins::List(list), Some(o)) => list
                .iter()
                .find(|a| a.eq_ignore_ascii_case(o))
                .map(|_| o.to_owned()),
        }
    }
}

/// When a request may be answered with a speculative prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Speculate {
    /// Never.
    #[default]
    Off,
    /// For every eligible request, unless it says `X-Tokenedge-Prefix: off`.
    On,
    /// Only for requests that say `X-Tokenedge-Prefix: on`.
    Request,
}

/// What the upstream understands beyond the OpenAI API: how (or whether)
/// it continues an assistant message it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Plain OpenAI API: a trailing assistant message is a finished turn,
    /// so chat answers cannot be continued.
    #[default]
    OpenAi,
    /// llama.cpp's server: a trailing assistant message is continued.
    LlamaCpp,
    /// vLLM and SGLang: continued with `continue_final_message: true,
    /// add_generation_prompt: false`.
    Vllm,
}

impl Dialect {
    fn parse(v: &str) -> Self {
        match v.to_ascii_lowercase().replace(['.', '-', '_'], "").as_str() {
            "llamacpp" => Dialect::LlamaCpp,
            "vllm" | "sglang" => Dialect::Vllm,
            _ => Dialect::OpenAi,
        }
    }
}

/// The deployment's configuration, with every default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URLs of the OpenAI-compatible upstream's replicas, without a
    /// trailing `/`, e.g. `http://127.0.0.1:8081` (paths `/v1/...` are
    /// appended). `UPSTREAM_URL` lists them separated by commas or spaces.
    pub upstream_urls: Vec<String>,
    /// Sent upstream as `Authorization: Bearer …`; the client's own
    /// `Authorization` is never forwarded.
    pub upstream_api_key: Option<String>,
    /// Requests must carry one of these as a bearer token. When there are
    /// none, every route but `/healthz` answers 503 (`auth_not_configured`)
    /// unless `auth_off` says the deployment is meant to be open.
    pub api_keys: Vec<String>,
    /// `AUTH=off`: with no `api_keys`, serve everyone (local runs only). A
    /// missing, empty or unreadable key list never opens the gateway on
    /// its own.
    pub auth_off: bool,
    /// Which browser origins may call.
    pub cors_origins: CorsOrigins,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// Largest `n` accepted (400 above it).
    pub max_n: u64,
    /// Largest `max_tokens` / `max_completion_tokens` accepted (400 above).
    pub max_tokens_cap: u64,
    /// Time the upstream has for its first byte.
    pub first_byte_timeout_ms: u64,
    /// Longest upstream silence once it has started.
    pub idle_timeout_ms: u64,
    /// Time a complete (`stream: false`) answer may take, head included.
    pub non_stream_timeout_ms: u64,
    /// Downstream silence after which a stream gets a keep-alive.
    pub keepalive_interval_ms: u64,
    /// Exact-cache entry lifetime; 0 turns the cache off.
    pub cache_ttl_secs: u64,
    /// One cache for every API key instead of one per key.
    pub cache_shared: bool,
    /// Answers say how they were served (`X-Cache`, `Server-Timing`).
    /// Off by default: whether a request was a cache hit, and how fast,
    /// tells a key holder whether someone asked exactly that before.
    pub debug_headers: bool,
    /// When a request may be answered with a speculative prefix.
    pub speculate: Speculate,
    /// Tokens (streamed pieces) in a stored speculative prefix.
    pub prefix_tokens: usize,
    /// How the upstream continues an assistant message, if it does.
    pub dialect: Dialect,
    /// A prefix warmed by `/v1/prefetch` is not warmed again for this long.
    pub prefetch_window_secs: u64,
    /// The KV namespace binding (Workers) or store label (Spin); `None`
    /// for the runtime's default (`KV` / `default`).
    pub kv_store: Option<String>,
    /// Requests per minute per API key (0: no limit). One bucket per key
    /// (all keyless callers share one when `AUTH=off`).
    pub rate_limit_rpm: u32,
    /// Generations (streamed or not) one key may have running at once (0:
    /// no limit).
    pub max_streams_per_key: u32,
    /// Whether streams are resumable (`RESUME`, on by default).
    pub resume: bool,
    /// Whether the demo page is served at `/` (`PAGE`, on by default).
    pub page: bool,
    /// Whether the runtime accepts WebSockets (`/v1/ws`): set by the
    /// adapter, not a variable.
    pub sockets: bool,
    /// How long a stream can be resumed after it started.
    pub resume_ttl_secs: u64,
    /// How long a generation goes on after its client left.
    pub resume_grace_secs: u64,
    /// Times a stream may move to another replica mid-answer.
    pub failover_budget: u32,
    /// A stream slower than this (content events per second) over
    /// `stall_secs` is stalled (0: never).
    pub min_tokens_per_sec: u64,
    /// The window a stall is measured over (0: never).
    pub stall_secs: u64,
    /// The semantic cache's settings.
    pub semantic: crate::core::semantic::Settings,
    /// Set by the adapter, not a variable: the store of stream records
    /// takes writes as often as they come (a Durable Object's storage,
    /// Spin's store), so records are written and followed more often than
    /// Workers KV's one write per key per second allows.
    pub fast_stream_store: bool,
    /// Why this configuration cannot serve (an unusable `UPSTREAM_URL`
    /// item), answered as 503 `misconfigured` to every request.
    pub problem: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            upstream_urls: Vec::new(),
            upstream_api_key: None,
            api_keys: Vec::new(),
            auth_off: false,
            cors_origins: CorsOrigins::None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_n: DEFAULT_MAX_N,
            max_tokens_cap: DEFAULT_MAX_TOKENS_CAP,
            first_byte_timeout_ms: DEFAULT_FIRST_BYTE_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            non_stream_timeout_ms: DEFAULT_NON_STREAM_TIMEOUT_MS,
            keepalive_interval_ms: DEFAULT_KEEPALIVE_INTERVAL_MS,
            cache_ttl_secs: DEFAULT_CACHE_TTL_SECS,
            cache_shared: false,
            debug_headers: false,
            speculate: Speculate::Off,
            prefix_tokens: DEFAULT_PREFIX_TOKENS,
            dialect: Dialect::OpenAi,
            prefetch_window_secs: DEFAULT_PREFETCH_WINDOW_SECS,
            kv_store: None,
            rate_limit_rpm: 0,
            max_streams_per_key: 0,
            resume: true,
            page: true,
            sockets: false,
            resume_ttl_secs: DEFAULT_RESUME_TTL_SECS,
            resume_grace_secs: DEFAULT_RESUME_GRACE_SECS,
            failover_budget: DEFAULT_FAILOVER_BUDGET,
            min_tokens_per_sec: DEFAULT_MIN_TOKENS_PER_SEC,
            stall_secs: DEFAULT_STALL_SECS,
            semantic: Default::default(),
            fast_stream_store: false,
            problem: None,
        }
    }
}

impl Config {
    /// Builds the configuration from a variable lookup (vars and secrets).
    /// Unset or empty variables take their defaults; unparsable numbers do
    /// too, so a typo never takes the function down.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let number =
            |name: &str, default: u64| get(name).and_then(|v| v.parse().ok()).unwrap_or(default);
        let list = |name: &str| -> Vec<String> {
            get(name)
                .map(|v| {
                    v.split([',', ' ', '\n'])
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let origins = list(vars::CORS_ORIGINS);
        let upstream_urls: Vec<String> = list(vars::UPSTREAM_URL)
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        let problem = upstream_urls
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")) || u.ends_with("//"))
            .map(|u| {
                format!("UPSTREAM_URL has an unusable replica '{u}': each must be an http:// or https:// base URL")
            });
        Self {
            upstream_urls,
            upstream_api_key: get(vars::UPSTREAM_API_KEY),
            api_keys: list(vars::API_KEYS),
            auth_off: get(vars::AUTH).is_some_and(|v| v.eq_ignore_ascii_case("off")),
            cors_origins: if origins.is_empty() {
                CorsOrigins::None
            } else if origins.iter().any(|o| o == "*") {
                CorsOrigins::Any
            } else {
                CorsOrigins::List(
                    origins
                        .into_iter()
                        .map(|o| o.trim_end_matches('/').to_owned())
                        .collect(),
                )
            },
            max_body_bytes: usize::try_from(number(
                vars::MAX_BODY_BYTES,
                DEFAULT_MAX_BODY_BYTES as u64,
            ))
            .unwrap_or(usize::MAX)
            .min(MAX_MAX_BODY_BYTES),
            max_n: number(vars::MAX_N, DEFAULT_MAX_N).max(1),
            max_tokens_cap: number(vars::MAX_TOKENS_CAP, DEFAULT_MAX_TOKENS_CAP).max(1),
            first_byte_timeout_ms: number(
                vars::FIRST_BYTE_TIMEOUT_MS,
                DEFAULT_FIRST_BYTE_TIMEOUT_MS,
            )
            .clamp(1, MAX_TIMEOUT_MS),
            idle_timeout_ms: number(vars::IDLE_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS)
                .clamp(1, MAX_TIMEOUT_MS),
            non_stream_timeout_ms: number(
                vars::NON_STREAM_TIMEOUT_MS,
                DEFAULT_NON_STREAM_TIMEOUT_MS,
            )
            .clamp(1, MAX_TIMEOUT_MS),
            keepalive_interval_ms: number(
                vars::KEEPALIVE_INTERVAL_MS,
                DEFAULT_KEEPALIVE_INTERVAL_MS,
            )
            .clamp(1, MAX_KEEPALIVE_INTERVAL_MS),
            cache_ttl_secs: number(vars::CACHE_TTL_SECS, DEFAULT_CACHE_TTL_SECS)
                .min(MAX_CACHE_TTL_SECS),
            cache_shared: get(vars::CACHE_SHARED)
                .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes")),
            debug_headers: get(vars::DEBUG_HEADERS).is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "on" | "1" | "true" | "yes")
            }),
            speculate: match get(vars::SPECULATIVE_PREFIX)
                .map(|v| v.to_ascii_lowercase())
                .as_deref()
            {
                Some("on" | "1" | "true" | "yes") => Speculate::On,
                Some("request") => Speculate::Request,
                _ => Speculate::Off,
            },
            prefix_tokens: number(vars::PREFIX_TOKENS, DEFAULT_PREFIX_TOKENS as u64) as usize,
            dialect: get(vars::UPSTREAM_DIALECT)
                .map(|v| Dialect::parse(&v))
                .unwrap_or_default(),
            prefetch_window_secs: number(vars::PREFETCH_WINDOW_SECS, DEFAULT_PREFETCH_WINDOW_SECS)
                .min(MAX_PREFETCH_WINDOW_SECS),
            kv_store: get(vars::KV_STORE),
            rate_limit_rpm: u32::try_from(number(vars::RATE_LIMIT_RPM, 0)).unwrap_or(u32::MAX),
            max_streams_per_key: u32::try_from(number(vars::MAX_STREAMS_PER_KEY, 0))
                .unwrap_or(u32::MAX),
            resume: !get(vars::RESUME).is_some_and(|v| {
                matches!(
                    v.to_ascii_lowercase().as_str(),
                    "off" | "0" | "false" | "no"
                )
            }),
            page: !get(vars::PAGE).is_some_and(|v| {
                matches!(
                    v.to_ascii_lowercase().as_str(),
                    "off" | "0" | "false" | "no"
                )
            }),
            sockets: false,
            resume_ttl_secs: number(vars::RESUME_TTL_SECS, DEFAULT_RESUME_TTL_SECS)
                .clamp(1, MAX_RESUME_TTL_SECS),
            failover_budget: number(vars::FAILOVER_BUDGET, u64::from(DEFAULT_FAILOVER_BUDGET))
                .min(u64::from(MAX_FAILOVER_BUDGET)) as u32,
            min_tokens_per_sec: number(vars::MIN_TOKENS_PER_SEC, DEFAULT_MIN_TOKENS_PER_SEC)
                .min(1_000),
            stall_secs: number(vars::STALL_SECS, DEFAULT_STALL_SECS).min(MAX_STALL_SECS),
            semantic: crate::core::semantic::Settings::from_lookup(get),
            fast_stream_store: false,
            resume_grace_secs: number(vars::RESUME_GRACE_SECS, DEFAULT_RESUME_GRACE_SECS)
                .min(MAX_RESUME_GRACE_SECS),
            problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]);
        assert_eq!(c.max_body_bytes, 1024 * 1024);
        assert_eq!(c.first_byte_timeout_ms, 120_000);
        assert_eq!(c.keepalive_interval_ms, 15_000);
        assert!(c.api_keys.is_empty());
        assert_eq!(c.cors_origins, CorsOrigins::None);
        assert_eq!(c.speculate, Speculate::Off);
        assert_eq!(c.dialect, Dialect::OpenAi);
    }

    #[test]
    fn values_are_clamped_to_sane_maxima() {
        let huge = u64::MAX.to_string();
        let c = cfg(&[
            ("MAX_BODY_BYTES", &huge),
            ("FIRST_BYTE_TIMEOUT_MS", &huge),
            ("IDLE_TIMEOUT_MS", "0"),
            ("KEEPALIVE_INTERVAL_MS", &huge),
            ("CACHE_TTL_SECS", &huge),
            ("PREFETCH_WINDOW_SECS", &huge),
        ]);
        assert_eq!(c.max_body_bytes, MAX_MAX_BODY_BYTES);
        assert_eq!(c.first_byte_timeout_ms, MAX_TIMEOUT_MS);
        assert_eq!(c.idle_timeout_ms, 1);
        assert_eq!(c.keepalive_interval_ms, MAX_KEEPALIVE_INTERVAL_MS);
        assert_eq!(c.cache_ttl_secs, MAX_CACHE_TTL_SECS);
        assert_eq!(c.prefetch_window_secs, MAX_PREFETCH_WINDOW_SECS);
        assert!(c.problem.is_none());
        for bad in ["http://a:1, /", "http://a:1, b:2", "http:///"] {
            assert!(cfg(&[("UPSTREAM_URL", bad)]).problem.is_some(), "{bad}");
        }
        assert!(cfg(&[("UPSTREAM_URL", "https://a.example/, http://b:1")])
            .problem
            .is_none());
    }

    #[test]
    fn speculation_settings() {
        let c = cfg(&[
            ("SPECULATIVE_PREFIX", "request"),
            ("UPSTREAM_DIALECT", "llama.cpp"),
            ("PREFIX_TOKENS", "8"),
        ]);
        assert_eq!(c.speculate, Speculate::Request);
        assert_eq!(c.dialect, Dialect::LlamaCpp);
        assert_eq!(c.prefix_tokens, 8);
        assert_eq!(
            cfg(&[("UPSTREAM_DIALECT", "SGLang")]).dialect,
            Dialect::Vllm
        );
        assert_eq!(
            cfg(&[("SPECULATIVE_PREFIX", "on")]).speculate,
            Speculate::On
        );
    }

    #[test]
    fn parses_lists_and_numbers() {
        let c = cfg(&[
            (
                "UPSTREAM_URL",
                "http://127.0.0.1:8081/, http://10.0.0.2:8081",
            ),
            ("API_KEYS", "k1, k2,,k3"),
            ("CORS_ORIGINS", "https://a.example, https://b.example/"),
            ("MAX_BODY_BYTES", "2048"),
            ("FIRST_BYTE_TIMEOUT_MS", "oops"),
        ]);
        assert_eq!(
            c.upstream_urls,
            ["http://127.0.0.1:8081", "http://10.0.0.2:8081"]
        );
        assert_eq!(c.api_keys, ["k1", "k2", "k3"]);
        assert_eq!(c.max_body_bytes, 2048);
        assert_eq!(c.first_byte_timeout_ms, DEFAULT_FIRST_BYTE_TIMEOUT_MS);
        assert_eq!(
            c.cors_origins.allow(Some("https://b.example")).as_deref(),
            Some("https://b.example")
        );
        assert_eq!(c.cors_origins.allow(Some("https://evil.example")), None);
        assert_eq!(
            cfg(&[("CORS_ORIGINS", "*")])
                .cors_origins
                .allow(Some("x"))
                .as_deref(),
            Some("*")
        );
    }
}
