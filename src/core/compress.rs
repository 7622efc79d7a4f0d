//! The compression codec: one deflate context per response, fed event by
//! event, flushed at each flush point so the client can decode everything
//! sent so far, finished at the end. Works on caller-owned buffers; does no
//! I/O and makes no decisions (when to flush and at what level is the
//! session's policy).
//!
//! `gzip` is a 10-byte header, raw deflate, and a CRC-32/length trailer
//! (RFC 1952); `deflate` is the zlib format (RFC 1950), as HTTP defines it.
//! Backend: [`crate::core::deflate`], a bounded-window encoder (about
//! 33 KiB of state per response).

use crate::core::checksum::{Adler32, Crc32};
use crate::core::deflate::Deflater;
use crate::core::encoding::Coding;

/// Compression level for token streams: per-event payloads are small and
/// match the previous event almost whole, so a short hash-chain search finds
/// nearly everything a long one would.
pub(crate) const DEFAULT_LEVEL: u32 = 5;

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
/// zlib header: deflate with a 4 KiB window (CINFO 4), default level, no
/// dictionary; `0x4889` is a multiple of 31 as RFC 1950 requires.
const ZLIB_HEADER: [u8; 2] = [0x48, 0x89];

enum Check {
    Gzip(Crc32),
    Zlib(Adler32),
}

enum Inner {
    Identity,
    Deflate {
        deflater: Box<Deflater>,
        check: Check,
        header_written: bool,
    },
}

/// One response's encoder.
pub(crate) struct Encoder {
    inner: Inner,
}

impl Encoder {
    pub(crate) fn new(coding: Coding, level: u32) -> Self {
        let check = match coding {
            Coding::Identity => {
                return Self {
                    inner: Inner::Identity,
                }
            }
            Coding::Gzip => Check::Gzip(Crc32::default()),
            Coding::Deflate => Check::Zlib(Adler32::default()),
        };
        Self {
            inner: Inner::Deflate {
                deflater: Box::new(Deflater::new(level)),
                check,
                header_written: false,
            },
        }
    }

    /// Changes the search effort for the following writes.
    pub(crate) fn set_level(&mut self, level: u32) {
        if let Inner::Deflate { deflater, .. } = &mut self.inner {
            deflater.set_level(level);
        }
    }

    /// Compresses `input` and ends it with a sync flush, appending
    /// everything the client needs to decode it to `out`.
    pub(crate) fn encode_and_flush(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match &mut self.inner {
            Inner::Identity => out.extend_from_slice(input),
            Inner::Deflate {
                deflater,
                check,
                header_written,
            } => {
                write_header(check, header_written, out);
                match check {
                    Check::Gzip(c) => c.update(input),
                    Check::Zlib(a) => a.update(input),
                }
                deflater.write(input, out);
            }
        }
    }

    /// Ends the stream (final block, trailer).
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if let Inner::Deflate {
            deflater,
            check,
            header_written,
        } = &mut self.inner
        {
            write_header(check, header_written, out);
            deflater.finish(out);
            match check {
                Check::Gzip(c) => out.extend_from_slice(&c.trailer()),
                Check::Zlib(a) => out.extend_from_slice(&a.trailer()),
            }
        }
    }
}

impl Encoder {
    /// The end a stream flushed with [`Encoder::encode_and_flush`] would
    /// have if it finished now (an empty final block and the trailer),
    /// without finishing it: appended to what was written so far, it makes
    /// a complete stream, and writing can go on after it.
    pub(crate) fn end_now(&self, out: &mut Vec<u8>) {
        if let Inner::Deflate { check, .. } = &self.inner {
            // After a sync flush the stream is byte-aligned: BFINAL=1,
            // BTYPE=01 (fixed codes), then the end-of-block code.
            out.extend_from_slice(&[0x03, 0x00]);
            match check {
                Check::Gzip(c) => out.extend_from_slice(&c.trailer()),
                Check::Zlib(a) => out.extend_from_slice(&a.trailer()),
            }
        }
    }
}

fn write_header(check: &Check, written: &mut bool, out: &mut Vec<u8>) {
    if !*written {
        out.extend_from_slice(match check {
            Check::Gzip(_) => &GZIP_HEADER[..],
            Check::Zlib(_) => &ZLIB_HEADER[..],
        });
        *written = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    /// Inflates everything decodable in `data` (a prefix of a stream).
    fn inflate_prefix(coding: Coding, data: &[u8]) -> Vec<u8> {
        let (mut d, body) = match coding {
            Coding::Gzip => (Decompress::new(false), &data[10.min(data.len())..]),
            Coding::Deflate => (Decompress::new(true), data),
            Coding::Identity => return data.to_vec(),
        };
        let mut out = Vec::with_capacity(body.len() * 20 + 1024);
        let _ = d.decompress_vec(body, &mut out, FlushDecompress::Sync);
        out
    }

    fn events() -> Vec<String> {
        (0..200)
            .map(|i| format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\"finish_reason\":null}}],\"id\":\"chatcmpl-x\"}}\n\n"))
            .collect()
    }

    #[test]
    fn every_flush_makes_all_events_so_far_decodable() {
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Identity] {
            let mut enc = Encoder::new(coding, DEFAULT_LEVEL);
            let mut wire = Vec::new();
            let mut sent = String::new();
            for e in events() {
                enc.encode_and_flush(e.as_bytes(), &mut wire);
                sent.push_str(&e);
                assert_eq!(inflate_prefix(coding, &wire), sent.as_bytes(), "{coding:?}");
            }
        }
    }

    #[test]
    fn finished_streams_decode_with_standard_readers() {
        use std::io::Read;
        let all: String = events().concat();
        for coding in [Coding::Gzip, Coding::Deflate] {
            let mut enc = Encoder::new(coding, DEFAULT_LEVEL);
            let mut wire = Vec::new();
            for e in events() {
                enc.encode_and_flush(e.as_bytes(), &mut wire);
            }
            enc.finish(&mut wire);
            let mut decoded = String::new();
            match coding {
                Coding::Gzip => flate2::read::GzDecoder::new(&wire[..])
                    .read_to_string(&mut decoded)
                    .unwrap(),
                _ => flate2::read::ZlibDecoder::new(&wire[..])
                    .read_to_string(&mut decoded)
                    .unwrap(),
            };
            assert_eq!(decoded, all);
            // One context for the whole response: far smaller than the input.
            assert!(
                wire.len() * 3 < all.len(),
                "{coding:?}: {} of {}",
                wire.len(),
                all.len()
            );
        }
    }

    #[test]
    fn empty_stream_is_valid_gzip() {
        use std::io::Read;
        let mut enc = Encoder::new(Coding::Gzip, DEFAULT_LEVEL);
        let mut wire = Vec::new();
        enc.finish(&mut wire);
        let mut s = String::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_string(&mut s)
            .unwrap();
        assert!(s.is_empty());
    }
}
