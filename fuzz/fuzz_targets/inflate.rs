//! A gzip or zlib reader fed as bytes arrive, as a client's is: what each
//! feed decoded, or the error that makes the body undecodable.

use std::cell::RefCell;
use std::io::{self, Write};
use std::rc::Rc;

/// Where the decoder writes; shared so that the decoded bytes can be taken
/// after each feed.
#[derive(Clone, Default)]
struct Sink(Rc<RefCell<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct Inflater {
    gzip: bool,
    decoder: Box<dyn Write>,
    out: Sink,
    /// Every byte fed, for the whole-stream check at the end.
    wire: Vec<u8>,
}

impl Inflater {
    /// A gzip reader, or a zlib one (HTTP's `deflate`).
    pub fn new(gzip: bool) -> Self {
        let out = Sink::default();
        let decoder: Box<dyn Write> = if gzip {
            Box::new(flate2::write::GzDecoder::new(out.clone()))
        } else {
            Box::new(flate2::write::ZlibDecoder::new(out.clone()))
        };
        Self {
            gzip,
            decoder,
            out,
            wire: Vec::new(),
        }
    }

    /// Feeds `bytes` and returns everything they decoded.
    pub fn feed(&mut self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        self.wire.extend_from_slice(bytes);
        self.decoder.write_all(bytes)?;
        self.decoder.flush()?;
        Ok(std::mem::take(&mut *self.out.0.borrow_mut()))
    }

    /// The whole stream read again by a standard reader, which checks
    /// its trailer (length and checksum).
    pub fn finish(self) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        if self.gzip {
            io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&self.wire[..]), &mut all)?;
        } else {
            io::Read::read_to_end(
                &mut flate2::read::ZlibDecoder::new(&self.wire[..]),
                &mut all,
            )?;
        }
        Ok(all)
    }
}
