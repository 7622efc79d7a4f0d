//! The call to an OpenAI-compatible `/v1/embeddings` endpoint: the request
//! body for one text, and the vector read back from the answer.
//!
//! The vector is asked for as base64 (`encoding_format: "base64"`: little-
//! endian `f32`s, a quarter of the bytes of a JSON number list and no float
//! parsing); a server that ignores the option and answers with a number
//! list is read too. The vector comes back scaled to unit length, so a dot
//! product is a cosine. Nothing here does I/O.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Most dimensions accepted (OpenAI's largest model has 3,072).
pub(crate) const MAX_DIMENSIONS: usize = 4096;
/// Largest embeddings answer read: 4,096 dimensions as JSON numbers with
/// room to spare.
pub(crate) const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The JSON body asking `model` to embed `text`.
pub(crate) fn request_body(model: &str, text: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "model": model,
        "input": text,
        "encoding_format": "base64",
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    data: Vec<Item<'a>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    embedding: &'a RawValue,
}

/// The unit-length vector in an embeddings answer, or `None` when the
/// answer holds no usable one (not one item, an empty, oversized or zero
/// vector, or a value that is not a number).
pub(crate) fn vector(answer: &[u8]) -> Option<Vec<f32>> {
    if answer.len() > MAX_ANSWER_BYTES {
        return None;
    }
    let answer: Answer = serde_json::from_slice(answer).ok()?;
    let [item] = answer.data.as_slice() else {
        return None;
    };
    let raw = item.embedding.get();
    let mut v: Vec<f32> = if raw.starts_with('"') {
        let text: &str = serde_json::from_str(raw).ok()?;
        let bytes = base64(text)?;
        if bytes.len() % 4 != 0 {
            return None;
        }
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        serde_json::from_str(raw).ok()?
    };
    if v.is_empty() || v.len() > MAX_DIMENSIONS || v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    // In f64: squares of components near f32's limit would overflow f32.
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if norm < f64::from(f32::EPSILON) {
        return None;
    }
    v.iter_mut()
        .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    Some(v)
}

/// Standard base64 (with or without padding); `None` for anything else.
fn base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let six = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(six);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in bytes.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..=c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        while !s.len().is_multiple_of(4) {
            s.push('=');
        }
        s
    }

    #[test]
    fn reads_base64_and_number_lists_alike() {
        let floats = [3.0f32, 0.0, -4.0];
        let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        let b64 = format!(
            r#"{{"object":"list","data":[{{"index":0,"embedding":"{}"}}],"model":"m"}}"#,
            encode64(&bytes)
        );
        let list = r#"{"data":[{"embedding":[3, 0.0, -4e0]}]}"#;
        for answer in [b64.as_bytes(), list.as_bytes()] {
            let v = vector(answer).expect("a vector");
            assert_eq!(v, [0.6, 0.0, -0.8]);
        }
    }

    /// Components near f32's limit square past it: the length is still
    /// found, and the vector still has unit length (found by fuzzing).
    #[test]
    fn huge_components_still_make_a_unit_vector() {
        let v = vector(br#"{"data":[{"embedding":[8e37, 0, -6e37]}]}"#).expect("a vector");
        assert_eq!(v, [0.8, 0.0, -0.6]);
    }

    #[test]
    fn refuses_what_is_not_one_usable_vector() {
        for bad in [
            r#"{"data":[]}"#,
            r#"{"data":[{"embedding":[1]},{"embedding":[1]}]}"#,
            r#"{"data":[{"embedding":[0,0]}]}"#,
            r#"{"data":[{"embedding":[]}]}"#,
            r#"{"data":[{"embedding":["a"]}]}"#,
            r#"{"data":[{"embedding":"AAA"}]}"#,
            r#"{"data":[{"embedding":"!!!!"}]}"#,
            r#"{"error":{"message":"no"}}"#,
            "not json",
        ] {
            assert_eq!(vector(bad.as_bytes()), None, "{bad}");
        }
        let huge = format!(r#"{{"data":[{{"embedding":[{}1]}}]}}"#, "1,".repeat(5000));
        assert_eq!(vector(huge.as_bytes()), None);
    }

    #[test]
    fn asks_for_base64() {
        let v: serde_json::Value = serde_json::from_slice(&request_body("e5", "hi")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model":"e5","input":"hi","encoding_format":"base64"})
        );
    }
}
