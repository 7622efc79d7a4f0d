//! How every response ends: never passed off as complete when it is not.
//! A passed-through body that is cut is aborted, not ended.

mod common;

use bytes::Bytes;
use common::*;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::Session;

fn json_head() -> Vec<(String, String)> {
    vec![("content-type".into(), "application/json".into())]
}

#[test]
fn a_cut_non_stream_answer_is_aborted_not_ended() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_JSON);
    s.handle_upstream_head(1, 200, &json_head());
    s.handle_upstream_chunk(2, Bytes::from_static(b"{\"choices\":[{\"message\":"));
    s.handle_upstream_failed(3, "connection reset");
    w.pump(&mut s, 3);
    assert_eq!(w.status(), 200);
    assert!(w.aborted, "a truncated JSON body was ended as if complete");
    assert!(s.is_finished());
    assert!(w.kv_writes.is_empty());
}

#[test]
fn a_stalled_models_list_is_aborted_not_ended() {
    let mut s = Session::new(config());
    let mut w = World::default();
    s.handle_request(0, RequestHead::new("GET", "/v1/models", vec![]), Bytes::new());
    w.pump(&mut s, 0);
    s.handle_upstream_head(1, 200, &json_head());
    s.handle_upstream_chunk(2, Bytes::from_static(b"{\"data\":[{\"id\":"));
    w.pump(&mut s, 2);
    fire_timers(&mut s, &mut w, 10 * 60 * 1000);
    assert!(w.aborted, "a truncated JSON body was ended as if complete");
    assert!(s.is_finished());
}

#[test]
fn a_complete_non_stream_answer_still_ends_cleanly() {
    let (mut s, mut w) = start(config(), "/v1/chat/completions", CHAT_JSON);
    s.handle_upstream_head(1, 200, &json_head());
    s.handle_upstream_chunk(2, Bytes::from_static(b"{\"choices\":[]}"));
    s.handle_upstream_end(3);
    w.pump(&mut s, 3);
    assert!(w.ended && !w.aborted);
}
