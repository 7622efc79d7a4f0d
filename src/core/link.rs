//! What we know about the client's link before the first token: read from
//! the request (app-measured bandwidth, client hints), the platform (TCP
//! RTT) and a per-client estimate remembered in KV from earlier streams.
//!
//! Trust order for bandwidth: `X-Tokenedge-Bandwidth` (the app measured
//! it) > `Downlink` (the browser's estimate) > the remembered estimate >
//! `ECT` (a coarse class). RTT: `RTT` hint > platform TCP RTT > remembered.
//! Nothing known = [`LinkEstimate::default`], for which the pacer flushes
//! every event at once (the fast-link behaviour) and relies on the live
//! drain signal.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::http::RequestHead;

/// App-measured downlink in kbit/s.
pub(crate) const BANDWIDTH_HEADER: &str = "x-tokenedge-bandwidth";
/// The longest round trip a request or a record may claim.
const MAX_RTT_MS: u32 = 60_000;
/// How long a remembered estimate lives in KV.
pub(crate) const REMEMBER_TTL_SECS: u64 = 7 * 24 * 3600;

/// Where the bandwidth figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    #[default]
    Unknown,
    /// `X-Tokenedge-Bandwidth`.
    App,
    /// `Downlink` or `ECT` client hints.
    ClientHints,
    /// KV, from an earlier stream of the same client and network.
    Remembered,
    /// The drain rate measured during this stream.
    Measured,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LinkEstimate {
    /// Downlink bandwidth in kbit/s.
    pub kbps: Option<u32>,
    pub rtt_ms: Option<u32>,
    /// `Save-Data: on`: the user prefers fewer bytes to lower latency.
    pub save_data: bool,
    pub source: Source,
}

/// The record kept in KV per client and network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Remembered {
    pub kbps: u32,
    #[serde(default)]
    pub rtt_ms: Option<u32>,
}

impl Remembered {
    /// A record from its stored bytes, clamped to the figures a request
    /// could give; `None` for anything else.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let r: Self = serde_json::from_slice(bytes).ok()?;
        Some(Self {
            kbps: clamp_kbps(f64::from(r.kbps)),
            rtt_ms: r.rtt_ms.map(|r| r.min(MAX_RTT_MS)),
        })
    }
}

impl LinkEstimate {
    /// Reads what the request and the platform tell.
    pub(crate) fn from_request(req: &RequestHead) -> Self {
        let number = |name: &str| {
            req.header(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
        };
        let mut est = Self {
            save_data: req
                .header("save-data")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("on")),
            ..Self::default()
        };
        if let Some(k) = number(BANDWIDTH_HEADER) {
            est.kbps = Some(clamp_kbps(k));
            est.source = Source::App;
        } else if let Some(mbps) = number("downlink") {
            est.kbps = Some(clamp_kbps(mbps * 1000.0));
            est.source = Source::ClientHints;
        } else if let Some(k) = req.header("ect").and_then(ect_kbps) {
            est.kbps = Some(k);
            est.source = Source::ClientHints;
        }
        est.rtt_ms = number("rtt")
            .map(|r| r.min(f64::from(MAX_RTT_MS)) as u32)
            .or(req.client.tcp_rtt_ms.filter(|r| *r > 0));
        est
    }

    /// Fills what the request did not say from a remembered record. The
    /// remembered bandwidth beats only the coarse `ECT` class.
    pub(crate) fn with_remembered(mut self, r: Remembered) -> Self {
        let coarse = self.source == Source::ClientHints && self.kbps.is_some_and(|k| k <= 700);
        if self.kbps.is_none() || coarse {
            self.kbps = Some(r.kbps.max(1));
            self.source = Source::Remembered;
        }
        self.rtt_ms = self.rtt_ms.or(r.rtt_ms);
        self
    }

    /// The record to remember after a stream, if it is worth a KV write.
    /// The record is shared by every client of the key on the network, so
    /// only what this gateway measured goes in, never what a request
    /// claimed (`X-Tokenedge-Bandwidth`, client hints: they pace their own
    /// stream only): a slow drain it timed, or — when the stream was paced
    /// by the record — the fastest rate the link was seen to take
    /// (`fastest_kbps`), which rewrites a record that is too low. Written
    /// only when it differs by more than a quarter from what is stored (KV
    /// takes about one write per second per key; most streams write
    /// nothing).
    pub(crate) fn to_remember(
        self,
        fastest_kbps: Option<u32>,
        stored: Option<Remembered>,
    ) -> Option<Remembered> {
        let kbps = match (self.source, stored) {
            (Source::Measured, _) => self.kbps?,
            (Source::Remembered, Some(old)) => fastest_kbps.filter(|f| *f > old.kbps)?,
            _ => return None,
        };
        let new = Remembered {
            kbps: clamp_kbps(f64::from(kbps)),
            rtt_ms: None,
        };
        match stored {
            Some(old) if differs_by_less_than_a_quarter(old.kbps, new.kbps) => None,
            _ => Some(new),
        }
    }
}

fn differs_by_less_than_a_quarter(a: u32, b: u32) -> bool {
    let (a, b) = (u64::from(a), u64::from(b));
    a.abs_diff(b) * 4 < a.max(b)
}

fn clamp_kbps(k: f64) -> u32 {
    k.clamp(1.0, 10_000_000.0) as u32
}

/// Effective connection type → the downlink Chrome assigns to it.
fn ect_kbps(ect: &str) -> Option<u32> {
    match ect.trim().to_ascii_lowercase().as_str() {
        "slow-2g" => Some(50),
        "2g" => Some(70),
        "3g" => Some(700),
        // "4g" means "at least 700 kbit/s": no upper figure to pace by.
        _ => None,
    }
}

/// The KV key of a client's remembered link: a hash of the API key and the
/// client's network prefix (/24 for IPv4, /48 for IPv6). The address itself
/// is never stored. `None` when the platform gave no address.
pub(crate) fn remember_key(api_key: &str, ip: Option<IpAddr>) -> Option<String> {
    let prefix = match ip? {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    };
    let mut h = Sha256::new();
    h.update(b"tokenedge-link\0");
    h.update(api_key.as_bytes());
    h.update(b"\0");
    h.update(prefix.as_bytes());
    let digest = h.finalize();
    let hex = crate::core::hex(&digest[..16]);
    Some(format!("link:v1:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::http::ClientInfo;

    fn req(headers: &[(&str, &str)], client: ClientInfo) -> RequestHead {
        let mut r = RequestHead::new(
            "POST",
            "/v1/chat/completions",
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        r.client = client;
        r
    }

    #[test]
    fn trust_order() {
        let e = LinkEstimate::from_request(&req(
            &[
                ("X-Tokenedge-Bandwidth", "256"),
                ("Downlink", "10"),
                ("ECT", "2g"),
            ],
            ClientInfo::default(),
        ));
        assert_eq!((e.kbps, e.source), (Some(256), Source::App));
        let e = LinkEstimate::from_request(&req(
            &[("Downlink", "1.45"), ("ECT", "2g")],
            ClientInfo::default(),
        ));
        assert_eq!((e.kbps, e.source), (Some(1450), Source::ClientHints));
        let e = LinkEstimate::from_request(&req(&[("ECT", "3g")], ClientInfo::default()));
        assert_eq!(e.kbps, Some(700));
        let e = LinkEstimate::from_request(&req(
            &[("ECT", "4g"), ("Downlink", "junk")],
            ClientInfo::default(),
        ));
        assert_eq!((e.kbps, e.source), (None, Source::Unknown));
        for bad in ["-3", "NaN", "inf", "0", ""] {
            let e = LinkEstimate::from_request(&req(
                &[("X-Tokenedge-Bandwidth", bad)],
                ClientInfo::default(),
            ));
            assert_eq!(e.kbps, None, "{bad}");
        }
    }

    #[test]
    fn rtt_and_save_data() {
        let tcp = ClientInfo {
            ip: None,
            tcp_rtt_ms: Some(42),
        };
        let e = LinkEstimate::from_request(&req(&[("Save-Data", "on")], tcp.clone()));
        assert_eq!(e.rtt_ms, Some(42));
        assert!(e.save_data);
        let e = LinkEstimate::from_request(&req(&[("RTT", "300")], tcp));
        assert_eq!(e.rtt_ms, Some(300));
        let zero = ClientInfo {
            ip: None,
            tcp_rtt_ms: Some(0),
        };
        assert_eq!(LinkEstimate::from_request(&req(&[], zero)).rtt_ms, None);
    }

    #[test]
    fn remembered_fills_gaps_only() {
        let r = Remembered {
            kbps: 300,
            rtt_ms: Some(250),
        };
        let none = LinkEstimate::default().with_remembered(r);
        assert_eq!(
            (none.kbps, none.source, none.rtt_ms),
            (Some(300), Source::Remembered, Some(250))
        );
        let app = LinkEstimate {
            kbps: Some(5000),
            source: Source::App,
            ..LinkEstimate::default()
        }
        .with_remembered(r);
        assert_eq!((app.kbps, app.source), (Some(5000), Source::App));
        // A remembered estimate is not written back as it is.
        assert_eq!(none.to_remember(None, None), None);
    }

    #[test]
    fn writes_only_when_it_changed() {
        let e = LinkEstimate {
            kbps: Some(1000),
            source: Source::Measured,
            ..LinkEstimate::default()
        };
        let stored = |k| {
            Some(Remembered {
                kbps: k,
                rtt_ms: None,
            })
        };
        assert!(e.to_remember(None, stored(1100)).is_none());
        assert!(e.to_remember(None, stored(2000)).is_some());
        assert!(e.to_remember(None, None).is_some());
        assert!(LinkEstimate::default().to_remember(None, None).is_none());
    }

    #[test]
    fn only_first_hand_figures_are_written() {
        let claimed = |source| LinkEstimate {
            kbps: Some(1),
            source,
            ..LinkEstimate::default()
        };
        // What a request claims paces its own stream and nobody else's.
        assert_eq!(claimed(Source::App).to_remember(Some(9_000), None), None);
        assert_eq!(claimed(Source::ClientHints).to_remember(None, None), None);
        // A record the link was seen to outrun is rewritten upwards.
        let old = Some(Remembered {
            kbps: 8,
            rtt_ms: None,
        });
        let paced = claimed(Source::Remembered);
        assert_eq!(paced.to_remember(Some(9), old), None);
        assert_eq!(
            paced.to_remember(Some(5_000), old).map(|r| r.kbps),
            Some(5_000)
        );
        assert_eq!(paced.to_remember(Some(5_000), None), None);
    }

    #[test]
    fn keys_hide_the_address_and_group_the_network() {
        let ip = |s: &str| Some(s.parse().unwrap());
        let a = remember_key("k1", ip("203.0.113.7")).unwrap();
        assert_eq!(a, remember_key("k1", ip("203.0.113.200")).unwrap());
        assert_ne!(a, remember_key("k1", ip("203.0.114.7")).unwrap());
        assert_ne!(a, remember_key("k2", ip("203.0.113.7")).unwrap());
        assert!(!a.contains("203"));
        assert_eq!(
            remember_key("k", ip("2001:db8:1:2::1")),
            remember_key("k", ip("2001:db8:1:ffff::9"))
        );
        assert_eq!(remember_key("k", None), None);
    }
}
