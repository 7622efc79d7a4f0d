//! The OpenAI wire format: client requests ([`request`]: validation and the
//! upstream body), chat and completion stream events ([`event`]: the facts
//! the core reads out of each one, and upstream error bodies), and the
//! Responses API's typed events ([`response_event`]).

mod event;
mod request;
mod response_event;
mod scan;

pub(crate) use event::{
    chunk_model, chunk_parts, clean_finish, inspect_chunk, storable_finish, upstream_error_message,
};
pub(crate) use request::{check_caps, choices, parse_request, CompletionRequest, Endpoint};
pub(crate) use response_event::{inspect_response_event, Kind as ResponseKind};

/// Whether the single pass over a chat event ([`scan`]) reads it as serde
/// does, or leaves it to serde.
#[cfg(feature = "fuzzing")]
pub(crate) fn chunk_reads_agree(data: &str) -> bool {
    scan::chunk_facts(data).is_none_or(|fast| fast == event::inspect_chunk_with_serde(data))
}
