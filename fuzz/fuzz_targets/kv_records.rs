//! Whatever bytes a KV store hands back, the records read from them never
//! panic, and what decodes survives its own round trip: a cache entry or
//! stored opening, a per-key limits tally, a remembered link, a scope's
//! keyspace index (which also never grows past its cap).
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
    if let Some((kbps, rtt)) = tokenedge::core::fuzzing::link_record(data) {
        assert!((1..=10_000_000).contains(&kbps));
        assert!(rtt.is_none_or(|r| r <= 60_000));
    }
});
