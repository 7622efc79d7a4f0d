//! The response encoder: after every flush, everything written so far
//! inflates to exactly the input so far (the client can decode each event
//! as it arrives), and the finished stream passes a standard reader's
//! checksum.
#![no_main]

#[path = "inflate.rs"]
mod inflate;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, u8, Vec<Vec<u8>>)| {
    let (gzip, level, pieces) = input;
    let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let (flushes, end) = tokenedge::core::fuzzing::compress(gzip, u32::from(level % 10), &pieces);
    let mut client = inflate::Inflater::new(gzip);
    let mut seen = Vec::new();
    for (piece, flushed) in pieces.iter().zip(&flushes) {
        let decoded = client.feed(flushed).expect("a flush inflates");
        assert_eq!(decoded, *piece, "a flush left input behind");
        seen.extend_from_slice(piece);
    }
    client.feed(&end).expect("the end inflates");
    assert_eq!(
        client.finish().expect("the trailer checks"),
        seen,
        "the finished stream differs"
    );
});
