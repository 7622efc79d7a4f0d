//! The runtime's floor for a Rust worker: what the toolchain tokenedge is
//! built with (the `worker` crate, wasm-bindgen, worker-build) costs before
//! any of tokenedge's own work. It reads the request's body, sends it to
//! the upstream (`UPSTREAM` binding), and answers with the upstream's
//! stream, each chunk through wasm untouched. The `SHAPE` binding picks how:
//!
//! - `relay` (the default): the `worker` crate's `ByteStream` in,
//!   `Response::from_stream` out, a Rust task driving both;
//! - `sync`: the shape of tokenedge's Workers adapter (`src/adapters/relay.rs`):
//!   a JavaScript loop reads the upstream and calls into wasm once per chunk,
//!   which answers the bytes to write into the response's stream.

use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::prelude::*;
use worker::{
    event, js_sys, web_sys, Context, Env, Fetch, Headers, Method, Request, RequestInit, Response,
    ResponseBody, Result,
};

#[wasm_bindgen(wasm_bindgen = worker::wasm_bindgen, inline_js = r#"
export function relay(body, chunk) {
  const reader = body.getReader();
  let out;
  const stream = new ReadableStream({
    start(c) { out = c; },
    cancel() { reader.cancel().catch(() => {}); },
  });
  (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) { out.close(); return; }
        out.enqueue(chunk(value));
      }
    } catch (e) { out.error(e); }
  })();
  return stream;
}
"#)]
extern "C" {
    /// `body` read by a JavaScript loop, each chunk through `chunk`.
    fn relay(body: &web_sys::ReadableStream, chunk: &JsValue) -> web_sys::ReadableStream;
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let upstream = env.var("UPSTREAM")?.to_string();
    let sync = env.var("SHAPE").is_ok_and(|s| s.to_string() == "sync");
    let path = req.path();
    let body = req.bytes().await?;
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(js_sys::Uint8Array::from(&body[..]).into()));
    let forwarded = Request::new_with_init(&format!("{upstream}{path}"), &init)?;
    let mut response = Fetch::Request(forwarded).send().await?;
    let status = response.status_code();
    if !sync {
        return Ok(Response::from_stream(response.stream()?)?.with_status(status));
    }
    let ResponseBody::Stream(body) = response.body() else {
        return Ok(Response::empty()?.with_status(status));
    };
    // Into wasm and out again, as tokenedge's session does with each chunk.
    let chunk = Closure::<dyn FnMut(js_sys::Uint8Array) -> js_sys::Uint8Array>::new(
        |value: js_sys::Uint8Array| js_sys::Uint8Array::from(&value.to_vec()[..]),
    );
    let stream = relay(body, &chunk.into_js_value());
    Ok(Response::from_body(ResponseBody::Stream(stream))?.with_status(status))
}
