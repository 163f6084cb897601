//! OpenAI Responses (`/v1/responses`): named events (`response.output_text.delta` ...),
//! usage only in the final response event, no `[DONE]`; a body is the response object.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::{EventInfo, Usage, borrowed, non_empty, parse, typed};

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response: Option<Response<'a, IgnoredAny>>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// The response object: in `response.*` events (its output skipped, `O` = `IgnoredAny`) and
/// as a whole body (its output read).
#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a, O: Deserialize<'de>"))]
struct Response<'a, O> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    incomplete_details: Option<Incomplete<'a>>,
    #[serde(default)]
    usage: Option<ResponsesUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default)]
    output: Option<O>,
}

#[derive(Deserialize)]
struct Incomplete<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<ResponsesUsage> for Usage {
    fn from(u: ResponsesUsage) -> Usage {
        Usage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            cached_tokens: u.input_tokens_details.and_then(|d| d.cached_tokens),
            reasoning_tokens: u.output_tokens_details.and_then(|d| d.reasoning_tokens),
            ..Usage::default()
        }
    }
}

/// An output item of a body: a message (its `content` parts), reasoning (`content` and
/// `summary` parts), a function call (`arguments`); other kinds count by the same fields.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    summary: Option<&'a RawValue>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refusal: Option<&'a RawValue>,
}

/// A list of parts of which one has text (bodies only: parts of any other shape have none).
fn has_text(parts: Option<&RawValue>) -> bool {
    let parts = parts.and_then(|p| serde_json::from_str::<Vec<Part<'_>>>(p.get()).ok());
    parts.is_some_and(|p| p.iter().any(|p| non_empty(p.text) || non_empty(p.refusal)))
}

/// The finish reason of a final response: the reason it is incomplete, else its status.
fn finish<'a, O>(r: &mut Response<'a, O>) -> Option<Cow<'a, str>> {
    let status = r.status.take()?;
    match &*status {
        "incomplete" => Some(
            r.incomplete_details
                .take()
                .and_then(|d| d.reason)
                .unwrap_or(status),
        ),
        "in_progress" | "queued" => None,
        _ => Some(status),
    }
}

/// Classifies one event of a Responses stream.
pub(super) fn event<'a>(name: Option<&'a [u8]>, data: &'a [u8]) -> EventInfo<'a> {
    let Some(Event {
        kind: of_data,
        delta,
        response,
        error,
    }) = parse::<Event<'a>>(data)
    else {
        return EventInfo::invalid();
    };
    let (kind, mut info) = typed(error.is_some(), of_data.as_deref(), name);
    let Some(kind) = kind else { return info };
    match kind {
        "response.output_text.delta" | "response.function_call_arguments.delta" => {
            info.content = non_empty(delta);
            info.answer = info.content;
        }
        "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => {
            info.content = non_empty(delta);
        }
        "response.completed" | "response.incomplete" | "response.failed" => {
            info.end = true;
            info.error |= kind == "response.failed";
        }
        "error" => info.error = true,
        _ => {}
    }
    if let Some(mut r) = response {
        if info.end {
            info.error |= r.error.is_some();
            info.usage = r.usage.take().map(Usage::from);
            info.finished.extend(finish(&mut r).map(|f| (0, f)));
        }
        info.model = r.model;
    }
    info
}

/// Classifies a whole (non-streamed) Responses body: the response object, or
/// `{"error": ...}`.
pub(super) fn body(body: &[u8]) -> EventInfo<'_> {
    let Some(mut r) = parse::<Response<'_, Vec<Item<'_>>>>(body) else {
        return EventInfo::invalid();
    };
    let mut info = EventInfo {
        error: r.error.is_some(),
        invalid: r.error.is_none() && r.status.is_none() && r.usage.is_none(),
        usage: r.usage.take().map(Usage::from),
        ..EventInfo::default()
    };
    for item in r.output.iter().flatten() {
        let has = has_text(item.content) || has_text(item.summary) || non_empty(item.arguments);
        info.content |= has;
        info.answer |= has && item.kind.as_deref() != Some("reasoning");
    }
    info.finished.extend(finish(&mut r).map(|f| (0, f)));
    info.model = r.model;
    info
}
