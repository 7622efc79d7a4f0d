//! The Workers owner of resumable streams: one Durable Object per stream
//! (the `STREAMS` binding, class `StreamOwner`, named by the stream id).
//!
//! The Worker hands each generation request to the object named by the
//! stream id it drew; the object runs the same session with the same pump
//! (`super::workers::serve`), so the upstream fetch belongs to the object,
//! not to the client's request, and goes on after the client left (pending
//! I/O keeps an object alive). The stream's record and marks live in the
//! object's own storage: the generating session reads and writes them
//! there directly; a reader's or a cancel's session, which runs in the
//! Worker, reaches them with the store requests below. The object deletes
//! everything when its alarm rings, a minute past `RESUME_TTL_SECS` after
//! the last write (`expiring::SWEEP_SLACK_MS`).
//!
//! Store requests (only the Worker sends them; the Worker hands the object
//! nothing but generation paths, so a client cannot reach them): `GET`,
//! `PUT` (with `x-tokenedge-ttl`) or `DELETE` of [`STORE_PATH`], the key in
//! `x-tokenedge-key`. A missing key is 404.

use std::cell::Cell;
use std::rc::Rc;

use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen_futures::JsFuture;
use worker::{
    durable_object, js_sys, wasm_bindgen, Date, DurableObject, Env, Method, ObjectNamespace,
    Request, RequestInit, Response, Result, State,
};

use crate::core::expiring;
use crate::core::Millis;

/// The path of store requests.
const STORE_PATH: &str = "/__store";
/// The header naming a store request's key.
const KEY_HEADER: &str = "x-tokenedge-key";
/// The header giving a stored value's lifetime, in seconds.
const TTL_HEADER: &str = "x-tokenedge-ttl";

/// The owner of one stream: its generation and its record.
#[durable_object]
pub struct StreamOwner {
    state: Rc<State>,
    env: Env,
    /// The alarm as this instance last set or read it (0: not known).
    alarm: Rc<Cell<Millis>>,
}

impl DurableObject for StreamOwner {
    fn new(state: State, env: Env) -> Self {
        Self {
            state: Rc::new(state),
            env,
            alarm: Rc::default(),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if req.path() == STORE_PATH {
            return self.store(req).await;
        }
        super::workers::serve_owned(req, self.env.clone(), self.own()).await
    }

    /// The stream expired: everything it kept goes.
    async fn alarm(&self) -> Result<Response> {
        self.state.storage().delete_all().await?;
        self.alarm.set(0);
        Response::ok("")
    }
}

impl StreamOwner {
    /// This object's storage, as its sessions and store requests use it.
    fn own(&self) -> Own {
        Own {
            state: self.state.clone(),
            alarm: self.alarm.clone(),
        }
    }

    async fn store(&self, mut req: Request) -> Result<Response> {
        let key = req.headers().get(KEY_HEADER)?.unwrap_or_default();
        let storage = self.own();
        match req.method() {
            Method::Get => match storage.get(&key).await {
                Some(value) => Response::from_bytes(value),
                None => Response::error("not found", 404),
            },
            Method::Put => {
                let ttl = req.headers().get(TTL_HEADER)?.unwrap_or_default();
                let value = req.bytes().await?;
                storage.put(&key, &value, ttl.parse().unwrap_or(60)).await;
                Response::empty()
            }
            Method::Delete => {
                storage.delete(&key).await;
                Response::empty()
            }
            _ => Response::error("unknown request", 400),
        }
    }
}

/// A stream owner's own storage.
#[derive(Clone)]
pub(super) struct Own {
    pub(super) state: Rc<State>,
    /// The object's alarm as last set or read (0: not known).
    alarm: Rc<Cell<Millis>>,
}

impl Own {
    /// A value not past its expiry (each is stored with it in front: the
    /// object's storage keeps values until they are deleted).
    pub(super) async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let storage = self.state.storage();
        let value = JsFuture::from(storage.as_raw().get(key).ok()?).await.ok()?;
        if value.is_undefined() || value.is_null() {
            return None;
        }
        let stored = js_sys::Uint8Array::new(&value).to_vec();
        expiring::unexpired(&stored, Date::now().as_millis()).map(<[u8]>::to_vec)
    }

    /// Writes with its expiry, and keeps the object's alarm (which deletes
    /// everything) past the latest expiry: it is read once per instance
    /// and moved only when an expiry passes it
    /// ([`expiring::later_sweep`]).
    pub(super) async fn put(&self, key: &str, value: &[u8], ttl_secs: u64) {
        let storage = self.state.storage();
        let expiry = expiring::after(Date::now().as_millis(), ttl_secs);
        let bytes = js_sys::Uint8Array::from(&expiring::stored(value, expiry)[..]);
        if storage.put_raw(key, JsValue::from(bytes)).await.is_err() {
            return;
        }
        if self.alarm.get() == 0 {
            let current = storage.get_alarm().await.ok().flatten().unwrap_or(0);
            let current = Millis::try_from(current).unwrap_or(0);
            self.alarm.set(self.alarm.get().max(current));
        }
        if let Some(later) = expiring::later_sweep(self.alarm.get(), expiry) {
            self.alarm.set(later);
            let _ = storage
                .set_alarm(i64::try_from(later).unwrap_or(i64::MAX))
                .await;
        }
    }

    pub(super) async fn delete(&self, key: &str) {
        let _ = self.state.storage().delete(key).await;
    }
}

/// Where a stream's record and marks are: this object's own storage, or
/// the owner's, reached from the Worker.
pub(super) enum Store {
    Own(Own),
    Owner { owners: ObjectNamespace, id: String },
}

impl Store {
    pub(super) async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Store::Own(own) => own.get(key).await,
            Store::Owner { owners, id } => {
                let mut response = ask(owners, id, Method::Get, key, None).await?;
                if response.status_code() != 200 {
                    return None;
                }
                response.bytes().await.ok()
            }
        }
    }

    pub(super) async fn put(&self, key: &str, value: &[u8], ttl_secs: u64) {
        match self {
            Store::Own(own) => own.put(key, value, ttl_secs).await,
            Store::Owner { owners, id } => {
                ask(owners, id, Method::Put, key, Some((value, ttl_secs))).await;
            }
        }
    }

    pub(super) async fn delete(&self, key: &str) {
        match self {
            Store::Own(own) => own.delete(key).await,
            Store::Owner { owners, id } => {
                ask(owners, id, Method::Delete, key, None).await;
            }
        }
    }
}

/// A store request to the owner of stream `id`.
async fn ask(
    owners: &ObjectNamespace,
    id: &str,
    method: Method,
    key: &str,
    body: Option<(&[u8], u64)>,
) -> Option<Response> {
    let stub = owners.id_from_name(id).ok()?.get_stub().ok()?;
    let headers = worker::Headers::new();
    headers.set(KEY_HEADER, key).ok()?;
    let mut init = RequestInit::new();
    init.with_method(method);
    if let Some((value, ttl)) = body {
        headers.set(TTL_HEADER, &ttl.to_string()).ok()?;
        init.with_body(Some(js_sys::Uint8Array::from(value).into()));
    }
    init.with_headers(headers);
    let req = Request::new_with_init(&format!("https://owner{STORE_PATH}"), &init).ok()?;
    stub.fetch_with_request(req).await.ok()
}
