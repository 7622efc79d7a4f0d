//! The HTTP nouns the core and the adapters share: request and response
//! heads with lower-case header names, and the requests the core asks the
//! adapter to send upstream. No parsing of HTTP/1 itself: the platform does
//! that.

use bytes::Bytes;

/// Header list with lower-case names, in order.
pub type Headers = Vec<(String, String)>;

/// First value of header `name` (lower-case) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A downstream request as the platform received it.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// Upper-case method, e.g. `POST`.
    pub method: String,
    /// Path without the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The headers, names in lower case.
    pub headers: Headers,
    /// The query string without its `?` (empty when there is none).
    pub query: String,
    /// What the platform knows about the client connection.
    pub client: ClientInfo,
    /// Random bytes from the platform's secure source, fresh for each
    /// request: what the core draws unguessable ids from.
    pub nonce: [u8; 16],
}

/// Connection facts only the platform can see. Never stored raw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's IP address (Workers: `CF-Connecting-IP`; Spin:
    /// `spin-client-addr`).
    pub ip: Option<std::net::IpAddr>,
    /// The platform's smoothed TCP RTT to the client (Workers:
    /// `request.cf.clientTcpRtt`; 0 or absent = unknown).
    pub tcp_rtt_ms: Option<u32>,
}

impl RequestHead {
    /// A head from the platform's method, path (a query is dropped) and
    /// headers (names lower-cased).
    pub fn new(method: &str, path_and_query: &str, headers: Headers) -> Self {
        let without_fragment = path_and_query.split('#').next().unwrap_or("");
        let (path, query) = without_fragment
            .split_once('?')
            .unwrap_or((without_fragment, ""));
        Self {
            method: method.to_ascii_uppercase(),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            query: query.into(),
            client: ClientInfo::default(),
            nonce: [0; 16],
        }
    }

    /// The first value of query parameter `name`, as sent (not decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// Status and headers of a response to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The HTTP status.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Headers,
}

impl ResponseHead {
    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A request the adapter must send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Absolute URL.
    pub url: String,
    /// The headers to send, names in lower case.
    pub headers: Headers,
    /// Empty for GET.
    pub body: Bytes,
}
