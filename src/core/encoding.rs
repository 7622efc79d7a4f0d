//! Content-coding negotiation: which of the codings we can produce the
//! client accepts, from its `Accept-Encoding` header (RFC 9110 §12.5.3).
//!
//! Parses q-values, `*`, `identity;q=0`, any case and whitespace. Picks the
//! acceptable coding with the highest q; ties go to our preference order
//! (gzip, deflate, identity). It does not decide *whether* compressing is
//! worth it for a given response; that is the flush policy's job.

/// A content coding tokenedge can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Gzip,
    Deflate,
    Identity,
}

impl Coding {
    /// The token for `Content-Encoding`, `None` for identity.
    pub(crate) fn header_value(self) -> Option<&'static str> {
        match self {
            Coding::Gzip => Some("gzip"),
            Coding::Deflate => Some("deflate"),
            Coding::Identity => None,
        }
    }

    fn token(self) -> &'static str {
        self.header_value().unwrap_or("identity")
    }
}

/// Our preference among equally weighted codings.
const PREFERENCE: [Coding; 3] = [Coding::Gzip, Coding::Deflate, Coding::Identity];

/// Longest `Accept-Encoding` value we look at; real ones are under 100 bytes.
const MAX_ACCEPT_ENCODING_BYTES: usize = 1024;

/// q-value in thousandths (`q=0.5` → 500), as RFC 9110 allows three digits.
fn parse_q(s: &str) -> Option<u16> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u16 = match int {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole * 1000 + thousandths;
    (q <= 1000).then_some(q)
}

/// The weight the header gives `coding`, or `None` if it does not mention
/// it (directly or through `*`).
fn weight(header: &str, coding: Coding) -> Option<u16> {
    let mut star = None;
    let mut exact = None;
    for item in header.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        let mut q = 1000;
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = parse_q(v).unwrap_or(0);
                }
            }
        }
        if name.eq_ignore_ascii_case(coding.token())
            || (coding == Coding::Gzip && name.eq_ignore_ascii_case("x-gzip"))
        {
            exact = Some(exact.map_or(q, |e: u16| e.max(q)));
        } else if name == "*" {
            star = Some(q);
        }
    }
    exact.or(star)
}

/// Chooses the coding for a response to a request with this
/// `Accept-Encoding` (or none).
pub(crate) fn negotiate(accept_encoding: Option<&str>) -> Coding {
    let Some(header) = accept_encoding.filter(|h| h.len() <= MAX_ACCEPT_ENCODING_BYTES) else {
        return Coding::Identity;
    };
    let mut best = (0u16, Coding::Identity);
    for coding in PREFERENCE {
        let q = match weight(header, coding) {
            Some(q) => q,
            // identity is acceptable unless excluded; others only if named.
            None if coding == Coding::Identity => 1,
            None => 0,
        };
        if q > best.0 {
            best = (q, coding);
        }
    }
    // Nothing acceptable (e.g. `identity;q=0` alone): send identity anyway,
    // as RFC 9110 permits, rather than refuse the request.
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use Coding::*;

    #[test]
    fn common_headers() {
        assert_eq!(negotiate(None), Identity);
        assert_eq!(negotiate(Some("")), Identity);
        assert_eq!(negotiate(Some("gzip, deflate, br, zstd")), Gzip);
        assert_eq!(negotiate(Some("deflate")), Deflate);
        assert_eq!(negotiate(Some("br")), Identity);
        assert_eq!(negotiate(Some("GZIP")), Gzip);
        assert_eq!(negotiate(Some("x-gzip")), Gzip);
        assert_eq!(negotiate(Some("identity")), Identity);
    }

    #[test]
    fn q_values() {
        assert_eq!(negotiate(Some("gzip;q=0.5, deflate;q=0.8")), Deflate);
        assert_eq!(negotiate(Some("gzip ; q=1.0 , deflate;q=1")), Gzip);
        assert_eq!(negotiate(Some("gzip;q=0")), Identity);
        assert_eq!(negotiate(Some("gzip;q=0.001")), Gzip);
        assert_eq!(
            negotiate(Some("gzip;q=0.0000")),
            Identity,
            "more than 3 decimals is invalid → 0"
        );
        assert_eq!(
            negotiate(Some("gzip;q=2")),
            Identity,
            "q above 1 is invalid → 0"
        );
        assert_eq!(negotiate(Some("gzip;Q=0.9")), Gzip);
        assert_eq!(negotiate(Some("identity;q=1, gzip;q=0.5")), Identity);
    }

    #[test]
    fn star_and_identity_exclusion() {
        assert_eq!(negotiate(Some("*")), Gzip);
        assert_eq!(negotiate(Some("*;q=0.5, gzip;q=0")), Deflate);
        assert_eq!(
            negotiate(Some("identity;q=0")),
            Identity,
            "nothing acceptable: identity anyway"
        );
        assert_eq!(negotiate(Some("identity;q=0, deflate")), Deflate);
        assert_eq!(negotiate(Some("*;q=0")), Identity);
    }

    #[test]
    fn oversized_or_garbage_headers_are_identity() {
        assert_eq!(negotiate(Some(&"gzip,".repeat(500))), Identity);
        assert_eq!(negotiate(Some(";;;,,,=")), Identity);
        assert_eq!(negotiate(Some("gzip;q=abc")), Identity);
    }

    #[test]
    fn parse_q_grammar() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("1.001"), None);
        assert_eq!(parse_q("0.25"), Some(250));
        assert_eq!(parse_q(".5"), None);
    }
}
