//! The SSE parser yields the same events whatever the chunking: the input
//! fed whole, and cut at the fuzzer's points, must agree (events and the
//! error, if any).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenedge::core::sse::{Event, Parser, SseError};

fn parse(pieces: &[&[u8]]) -> (Vec<Event>, Option<SseError>) {
    let mut parser = Parser::new();
    let mut events = Vec::new();
    for piece in pieces {
        if let Err(e) = parser.push(piece, &mut events) {
            return (events, Some(e));
        }
    }
    (events, None)
}

fuzz_target!(|input: (Vec<u8>, Vec<u16>)| {
    let (data, cuts) = input;
    let whole = parse(&[&data]);
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| usize::from(*c) % (data.len() + 1))
        .collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut at = 0;
    for p in points {
        pieces.push(&data[at..p]);
        at = p;
    }
    pieces.push(&data[at..]);
    let cut = parse(&pieces);
    assert_eq!(whole, cut, "chunking changed what was parsed");
    for e in &whole.0 {
        assert!(!e.data.contains('\r'), "a data line kept a carriage return");
    }
});
