//! Who may call the function: bearer API keys (compared in constant time)
//! and CORS for browser clients. Decides only; the session turns a refusal
//! into a response.

use crate::core::config::{Config, CorsOrigins};
use crate::core::http::{Headers, RequestHead};

/// Request headers a browser may send cross-origin when the preflight does
/// not list its own.
const DEFAULT_ALLOW_HEADERS: &str = "authorization, content-type, cache-control, last-event-id, \
     x-tokenedge-format, x-tokenedge-bandwidth, x-tokenedge-flush, x-tokenedge-prefix";
/// Response headers a browser script may read.
const EXPOSE_HEADERS: &str = "server-timing, x-cache, x-tokenedge-stream";
/// How long a browser may cache a preflight answer (one day).
const PREFLIGHT_MAX_AGE_SECS: &str = "86400";

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

/// The bearer token of an `Authorization` header, if any.
pub(crate) fn bearer(req: &RequestHead) -> Option<&str> {
    let value = req.header("authorization")?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether a request with this bearer token may proceed: only with one of
/// the configured keys, or, when there are none, only if the deployment
/// says `AUTH=off`. Every key is compared, so the time taken does not
/// reveal which one matched.
pub(crate) fn authorized(config: &Config, bearer: Option<&str>) -> bool {
    if config.api_keys.is_empty() {
        return config.auth_off;
    }
    let token = bearer.unwrap_or("").as_bytes();
    config.api_keys.iter().fold(false, |ok, key| {
        constant_time_eq(key.as_bytes(), token) | ok
    })
}

/// CORS headers for an ordinary response to `req`.
pub(crate) fn cors_headers(origins: &CorsOrigins, req: &RequestHead) -> Headers {
    let mut h = Headers::new();
    if let Some(allow) = origins.allow(req.header("origin")) {
        h.push(("access-control-allow-origin".into(), allow));
        h.push((
            "access-control-expose-headers".into(),
            EXPOSE_HEADERS.into(),
        ));
    }
    if matches!(origins, CorsOrigins::List(_)) {
        h.push(("vary".into(), "Origin".into()));
    }
    h
}

/// Headers of the answer to a CORS preflight (`OPTIONS`).
pub(crate) fn preflight_headers(origins: &CorsOrigins, req: &RequestHead) -> Headers {
    let mut h = cors_headers(origins, req);
    if origins.allow(req.header("origin")).is_some() {
        let asked = req
            .header("access-control-request-headers")
            .unwrap_or(DEFAULT_ALLOW_HEADERS);
        h.push((
            "access-control-allow-methods".into(),
            "GET, POST, OPTIONS".into(),
        ));
        h.push(("access-control-allow-headers".into(), asked.into()));
        h.push((
            "access-control-max-age".into(),
            PREFLIGHT_MAX_AGE_SECS.into(),
        ));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead::new(
            "POST",
            "/v1/chat/completions",
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
        // Lengths that differ by 256 must not wrap to equal.
        assert!(!constant_time_eq(&[0; 256], b""));
    }

    #[test]
    fn keys() {
        let open = Config {
            auth_off: true,
            ..Config::default()
        };
        let authorized = |cfg: &Config, r: RequestHead| authorized(cfg, bearer(&r));
        assert!(authorized(&open, req(&[])));
        let cfg = Config {
            api_keys: vec!["k1".into(), "k2".into()],
            ..Config::default()
        };
        assert!(authorized(&cfg, req(&[("Authorization", "Bearer k2")])));
        assert!(authorized(&cfg, req(&[("authorization", "bearer  k1 ")])));
        assert!(!authorized(&cfg, req(&[("authorization", "Bearer k3")])));
        assert!(!authorized(&cfg, req(&[("authorization", "Basic k1")])));
        assert!(!authorized(&cfg, req(&[])));
    }

    #[test]
    fn cors() {
        let list = CorsOrigins::List(vec!["https://app.example".into()]);
        let h = preflight_headers(
            &list,
            &req(&[
                ("origin", "https://app.example"),
                ("access-control-request-headers", "content-type"),
            ]),
        );
        assert!(h.contains(&(
            "access-control-allow-origin".into(),
            "https://app.example".into()
        )));
        assert!(h.contains(&("access-control-allow-headers".into(), "content-type".into())));
        let h = preflight_headers(&list, &req(&[("origin", "https://evil.example")]));
        assert!(!h.iter().any(|(k, _)| k == "access-control-allow-origin"));
        assert!(cors_headers(
            &CorsOrigins::None,
            &req(&[("origin", "https://app.example")])
        )
        .is_empty());
    }
}
