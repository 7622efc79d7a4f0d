//! A streamed response on Workers, driven by the runtime's own events
//! rather than by a Rust task. A small JavaScript loop reads the upstream's
//! body and hands each chunk to the session synchronously; what the session
//! writes goes straight into the response's `ReadableStream`. A chunk
//! crosses into wasm once, and no promise, closure or task is made for it.
//! The rarer waits (an upstream's head, a KV read, the limits' verdict, the
//! embeddings answer, the session's next deadline) each run as a task of
//! their own that wakes the pump when it ends.
//!
//! The [`Pump`] decides as it does everywhere; this replaces only the loop
//! that drives it once the response head has gone out:
//! - drain: the stream's `pull` means its queue is empty, so what was
//!   written has been taken (`handle_downstream_drained`);
//! - client disconnects: the stream's `cancel` tells the session; a
//!   resumable one goes on under `waitUntil` until it has finished;
//! - timeouts: one timer, re-armed only when the deadline comes earlier
//!   (a later deadline lets it fire early: a timeout with nothing due);
//! - a cut body errors the stream, so the client sees it was cut.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::spawn_local;
use worker::{js_sys, web_sys};

use super::pump::{Out, Platform, Pump, Step, Wake, ABORTED};
use super::workers::Workers;
use crate::core::Millis;

#[wasm_bindgen(wasm_bindgen = worker::wasm_bindgen, inline_js = r#"
export function open(on) {
  let out;
  const stream = new ReadableStream({
    start(c) { out = c; },
    pull() { on(0); },
    cancel() { on(1); },
  });
  return [stream, out];
}
export function put(out, chunk) { try { out.enqueue(chunk); } catch {} }
export function close(out) { try { out.close(); } catch {} }
export function fail(out, why) { try { out.error(new Error(why)); } catch {} }
export function pipe(reader, deliver) {
  (async () => {
    for (;;) {
      let r;
      try { r = await reader.read(); } catch (e) { deliver(2, e); return; }
      if (r.done) { deliver(1, undefined); return; }
      if (!deliver(0, r.value)) return;
    }
  })();
}
"#)]
extern "C" {
    /// A response stream whose source calls `on(PULL)` and `on(CANCEL)`;
    /// answers `[stream, controller]`.
    fn open(on: &JsValue) -> js_sys::Array;
    /// Writes a chunk (nothing once the stream is closed or cancelled).
    fn put(out: &JsValue, chunk: &js_sys::Uint8Array);
    fn close(out: &JsValue);
    fn fail(out: &JsValue, why: &str);
    /// Reads `reader` to its end, calling `deliver(CHUNK, bytes)` until it
    /// answers false, then `deliver(END)` or `deliver(FAILED, error)`.
    fn pipe(reader: &web_sys::ReadableStreamDefaultReader, deliver: &JsValue);
}

/// What the response stream's source reports.
const PULL: u32 = 0;
const CANCEL: u32 = 1;
/// What a body's reading loop reports.
const CHUNK: u32 = 0;
const END: u32 = 1;

/// One response's driver, shared by the callbacks and tasks that wake it.
struct Shared {
    relay: RefCell<Relay>,
    /// The stream pulled. Set outside the borrow: writing a chunk a reader
    /// is waiting for pulls at once, from inside the driver.
    pulled: Cell<bool>,
}

struct Relay {
    pump: Pump<Workers>,
    /// The response stream's controller, until the response ends or the
    /// client leaves.
    out: Option<JsValue>,
    /// The upstream body being read, by the upstream request's count.
    reading: Option<u32>,
    /// Tasks under way that wake the pump.
    tasks: u32,
    /// The timer under way: when it is due, and which it is.
    alarm: Option<(Millis, u32)>,
    timers: u32,
    /// The session has finished and nothing is under way.
    done: bool,
    /// What waits for `done` (the `waitUntil` of a session that outlives
    /// its client).
    waiter: Option<Waker>,
}

/// The streamed body of a response whose head the pump has given.
pub(super) fn respond(pump: Pump<Workers>) -> web_sys::ReadableStream {
    let shared = Rc::new(Shared {
        relay: RefCell::new(Relay {
            pump,
            out: None,
            reading: None,
            tasks: 0,
            alarm: None,
            timers: 0,
            done: false,
            waiter: None,
        }),
        pulled: Cell::new(false),
    });
    let on = {
        let shared = shared.clone();
        Closure::<dyn FnMut(u32)>::new(move |what| shared.on_stream(what)).into_js_value()
    };
    let pair = open(&on);
    let stream = pair.get(0).unchecked_into();
    let mut relay = shared.relay.borrow_mut();
    relay.out = Some(pair.get(1));
    shared.drive(&mut relay);
    stream
}

impl Shared {
    /// Runs the pump until it waits; starts what it waits for.
    fn drive(self: &Rc<Self>, relay: &mut Relay) {
        if relay.done {
            return;
        }
        loop {
            if self.pulled.take() && std::mem::take(&mut relay.pump.chunk_out) {
                let now = relay.pump.platform.now();
                relay.pump.session.handle_downstream_drained(now);
            }
            match relay.pump.step() {
                Step::Out(Out::Chunk(bytes)) => relay.write(&bytes),
                Step::End(end) | Step::Out(end @ (Out::End | Out::Abort)) => {
                    self.end(relay, matches!(end, Out::Abort));
                }
                // The head has gone out: the session answers once.
                Step::Out(Out::Full(..) | Out::Head(_)) => {}
                // The session reads the body before it answers.
                Step::ReadBody(_) => {
                    let now = relay.pump.platform.now();
                    relay
                        .pump
                        .session
                        .handle_request_body_failed(now, "the request body was not read");
                }
                Step::Wait(deadline) => {
                    self.start(relay, deadline);
                    if deadline.is_some() || !relay.idle() {
                        return;
                    }
                    // Nothing can happen any more.
                    if relay.out.is_some() {
                        // What letting the client go asks for is carried
                        // out on the next turn.
                        self.end(relay, false);
                        continue;
                    }
                    relay.done = true;
                    relay.pump.platform.detach();
                    if let Some(waiter) = relay.waiter.take() {
                        waiter.wake();
                    }
                    return;
                }
            }
        }
    }

    /// The response ends (cut, when `abort`): the client is done with.
    fn end(self: &Rc<Self>, relay: &mut Relay, abort: bool) {
        let Some(out) = relay.out.take() else { return };
        let mut settle = relay.pump.platform.settle();
        let finish = move || match abort {
            true => fail(&out, ABORTED),
            false => close(&out),
        };
        match (&mut settle).now_or_never() {
            Some(()) => finish(),
            // (Not on Workers today: its settle has nothing to wait for.)
            None => self.task(relay, async move {
                settle.await;
                finish();
                None
            }),
        }
        self.let_go(relay);
    }

    /// The client is gone or its response has ended. A session that has
    /// not finished (a resumable one) goes on under `waitUntil`.
    fn let_go(self: &Rc<Self>, relay: &mut Relay) {
        relay.pump.close();
        if !relay.pump.session.is_finished() {
            let shared = self.clone();
            let done = poll_fn(move |cx| {
                let mut relay = shared.relay.borrow_mut();
                if relay.done {
                    return Poll::Ready(());
                }
                relay.waiter = Some(cx.waker().clone());
                Poll::Pending
            });
            relay.pump.platform.spawn(Box::pin(done));
        }
    }

    /// Starts what the pump waits for and the timer for `deadline`.
    fn start(self: &Rc<Self>, relay: &mut Relay, deadline: Option<Millis>) {
        let epoch = relay.pump.upstream_epoch;
        if let Some(head) = relay.pump.head.take() {
            self.task(
                relay,
                async move { Some((Some(epoch), Wake::Head(head.await))) },
            );
        }
        for read in std::mem::take(&mut relay.pump.kv_reads) {
            self.task(relay, async move {
                let (read, value) = read.await;
                Some((None, Wake::Kv(read, value)))
            });
        }
        if let Some(verdict) = relay.pump.admission.take() {
            self.task(relay, async move {
                Some((None, Wake::Admission(verdict.await)))
            });
        }
        if let Some(answer) = relay.pump.embedding.take() {
            self.task(
                relay,
                async move { Some((None, Wake::Embedding(answer.await))) },
            );
        }
        match &relay.pump.body {
            Some(body) if relay.reading != Some(epoch) => {
                relay.reading = Some(epoch);
                let shared = self.clone();
                let deliver =
                    Closure::<dyn FnMut(u32, JsValue) -> bool>::new(move |what, value| {
                        shared.on_body(epoch, what, value)
                    });
                pipe(body.reader(), &deliver.into_js_value());
            }
            Some(_) => {}
            None => relay.reading = None,
        }
        if let Some(at) = deadline {
            if relay.alarm.is_none_or(|(armed, _)| at < armed) {
                relay.timers = relay.timers.wrapping_add(1);
                let timer = relay.timers;
                relay.alarm = Some((at, timer));
                let ms = at.saturating_sub(relay.pump.platform.now());
                let shared = self.clone();
                spawn_local(async move {
                    worker::Delay::from(Duration::from_millis(ms)).await;
                    shared.on_timer(timer);
                });
            }
        }
    }

    /// Runs `work` as a task that wakes the pump with what it answers (an
    /// upstream's answer only while that request is still wanted).
    fn task(
        self: &Rc<Self>,
        relay: &mut Relay,
        work: impl Future<Output = Option<(Option<u32>, Wake<super::body::Body>)>> + 'static,
    ) {
        relay.tasks += 1;
        let shared = self.clone();
        spawn_local(async move {
            let woke = work.await;
            let mut relay = shared.relay.borrow_mut();
            relay.tasks -= 1;
            if let Some((epoch, wake)) = woke {
                if epoch.is_none_or(|e| e == relay.pump.upstream_epoch) && !relay.done {
                    relay.pump.wake(wake);
                }
            }
            shared.drive(&mut relay);
        });
    }

    /// The response stream pulled, or was cancelled (the client left).
    fn on_stream(self: &Rc<Self>, what: u32) {
        if what == PULL {
            self.pulled.set(true);
            // Inside the driver (a write pulled at once) it is seen there.
            if let Ok(mut relay) = self.relay.try_borrow_mut() {
                self.drive(&mut relay);
            }
            return;
        }
        debug_assert_eq!(what, CANCEL);
        let mut relay = self.relay.borrow_mut();
        if relay.out.take().is_some() {
            self.let_go(&mut relay);
        }
        self.drive(&mut relay);
    }

    /// What the loop reading the upstream body of request `epoch` read;
    /// answers whether it should read on.
    fn on_body(self: &Rc<Self>, epoch: u32, what: u32, value: JsValue) -> bool {
        let mut relay = self.relay.borrow_mut();
        if relay.reading != Some(epoch) || relay.pump.upstream_epoch != epoch || relay.done {
            return false;
        }
        let read = match what {
            CHUNK => match value.dyn_into::<js_sys::Uint8Array>() {
                Ok(chunk) => Some(Ok(Bytes::from(chunk.to_vec()))),
                Err(_) => Some(Err("the body gave something other than bytes".into())),
            },
            END => None,
            _ => Some(Err(super::body::describe(&value))),
        };
        let more = matches!(read, Some(Ok(_)));
        if !more {
            relay.reading = None;
            if let Some(body) = relay.pump.body.as_mut() {
                body.ended();
            }
        }
        relay.pump.wake(Wake::Chunk(read));
        self.drive(&mut relay);
        more && relay.reading == Some(epoch)
    }

    /// Timer `timer` fired.
    fn on_timer(self: &Rc<Self>, timer: u32) {
        let mut relay = self.relay.borrow_mut();
        if relay.alarm.is_some_and(|(_, t)| t == timer) && !relay.done {
            relay.alarm = None;
            relay.pump.wake(Wake::Timer);
            self.drive(&mut relay);
        }
    }
}

impl Relay {
    /// Writes a chunk to the client, while there is one.
    fn write(&mut self, bytes: &[u8]) {
        if let Some(out) = &self.out {
            put(out, &js_sys::Uint8Array::from(bytes));
        }
    }

    /// Whether nothing that could wake the pump is under way.
    fn idle(&self) -> bool {
        self.tasks == 0 && self.reading.is_none()
    }
}
