//! Recorded upstream streams (`tests/vectors/NAME.sse`) driven through a
//! whole `Session` and compared with what the client must receive
//! (`tests/vectors/NAME.expected`): fed whole, split at every byte, and in
//! random chunk sizes. Every split must give the same bytes.
//!
//! `TOKENEDGE_BLESS=1 cargo test --test vectors` rewrites the expected
//! files; review the diff before committing it.

use bytes::Bytes;
use proptest::prelude::*;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::{Action, Session};

const REQUEST: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
/// The request of the Responses API vectors (`*_responses.sse`).
const RESPONSES_REQUEST: &str = r#"{"model":"m","input":"hi","stream":true}"#;

/// Drives a session with the upstream body cut into `chunks`; returns the
/// client's body and whether the response ended.
fn drive(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    drive_as("openai", chunks)
}

/// [`drive`] with the client asking for `format` (`X-Tokenedge-Format`).
fn drive_as(format: &str, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    drive_at("/v1/chat/completions", REQUEST, format, chunks)
}

/// [`drive`] for the vector `name`: a Responses API request for the
/// `*_responses` vectors, a chat one for the rest.
fn drive_vector(name: &str, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    if name.ends_with("_responses") {
        drive_at("/v1/responses", RESPONSES_REQUEST, "openai", chunks)
    } else {
        drive(chunks)
    }
}

/// [`drive`] with a request of `body` to `path`, in `format`.
fn drive_at(path: &str, body: &'static str, format: &str, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut s = Session::new(Config {
        upstream_urls: vec!["http://up".into()],
        auth_off: true,
        // Byte for byte: without the ids of resumable streams
        // (tests/resume.rs drives the vectors with them).
        resume: false,
        ..Config::default()
    });
    let head = RequestHead::new(
        "POST",
        path,
        vec![
            ("content-type".into(), "application/json".into()),
            ("x-tokenedge-format".into(), format.into()),
        ],
    );
    s.handle_request(0, head, Bytes::from_static(body.as_bytes()));
    s.handle_upstream_head(
        1,
        200,
        &[("content-type".into(), "text/event-stream".into())],
    );
    // All at one instant, so every split writes the same bytes (status
    // events carry the time since the request).
    for c in chunks {
        s.handle_upstream_chunk(2, Bytes::copy_from_slice(c));
    }
    s.handle_upstream_end(1_000_000);
    let mut body = Vec::new();
    let mut ended = false;
    while let Some(a) = s.poll_action() {
        match a {
            Action::RespondChunk(b) => body.extend_from_slice(&b),
            Action::RespondEnd => ended = true,
            _ => {}
        }
    }
    (body, ended)
}

fn expected(name: &str, input: &[u8]) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/");
    let path = format!("{dir}{name}.expected");
    if std::env::var_os("TOKENEDGE_BLESS").is_some() {
        std::fs::write(&path, drive_vector(name, &[input]).0).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (bless with TOKENEDGE_BLESS=1)"))
}

fn check_vector(name: &str, input: &[u8]) {
    let want = expected(name, input);
    let (whole, ended) = drive_vector(name, &[input]);
    assert!(ended, "{name}: response did not end");
    assert_eq!(
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&want),
        "{name}: whole"
    );
    for cut in 0..=input.len() {
        let (got, _) = drive_vector(name, &[&input[..cut], &input[cut..]]);
        assert!(got == want, "{name}: differs when split at byte {cut}");
    }
}

fn random_chunks(input: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
        i += 1;
    }
    out
}

macro_rules! vectors {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;
                const INPUT: &[u8] = include_bytes!(concat!("vectors/", stringify!($name), ".sse"));

                #[test]
                fn whole_and_every_split() {
                    check_vector(stringify!($name), INPUT);
                }

                proptest! {
                    #![proptest_config(ProptestConfig::with_cases(64))]
                    #[test]
                    fn random_chunk_sizes(sizes in proptest::collection::vec(1usize..300, 1..40)) {
                        let want = expected(stringify!($name), INPUT);
                        let chunks = random_chunks(INPUT, &sizes);
                        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                        prop_assert_eq!(drive_vector(stringify!($name), &refs).0, want);
                    }
                }
            }
        )*
    };
}

vectors!(
    llamacpp_chat,
    llamacpp_completions_logprobs,
    vllm_chat,
    openai_tool_calls,
    grammar_edge_cases,
    llamacpp_chat_multi_line,
    llamacpp_chat_progress,
    llamacpp_responses,
    vllm_responses
);

/// The JSON of each event (`data:` or ndjson line) of a client body, and
/// a check that each is one line of valid JSON (line-based SSE readers and
/// ndjson parsers read no other way).
fn events_as_json(format: &str, body: &[u8]) -> Vec<serde_json::Value> {
    let text = std::str::from_utf8(body).unwrap();
    let lines: Vec<&str> = match format {
        "ndjson" => text.lines().collect(),
        _ => text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data: Vec<&str> = e.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                assert_eq!(
                    data.len(),
                    1,
                    "{format}: an event without exactly one data line: {e:?}"
                );
                data[0]
            })
            .filter(|d| *d != "[DONE]")
            .collect(),
    };
    lines
        .iter()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{format}: not JSON ({e}): {l:?}"))
        })
        .collect()
}

/// An upstream that spreads each event's JSON over several `data:` lines
/// (legal SSE; the real capture, pretty-printed) reaches the client as one
/// line of JSON per event in every format, carrying what the single-line
/// capture carries.
#[test]
fn multi_line_json_becomes_single_line_events_in_every_format() {
    let multi = include_bytes!("vectors/llamacpp_chat_multi_line.sse");
    let single = include_bytes!("vectors/llamacpp_chat.sse");
    for format in ["openai", "compact", "ndjson", "text"] {
        let (got, ended) = drive_as(format, &[multi]);
        let (want, _) = drive_as(format, &[single]);
        assert!(ended, "{format}: did not end");
        if format == "text" {
            assert_eq!(got, want, "text");
            continue;
        }
        let got = events_as_json(format, &got);
        assert!(got.len() > 10, "{format}: {} events", got.len());
        assert_eq!(got, events_as_json(format, &want), "{format}");
    }
}

/// Every typed Responses API event reaches the client unchanged, names
/// and `sequence_number` included, and nothing is added at the end.
#[test]
fn responses_events_survive_byte_for_byte() {
    for (name, input) in [
        (
            "llamacpp_responses",
            &include_bytes!("vectors/llamacpp_responses.sse")[..],
        ),
        (
            "vllm_responses",
            include_bytes!("vectors/vllm_responses.sse"),
        ),
    ] {
        let (out, ended) = drive_vector(name, &[input]);
        assert!(ended, "{name}");
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(input),
            "{name}"
        );
    }
}

/// Every field of every upstream event reaches the client unchanged.
#[test]
fn upstream_fields_survive_byte_for_byte() {
    for input in [
        &include_bytes!("vectors/llamacpp_chat.sse")[..],
        include_bytes!("vectors/openai_tool_calls.sse"),
        include_bytes!("vectors/vllm_chat.sse"),
    ] {
        let (out, _) = drive(&[input]);
        // These upstreams already use LF line ends and no comments, so the
        // output must equal the input exactly.
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(input)
        );
    }
}

/// A stream cut short at any event boundary ends with an error event, never
/// with a clean end; one cut after its finish_reason ends cleanly with
/// `[DONE]`.
#[test]
fn cut_streams_never_end_silently() {
    let input = include_bytes!("vectors/llamacpp_chat.sse");
    let text = std::str::from_utf8(input).unwrap();
    let finish_at = text.find("\"finish_reason\":\"").unwrap();
    for (at, _) in text.match_indices("\n\n") {
        let cut = at + 2;
        if cut == input.len() {
            continue;
        }
        let (out, ended) = drive(&[&input[..cut]]);
        let out = String::from_utf8(out).unwrap();
        assert!(ended);
        if cut > finish_at {
            assert!(out.ends_with("data: [DONE]\n\n"), "cut at {cut}");
        } else {
            assert!(
                out.contains("upstream_stream_broken"),
                "cut at {cut}: {out}"
            );
            assert!(!out.contains("data: [DONE]"));
        }
    }
}
