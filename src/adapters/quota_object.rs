//! The Workers store for per-key limits: one Durable Object per key
//! record (the `QUOTA` binding, class `Quota`), so every location counts
//! against the same record, one request at a time. It only reads the
//! record from its storage, applies the core's [`Tally`] with its own
//! clock and writes it back; the request and its answer are one line of
//! text each ([`ask_line`], [`verdict_of`]).

use worker::{
    durable_object, wasm_bindgen, Date, DurableObject, Env, Request, Response, Result, State,
};

use crate::core::quota::{Ask, Lease, Tally, Verdict};

/// The storage key of the record inside its object.
const RECORD: &str = "tally";

/// One key's limits record.
#[durable_object]
pub struct Quota {
    state: State,
}

impl DurableObject for Quota {
    fn new(state: State, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let line = req.text().await?;
        let storage = self.state.storage();
        let stored: Option<String> = storage.get(RECORD).await.ok().flatten();
        let mut tally = stored
            .map(|s| Tally::decode(s.as_bytes()))
            .unwrap_or_default();
        let now = Date::now().as_millis();
        let mut words = line.split(' ');
        let answer = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("admit"), Some(rpm), Some(streams), Some(lease)) => {
                let ask = Ask {
                    rpm: rpm.parse().unwrap_or(0),
                    streams: streams.parse().unwrap_or(0),
                    lease: lease == "1",
                };
                verdict_line(tally.admit(now, ask))
            }
            (Some("release"), Some(expires), None, None) => {
                if let Ok(expires) = expires.parse() {
                    tally.release(now, Lease { expires });
                }
                "released".into()
            }
            _ => return Response::error("unknown request", 400),
        };
        storage.put(RECORD, tally.encode()).await?;
        Response::ok(answer)
    }
}

/// An admission request as sent to the object.
pub(super) fn ask_line(ask: Ask) -> String {
    format!("admit {} {} {}", ask.rpm, ask.streams, u8::from(ask.lease))
}

/// A release as sent to the object.
pub(super) fn release_line(lease: Lease) -> String {
    format!("release {}", lease.expires)
}

fn verdict_line(verdict: Verdict) -> String {
    match verdict {
        Verdict::Admitted { lease: Some(l) } => format!("ok {}", l.expires),
        Verdict::Admitted { lease: None } => "ok -".into(),
        Verdict::OverRate { retry_after_secs } => format!("rate {retry_after_secs}"),
        Verdict::OverStreams { retry_after_secs } => format!("streams {retry_after_secs}"),
        Verdict::Unknown => "unknown".into(),
    }
}

/// The object's answer, read back; anything else is [`Verdict::Unknown`].
pub(super) fn verdict_of(line: &str) -> Verdict {
    let (word, value) = line.split_once(' ').unwrap_or((line, ""));
    let secs = || value.parse().ok();
    match word {
        "ok" => Verdict::Admitted {
            lease: value.parse().ok().map(|expires| Lease { expires }),
        },
        "rate" => secs().map_or(Verdict::Unknown, |retry_after_secs| Verdict::OverRate {
            retry_after_secs,
        }),
        "streams" => secs().map_or(Verdict::Unknown, |retry_after_secs| Verdict::OverStreams {
            retry_after_secs,
        }),
        _ => Verdict::Unknown,
    }
}
