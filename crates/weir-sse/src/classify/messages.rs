//! Anthropic Messages (`/v1/messages`, as vLLM serves it): named events, input usage in
//! `message_start`, output usage in `message_delta`, `message_stop` at the end, no `[DONE]`;
//! a body is the message object.
//!
//! Input tokens: Anthropic's `input_tokens` counts only the prompt tokens neither read from
//! nor written to the cache, and vLLM follows it (`_build_anthropic_usage` in
//! `vllm/entrypoints/anthropic/serving.py`: `input_tokens = prompt_tokens - cache_read -
//! cache_creation`, the cache fields set only when vLLM knows them). The classifier adds
//! `cache_read_input_tokens` and `cache_creation_input_tokens` back, so that
//! [`Usage::prompt_tokens`] is every prompt token as on the other APIs; `cached_tokens` is
//! `cache_read_input_tokens`. Both come from the same event, so each event's input is whole
//! on its own (vLLM's `message_start` carries no cache fields and the whole prompt count).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::{EventInfo, Reported, Usage, borrowed, non_empty, parse, typed};

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed")]
    kind: Option<Cow<'a, str>>,
    /// `message_start`'s message (its content skipped).
    #[serde(borrow, default)]
    message: Option<Message<'a, IgnoredAny>>,
    /// `content_block_delta`'s or `message_delta`'s delta.
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    /// `message_delta`'s usage.
    #[serde(default)]
    usage: Option<MessagesUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// The message object: in `message_start` (`C` = `IgnoredAny`) and as a whole body (its
/// content blocks read).
#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a, C: Deserialize<'de>"))]
struct Message<'a, C> {
    #[serde(rename = "type", borrow, default, deserialize_with = "borrowed")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<MessagesUsage>,
    #[serde(default)]
    content: Option<C>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow, default)]
    partial_json: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    stop_reason: Option<Cow<'a, str>>,
}

/// A content block of a body: text, thinking, tool use (`input`).
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessagesUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    /// vLLM's own addition, with a reasoning parser.
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize)]
struct OutputDetails {
    #[serde(default)]
    thinking_tokens: Option<u64>,
}

/// The usage an event reports, input made whole (cache reads and writes added back);
/// `output: false` for `message_start`, whose `output_tokens` is a placeholder.
fn usage(u: MessagesUsage, output: bool) -> Option<Usage> {
    let cached = u.cache_read_input_tokens;
    let input = u.input_tokens.map(|n| {
        n.saturating_add(cached.unwrap_or(0))
            .saturating_add(u.cache_creation_input_tokens.unwrap_or(0))
    });
    let out = u.output_tokens.filter(|_| output);
    let reported = match (input, out) {
        (Some(_), Some(_)) => Reported::Both,
        (Some(_), None) => Reported::Input,
        (None, Some(_)) => Reported::Output,
        (None, None) => return None,
    };
    Some(Usage {
        prompt_tokens: input.unwrap_or(0),
        completion_tokens: out.unwrap_or(0),
        cached_tokens: cached,
        reasoning_tokens: u
            .output_tokens_details
            .and_then(|d| d.thinking_tokens)
            .filter(|_| output),
        reported,
    })
}

/// Classifies one event of a Messages stream.
pub(super) fn event<'a>(name: Option<&'a [u8]>, data: &'a [u8]) -> EventInfo<'a> {
    let Some(Event {
        kind: of_data,
        message,
        delta,
        usage: delta_usage,
        error,
    }) = parse::<Event<'a>>(data)
    else {
        return EventInfo::invalid();
    };
    let (kind, mut info) = typed(error.is_some(), of_data.as_deref(), name);
    let Some(kind) = kind else { return info };
    match kind {
        "content_block_delta" => {
            if let Some(d) = delta {
                info.answer = non_empty(d.text) || non_empty(d.partial_json);
                info.content = info.answer || non_empty(d.thinking);
            }
        }
        "message_start" => {
            if let Some(m) = message {
                info.model = m.model;
                info.usage = m.usage.and_then(|u| usage(u, false));
            }
        }
        "message_delta" => {
            let reason = delta.and_then(|d| d.stop_reason);
            info.finished.extend(reason.map(|r| (0, r)));
            info.usage = delta_usage.and_then(|u| usage(u, true));
        }
        "message_stop" => info.end = true,
        "error" => info.error = true,
        _ => {}
    }
    info
}

/// Classifies a whole (non-streamed) Messages body: the message, or an error
/// (`{"type":"error","error":...}`, or OpenAI's `{"error":...}`).
pub(super) fn body(body: &[u8]) -> EventInfo<'_> {
    let Some(m) = parse::<Message<'_, Vec<Block<'_>>>>(body) else {
        return EventInfo::invalid();
    };
    let error = m.error.is_some() || m.kind.as_deref() == Some("error");
    let mut info = EventInfo {
        error,
        invalid: !error && m.kind.as_deref() != Some("message") && m.usage.is_none(),
        usage: m.usage.and_then(|u| usage(u, true)),
        model: m.model,
        ..EventInfo::default()
    };
    for b in m.content.iter().flatten() {
        let answer = non_empty(b.text) || non_empty(b.input);
        info.answer |= answer;
        info.content |= answer || non_empty(b.thinking);
    }
    info.finished.extend(m.stop_reason.map(|r| (0, r)));
    info
}
