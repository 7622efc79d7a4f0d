//! Responses API stream events (`POST /v1/responses`, `stream: true`): the
//! few facts the core needs out of each typed event, read through borrowed
//! views like chat chunks (`super::event`).
//!
//! Every event names its `type`; the ones that matter here:
//!
//! | type | what it is |
//! |---|---|
//! | `response.output_text.delta` | generated text (`delta`) |
//! | any other `*.delta` | other generated content: function-call arguments, reasoning, refusal |
//! | `response.completed` | the clean end (its `response` carries `usage`) |
//! | `response.incomplete` | a deliberate, final end: `incomplete_details.reason` says why (`max_output_tokens`, `content_filter`) |
//! | `response.failed` | the upstream gave up: a broken end |
//! | `error` | an in-stream error: a broken end |
//!
//! Everything else (`response.created`, `response.output_item.added`,
//! `response.content_part.done`, types we do not know) is `Kind::Other`:
//! passed through untouched. `sequence_number` is read so a tokenedge
//! event can follow on; it is never rewritten.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// What kind of event it is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `response.output_text.delta`.
    Text,
    /// Any other `*.delta`: content, but not text.
    OtherContent,
    /// `response.completed`.
    Completed,
    /// `response.incomplete`.
    Incomplete,
    /// `response.failed`.
    Failed,
    /// `error`.
    Error,
    /// Anything else.
    Other,
}

impl Kind {
    /// Whether the event ends the response (cleanly or not).
    pub(crate) fn ends(self) -> bool {
        matches!(
            self,
            Kind::Completed | Kind::Incomplete | Kind::Failed | Kind::Error
        )
    }
}

/// The facts of one Responses stream event, borrowed from its text.
#[derive(Debug)]
pub(crate) struct ResponseFacts<'a> {
    pub kind: Kind,
    /// The generated text of a [`Kind::Text`] event (empty otherwise).
    pub text: Cow<'a, str>,
    pub sequence_number: Option<u64>,
    /// `response.usage` on a final event.
    pub usage: Option<&'a RawValue>,
    /// `response.incomplete_details.reason` on [`Kind::Incomplete`].
    pub incomplete_reason: Option<Cow<'a, str>>,
    /// `response.model`, where the event carries the response.
    pub model: Option<Cow<'a, str>>,
}

impl ResponseFacts<'_> {
    /// Whether the event carried generated content (where "time to first
    /// token" is measured).
    pub(crate) fn has_content(&self) -> bool {
        match self.kind {
            Kind::Text => !self.text.is_empty(),
            Kind::OtherContent => true,
            _ => false,
        }
    }

    /// The chat finish reason this end means, for the formats that report
    /// one: `stop`, `length` (cut at `max_output_tokens`), or the
    /// upstream's reason.
    pub(crate) fn finish_reason(&self) -> Option<Cow<'_, str>> {
        match self.kind {
            Kind::Completed => Some(Cow::Borrowed("stop")),
            Kind::Incomplete => Some(match self.incomplete_reason.as_deref() {
                Some("max_output_tokens") | None => Cow::Borrowed("length"),
                Some(reason) => Cow::Borrowed(reason),
            }),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    delta: Option<&'a RawValue>,
    #[serde(default)]
    sequence_number: Option<u64>,
    #[serde(default, borrow)]
    response: Option<ResponseView<'a>>,
}

#[derive(Deserialize)]
struct ResponseView<'a> {
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    incomplete_details: Option<IncompleteView<'a>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct IncompleteView<'a> {
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
}

/// A JSON string, borrowed when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Reads one `data:` payload. `None` when it is not a JSON object with a
/// string `type`.
pub(crate) fn inspect_response_event(data: &str) -> Option<ResponseFacts<'_>> {
    let view: EventView = serde_json::from_str(data).ok()?;
    let kind = match view.kind.as_ref() {
        "response.output_text.delta" => Kind::Text,
        "response.completed" => Kind::Completed,
        "response.incomplete" => Kind::Incomplete,
        "response.failed" => Kind::Failed,
        "error" => Kind::Error,
        t if t.ends_with(".delta") => Kind::OtherContent,
        _ => Kind::Other,
    };
    let text = match (kind, view.delta) {
        (Kind::Text, Some(raw)) => serde_json::from_str::<Text>(raw.get())
            .map(|t| t.0)
            .unwrap_or_default(),
        _ => Cow::Borrowed(""),
    };
    let (usage, incomplete_reason, model) = match view.response {
        Some(r) => (
            r.usage.filter(|u| u.get() != "null"),
            r.incomplete_details.and_then(|d| d.reason),
            r.model,
        ),
        None => (None, None, None),
    };
    Some(ResponseFacts {
        kind,
        text,
        sequence_number: view.sequence_number,
        usage,
        incomplete_reason,
        model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let f = inspect_response_event(
            r#"{"type":"response.output_text.delta","item_id":"m","output_index":0,"content_index":0,"delta":"Hi \"x\"","sequence_number":4}"#,
        )
        .unwrap();
        assert_eq!(f.kind, Kind::Text);
        assert_eq!(f.text, "Hi \"x\"");
        assert_eq!(f.sequence_number, Some(4));
        assert!(f.has_content());
        let f = inspect_response_event(
            r#"{"type":"response.function_call_arguments.delta","delta":"{\"a\":","sequence_number":9}"#,
        )
        .unwrap();
        assert_eq!(f.kind, Kind::OtherContent);
        assert!(f.has_content() && f.text.is_empty());
        let f = inspect_response_event(
            r#"{"type":"response.completed","response":{"id":"r","model":"smol","output":[{"type":"message","content":[{"type":"output_text","text":"long"}]}],"usage":{"input_tokens":3,"output_tokens":2}}}"#,
        )
        .unwrap();
        assert_eq!(f.kind, Kind::Completed);
        assert_eq!(
            f.usage.unwrap().get(),
            r#"{"input_tokens":3,"output_tokens":2}"#
        );
        assert_eq!(f.model.as_deref(), Some("smol"));
        assert_eq!(f.finish_reason().as_deref(), Some("stop"));
        assert!(f.kind.ends() && !f.has_content());
        let f = inspect_response_event(
            r#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":null}}"#,
        )
        .unwrap();
        assert_eq!(f.kind, Kind::Incomplete);
        assert_eq!(f.finish_reason().as_deref(), Some("length"));
        assert!(f.usage.is_none());
        let f = inspect_response_event(
            r#"{"type":"response.incomplete","response":{"incomplete_details":{"reason":"content_filter"}}}"#,
        )
        .unwrap();
        assert_eq!(f.finish_reason().as_deref(), Some("content_filter"));
        for (data, kind) in [
            (
                r#"{"type":"response.failed","response":{"error":{"code":"server_error"}}}"#,
                Kind::Failed,
            ),
            (
                r#"{"type":"error","code":"x","message":"m","param":null,"sequence_number":2}"#,
                Kind::Error,
            ),
            (
                r#"{"type":"response.created","response":{"id":"r","status":"in_progress"}}"#,
                Kind::Other,
            ),
            (
                r#"{"type":"response.output_text.done","text":"all"}"#,
                Kind::Other,
            ),
            (r#"{"type":"vendor.something_new","x":[1]}"#, Kind::Other),
        ] {
            assert_eq!(inspect_response_event(data).unwrap().kind, kind, "{data}");
        }
        for data in [
            "[DONE]",
            "{}",
            r#"{"type":3}"#,
            "not json",
            r#"{"choices":[]}"#,
        ] {
            assert!(inspect_response_event(data).is_none(), "{data}");
        }
    }

    #[test]
    fn empty_and_odd_deltas_are_not_content() {
        let f =
            inspect_response_event(r#"{"type":"response.output_text.delta","delta":""}"#).unwrap();
        assert!(!f.has_content());
        let f =
            inspect_response_event(r#"{"type":"response.output_text.delta","delta":7}"#).unwrap();
        assert!(!f.has_content());
    }
}
