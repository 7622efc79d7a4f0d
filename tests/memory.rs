//! Memory per stream: the peak heap a whole session holds while it
//! re-streams a long gzip-compressed response, measured with a counting
//! allocator. The target is 64 KiB per stream. (One test in this binary, so
//! no other thread allocates while it measures.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use bytes::Bytes;
use tokenedge::core::config::Config;
use tokenedge::core::http::RequestHead;
use tokenedge::core::session::Session;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), SeqCst) + layout.size();
        PEAK.fetch_max(live, SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The peak heap of one gzip stream of 1000 events under `config`, and
/// its wire bytes per event.
fn stream_of_1000_events(config: Config) -> (usize, usize) {
    let vector = include_str!("vectors/llamacpp_chat.sse");
    let content: Vec<&str> = vector
        .split_inclusive("\n\n")
        .filter(|e| e.contains("\"content\""))
        .collect();
    let events: Vec<Bytes> = (0..1000)
        .map(|i| Bytes::copy_from_slice(content[i % content.len()].as_bytes()))
        .collect();
    let head = RequestHead::new(
        "POST",
        "/v1/chat/completions",
        vec![
            ("content-type".into(), "application/json".into()),
            ("accept-encoding".into(), "gzip".into()),
        ],
    );
    let body = Bytes::from_static(
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    );

    let base = LIVE.load(SeqCst);
    PEAK.store(base, SeqCst);
    let mut wire = 0usize;
    {
        let mut s = Session::new(config);
        s.handle_request(0, head, body);
        while s.poll_action().is_some() {}
        s.handle_upstream_head(
            1,
            200,
            &[("content-type".into(), "text/event-stream".into())],
        );
        while s.poll_action().is_some() {}
        for (i, e) in events.iter().enumerate() {
            // The event's bytes are the upstream's, not the session's.
            s.handle_upstream_chunk(2 + i as u64, e.clone());
            while let Some(a) = s.poll_action() {
                if let tokenedge::core::session::Action::RespondChunk(b) = a {
                    wire += b.len();
                }
            }
        }
    }
    let peak = PEAK.load(SeqCst) - base;
    println!("peak {peak} B per stream, {} wire B/event", wire / 1000);
    (peak, wire / 1000)
}

fn config(resume: bool) -> Config {
    Config {
        upstream_urls: vec!["http://upstream:8081".into()],
        auth_off: true,
        resume,
        ..Config::default()
    }
}

// One test, so the two measurements never run at once (the counter is
// global).
#[test]
fn a_gzip_stream_of_1000_events_stays_small() {
    // Compression alone: under 64 KiB.
    let (peak, wire) = stream_of_1000_events(config(false));
    assert!(peak <= 64 * 1024, "peak {peak} B");
    assert!(wire < 40, "{wire} B/event");
    // A resumable stream also keeps its log, compressed as it comes: its
    // own deflate context, the compressed events, and a checkpoint's copy.
    let (peak, wire) = stream_of_1000_events(config(true));
    assert!(peak <= 160 * 1024, "peak {peak} B with its log");
    assert!(wire < 45, "{wire} B/event");
}
