//! The response encoder: after every flush, everything written so far
//! inflates to exactly the input so far (the client can decode each event
//! as it arrives), and the finished stream passes a standard reader's
//! checksum.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, u8, Vec<Vec<u8>>)| {
    let (gzip, level, pieces) = input;
    let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let (flushes, end) = tokenedge::core::fuzzing::compress(gzip, u32::from(level % 10), &pieces);
    let mut seen = Vec::new();
    let mut writer: Box<dyn Decoder> = if gzip {
        Box::new(flate2::write::GzDecoder::new(Vec::new()))
    } else {
        Box::new(flate2::write::ZlibDecoder::new(Vec::new()))
    };
    for (piece, flushed) in pieces.iter().zip(&flushes) {
        seen.extend_from_slice(piece);
        writer.write_all(flushed).expect("a flush inflates");
        writer.flush().expect("a flush inflates");
        assert_eq!(
            writer.so_far(),
            seen.as_slice(),
            "a flush left input behind"
        );
    }
    writer.write_all(&end).expect("the end inflates");
    assert_eq!(writer.finish_all(), seen, "the finished stream differs");
});

trait Decoder: Write {
    fn so_far(&self) -> &[u8];
    fn finish_all(self: Box<Self>) -> Vec<u8>;
}

impl Decoder for flate2::write::GzDecoder<Vec<u8>> {
    fn so_far(&self) -> &[u8] {
        self.get_ref()
    }
    fn finish_all(self: Box<Self>) -> Vec<u8> {
        self.finish().expect("the gzip trailer checks")
    }
}

impl Decoder for flate2::write::ZlibDecoder<Vec<u8>> {
    fn so_far(&self) -> &[u8] {
        self.get_ref()
    }
    fn finish_all(self: Box<Self>) -> Vec<u8> {
        self.finish().expect("the zlib trailer checks")
    }
}
