//! What an event (or a whole body) tells the measurement, for every API.
//!
//! Chat and completions go through `weir_sse::classify`, as the gateway does. For the
//! Responses and Messages APIs this module has a small classifier of its own — TEMPORARY:
//! `weir_sse` is getting an API-aware `classify_event(api, name, data)` (and the parser an
//! `Event.name`); when it lands, [`event`] should call it and the two functions below go.
//! They read the event's name from its data's `type` (vLLM sends the same name on the
//! `event:` line, which the parser does not hand over yet):
//! - content: a non-empty `delta` of `response.output_text.delta`,
//!   `response.reasoning_text.delta`, `response.reasoning_summary_text.delta`,
//!   `response.refusal.delta` or `response.function_call_arguments.delta`; a Messages
//!   `content_block_delta` with non-empty `text`, `thinking` or `partial_json`;
//! - usage: `response.usage` of `response.completed` / `response.incomplete`; Messages
//!   `message_start` (input) and `message_delta` (input and output), input counting the
//!   cache reads and writes that Anthropic's `input_tokens` leaves out;
//! - the end: `[DONE]`, `response.completed`, `response.incomplete`, `response.failed`,
//!   `message_stop`; errors: `response.failed`, `error`, `{"error": ...}`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::Api;

/// What one event says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Carries output (text, reasoning or tool-call arguments): a token for TTFT and ITL.
    pub content: bool,
    /// The stream's last event.
    pub end: bool,
    pub error: bool,
    /// Prompt tokens, when reported.
    pub input: Option<u64>,
    /// Output tokens, when reported.
    pub output: Option<u64>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    #[serde(default)]
    response: Option<WithUsage>,
    /// Messages' `message` (an object), or the message of a Responses `error` (a string).
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl Usage {
    /// All prompt tokens: OpenAI's `prompt_tokens` / `input_tokens`, or Anthropic's
    /// `input_tokens` with the cache reads and writes added back.
    fn input(&self) -> Option<u64> {
        let cache = self.cache_read_input_tokens.unwrap_or(0)
            + self.cache_creation_input_tokens.unwrap_or(0);
        self.prompt_tokens.or(self.input_tokens.map(|n| n + cache))
    }
}

#[derive(Deserialize)]
struct BlockDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
}

fn parse<'a, T: Deserialize<'a>>(data: &'a [u8]) -> Option<T> {
    serde_json::from_slice(data).ok()
}

/// One streamed event of `api`.
pub fn event(api: Api, data: &[u8]) -> Info {
    match api {
        Api::Responses => responses(data),
        Api::Messages => messages(data),
        _ => {
            let i = weir_sse::classify(data);
            let usage = i.usage.as_ref();
            Info {
                content: i.content,
                end: i.done,
                error: i.error,
                input: usage.map(|u| u.prompt_tokens),
                output: usage.map(|u| u.completion_tokens),
            }
        }
    }
}

/// A Responses event.
fn responses(data: &[u8]) -> Info {
    let Some(e) = parse::<Event<'_>>(data) else {
        return Info::default();
    };
    let mut info = Info::default();
    match e.kind.as_ref() {
        "response.output_text.delta"
        | "response.reasoning_text.delta"
        | "response.reasoning_summary_text.delta"
        | "response.refusal.delta"
        | "response.function_call_arguments.delta" => {
            // A JSON string: `""` is empty.
            info.content = e.delta.is_some_and(|d| d.get().len() > 2);
        }
        "response.completed" | "response.incomplete" | "response.failed" => {
            info.end = true;
            info.error = e.kind == "response.failed";
            if let Some(u) = e.response.and_then(|r| r.usage) {
                (info.input, info.output) = (u.input(), u.output_tokens);
            }
        }
        "error" => info.error = true,
        _ => {}
    }
    info
}

/// A Messages event.
fn messages(data: &[u8]) -> Info {
    let Some(e) = parse::<Event<'_>>(data) else {
        return Info::default();
    };
    let mut info = Info::default();
    match e.kind.as_ref() {
        "content_block_delta" => {
            let delta = e
                .delta
                .and_then(|d| parse::<BlockDelta<'_>>(d.get().as_bytes()));
            let full = |s: &Option<Cow<'_, str>>| s.as_ref().is_some_and(|s| !s.is_empty());
            info.content =
                delta.is_some_and(|d| full(&d.text) || full(&d.thinking) || full(&d.partial_json));
        }
        // Its `output_tokens` is a placeholder.
        "message_start" => {
            let message = e
                .message
                .and_then(|m| parse::<WithUsage>(m.get().as_bytes()));
            info.input = message.and_then(|m| m.usage).and_then(|u| u.input());
        }
        "message_delta" => {
            if let Some(u) = e.usage {
                (info.input, info.output) = (u.input(), u.output_tokens);
            }
        }
        "message_stop" => info.end = true,
        "error" => info.error = true,
        _ => {}
    }
    info
}

/// A whole (non-streamed) body of `api`: whether it is a valid answer, and its usage.
pub fn body(api: Api, body: &[u8]) -> Info {
    if matches!(api, Api::Chat | Api::Completions) {
        let i = weir_sse::classify(body);
        let usage = i.usage.as_ref();
        return Info {
            content: false,
            end: true,
            error: i.invalid || i.error,
            input: usage.map(|u| u.prompt_tokens),
            output: usage.map(|u| u.completion_tokens),
        };
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Info {
            error: true,
            ..Info::default()
        };
    };
    let usage = v
        .get("usage")
        .cloned()
        .and_then(|u| serde_json::from_value::<Usage>(u).ok());
    let output = match api {
        Api::Embeddings => Some(0),
        _ => usage.as_ref().and_then(|u| u.output_tokens),
    };
    Info {
        content: false,
        end: true,
        error: v.get("error").is_some() || v["type"] == "error" || usage.is_none(),
        input: usage.as_ref().and_then(Usage::input),
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_events() {
        let delta = br#"{"content_index":0,"delta":"info","item_id":"m","output_index":0,"sequence_number":4,"type":"response.output_text.delta"}"#;
        assert!(responses(delta).content);
        let empty = br#"{"delta":"","type":"response.output_text.delta"}"#;
        assert!(!responses(empty).content);
        let args = br#"{"delta":"{\"a\"","type":"response.function_call_arguments.delta"}"#;
        assert!(responses(args).content);
        let done = br#"{"response":{"status":"incomplete","usage":{"input_tokens":19,"input_tokens_details":{"cached_tokens":16},"output_tokens":16}},"sequence_number":22,"type":"response.completed"}"#;
        let i = responses(done);
        assert_eq!(
            (i.end, i.error, i.input, i.output),
            (true, false, Some(19), Some(16))
        );
        let created = br#"{"response":{"usage":null},"type":"response.created"}"#;
        assert_eq!(responses(created), Info::default());
        assert!(responses(br#"{"type":"error","message":"x"}"#).error);
        assert!(responses(br#"{"type":"response.failed","response":{}}"#).error);
    }

    #[test]
    fn messages_events() {
        let start = br#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":14,"output_tokens":0}}}"#;
        assert_eq!(messages(start).input, Some(14));
        assert_eq!(messages(start).output, None);
        for (delta, content) in [
            (r#"{"type":"text_delta","text":"hi"}"#, true),
            (r#"{"type":"thinking_delta","thinking":"hm"}"#, true),
            (r#"{"type":"input_json_delta","partial_json":"{"}"#, true),
            (r#"{"type":"text_delta","text":""}"#, false),
            (r#"{"type":"signature_delta","signature":"abc"}"#, false),
        ] {
            let e = format!(r#"{{"type":"content_block_delta","delta":{delta},"index":0}}"#);
            assert_eq!(messages(e.as_bytes()).content, content, "{delta}");
        }
        let delta = br#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":4,"output_tokens":16,"cache_creation_input_tokens":0,"cache_read_input_tokens":10}}"#;
        let i = messages(delta);
        assert_eq!((i.input, i.output, i.end), (Some(14), Some(16), false));
        assert!(messages(br#"{"type":"message_stop"}"#).end);
        assert!(messages(br#"{"type":"error","error":{"type":"x","message":"y"}}"#).error);
    }

    #[test]
    fn whole_bodies() {
        let embed = br#"{"object":"list","data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        let i = body(Api::Embeddings, embed);
        assert_eq!((i.error, i.input, i.output), (false, Some(9), Some(0)));
        let msg = br#"{"type":"message","usage":{"input_tokens":14,"output_tokens":16,"cache_read_input_tokens":2}}"#;
        assert_eq!(body(Api::Messages, msg).input, Some(16));
        let err = br#"{"type":"error","error":{"type":"NotFoundError","message":"x"}}"#;
        assert!(body(Api::Messages, err).error);
        assert!(body(Api::Responses, br#"{"error":{"message":"x"}}"#).error);
    }
}
