//! The compression codec: one deflate context per response, fed event by
//! event, flushed at each flush point so the client can decode everything
//! sent so far, finished at the end. Works on caller-owned buffers; does no
//! I/O and makes no decisions (when to flush and at what level is the
//! session's policy).
//!
//! `gzip` is a 10-byte header, raw deflate, and a CRC-32/length trailer
//! (RFC 1952); `deflate` is the zlib format (RFC 1950), as HTTP defines it.
//! Backend: flate2 on the pure-Rust miniz_oxide, which builds for every wasm
//! target.

use flate2::{Compress, CompressError, Compression, Crc, FlushCompress, Status};

use crate::core::encoding::Coding;

/// Compression level for token streams: per-event payloads are small, so
/// higher levels buy almost nothing and cost CPU on every token.
pub const DEFAULT_LEVEL: u32 = 5;

/// How a flush point ends the data written so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Byte-aligned sync flush (empty stored block): everything so far is
    /// decodable by any inflater.
    Sync,
    /// Partial flush: everything so far is decodable, slightly fewer bytes,
    /// not every client's inflater emits it at once.
    Partial,
}

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];

enum Inner {
    Identity,
    Deflate {
        compress: Box<Compress>,
        gzip: Option<Crc>,
        header_written: bool,
    },
}

/// One response's encoder.
pub struct Encoder {
    inner: Inner,
}

impl Encoder {
    pub fn new(coding: Coding, level: u32) -> Self {
        let level = Compression::new(level.min(9));
        let inner = match coding {
            Coding::Identity => Inner::Identity,
            Coding::Deflate => Inner::Deflate {
                compress: Box::new(Compress::new(level, true)),
                gzip: None,
                header_written: true,
            },
            Coding::Gzip => Inner::Deflate {
                compress: Box::new(Compress::new(level, false)),
                gzip: Some(Crc::new()),
                header_written: false,
            },
        };
        Self { inner }
    }

    /// Compresses `input` and ends it with a flush of `mode`, appending
    /// everything the client needs to decode it to `out`.
    pub fn encode_and_flush(&mut self, input: &[u8], mode: FlushMode, out: &mut Vec<u8>) {
        match &mut self.inner {
            Inner::Identity => out.extend_from_slice(input),
            Inner::Deflate {
                compress,
                gzip,
                header_written,
            } => {
                if !*header_written {
                    out.extend_from_slice(&GZIP_HEADER);
                    *header_written = true;
                }
                if let Some(crc) = gzip {
                    crc.update(input);
                }
                let flush = match mode {
                    FlushMode::Sync => FlushCompress::Sync,
                    FlushMode::Partial => FlushCompress::Partial,
                };
                // miniz_oxide cannot fail on in-memory buffers; if it ever
                // did, the client would see a decode error, never a panic.
                let _ = run(compress, input, out, flush);
            }
        }
    }

    /// Ends the stream (final block, gzip trailer).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Inner::Deflate {
            compress,
            gzip,
            header_written,
        } = &mut self.inner
        {
            if !*header_written {
                out.extend_from_slice(&GZIP_HEADER);
                *header_written = true;
            }
            let _ = run(compress, &[], out, FlushCompress::Finish);
            if let Some(crc) = gzip {
                out.extend_from_slice(&crc.sum().to_le_bytes());
                out.extend_from_slice(&crc.amount().to_le_bytes());
            }
        }
    }
}

fn run(
    c: &mut Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    flush: FlushCompress,
) -> Result<(), CompressError> {
    loop {
        out.reserve(input.len() + 64);
        let before = c.total_in();
        let status = c.compress_vec(input, out, flush)?;
        input = &input[(c.total_in() - before) as usize..];
        let room_left = out.len() < out.capacity();
        match status {
            Status::StreamEnd => return Ok(()),
            _ if input.is_empty() && room_left && flush != FlushCompress::Finish => return Ok(()),
            _ => {}
        }
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
            for mode in [FlushMode::Sync, FlushMode::Partial] {
                let mut enc = Encoder::new(coding, DEFAULT_LEVEL);
                let mut wire = Vec::new();
                let mut sent = String::new();
                for e in events() {
                    enc.encode_and_flush(e.as_bytes(), mode, &mut wire);
                    sent.push_str(&e);
                    assert_eq!(
                        inflate_prefix(coding, &wire),
                        sent.as_bytes(),
                        "{coding:?} {mode:?}"
                    );
                }
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
                enc.encode_and_flush(e.as_bytes(), FlushMode::Sync, &mut wire);
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
