//! The runtime's floor for a Rust worker: what the toolchain tokenedge is
//! built with (the `worker` crate, wasm-bindgen, worker-build) costs before
//! any of tokenedge's own work. It reads the request's body, sends it to
//! the upstream (`UPSTREAM` binding), and answers with the upstream's
//! stream, each chunk through wasm (the `worker` crate's `ByteStream` in,
//! `Response::from_stream` out) untouched.

use worker::{
    event, js_sys, Context, Env, Fetch, Headers, Method, Request, RequestInit, Response, Result,
};

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let upstream = env.var("UPSTREAM")?.to_string();
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
    Ok(Response::from_stream(response.stream()?)?.with_status(status))
}
