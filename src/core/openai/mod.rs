//! The OpenAI wire format: client requests ([`request`]: validation and the
//! upstream body), chat and completion stream events ([`event`]: the facts
//! the core reads out of each one, and upstream error bodies), and the
//! Responses API's typed events ([`response_event`]).

mod event;
mod request;
mod response_event;

pub(crate) use event::{
    chunk_model, chunk_parts, clean_finish, inspect_chunk, storable_finish, upstream_error_message,
};
pub(crate) use request::{check_caps, choices, parse_request, CompletionRequest, Endpoint};
pub(crate) use response_event::{inspect_response_event, Kind as ResponseKind};
