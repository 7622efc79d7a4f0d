//! A small streaming deflate encoder (RFC 1951) with a bounded window,
//! built for token streams: many small writes, each followed by a flush.
//!
//! - LZ77 over a [`WINDOW`]-byte window with hash chains; greedy matching,
//!   the chain depth set by the level.
//! - Fixed Huffman codes. A flushed block of one token event is a few
//!   literals and one or two long matches against the previous event, for
//!   which a dynamic code table (~60 bytes of header per block) never pays.
//! - Whole state is about 33 KiB (history 8 KiB, hash heads 8 KiB, chains
//!   16 KiB), allocated once per response and never grown.
//!
//! Why not a library: a whole streaming session is budgeted at 64 KiB
//! (`tests/memory.rs`), because one isolate holds thousands of streams.
//! General-purpose encoders keep a 32 KiB window and fixed large tables:
//! miniz_oxide needs about 300 KiB per compression context (measured ~320 KB
//! with a counting allocator), and zlib-rs allocates a 128 KiB hash table
//! whatever the level. Either alone is several times the budget. (Inflating
//! stored cache entries, once per hit, does use miniz_oxide.)

/// The farthest back a match may reach. The zlib header declares it.
pub(crate) const WINDOW: usize = 4096;
/// History kept: the window plus the bytes being compressed.
const HISTORY: usize = 2 * WINDOW;
const HASH_BITS: u32 = 12;
const HASH_SIZE: usize = 1 << HASH_BITS;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;

/// Streaming raw-deflate state.
pub(crate) struct Deflater {
    history: Vec<u8>,
    /// Per hash bucket: the most recent history position + 1 (0 = none).
    head: Box<[u16; HASH_SIZE]>,
    /// Per history position: how far back the previous position with the
    /// same hash is (0 = none). A distance, so a slide leaves it as it is.
    chain: Vec<u16>,
    max_chain: usize,
    /// Matches longer than this have only their first position hashed.
    max_insert: usize,
    bits: u64,
    nbits: u32,
}

impl Deflater {
    /// `level` 1 (fastest) to 9 (most thorough search); 0 is treated as 1.
    pub(crate) fn new(level: u32) -> Self {
        Self {
            history: Vec::with_capacity(HISTORY),
            head: Box::new([0; HASH_SIZE]),
            chain: vec![0; HISTORY],
            max_chain: chain_for(level),
            max_insert: insert_for(level),
            bits: 0,
            nbits: 0,
        }
    }

    /// Changes the search effort for the following writes.
    pub(crate) fn set_level(&mut self, level: u32) {
        self.max_chain = chain_for(level);
        self.max_insert = insert_for(level);
    }

    /// Compresses `input` into one block ended by a sync flush: a
    /// byte-aligned empty stored block (`00 00 ff ff`), after which any
    /// inflater decodes everything written so far.
    pub(crate) fn write(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if !input.is_empty() {
            self.put(0b010, 3); // not final, fixed Huffman
            for piece in input.chunks(WINDOW) {
                self.compress(piece, out);
            }
            self.put_code(256); // end of block
        }
        self.put(0, 3); // not final, stored
        self.align(out);
        out.extend_from_slice(&[0, 0, 0xff, 0xff]);
    }

    /// Ends the stream: a final empty block, padded to a byte.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        self.put(0b011, 3); // final, fixed Huffman
        self.put_code(256);
        self.align(out);
    }

    fn compress(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        if self.history.len() + piece.len() > HISTORY {
            self.slide();
        }
        let start = self.history.len();
        self.history.extend_from_slice(piece);
        let end = self.history.len();
        let mut p = start;
        while p < end {
            let (len, dist) = if end - p >= MIN_MATCH {
                self.longest_match(p, end)
            } else {
                (0, 0)
            };
            if len >= MIN_MATCH {
                self.put_match(len, dist);
                // As zlib's fast levels do: the inside of a long match is
                // not hashed. A token event is mostly one or two long
                // matches against the event before, whose starts are
                // what the next event matches again.
                let hashed = if len <= self.max_insert { len } else { 1 };
                self.insert_run(p, (p + hashed).min(end + 1 - MIN_MATCH));
                p += len;
            } else {
                self.put_code(self.history[p] as usize);
                if p + MIN_MATCH <= end {
                    self.insert(p);
                }
                p += 1;
            }
            if self.nbits >= 32 {
                out.extend_from_slice(&(self.bits as u32).to_le_bytes());
                self.bits >>= 32;
                self.nbits -= 32;
            }
        }
    }

    fn hash(&self, p: usize) -> usize {
        hash3(&self.history[p..p + 3])
    }

    fn insert(&mut self, p: usize) {
        let h = self.hash(p);
        self.chain[p] = link(p, self.head[h]);
        self.head[h] = (p + 1) as u16;
    }

    /// Inserts every position from `from` up to `to`, each with its three
    /// bytes in the history.
    fn insert_run(&mut self, from: usize, to: usize) {
        if from >= to {
            return;
        }
        let (head, chain) = (&mut self.head, &mut self.chain);
        let bytes = self.history[from..to + 2].windows(3);
        for ((link, three), p) in chain[from..to].iter_mut().zip(bytes).zip(from..) {
            let h = hash3(three);
            *link = self::link(p, head[h]);
            head[h] = (p + 1) as u16;
        }
    }

    fn longest_match(&self, p: usize, end: usize) -> (usize, usize) {
        let limit = (end - p).min(MAX_MATCH);
        let hist = &self.history;
        let mut best = (0, 0);
        let mut cand = self.head[self.hash(p)] as usize;
        let mut steps = self.max_chain;
        while cand != 0 && steps > 0 {
            let q = cand - 1;
            let dist = p - q;
            if dist > WINDOW {
                break;
            }
            // Cheap reject: a longer match must agree at the current best.
            if hist[q + best.0.min(limit - 1)] == hist[p + best.0.min(limit - 1)] {
                let len = common_prefix(&hist[q..q + limit], &hist[p..p + limit]);
                if len > best.0 {
                    best = (len, dist);
                    if len == limit {
                        break;
                    }
                }
            }
            // A link past the start of the history leads to a dropped
            // position: the chain ends.
            cand = match self.chain[q] as usize {
                0 => 0,
                back if back > q => 0,
                back => q - back + 1,
            };
            steps -= 1;
        }
        best
    }

    /// Drops the oldest history so that `WINDOW` bytes remain, and rebases
    /// the hash heads (the chain holds distances, which stay).
    fn slide(&mut self) {
        let d = self.history.len().saturating_sub(WINDOW);
        if d == 0 {
            return;
        }
        self.history.drain(..d);
        // Positions at or before the cut become 0 (none); branch-free.
        for v in self.head.iter_mut() {
            *v = v.saturating_sub(d as u16);
        }
        self.chain.copy_within(d.., 0);
    }

    fn put(&mut self, value: u32, n: u32) {
        self.bits |= u64::from(value) << self.nbits;
        self.nbits += n;
    }

    /// A literal/length symbol in the fixed code (RFC 1951 §3.2.6).
    fn put_code(&mut self, sym: usize) {
        let (code, len) = FIXED_CODES[sym];
        self.put(u32::from(code), u32::from(len));
    }

    fn put_match(&mut self, len: usize, dist: usize) {
        let l = len - 3;
        if len == MAX_MATCH {
            self.put_code(285);
        } else if l < 8 {
            self.put_code(257 + l);
        } else {
            let nb = usize::BITS - 1 - l.leading_zeros(); // floor(log2 l) >= 3
            let extra = nb - 2;
            self.put_code(257 + 4 * (nb as usize - 1) + ((l >> extra) & 3));
            self.put((l & ((1 << extra) - 1)) as u32, extra);
        }
        let d = dist - 1;
        if d < 4 {
            self.put(u32::from(DISTANCE_CODES[d]), 5);
        } else {
            let nb = usize::BITS - 1 - d.leading_zeros(); // >= 2
            let extra = nb - 1;
            let code = 2 * nb as usize + ((d >> extra) & 1);
            self.put(u32::from(DISTANCE_CODES[code]), 5);
            self.put((d & ((1 << extra) - 1)) as u32, extra);
        }
    }

    /// Moves whole bytes from the bit buffer to `out`.
    fn drain(&mut self, out: &mut Vec<u8>) {
        while self.nbits >= 8 {
            out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits -= 8;
        }
    }

    fn align(&mut self, out: &mut Vec<u8>) {
        self.nbits = self.nbits.div_ceil(8) * 8;
        self.drain(out);
    }
}

/// The chain link of position `p` to `head`, the previous position + 1 with
/// its hash (0 = none): how far back that position is.
fn link(p: usize, head: u16) -> u16 {
    match head {
        0 => 0,
        prev => (p + 1 - prev as usize) as u16,
    }
}

/// The hash bucket of three bytes.
fn hash3(h: &[u8]) -> usize {
    let v = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
    ((v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize) & (HASH_SIZE - 1)
}

fn chain_for(level: u32) -> usize {
    match level {
        0 | 1 => 2,
        2 => 4,
        3 => 6,
        4 => 8,
        5 => 16,
        6 => 32,
        7 => 64,
        8 => 128,
        _ => 256,
    }
}

/// How long a match may be and still have every position hashed
/// (zlib's `max_insert_length` for its fast levels); deeper levels hash
/// every position.
fn insert_for(level: u32) -> usize {
    match level {
        0 | 1 => 4,
        2 => 5,
        3 => 6,
        _ => MAX_MATCH,
    }
}

/// How many leading bytes `a` and `b` (of equal length) share, eight at a
/// time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut n = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x = u64::from_le_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_le_bytes(y.try_into().unwrap_or_default());
        if x != y {
            return n + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + a[n..]
        .iter()
        .zip(&b[n..])
        .take_while(|(x, y)| x == y)
        .count()
}

const fn reverse(code: u32, len: u32) -> u32 {
    code.reverse_bits() >> (32 - len)
}

/// The fixed literal/length code (RFC 1951 §3.2.6) of each symbol, bits
/// already reversed as they are written, and its length. A table, because
/// wasm has no instruction that reverses bits.
const FIXED_CODES: [(u16, u8); 288] = {
    let mut t = [(0u16, 0u8); 288];
    let mut sym = 0;
    while sym < 288 {
        let (code, len) = match sym {
            0..=143 => (0x30 + sym as u32, 8),
            144..=255 => (0x190 + (sym - 144) as u32, 9),
            256..=279 => ((sym - 256) as u32, 7),
            _ => (0xc0 + (sym - 280) as u32, 8),
        };
        t[sym] = (reverse(code, len) as u16, len as u8);
        sym += 1;
    }
    t
};

/// The fixed 5-bit distance codes, reversed.
const DISTANCE_CODES: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut code = 0;
    while code < 32 {
        t[code] = reverse(code as u32, 5) as u8;
        code += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};
    use proptest::prelude::*;

    fn inflate(data: &[u8]) -> Vec<u8> {
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(data.len() * 50 + 4096);
        let _ = d.decompress_vec(data, &mut out, FlushDecompress::Sync);
        out
    }

    #[test]
    fn every_match_length_and_distance_round_trips() {
        // A run repeated at every distance up to the window, with every
        // length up to the maximum.
        let mut input = Vec::new();
        let mut seed = 7u32;
        for _ in 0..3 * WINDOW {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            input.push(b"abcdefgh"[(seed >> 16) as usize % 8]);
        }
        for len in 3..=MAX_MATCH + 5 {
            let from = input.len() - (len * 37) % WINDOW - len;
            let copy = input[from..from + len].to_vec();
            input.extend_from_slice(&copy);
        }
        for level in [1, 5, 9] {
            let mut d = Deflater::new(level);
            let mut out = Vec::new();
            d.write(&input, &mut out);
            assert_eq!(inflate(&out), input, "level {level}");
            assert!(out.len() < input.len() / 2);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any bytes, cut into any writes, each flushed: after each write
        /// everything so far decodes.
        #[test]
        fn arbitrary_writes_decode_after_each_flush(
            writes in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..3000), 1..12),
            level in 1u32..10,
        ) {
            let mut d = Deflater::new(level);
            let mut out = Vec::new();
            let mut sent = Vec::new();
            for w in &writes {
                d.write(w, &mut out);
                sent.extend_from_slice(w);
                prop_assert_eq!(&inflate(&out), &sent);
            }
            d.finish(&mut out);
            let mut dec = Decompress::new(false);
            let mut all = Vec::with_capacity(sent.len() + 16);
            let status = dec.decompress_vec(&out, &mut all, FlushDecompress::Finish).unwrap();
            prop_assert_eq!(status, flate2::Status::StreamEnd);
            prop_assert_eq!(all, sent);
        }
    }
}
