//! Intake: the request head read once, into the facts every later phase
//! reads — the route (after method, key and configuration checks), the
//! caller's key, how a stream is to be framed and paced, the link hints and
//! the cache directives — all before any of the body is read. The body is
//! only checked and parsed here, on request, into a
//! validated [`CompletionRequest`]; nothing is decided about what to do
//! with it.

use crate::core::access;
use crate::core::cache::Directives;
use crate::core::config::Config;
use crate::core::encoding::{self, Coding};
use crate::core::error::{Error, ErrorKind};
use crate::core::format::{self, Format};
use crate::core::http::{Headers, RequestHead};
use crate::core::link::{self, LinkEstimate};
use crate::core::openai::{self, CompletionRequest, Endpoint};
use crate::core::pacing::{self, Rule};
use crate::core::page;
use crate::core::prefetch;
use crate::core::prefix;
use crate::core::resume;
use crate::core::semantic;
use crate::core::socket;

/// What the request asks the function to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// A CORS preflight (`OPTIONS`), answered without a key.
    Preflight,
    /// `POST /v1/chat/completions`, `/v1/completions` or `/v1/responses`;
    /// `stream` is known once the body is parsed.
    Generate { endpoint: Endpoint, stream: bool },
    /// `GET /v1/models`, from the upstream.
    Models,
    /// `GET /healthz`, no key needed.
    Health,
    /// `POST /v1/prefetch`, with a body shaped for `endpoint` (chat until
    /// the body is read).
    Prefetch { endpoint: Endpoint },
    /// `GET /v1/streams/{id}`: resume a stream (the id is
    /// [`Intake::stream`]).
    ReadStream,
    /// `POST /v1/streams/{id}/cancel`.
    CancelStream,
    /// `GET /v1/ws`: a WebSocket (`crate::core::socket`).
    Socket,
    /// `GET /` and the files it loads (`crate::core::page`), no key needed.
    Page(&'static page::Asset),
}

/// The facts of one request head.
#[derive(Debug)]
pub(super) struct Intake {
    /// CORS headers for every answer to this request.
    pub(super) cors: Headers,
    /// Preflight answer headers, for [`Route::Preflight`].
    pub(super) preflight: Headers,
    /// The content coding the client accepts best.
    pub(super) coding: Coding,
    /// The bearer token, when the request carries one.
    pub(super) key: Option<String>,
    /// The KV key of this client's remembered link (key and network).
    pub(super) link_key: Option<String>,
    /// The stream format asked for (checked only for streams).
    pub(super) format: Result<Format, Error>,
    pub(super) flush_rule: Rule,
    /// What the request says about the client's link.
    pub(super) link: LinkEstimate,
    pub(super) directives: Directives,
    /// The speculative-prefix switch the request sent, if any.
    pub(super) prefix_asked: Option<bool>,
    /// What `X-Tokenedge-Cache` asks of the semantic cache.
    pub(super) semantic_asked: Option<semantic::Asked>,
    /// The stream a stream route names.
    pub(super) stream: Option<String>,
    /// The reader's cursor on a stream route (`?after=`,
    /// `?starting_after=`, `Last-Event-ID`).
    pub(super) cursor: Result<resume::Cursor, Error>,
    /// The request's random bytes (for a new stream's id).
    pub(super) nonce: [u8; 16],
    content_length: Option<usize>,
    content_type: Option<String>,
}

impl Intake {
    /// Reads `req`: the route, or why the request is refused before its
    /// body is read, and the rest of the facts.
    pub(super) fn read(config: &Config, req: &RequestHead) -> (Result<Route, Error>, Self) {
        let key = if req.path == socket::PATH {
            socket::key(req)
        } else {
            access::bearer(req)
        }
        .map(str::to_owned);
        let route = route(config, req, key.as_deref());
        let intake = Self {
            cors: access::cors_headers(&config.cors_origins, req),
            preflight: if req.method == "OPTIONS" {
                access::preflight_headers(&config.cors_origins, req)
            } else {
                Headers::new()
            },
            coding: encoding::negotiate(req.header("accept-encoding")),
            link_key: key
                .as_deref()
                .and_then(|k| link::remember_key(k, req.client.ip)),
            key,
            format: Format::from_header(req.header(format::HEADER)),
            flush_rule: Rule::from_header(req.header(pacing::FLUSH_HEADER)),
            link: LinkEstimate::from_request(req),
            directives: Directives::parse(req.header("cache-control")),
            prefix_asked: prefix::asked(req.header(prefix::HEADER)),
            semantic_asked: semantic::asked(req.header(semantic::HEADER)),
            stream: resume::parse_path(&req.path).map(|(id, _)| id),
            cursor: resume::cursor(
                req.query_param("after"),
                req.query_param("starting_after"),
                req.header("last-event-id"),
            ),
            nonce: req.nonce,
            content_length: req
                .header("content-length")
                .and_then(|v| v.trim().parse().ok()),
            content_type: req.header("content-type").map(str::to_owned),
        };
        (route, intake)
    }

    /// Whether a body may be read at all: its declared length within
    /// `MAX_BODY_BYTES`, and JSON.
    pub(super) fn check_head(&self, config: &Config) -> Result<(), Error> {
        let limit = config.max_body_bytes;
        if self.content_length.is_some_and(|n| n > limit) {
            return Err(Error::new(ErrorKind::PayloadTooLarge { limit }));
        }
        let is_json = self
            .content_type
            .as_deref()
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(Error::new(ErrorKind::UnsupportedMediaType {
                content_type: self.content_type.clone(),
            }));
        }
        Ok(())
    }

    /// The body (read within `MAX_BODY_BYTES`) as a validated generation
    /// request: well-formed for `endpoint`, and within the deployment's
    /// caps on `n` and length.
    pub(super) fn parse_body(
        &self,
        config: &Config,
        endpoint: Endpoint,
        body: &[u8],
    ) -> Result<CompletionRequest, Error> {
        let request = openai::parse_request(endpoint, body)?;
        openai::check_caps(&request.body, config.max_n, config.max_tokens_cap)?;
        Ok(request)
    }

    /// The scope cache entries are kept in: the caller's key, or `None`
    /// for a cache shared by every caller.
    pub(super) fn scope<'a>(&'a self, config: &Config) -> Option<&'a str> {
        (!config.cache_shared).then(|| self.key.as_deref().unwrap_or(""))
    }
}

/// The route for `req`: path, then method, then whether the deployment can
/// serve it at all, then the key.
fn route(config: &Config, req: &RequestHead, key: Option<&str>) -> Result<Route, Error> {
    if req.method == "OPTIONS" {
        return Ok(Route::Preflight);
    }
    if config.page && (req.method == "GET" || req.method == "HEAD") {
        if let Some(asset) = page::asset(&req.path) {
            return Ok(Route::Page(asset));
        }
    }
    let generate = |endpoint| Route::Generate {
        endpoint,
        stream: false,
    };
    let (route, method) = match req.path.as_str() {
        "/healthz" => (Route::Health, "GET"),
        "/v1/models" => (Route::Models, "GET"),
        // Which endpoint its body is shaped for is known once it is read.
        prefetch::PATH => (
            Route::Prefetch {
                endpoint: Endpoint::Chat,
            },
            "POST",
        ),
        "/v1/chat/completions" => (generate(Endpoint::Chat), "POST"),
        "/v1/completions" => (generate(Endpoint::Completions), "POST"),
        "/v1/responses" => (generate(Endpoint::Responses), "POST"),
        socket::PATH => (Route::Socket, "GET"),
        path => match resume::parse_path(path) {
            Some((_, resume::Ask::Read)) => (Route::ReadStream, "GET"),
            Some((_, resume::Ask::Cancel)) => (Route::CancelStream, "POST"),
            None => {
                return Err(Error::new(ErrorKind::NotFound {
                    path: req.path.clone(),
                }))
            }
        },
    };
    if req.method != method && !(method == "GET" && req.method == "HEAD") {
        return Err(Error::new(ErrorKind::MethodNotAllowed {
            method: req.method.clone(),
            path: req.path.clone(),
        }));
    }
    if config.upstream_urls.is_empty() {
        return Err(Error::new(ErrorKind::Misconfigured {
            detail: "UPSTREAM_URL is not set".into(),
        }));
    }
    if let Some(problem) = &config.problem {
        return Err(Error::new(ErrorKind::Misconfigured {
            detail: problem.clone(),
        }));
    }
    if route == Route::Health {
        return Ok(route);
    }
    if config.api_keys.is_empty() && !config.auth_off {
        return Err(Error::new(ErrorKind::AuthNotConfigured));
    }
    if !access::authorized(config, key) {
        return Err(Error::new(ErrorKind::InvalidApiKey));
    }
    Ok(route)
}
