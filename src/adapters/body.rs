//! A body the runtime hands over as a JavaScript `ReadableStream` (the
//! client's request body, an upstream response's body), read chunk by
//! chunk as the pump's [`BodyStream`].
//!
//! Why not the `ByteStream` of the `worker` crate: dropping it releases its
//! reader's lock, and a release rejects the reader's `closed` promise with
//! a new `TypeError` — an error object and its stack trace for every body,
//! read to its end or not — and it cancels a body left unread through a
//! callback it leaks. Here the reader is never released: at the end there
//! is nothing left to release, and a body dropped before its end is
//! cancelled, which is all the runtime needs to stop reading it (for an
//! upstream response, to close its connection).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{js_sys, web_sys};

use super::pump::BodyStream;

/// One body's reader and the read under way.
pub(super) struct Body {
    reader: web_sys::ReadableStreamDefaultReader,
    read: Option<JsFuture>,
    /// Read to its end, or failed: nothing to cancel.
    over: bool,
}

/// `stream` as the pump reads it.
pub(super) fn read(stream: &web_sys::ReadableStream) -> Option<BodyStream> {
    Some(Box::pin(Body::of(stream)?))
}

impl Body {
    /// A reader of `stream`.
    pub(super) fn of(stream: &web_sys::ReadableStream) -> Option<Self> {
        let reader = stream.get_reader().dyn_into().ok()?;
        Some(Body {
            reader,
            read: None,
            over: false,
        })
    }

    /// The reader, for a driver that reads the body itself (see
    /// `super::relay`); it calls [`Body::ended`] when the body has ended
    /// or failed.
    pub(super) fn reader(&self) -> &web_sys::ReadableStreamDefaultReader {
        &self.reader
    }

    /// The body was read to its end, or failed: nothing to cancel.
    pub(super) fn ended(&mut self) {
        self.over = true;
    }
}

#[wasm_bindgen(wasm_bindgen = worker::wasm_bindgen)]
extern "C" {
    /// What a read answers: `{ done, value }`.
    type ReadResult;
    #[wasm_bindgen(method, getter)]
    fn done(this: &ReadResult) -> bool;
    #[wasm_bindgen(method, getter)]
    fn value(this: &ReadResult) -> JsValue;
}

impl Stream for Body {
    type Item = Result<Bytes, String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.over {
            return Poll::Ready(None);
        }
        let reader = &this.reader;
        let read = this
            .read
            .get_or_insert_with(|| JsFuture::from(reader.read()));
        let result = ready!(Pin::new(read).poll(cx));
        this.read = None;
        let result: ReadResult = match result {
            Ok(result) => result.unchecked_into(),
            Err(e) => {
                this.over = true;
                return Poll::Ready(Some(Err(describe(&e))));
            }
        };
        if result.done() {
            this.over = true;
            return Poll::Ready(None);
        }
        match result.value().dyn_into::<js_sys::Uint8Array>() {
            Ok(chunk) => Poll::Ready(Some(Ok(Bytes::from(chunk.to_vec())))),
            Err(_) => {
                this.over = true;
                Poll::Ready(Some(Err("the body gave something other than bytes".into())))
            }
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if !self.over {
            IGNORE.with(|ignore| {
                let _ = self.reader.cancel().catch(ignore);
            });
        }
    }
}

thread_local! {
    /// A callback that drops its argument: what a cancel's outcome gets.
    static IGNORE: Closure<dyn FnMut(JsValue)> = Closure::new(|_: JsValue| {});
}

/// A failed read's reason, as text.
pub(super) fn describe(e: &JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(error) => String::from(error.message()),
        None => e
            .as_string()
            .unwrap_or_else(|| "the body could not be read".into()),
    }
}
