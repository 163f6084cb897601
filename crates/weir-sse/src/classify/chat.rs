//! Chat and completions: OpenAI chunks (`choices[].delta`, `choices[].text`), the final
//! usage chunk, `{"error": ...}` and `[DONE]`; bodies with `choices[].message`.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::{EventInfo, Usage, borrowed, non_empty, parse};

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Choices<'a>>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    system_fingerprint: Option<Cow<'a, str>>,
}

/// `usage` as chat and completions report it; the details come with
/// `--enable-prompt-tokens-details` and with a reasoning parser.
#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<ChatUsage> for Usage {
    fn from(u: ChatUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
            reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens),
            ..Usage::default()
        }
    }
}

/// What a `choices` array says, gathered while it is read: no vector of choices is built
/// per event.
#[derive(Default)]
struct Choices<'a> {
    count: usize,
    content: bool,
    answer: bool,
    finished: Vec<(u32, Cow<'a, str>)>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Choices<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fold<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Fold<'a> {
            type Value = Choices<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Choices<'a>, A::Error> {
                let mut out = Choices::default();
                while let Some(c) = seq.next_element::<Choice<'a>>()? {
                    out.count += 1;
                    let d = c.delta.as_ref().or(c.message.as_ref());
                    let answer = d.is_some_and(Delta::answer) || non_empty(c.text);
                    out.answer |= answer;
                    out.content |= answer || d.is_some_and(Delta::reasoning);
                    if let Some(r) = c.finish_reason {
                        out.finished.push((c.index, r));
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Fold(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    message: Option<Delta<'a>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

impl Delta<'_> {
    /// Content or tool calls: the answer.
    fn answer(&self) -> bool {
        non_empty(self.content) || non_empty(self.tool_calls)
    }

    fn reasoning(&self) -> bool {
        non_empty(self.reasoning) || non_empty(self.reasoning_content)
    }
}

/// Classifies one chat or completions event's data (or a whole non-streamed JSON body).
pub(super) fn classify(data: &[u8]) -> EventInfo<'_> {
    if data == b"[DONE]" {
        return EventInfo::done();
    }
    let Some(chunk) = parse::<Chunk<'_>>(data) else {
        return EventInfo::invalid();
    };
    let mut info = EventInfo {
        error: chunk.error.is_some(),
        usage: chunk.usage.map(Usage::from),
        model: chunk.model,
        system_fingerprint: chunk.system_fingerprint,
        ..EventInfo::default()
    };
    match chunk.choices {
        Some(choices) => {
            info.usage_only = choices.count == 0 && info.usage.is_some();
            info.content = choices.content;
            info.answer = choices.answer;
            info.finished = choices.finished;
        }
        None => info.invalid = !info.error && info.usage.is_none(),
    }
    info
}
