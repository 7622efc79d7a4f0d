//! Any request head and body: the session answers it (a head, once), an
//! error is OpenAI-style JSON with a 4xx or 5xx status, and what goes
//! upstream is a JSON body without the client's credentials.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::{Action, Session};

#[derive(Arbitrary, Debug)]
struct Input {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    with_key: bool,
}

fuzz_target!(|input: Input| {
    let config = Config {
        upstream_urls: vec!["http://a:1".into()],
        api_keys: vec!["k-1".into()],
        upstream_api_key: Some("up".into()),
        ..Config::default()
    };
    let mut headers = input.headers.clone();
    if input.with_key {
        headers.push(("authorization".into(), "Bearer k-1".into()));
    }
    let mut s = Session::new(config);
    let mut now = 1;
    s.handle_request_head(now, RequestHead::new(&input.method, &input.path, headers));
    let mut heads = 0;
    for _ in 0..100 {
        while let Some(a) = s.poll_action() {
            match a {
                Action::ReadBody { limit } => {
                    if input.body.len() > limit {
                        s.handle_request_body_too_large(now);
                    } else {
                        s.handle_request_body(now, Bytes::from(input.body.clone()));
                    }
                }
                Action::Respond(head, body) => {
                    heads += 1;
                    if head.status >= 400
                        && head
                            .header("content-type")
                            .is_some_and(|c| c.starts_with("application/json"))
                    {
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).expect("an error body is JSON");
                        assert!(
                            v["error"]["message"].is_string(),
                            "not an OpenAI error: {v}"
                        );
                    }
                }
                Action::RespondHead(_) => heads += 1,
                Action::SendUpstream(req) => {
                    for (name, value) in &req.headers {
                        if name.eq_ignore_ascii_case("authorization") {
                            assert_eq!(
                                value, "Bearer up",
                                "the client's credentials went upstream"
                            );
                        }
                    }
                    if !req.body.is_empty() {
                        serde_json::from_slice::<serde_json::Value>(&req.body)
                            .expect("the upstream body is JSON");
                    }
                }
                Action::KvGet { read, .. } => s.handle_kv_value(now, read, None),
                _ => {}
            }
        }
        if s.is_finished() {
            break;
        }
        match s.poll_timeout() {
            Some(t) => {
                now = now.max(t);
                s.handle_timeout(now);
            }
            None => break,
        }
    }
    assert!(
        s.is_finished(),
        "the session did not finish once its timers ran out"
    );
    assert!(heads <= 1, "{heads} response heads");
    assert_eq!(heads, 1, "no response");
});
