//! The OpenAI wire format: client requests ([`request`]: validation and the
//! upstream body) and upstream stream events ([`event`]: the facts the core
//! reads out of each one, and upstream error bodies).

mod event;
mod request;

pub(crate) use event::{
    chunk_model, chunk_parts, clean_finish, inspect_chunk, storable_finish, upstream_error_message,
};
pub(crate) use request::{check_caps, choices, parse_request, CompletionRequest, Endpoint};
