//! The checksums of the compressed formats' trailers: CRC-32 for gzip
//! (RFC 1952) and Adler-32 for zlib (RFC 1950).
//!
//! Adler-32 is the `adler2` crate's, already in the build through
//! `miniz_oxide`. CRC-32 is a 1 KiB table computed at compile time: the
//! `crc32fast` crate would bring a 16 KiB slice-by-16 table (and a second
//! dependency) into the wasm for a checksum that runs over a few hundred
//! bytes per flush.

/// CRC-32 (IEEE), as the gzip trailer needs it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Crc32 {
    crc: u32,
    len: u32,
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// [`CRC_TABLE`] and seven more, for eight bytes a step ("slicing by
/// eight"): `CRC_TABLES[k][i]` is the CRC of byte `i` followed by `k` zero
/// bytes.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    t[0] = CRC_TABLE;
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ CRC_TABLE[(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

impl Crc32 {
    /// Adds `data` to the checksum, eight bytes a step.
    pub(crate) fn update(&mut self, data: &[u8]) {
        let t = &CRC_TABLES;
        let at = |k: usize, v: u32, shift: u32| t[k][((v >> shift) & 0xff) as usize];
        let mut c = !self.crc;
        let mut eights = data.chunks_exact(8);
        for e in &mut eights {
            let a = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) ^ c;
            let b = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            c = at(7, a, 0)
                ^ at(6, a, 8)
                ^ at(5, a, 16)
                ^ at(4, a, 24)
                ^ at(3, b, 0)
                ^ at(2, b, 8)
                ^ at(1, b, 16)
                ^ at(0, b, 24);
        }
        for &b in eights.remainder() {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.crc = !c;
        self.len = self.len.wrapping_add(data.len() as u32);
    }

    /// The gzip trailer: CRC-32 and input length mod 2^32, little-endian.
    pub(crate) fn trailer(&self) -> [u8; 8] {
        let mut t = [0; 8];
        t[..4].copy_from_slice(&self.crc.to_le_bytes());
        t[4..].copy_from_slice(&self.len.to_le_bytes());
        t
    }
}

/// Adler-32, as the zlib trailer needs it.
#[derive(Clone, Copy, Default)]
pub(crate) struct Adler32(adler2::Adler32);

impl Adler32 {
    /// Adds `data` to the checksum.
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.write_slice(data);
    }

    /// The zlib trailer: the checksum, big-endian.
    pub(crate) fn trailer(&self) -> [u8; 4] {
        self.0.checksum().to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_adler_match_reference_values() {
        let mut c = Crc32::default();
        c.update(b"123456789");
        assert_eq!(&c.trailer()[..4], &0xCBF4_3926u32.to_le_bytes());
        let mut a = Adler32::default();
        a.update(b"Wikipedia");
        assert_eq!(a.trailer(), 0x11E6_0398u32.to_be_bytes());
        let big = vec![0xffu8; 100_000];
        let mut a = Adler32::default();
        a.update(&big[..33_333]);
        a.update(&big[33_333..]);
        let mut whole = Adler32::default();
        whole.update(&big);
        assert_eq!(a.trailer(), whole.trailer());
    }

    proptest::proptest! {
        #[test]
        fn crc_in_any_pieces_matches_a_reference(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            cut in 0usize..300,
        ) {
            let cut = cut.min(data.len());
            let mut c = Crc32::default();
            c.update(&data[..cut]);
            c.update(&data[cut..]);
            let mut reference = flate2::Crc::new();
            reference.update(&data);
            proptest::prop_assert_eq!(&c.trailer()[..4], &reference.sum().to_le_bytes());
        }
    }
}
