//! Whatever bytes a KV store hands back, the records read from them never
//! panic, and what decodes survives its own round trip: a cache entry or
//! stored opening, a per-key limits tally, a remembered link, a scope's
//! keyspace index (which also never grows past its cap), a semantic-cache
//! bucket (never past its cap either), an embeddings answer (a vector of
//! unit length or nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenedge::core::cache::Entry;
use tokenedge::core::keyspace::{Keyspace, MAX_KEYS_PER_SCOPE};
use tokenedge::core::quota::Tally;

fuzz_target!(|data: &[u8]| {
    // As stored (zlib) and as the JSON inside, so the fuzzer reaches the
    // entry's fields without having to learn deflate first.
    if let Some(entry) = Entry::decode(data) {
        assert_eq!(Entry::decode(&entry.encode()).as_ref(), Some(&entry));
    }
    if let Ok(entry) = serde_json::from_slice::<Entry>(data) {
        assert_eq!(Entry::decode(&entry.encode()).as_ref(), Some(&entry));
    }
    let mut keys = Keyspace::decode(data);
    assert_eq!(Keyspace::decode(&keys.encode()), keys);
    let gone = keys.record("written", 5_000, 1_000);
    assert!(keys.len() <= MAX_KEYS_PER_SCOPE && !gone.iter().any(|k| k == "written"));
    let tally = Tally::decode(data);
    assert_eq!(Tally::decode(tally.encode().as_bytes()), tally);
    let (agrees, records) = tokenedge::core::fuzzing::semantic_bucket(data, 1_000);
    assert!(agrees && records <= 32);
    if let Some(v) = tokenedge::core::fuzzing::embedding_vector(data) {
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let (a, b) = text.split_once('|').unwrap_or((text, ""));
        let same = tokenedge::core::fuzzing::same_question;
        assert_eq!(same(a, b), same(b, a));
        assert!(same(a, a));
    }
    if let Some((kbps, rtt)) = tokenedge::core::fuzzing::link_record(data) {
        assert!((1..=10_000_000).contains(&kbps));
        assert!(rtt.is_none_or(|r| r <= 60_000));
    }
});
