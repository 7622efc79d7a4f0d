//! Any upstream byte stream re-framed in each format, as a chat stream or a
//! Responses API one: every downstream event is one line of valid JSON (or
//! `[DONE]`), an `ndjson` line is one JSON value, and nothing follows the
//! end. And each line of the input, read as a chat event's data, reads the
//! same through the single-pass reader as through serde.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenedge::core::format::Format;

/// Valid JSON by the grammar (a number past f64's range, such as
/// `1e999`, is valid JSON: browsers and Python read it as infinity).
fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fuzz_target!(|input: (u8, Vec<Vec<u8>>)| {
    let (choice, pieces) = input;
    let format = [
        Format::OpenAi,
        Format::Compact,
        Format::Ndjson,
        Format::Text,
    ][usize::from(choice % 4)];
    let responses = choice & 4 != 0;
    let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    for line in pieces.iter().flat_map(|p| p.split(|&b| b == b'\n')) {
        let line = String::from_utf8_lossy(line);
        let data = line.strip_prefix("data:").map_or(&*line, str::trim_start);
        assert!(
            tokenedge::core::fuzzing::chunk_reads_agree(data),
            "the two readers disagree on {data:?}"
        );
    }
    let out = tokenedge::core::fuzzing::restream(format, responses, &pieces);
    let text = std::str::from_utf8(&out).expect("the output is UTF-8");
    match format {
        Format::OpenAi | Format::Compact => {
            assert!(
                text.is_empty() || text.ends_with("\n\n"),
                "ends mid-event: {text:?}"
            );
            for event in text.split("\n\n").filter(|e| !e.is_empty()) {
                let mut data = 0;
                for line in event.split('\n') {
                    if let Some(d) = line.strip_prefix("data: ") {
                        data += 1;
                        assert!(d == "[DONE]" || is_json(d), "data that is not JSON: {d:?}");
                    } else {
                        assert!(
                            line.starts_with("event: "),
                            "a line that is neither data nor an event name: {line:?}"
                        );
                    }
                }
                assert_eq!(data, 1, "an event without exactly one data line: {event:?}");
            }
        }
        Format::Ndjson => {
            for line in text.split_terminator('\n') {
                assert!(is_json(line), "a line that is not JSON: {line:?}");
            }
        }
        Format::Text => {}
    }
});
