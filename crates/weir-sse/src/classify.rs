//! Classification of one event's JSON (or a whole non-streamed body): what measurement
//! needs from it, read without building a tree of the document: one UTF-8 check and one
//! pass per event, strings borrowed, nothing allocated for a token event. Chat and
//! completions, read on every token, are read by [`crate::scan`], and by serde where it
//! declines; the other APIs by serde.
//!
//! Each API served has its own module: [`Api::Chat`] and [`Api::Completions`] (OpenAI
//! chunks, `[DONE]`), [`Api::Responses`] (OpenAI Responses: named events, no `[DONE]`) and
//! [`Api::Messages`] (Anthropic Messages as vLLM serves it: named events, no `[DONE]`).

mod chat;
mod messages;
mod responses;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The API a response belongs to: decides how its events (or body) read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// `/v1/responses` (OpenAI Responses API).
    Responses,
    /// `/v1/messages` (Anthropic Messages API).
    Messages,
}

/// Token usage as the backend reported it, in the same terms on every API.
///
/// `prompt_tokens` is every prompt token, cached ones included, on every API (Messages
/// reports the uncached ones apart from the cache reads and writes: they are added back).
/// `completion_tokens` is every output token, reasoning included. The two subsets are
/// `None` when the backend did not report them.
///
/// Most events carry a whole usage ([`Reported::Both`]). Messages reports it in halves:
/// input in `message_start`, output (and, from vLLM, input again) in `message_delta`. A
/// caller keeps one `Usage` per response and folds each event's into it with
/// [`Usage::merge`]: field by field, the later value wins, and a field the later event did
/// not report is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Input tokens: all prompt tokens, cached included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens, reasoning included.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those read from the prefix cache.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    /// Of `completion_tokens`, those spent reasoning.
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
    /// Which of `prompt_tokens` and `completion_tokens` this usage carries; the other one is
    /// 0 and means "not reported".
    #[serde(skip)]
    pub reported: Reported,
}

/// Which of a [`Usage`]'s two main counts were reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reported {
    /// Both: every API's usage but the two Messages cases below, and any merge that saw
    /// both halves.
    #[default]
    Both,
    /// Input only: Messages' `message_start` (its `output_tokens` is a placeholder).
    Input,
    /// Output only: a Messages `message_delta` without `input_tokens` (Anthropic's older
    /// shape; vLLM repeats the input there).
    Output,
}

impl Reported {
    fn has_input(self) -> bool {
        self != Reported::Output
    }

    fn has_output(self) -> bool {
        self != Reported::Input
    }
}

impl Usage {
    /// Folds `later` (the usage of a later event of the same response) into this one, field
    /// by field: each count `later` reported replaces this one's; a count it did not report
    /// (a `None` subset, the missing half of a partial usage) is kept.
    pub fn merge(&mut self, later: &Usage) {
        if later.reported.has_input() {
            self.prompt_tokens = later.prompt_tokens;
        }
        if later.reported.has_output() {
            self.completion_tokens = later.completion_tokens;
        }
        self.cached_tokens = later.cached_tokens.or(self.cached_tokens);
        self.reasoning_tokens = later.reasoning_tokens.or(self.reasoning_tokens);
        let input = self.reported.has_input() || later.reported.has_input();
        let output = self.reported.has_output() || later.reported.has_output();
        self.reported = match (input, output) {
            (true, false) => Reported::Input,
            (false, true) => Reported::Output,
            _ => Reported::Both,
        };
    }

    /// `prompt_tokens` was reported.
    pub fn has_input(&self) -> bool {
        self.reported.has_input()
    }

    /// `completion_tokens` was reported.
    pub fn has_output(&self) -> bool {
        self.reported.has_output()
    }
}

/// What one event (or a non-streamed body) says, as far as measurement cares.
#[derive(Debug, Default, PartialEq)]
pub struct EventInfo<'a> {
    /// `[DONE]` (chat and completions end so; on another API it ends the stream too).
    pub done: bool,
    /// The API's final event: `[DONE]`; Responses' `response.completed`,
    /// `response.incomplete` or `response.failed`; Messages' `message_stop`. Streams only.
    pub end: bool,
    /// Not JSON, or JSON of an unexpected shape.
    pub invalid: bool,
    /// A failure: `{"error": ...}` (vLLM's mid-stream error), Responses' `response.failed`
    /// or `error` event, Messages' `error` event.
    pub error: bool,
    /// Content-bearing: a choice carries content, reasoning, tool calls or completion text;
    /// a Responses text, reasoning or function-call-arguments delta, or a Messages text,
    /// thinking or tool-input delta, that is not empty.
    pub content: bool,
    /// Content-bearing and not reasoning: what "time to first answer token" waits for.
    pub answer: bool,
    /// `choices` is empty and usage is present: the chunk the gateway may have asked for
    /// (chat and completions only).
    pub usage_only: bool,
    pub usage: Option<Usage>,
    pub model: Option<Cow<'a, str>>,
    pub system_fingerprint: Option<Cow<'a, str>>,
    /// (choice index, finish reason) for each choice that finished in this event. Responses
    /// and Messages have one choice, 0: the status of the final response (for `incomplete`,
    /// the reason given), or Messages' `stop_reason`.
    pub finished: Vec<(u32, Cow<'a, str>)>,
}

impl EventInfo<'_> {
    fn done() -> Self {
        EventInfo {
            done: true,
            end: true,
            ..EventInfo::default()
        }
    }

    fn invalid() -> Self {
        EventInfo {
            invalid: true,
            ..EventInfo::default()
        }
    }
}

/// Classifies one chat or completions event's data (or a whole non-streamed JSON body):
/// `classify_event(Api::Chat, None, data)`.
pub fn classify(data: &[u8]) -> EventInfo<'_> {
    chat::classify(data)
}

/// Classifies one event of a stream of `api`: its `event:` name (if it had one) and its
/// data. The name decides only where the data carries no `type` (Responses and Messages
/// events carry both, the same).
pub fn classify_event<'a>(api: Api, name: Option<&'a [u8]>, data: &'a [u8]) -> EventInfo<'a> {
    if data == b"[DONE]" {
        return EventInfo::done();
    }
    match api {
        Api::Chat | Api::Completions => chat::classify(data),
        Api::Responses => responses::event(name, data),
        Api::Messages => messages::event(name, data),
    }
}

/// Classifies a whole non-streamed JSON body of `api`: usage, model, finish reasons,
/// error, and whether it has content (and answer).
pub fn classify_body(api: Api, body: &[u8]) -> EventInfo<'_> {
    match api {
        Api::Chat | Api::Completions => chat::classify(body),
        Api::Responses => responses::body(body),
        Api::Messages => messages::body(body),
    }
}

/// One UTF-8 check of the whole text, then one parse that need not check each string.
fn parse<'a, T: Deserialize<'a>>(data: &'a [u8]) -> Option<T> {
    serde_json::from_str(simdutf8::basic::from_utf8(data).ok()?).ok()
}

/// A string field, borrowed from the input unless it has escapes: serde's own
/// `Option<Cow<str>>` always copies (one allocation per event for `model`).
fn borrowed<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// Non-empty string, or non-empty array (tool calls) or object.
fn non_empty(v: Option<&RawValue>) -> bool {
    non_empty_text(v.map(RawValue::get))
}

/// [`non_empty`] of a value's text.
fn non_empty_text(v: Option<&str>) -> bool {
    match v {
        None | Some("null") | Some("\"\"") | Some("[]") => false,
        Some(s) => s.starts_with('"') || s.starts_with('[') || s.starts_with('{'),
    }
}

/// A value's text as serde_json's `RawValue` borrows it (`null`: `None`).
fn raw<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'a str>, D::Error> {
    Ok(Option::<&'a RawValue>::deserialize(d)?.map(RawValue::get))
}

/// The event's type: the data's `type` when it has one, else its `event:` name.
fn kind<'a>(of_data: Option<&'a str>, name: Option<&'a [u8]>) -> Option<&'a str> {
    of_data.or_else(|| name.and_then(|n| std::str::from_utf8(n).ok()))
}

/// The start of a typed event's (Responses, Messages) classification: its type, and the info
/// with `error` set from the event's error field; without a type, the info is final (an error
/// event, or an invalid one).
#[inline]
fn typed<'a, 'b>(
    error: bool,
    of_data: Option<&'b str>,
    name: Option<&'b [u8]>,
) -> (Option<&'b str>, EventInfo<'a>) {
    let kind = kind(of_data, name);
    let info = EventInfo {
        error,
        invalid: kind.is_none() && !error,
        ..EventInfo::default()
    };
    (kind, info)
}
