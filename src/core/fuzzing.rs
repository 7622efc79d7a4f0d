//! The crate-private parts the fuzz targets in `fuzz/` exercise, behind one
//! door that exists only with the `fuzzing` feature. Each function is a
//! thin call into the real code, never a copy of it.

use crate::core::compress::Encoder;
use crate::core::encoding::Coding;
use crate::core::link::Remembered;

/// Compresses `pieces` in one response's context at `level`, flushing after
/// each, as the session does; returns the bytes each flush produced, then
/// the bytes that finish the stream.
pub fn compress(gzip: bool, level: u32, pieces: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let coding = if gzip { Coding::Gzip } else { Coding::Deflate };
    let mut encoder = Encoder::new(coding, level);
    let flushes = pieces
        .iter()
        .map(|p| {
            let mut out = Vec::new();
            encoder.encode_and_flush(p, &mut out);
            out
        })
        .collect();
    let mut end = Vec::new();
    encoder.finish(&mut end);
    (flushes, end)
}

/// A link record read from arbitrary KV bytes: (kbit/s, RTT ms).
pub fn link_record(bytes: &[u8]) -> Option<(u32, Option<u32>)> {
    Remembered::decode(bytes).map(|r| (r.kbps, r.rtt_ms))
}

/// Re-frames upstream event-stream `pieces` in `format` as a stream does
/// (a Responses API one when `responses`), ending it the way a complete
/// stream ends; returns every byte written. A parse failure ends the output
/// where it happened.
pub fn restream(format: crate::core::format::Format, responses: bool, pieces: &[&[u8]]) -> Vec<u8> {
    let mut r = crate::core::restream::Restream::new(format);
    if responses {
        r = r.responses();
    }
    let mut out = bytes::BytesMut::new();
    for p in pieces {
        match r.push(p) {
            Ok(o) => out.extend_from_slice(&o.bytes),
            Err(_) => return out.to_vec(),
        }
    }
    r.write_end(&mut out, crate::core::format::Stats::default());
    out.to_vec()
}

/// Whether the two readers of a chat event's facts agree on `data` (the
/// single pass answers only what it reads as serde does).
pub fn chunk_reads_agree(data: &str) -> bool {
    crate::core::openai::chunk_reads_agree(data)
}

/// A semantic-cache bucket read from arbitrary KV bytes at `now_secs`,
/// written back and read again: whether both reads agree, and how many
/// records it holds.
pub fn semantic_bucket(bytes: &[u8], now_secs: u64) -> (bool, usize) {
    use crate::core::semantic::index::Bucket;
    let bucket = Bucket::decode(bytes, now_secs);
    let again = Bucket::decode(&bucket.encode(), now_secs);
    (again == bucket, bucket.records.len())
}

/// The unit vector read from an arbitrary embeddings answer, if any.
pub fn embedding_vector(answer: &[u8]) -> Option<Vec<f32>> {
    crate::core::semantic::embedding::vector(answer)
}

/// Whether the semantic cache's wording check takes two texts as one
/// question.
pub fn same_question(a: &str, b: &str) -> bool {
    crate::core::semantic::guard::same_question(a, b)
}
