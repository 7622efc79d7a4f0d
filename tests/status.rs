//! Status events: a streamed generation's client hears which stage it is
//! in while it would otherwise see nothing (`crate::core::status`).

mod common;

use bytes::Bytes;
use common::*;
use serde_json::Value;
use tokenedge::core::config::Config;
use tokenedge::core::session::Session;

const PROGRESS: &str = include_str!("vectors/llamacpp_chat_progress.sse");

fn with_format(cfg: Config, format: &str) -> (Session, World) {
    requesting(cfg, &[("x-tokenedge-format", format)])
}

/// The JSON of each `event: status` (compact) or `{"status":…}` line
/// (ndjson) or `: status` comment (openai) in a body.
fn statuses(body: &str) -> Vec<Value> {
    let lines: Vec<&str> = body.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let json = if let Some(j) = line.strip_prefix(": status ") {
            j.to_owned()
        } else if *line == "event: status" {
            lines[i + 1].strip_prefix("data: ").unwrap().to_owned()
        } else if let Some(j) = line.strip_prefix("{\"status\":") {
            j.strip_suffix('}').unwrap().to_owned()
        } else {
            continue;
        };
        out.push(serde_json::from_str(&json).unwrap());
    }
    out
}

fn feed_at(s: &mut Session, w: &mut World, t: u64, vector: &str) {
    for event in vector.split_inclusive("\n\n") {
        s.handle_upstream_chunk(t, Bytes::copy_from_slice(event.as_bytes()));
        w.pump(s, t);
    }
}

#[test]
fn a_compact_client_hears_each_stage_before_the_first_token() {
    let (mut s, mut w) = with_format(config(), "compact");
    assert_eq!(w.upstream.len(), 1);
    fire_timers(&mut s, &mut w, 249);
    assert!(
        w.head.is_none(),
        "nothing yet: the upstream may still refuse"
    );
    // The upstream is silent past the delay: the stream is committed and
    // says it waits.
    fire_timers(&mut s, &mut w, 250);
    assert_eq!(w.status(), 200);
    assert_eq!(
        w.text(),
        "event: status\ndata: {\"phase\":\"waiting\",\"elapsed_ms\":250}\n\n"
    );
    // It answered, and reads the prompt, reporting how far it is.
    s.handle_upstream_head(400, 200, &sse_head());
    w.pump(&mut s, 400);
    let blocks: Vec<&str> = PROGRESS.split_inclusive("\n\n").collect();
    let (progress, rest) = blocks.split_at(4);
    for (i, b) in progress.iter().enumerate() {
        s.handle_upstream_chunk(500 + i as u64 * 100, Bytes::copy_from_slice(b.as_bytes()));
        w.pump(&mut s, 500 + i as u64 * 100);
    }
    let told = statuses(&w.text());
    let processed: Vec<u64> = told[1..]
        .iter()
        .map(|v| v["progress"]["processed"].as_u64().unwrap())
        .collect();
    assert_eq!(processed, [0, 256, 512, 672]);
    assert!(told[1..].iter().all(|v| v["phase"] == "prefill"));
    assert_eq!(told[4]["elapsed_ms"], 800);
    assert_eq!(told[4]["progress"]["total"], 672);
    // Then text, and nothing more about stages while it flows.
    feed_at(&mut s, &mut w, 900, &rest.concat());
    assert!(w.ended);
    assert_eq!(statuses(&w.text()).len(), 5);
    let (text, _) = content_of(PROGRESS);
    let body = w.text();
    let tokens: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: \""))
        .map(|l| serde_json::from_str::<String>(&format!("\"{l}")).unwrap())
        .collect();
    assert_eq!(tokens, text);
    assert!(!body.contains("prompt_progress"));
}

#[test]
fn a_short_prefill_says_nothing() {
    // The whole prompt read within the delay: the client gets the text as
    // it would without status events.
    let (mut s, mut w) = with_format(config(), "compact");
    s.handle_upstream_head(50, 200, &sse_head());
    feed_at(&mut s, &mut w, 60, PROGRESS);
    fire_timers(&mut s, &mut w, 5_000);
    assert!(w.ended);
    assert!(statuses(&w.text()).is_empty(), "{}", w.text());
    assert!(w.text().starts_with("data: \"The\"\n\n"), "{}", w.text());
}

#[test]
fn an_upstream_that_answers_without_progress_gets_a_prefill_status_when_slow() {
    let (mut s, mut w) = with_format(config(), "ndjson");
    s.handle_upstream_head(100, 200, &sse_head());
    w.pump(&mut s, 100);
    assert_eq!(w.status(), 200);
    assert_eq!(w.text(), "", "the head alone says nothing yet");
    fire_timers(&mut s, &mut w, 350);
    assert_eq!(
        w.text(),
        "{\"status\":{\"phase\":\"prefill\",\"elapsed_ms\":350}}\n"
    );
    // Text at once after an answer: no status at all.
    let (mut s, mut w) = with_format(config(), "ndjson");
    s.handle_upstream_head(100, 200, &sse_head());
    s.handle_upstream_chunk(120, Bytes::from(CONTENT));
    w.pump(&mut s, 120);
    fire_timers(&mut s, &mut w, 1_000);
    assert!(statuses(&w.text()).is_empty(), "{}", w.text());
}

#[test]
fn keep_alives_say_the_stage_in_every_format_with_a_place() {
    let cfg = Config {
        keepalive_interval_ms: 5_000,
        ..config()
    };
    for (format, want) in [
        (
            "compact",
            "event: status\ndata: {\"phase\":\"generating\",\"elapsed_ms\":5200}\n\n",
        ),
        (
            "ndjson",
            "{\"status\":{\"phase\":\"generating\",\"elapsed_ms\":5200}}\n",
        ),
        (
            "openai",
            ": status {\"phase\":\"generating\",\"elapsed_ms\":5200}\n\n",
        ),
    ] {
        let (mut s, mut w) = with_format(cfg.clone(), format);
        s.handle_upstream_head(100, 200, &sse_head());
        s.handle_upstream_chunk(200, Bytes::from(CONTENT));
        w.pump(&mut s, 200);
        let before = w.body.len();
        fire_timers(&mut s, &mut w, 5_200);
        assert_eq!(&w.text()[before..], want, "{format}");
    }
    // `text` has no place for one: nothing is written.
    let (mut s, mut w) = with_format(cfg, "text");
    s.handle_upstream_head(100, 200, &sse_head());
    s.handle_upstream_chunk(200, Bytes::from(CONTENT));
    w.pump(&mut s, 200);
    fire_timers(&mut s, &mut w, 20_000);
    assert_eq!(w.text(), "Hi");
}

#[test]
fn a_refusal_keeps_its_http_status_unless_a_status_went_out_first() {
    let refuse = |s: &mut Session, w: &mut World, t: u64| {
        s.handle_upstream_head(t, 400, &[]);
        s.handle_upstream_chunk(
            t,
            Bytes::from_static(b"{\"error\":{\"message\":\"context too long\"}}"),
        );
        s.handle_upstream_end(t);
        w.pump(s, t);
    };
    // openai: a status never commits the response; the SDK sees a 400.
    let (mut s, mut w) = with_format(config(), "openai");
    fire_timers(&mut s, &mut w, 2_000);
    refuse(&mut s, &mut w, 2_000);
    assert_eq!(w.status(), 400);
    assert!(w.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("context too long"));
    // compact, refused within the delay: a 400 too.
    let (mut s, mut w) = with_format(config(), "compact");
    fire_timers(&mut s, &mut w, 100);
    refuse(&mut s, &mut w, 100);
    assert_eq!(w.status(), 400);
    // compact, refused after its client heard it waits: an error event.
    let (mut s, mut w) = with_format(config(), "compact");
    fire_timers(&mut s, &mut w, 300);
    refuse(&mut s, &mut w, 300);
    assert_eq!(w.status(), 200);
    assert!(w.text().contains("event: error\n") && w.text().contains("context too long"));
    assert!(w.ended);
}

#[test]
fn progress_is_never_stored_or_replayed() {
    const DETERMINISTIC: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0}"#;
    let cfg = Config {
        resume: true,
        ..config()
    };
    let (mut s, mut w) = cached_request(cfg.clone(), &Default::default(), "k1", DETERMINISTIC, &[]);
    s.handle_upstream_head(1, 200, &sse_head());
    w.pump(&mut s, 1);
    feed(&mut s, &mut w, PROGRESS, 300);
    assert!(w.ended);
    assert_eq!(statuses(&w.text()).len(), 4, "{}", w.text());
    // Neither the cache entry nor the stream's record has the progress.
    assert!(!w.kv_writes.is_empty());
    for (key, value, _) in &w.kv_writes {
        let v = String::from_utf8_lossy(value);
        assert!(
            !v.contains("prompt_progress") && !v.contains("\"phase\""),
            "{key}"
        );
    }
    // A hit replays the answer alone.
    let (_s, hit) = cached_request(cfg, &w.kv, "k1", DETERMINISTIC, &[]);
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert!(statuses(&hit.text()).is_empty());
    assert_eq!(content_of(&hit.text()).0, content_of(PROGRESS).0);
}

#[test]
fn a_llama_cpp_upstream_is_asked_for_progress() {
    let cfg = Config {
        dialect: tokenedge::core::config::Dialect::LlamaCpp,
        ..config()
    };
    let (_s, w) = with_format(cfg, "compact");
    let body: Value = serde_json::from_slice(&w.upstream[0].body).unwrap();
    assert_eq!(body["return_progress"], true);
    let (_s, w) = with_format(config(), "compact");
    let body: Value = serde_json::from_slice(&w.upstream[0].body).unwrap();
    assert!(body.get("return_progress").is_none());
}
