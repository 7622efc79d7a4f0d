//! The demo page at `/`: served without a key, with its CSP; `PAGE=off`
//! turns it off; nothing else is served from it.

mod common;

use bytes::Bytes;
use common::*;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::Session;

fn get(cfg: Config, method: &str, path: &str) -> World {
    let mut s = Session::new(cfg);
    let mut w = World::default();
    s.handle_request(0, RequestHead::new(method, path, vec![]), Bytes::new());
    w.pump(&mut s, 0);
    assert!(s.is_finished());
    w
}

fn closed() -> Config {
    Config {
        auth_off: false,
        api_keys: vec!["k".into()],
        ..config()
    }
}

#[test]
fn the_page_needs_no_key_and_allows_nothing_from_elsewhere() {
    let w = get(closed(), "GET", "/");
    assert_eq!(w.status(), 200);
    assert_eq!(w.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = w.header("content-security-policy").unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'self';"),
        "{csp}"
    );
    assert!(w
        .text()
        .contains("<script type=\"module\" src=\"/page.js\">"));
    assert!(w.upstream.is_empty());
    let js = get(closed(), "GET", "/tokenedge.js");
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.text().contains("export class Tokenedge"));
    let head = get(closed(), "HEAD", "/page.css");
    assert_eq!(head.status(), 200);
    assert!(head.body.is_empty());
    // The API still needs its key.
    assert_eq!(get(closed(), "GET", "/v1/models").status(), 401);
}

#[test]
fn page_off_and_other_paths_are_404() {
    let off = Config {
        page: false,
        ..closed()
    };
    for (cfg, path) in [
        (off, "/"),
        (closed(), "/page.js.map"),
        (closed(), "/../Cargo.toml"),
    ] {
        let w = get(cfg, "GET", path);
        assert_eq!(w.status(), 404, "{path}");
        assert!(w.json()["error"]["message"].is_string());
    }
    // Only GET and HEAD.
    assert_ne!(get(closed(), "POST", "/").status(), 200);
}
