//! Errors of the core, classified by where they come from and whether a
//! retry may help, and their one conversion into an HTTP status plus an
//! OpenAI-style `{"error":{"message","type","param","code"}}` body.
//!
//! A client that goes away is not an error: it is the end state
//! [`crate::core::session::Session`] reaches through
//! `handle_downstream_closed`.

use serde_json::json;

/// Who caused the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The client's request (bad JSON, missing field, too large, bad key).
    Downstream,
    /// The upstream model server (refused, timed out, answered an error,
    /// broke the stream).
    Upstream,
    /// tokenedge itself (configuration).
    Internal,
}

/// What went wrong, with enough detail for the client's error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// 400: the body is not JSON, or a field is missing or ill-typed.
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// 401: `API_KEYS` is set and the request carries none of them.
    InvalidApiKey,
    /// 404: no such route.
    NotFound { path: String },
    /// 405: the route exists but not for this method.
    MethodNotAllowed { method: String, path: String },
    /// 426: `/v1/ws` asked for without `Upgrade: websocket`.
    UpgradeRequired,
    /// 501: the runtime cannot serve this route (WebSockets on Spin).
    NotImplemented { detail: String },
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge { limit: usize },
    /// 400: the request body could not be read to its end.
    BodyUnreadable { detail: String },
    /// 415: a POST body that does not say `application/json`.
    UnsupportedMediaType { content_type: Option<String> },
    /// The upstream answered a non-2xx status before streaming; `message`
    /// is the upstream's own when it sent an OpenAI-style or plain message.
    UpstreamStatus {
        status: u16,
        message: String,
        error_type: Option<String>,
    },
    /// 502: the upstream could not be reached.
    UpstreamUnreachable { detail: String },
    /// 502: the upstream refused tokenedge's own credentials (401/403 to
    /// `UPSTREAM_API_KEY`). Its message is not relayed: it may quote the key.
    UpstreamAuthFailed,
    /// 504 (or an in-stream error event): the upstream sent nothing within
    /// the configured time — no first byte (`FIRST_BYTE_TIMEOUT_MS`), or no
    /// next byte once it had started (`IDLE_TIMEOUT_MS`).
    UpstreamTimeout { after_ms: u64 },
    /// The upstream stream broke: ended without `[DONE]` or a finish reason,
    /// went silent, or sent an unparsable event stream.
    UpstreamStreamBroken { detail: String },
    /// 503: tokenedge is misconfigured (no upstream URL, or an unusable
    /// one): it cannot serve until the deployment is fixed.
    Misconfigured { detail: String },
    /// 503: no API keys are configured and the deployment did not say
    /// `AUTH=off`, so the gateway stays closed.
    AuthNotConfigured,
    /// 429 with `Retry-After`: the key is over one of its limits.
    RateLimited { limit: Limit, retry_after_secs: u64 },
    /// 404: no stream by that id for this key (unknown, expired, or
    /// another key's).
    StreamNotFound { id: String },
    /// 503: the store that keeps streams did not answer in time.
    StreamStoreUnavailable,
}

/// Which per-key limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `RATE_LIMIT_RPM`, requests per minute.
    Rate(u32),
    /// `MAX_STREAMS_PER_KEY`, generations at once.
    Streams(u32),
}

/// An error with its source and retryability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    pub kind: ErrorKind,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Self { kind }
    }

    pub(crate) fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(ErrorKind::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        })
    }

    /// Who caused it (`source` would shadow [`std::error::Error::source`],
    /// which means the underlying cause).
    pub(crate) fn origin(&self) -> Source {
        use ErrorKind::*;
        match self.kind {
            InvalidRequest { .. }
            | InvalidApiKey
            | NotFound { .. }
            | MethodNotAllowed { .. }
            | PayloadTooLarge { .. }
            | BodyUnreadable { .. }
            | UnsupportedMediaType { .. }
            | RateLimited { .. }
            | UpgradeRequired
            | StreamNotFound { .. } => Source::Downstream,
            UpstreamStatus { .. }
            | UpstreamUnreachable { .. }
            | UpstreamAuthFailed
            | UpstreamTimeout { .. }
            | UpstreamStreamBroken { .. } => Source::Upstream,
            Misconfigured { .. }
            | AuthNotConfigured
            | StreamStoreUnavailable
            | NotImplemented { .. } => Source::Internal,
        }
    }

    /// Whether sending the same request again may succeed.
    pub(crate) fn retryable(&self) -> bool {
        match &self.kind {
            ErrorKind::UpstreamStatus { status, .. } => *status == 429 || *status >= 500,
            ErrorKind::UpstreamUnreachable { .. }
            | ErrorKind::UpstreamTimeout { .. }
            | ErrorKind::UpstreamStreamBroken { .. }
            | ErrorKind::RateLimited { .. }
            | ErrorKind::StreamStoreUnavailable => true,
            _ => false,
        }
    }

    /// The HTTP status this error is answered with.
    pub(crate) fn status(&self) -> u16 {
        use ErrorKind::*;
        match &self.kind {
            InvalidRequest { .. } => 400,
            InvalidApiKey => 401,
            NotFound { .. } => 404,
            MethodNotAllowed { .. } => 405,
            PayloadTooLarge { .. } => 413,
            UpgradeRequired => 426,
            NotImplemented { .. } => 501,
            BodyUnreadable { .. } => 400,
            UnsupportedMediaType { .. } => 415,
            UpstreamStatus { status, .. } => *status,
            UpstreamUnreachable { .. } | UpstreamAuthFailed | UpstreamStreamBroken { .. } => 502,
            UpstreamTimeout { .. } => 504,
            Misconfigured { .. } => 503,
            AuthNotConfigured => 503,
            RateLimited { .. } => 429,
            StreamNotFound { .. } => 404,
            StreamStoreUnavailable => 503,
        }
    }

    /// Seconds the client should wait before trying again, when known
    /// (sent as `Retry-After`).
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        match self.kind {
            ErrorKind::RateLimited {
                retry_after_secs, ..
            } => Some(retry_after_secs),
            _ => None,
        }
    }

    fn message(&self) -> String {
        use ErrorKind::*;
        match &self.kind {
            InvalidRequest { message, .. } => message.clone(),
            InvalidApiKey => {
                "Invalid or missing API key. Send it as `Authorization: Bearer <key>`.".into()
            }
            NotFound { path } => format!("Unknown route: {path}"),
            MethodNotAllowed { method, path } => {
                format!("Method {method} is not allowed on {path}")
            }
            PayloadTooLarge { limit } => format!("Request body exceeds the limit of {limit} bytes"),
            BodyUnreadable { detail } => format!("The request body could not be read: {detail}"),
            UpgradeRequired => {
                "This route is a WebSocket: connect with `Upgrade: websocket`.".into()
            }
            NotImplemented { detail } => detail.clone(),
            UnsupportedMediaType { content_type } => format!(
                "Content-Type must be application/json (got {})",
                content_type.as_deref().unwrap_or("none")
            ),
            UpstreamStatus { message, .. } => message.clone(),
            UpstreamUnreachable { detail } => {
                format!("Upstream model server unreachable: {detail}")
            }
            UpstreamAuthFailed => "The upstream model server refused this gateway's credentials. \
                The gateway's operator must fix UPSTREAM_API_KEY."
                .into(),
            UpstreamTimeout { after_ms } => {
                format!("Upstream model server sent nothing within {after_ms} ms")
            }
            UpstreamStreamBroken { detail } => format!("Upstream stream broke: {detail}"),
            Misconfigured { detail } => format!("tokenedge is misconfigured: {detail}"),
            AuthNotConfigured => "This gateway has no API keys configured, so it serves no one. \
                Set API_KEYS (or AUTH=off for a local, open deployment)."
                .into(),
            RateLimited {
                limit: Limit::Rate(rpm),
                retry_after_secs,
            } => format!(
                "Rate limit reached for this API key: {rpm} requests per minute. \
                 Try again in {retry_after_secs} s."
            ),
            RateLimited {
                limit: Limit::Streams(n),
                retry_after_secs,
            } => format!(
                "This API key already has {n} generations running, its limit. \
                 Try again in {retry_after_secs} s, or stop one."
            ),
            StreamNotFound { id } => {
                format!("No stream '{id}' for this API key: unknown, expired, or another key's")
            }
            StreamStoreUnavailable => {
                "The store that keeps streams did not answer in time. Try again.".into()
            }
        }
    }

    fn error_type(&self) -> String {
        use ErrorKind::*;
        match &self.kind {
            InvalidRequest { .. }
            | NotFound { .. }
            | MethodNotAllowed { .. }
            | PayloadTooLarge { .. }
            | BodyUnreadable { .. }
            | UnsupportedMediaType { .. }
            | UpgradeRequired
            | NotImplemented { .. }
            | StreamNotFound { .. } => "invalid_request_error".into(),
            InvalidApiKey => "authentication_error".into(),
            UpstreamStatus {
                error_type: Some(t),
                ..
            } => t.clone(),
            UpstreamStatus { .. }
            | UpstreamUnreachable { .. }
            | UpstreamAuthFailed
            | UpstreamTimeout { .. }
            | UpstreamStreamBroken { .. } => "upstream_error".into(),
            Misconfigured { .. } | AuthNotConfigured | StreamStoreUnavailable => {
                "server_error".into()
            }
            RateLimited { .. } => "requests".into(),
        }
    }

    fn code(&self) -> &'static str {
        use ErrorKind::*;
        match &self.kind {
            InvalidRequest { .. } => "invalid_request",
            InvalidApiKey => "invalid_api_key",
            NotFound { .. } => "not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            PayloadTooLarge { .. } => "payload_too_large",
            BodyUnreadable { .. } => "body_unreadable",
            UnsupportedMediaType { .. } => "unsupported_media_type",
            UpgradeRequired => "upgrade_required",
            NotImplemented { .. } => "not_implemented",
            UpstreamStatus { .. } => "upstream_status",
            UpstreamUnreachable { .. } => "upstream_unreachable",
            UpstreamAuthFailed => "upstream_auth_failed",
            UpstreamTimeout { .. } => "upstream_timeout",
            UpstreamStreamBroken { .. } => "upstream_stream_broken",
            Misconfigured { .. } => "misconfigured",
            AuthNotConfigured => "auth_not_configured",
            RateLimited {
                limit: Limit::Rate(_),
                ..
            } => "rate_limit_exceeded",
            RateLimited {
                limit: Limit::Streams(_),
                ..
            } => "too_many_streams",
            StreamNotFound { .. } => "stream_not_found",
            StreamStoreUnavailable => "stream_store_unavailable",
        }
    }

    /// The OpenAI-style error object, the body of an error response and the
    /// `data:` of an in-stream error event.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let param = match &self.kind {
            ErrorKind::InvalidRequest { param, .. } => param.clone(),
            _ => None,
        };
        json!({
            "error": {
                "message": self.message(),
                "type": self.error_type(),
                "param": param,
                "code": self.code(),
                "retryable": self.retryable(),
            }
        })
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} error ({}): {}",
            self.origin(),
            self.status(),
            self.message()
        )
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_sources() {
        let e = Error::invalid("bad", Some("messages"));
        assert_eq!(
            (e.status(), e.origin(), e.retryable()),
            (400, Source::Downstream, false)
        );
        assert_eq!(e.to_json()["error"]["param"], "messages");
        let e = Error::new(ErrorKind::UpstreamUnreachable {
            detail: "refused".into(),
        });
        assert_eq!(
            (e.status(), e.origin(), e.retryable()),
            (502, Source::Upstream, true)
        );
        let e = Error::new(ErrorKind::UpstreamTimeout { after_ms: 5 });
        assert_eq!(e.status(), 504);
        let e = Error::new(ErrorKind::UpstreamStatus {
            status: 400,
            message: "m".into(),
            error_type: None,
        });
        assert!(!e.retryable());
        assert_eq!(e.to_json()["error"]["message"], "m");
    }

    #[test]
    fn json_shape_has_all_openai_fields() {
        let v = Error::new(ErrorKind::PayloadTooLarge { limit: 10 }).to_json();
        let obj = v["error"].as_object().unwrap();
        for k in ["message", "type", "param", "code"] {
            assert!(obj.contains_key(k), "{k}");
        }
    }
}
