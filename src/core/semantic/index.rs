//! The semantic index as KV values: quantised vectors grouped into buckets
//! by locality-sensitive hashing, so a lookup reads [`TABLES`] small values
//! and never a whole index.
//!
//! Each of the [`TABLES`] hash tables cuts the vector space with [`BITS`]
//! random hyperplanes through the origin (signs drawn from a fixed seed,
//! the same on every isolate): the side of each plane is one bit of the
//! bucket number. Two vectors at angle θ share a table's bucket with
//! probability (1 − θ/π)^BITS, so close vectors meet in at least one table
//! almost always (paraphrases at cosine 0.9: 99 % on the labelled set) and
//! distant ones rarely. Each bucket holds at most [`BUCKET_ENTRIES`]
//! records; past that, the one that expires soonest goes.
//!
//! A record is the stored question's vector quantised to one signed byte
//! per dimension (its cosine with another is within about 0.005 of the
//! float one), the question's text (for [`super::guard`]), the id of the
//! answer it points at and its expiry. A bucket's value:
//!
//! ```text
//! "SB1\n" count:u8 { expiry:u32 answer:[u8;16] dims:u16 q:[i8;dims]
//!                    len:u16 question:[u8;len] }*count      (big-endian)
//! ```

use crate::core::semantic::MAX_QUESTION_BYTES;

/// Hash tables: the KV values one lookup reads.
pub(crate) const TABLES: usize = 6;
/// Hyperplanes per table: 2^BITS buckets each.
pub(crate) const BITS: usize = 6;
/// Records per bucket value (about 15 KiB at 384 dimensions).
pub(crate) const BUCKET_ENTRIES: usize = 32;
/// Seed of the hyperplanes' signs. Changing it (or [`TABLES`], [`BITS`])
/// moves every vector to other buckets: bump the key version with it.
const SEED: u64 = 0x7e5e_11ca_c4e0_0001;
const MAGIC: &[u8; 4] = b"SB1\n";

/// A quantised unit vector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Vector {
    q: Vec<i8>,
}

impl Vector {
    /// Quantises a unit-length vector: each value scaled so the largest
    /// becomes ±127.
    pub(crate) fn new(unit: &[f32]) -> Self {
        let max = unit.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { 127.0 / max } else { 0.0 };
        Self {
            q: unit.iter().map(|x| (x * scale).round() as i8).collect(),
        }
    }

    /// The cosine of two quantised vectors (0 when their sizes differ).
    pub(crate) fn similarity(&self, other: &Vector) -> f32 {
        if self.q.len() != other.q.len() {
            return 0.0;
        }
        let (mut dot, mut a, mut b) = (0i64, 0i64, 0i64);
        for (&x, &y) in self.q.iter().zip(&other.q) {
            let (x, y) = (i64::from(x), i64::from(y));
            dot += x * y;
            a += x * x;
            b += y * y;
        }
        if a == 0 || b == 0 {
            return 0.0;
        }
        (dot as f64 / ((a as f64).sqrt() * (b as f64).sqrt())) as f32
    }
}

/// The bucket of `unit` in each table.
pub(crate) fn buckets(unit: &[f32]) -> [u8; TABLES] {
    let mut out = [0u8; TABLES];
    for (t, bucket) in out.iter_mut().enumerate() {
        for bit in 0..BITS {
            let plane = (t * BITS + bit) as u64;
            let mut side = 0f32;
            for (block, values) in unit.chunks(64).enumerate() {
                let signs = splitmix(SEED ^ (plane << 32) ^ block as u64);
                for (d, x) in values.iter().enumerate() {
                    side += if signs >> d & 1 == 1 { *x } else { -*x };
                }
            }
            if side > 0.0 {
                *bucket |= 1 << bit;
            }
        }
    }
    out
}

fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One stored question.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    /// Unix seconds after which it is dropped.
    pub(crate) expiry: u64,
    /// Which answer it points at.
    pub(crate) answer: [u8; 16],
    pub(crate) vector: Vector,
    pub(crate) question: String,
}

/// One bucket's records.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Bucket {
    pub(crate) records: Vec<Record>,
}

impl Bucket {
    /// A stored bucket without its records expired at `now_secs`; a value
    /// that does not parse reads as empty (and is replaced by the next
    /// write).
    pub(crate) fn decode(bytes: &[u8], now_secs: u64) -> Self {
        let mut records = parse(bytes).unwrap_or_default();
        records.retain(|r| r.expiry > now_secs);
        Self { records }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.records.len() * 512);
        out.extend_from_slice(MAGIC);
        out.push(self.records.len().min(BUCKET_ENTRIES) as u8);
        for r in self.records.iter().take(BUCKET_ENTRIES) {
            out.extend_from_slice(&u32::try_from(r.expiry).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(&r.answer);
            out.extend_from_slice(&(r.vector.q.len() as u16).to_be_bytes());
            out.extend(r.vector.q.iter().map(|&x| x as u8));
            let question = truncate(&r.question, MAX_QUESTION_BYTES);
            out.extend_from_slice(&(question.len() as u16).to_be_bytes());
            out.extend_from_slice(question.as_bytes());
        }
        out
    }

    /// Adds a record, replacing one for the same answer; past
    /// [`BUCKET_ENTRIES`] the records that expire soonest go.
    pub(crate) fn insert(&mut self, record: Record) {
        self.records.retain(|r| r.answer != record.answer);
        self.records.push(record);
        if self.records.len() > BUCKET_ENTRIES {
            self.records.sort_by_key(|r| std::cmp::Reverse(r.expiry));
            self.records.truncate(BUCKET_ENTRIES);
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn parse(bytes: &[u8]) -> Option<Vec<Record>> {
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let count = usize::from(*take(1)?.first()?).min(BUCKET_ENTRIES);
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let expiry = u32::from_be_bytes(take(4)?.try_into().ok()?);
        let answer: [u8; 16] = take(16)?.try_into().ok()?;
        let dims = usize::from(u16::from_be_bytes(take(2)?.try_into().ok()?));
        let q = take(dims)?.iter().map(|&b| b as i8).collect();
        let len = usize::from(u16::from_be_bytes(take(2)?.try_into().ok()?));
        let question = std::str::from_utf8(take(len)?).ok()?.to_owned();
        records.push(Record {
            expiry: u64::from(expiry),
            answer,
            vector: Vector { q },
            question,
        });
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dims: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dims)
            .map(|i| (splitmix(seed * 1000 + i as u64) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn record(i: u8, expiry: u64) -> Record {
        Record {
            expiry,
            answer: [i; 16],
            vector: Vector::new(&unit(u64::from(i), 8)),
            question: format!("question {i} é"),
        }
    }

    #[test]
    fn quantised_cosine_is_close_to_the_float_one() {
        for seed in 0..20 {
            let (a, b) = (unit(seed, 384), unit(seed + 100, 384));
            // Mix them so that the pair is close as well as far.
            let c: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.9 * x + 0.1 * y).collect();
            let n = c.iter().map(|x| x * x).sum::<f32>().sqrt();
            let c: Vec<f32> = c.into_iter().map(|x| x / n).collect();
            for (x, y) in [(&a, &b), (&a, &c)] {
                let q = Vector::new(x).similarity(&Vector::new(y));
                assert!((q - cosine(x, y)).abs() < 0.01, "{q} vs {}", cosine(x, y));
            }
        }
        assert_eq!(
            Vector::new(&[1.0]).similarity(&Vector::new(&[1.0, 0.0])),
            0.0
        );
    }

    #[test]
    fn close_vectors_share_a_bucket_and_far_ones_spread() {
        let (a, far) = (unit(1, 384), unit(2, 384));
        let near: Vec<f32> = a.iter().map(|x| x * 1.01).collect();
        assert_eq!(buckets(&a), buckets(&near));
        assert_ne!(buckets(&a), buckets(&far));
        let used: std::collections::HashSet<u8> =
            (0..200).map(|s| buckets(&unit(s, 384))[0]).collect();
        assert!(used.len() > 32, "{}", used.len());
    }

    #[test]
    fn a_bucket_round_trips_and_drops_the_expired() {
        let mut b = Bucket::default();
        b.insert(record(1, 100));
        b.insert(record(2, 300));
        let bytes = b.encode();
        assert_eq!(Bucket::decode(&bytes, 50), b);
        assert_eq!(Bucket::decode(&bytes, 200).records, [record(2, 300)]);
        // Any damage reads as empty, never as a panic.
        for cut in 0..bytes.len() {
            let _ = Bucket::decode(&bytes[..cut], 0);
        }
        assert_eq!(Bucket::decode(b"junk", 0), Bucket::default());
    }

    #[test]
    fn a_full_bucket_keeps_the_longest_lived_and_one_record_per_answer() {
        let mut b = Bucket::default();
        for i in 0..(BUCKET_ENTRIES as u8 + 5) {
            b.insert(record(i, 1000 + u64::from(i)));
        }
        b.insert(record(30, 5000));
        assert_eq!(b.records.len(), BUCKET_ENTRIES);
        assert!(b.records.iter().all(|r| r.expiry >= 1005));
        assert_eq!(b.records.iter().filter(|r| r.answer == [30; 16]).count(), 1);
        assert_eq!(Bucket::decode(&b.encode(), 0).records.len(), BUCKET_ENTRIES);
    }
}
