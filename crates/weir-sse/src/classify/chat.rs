//! Chat and completions: OpenAI chunks (`choices[].delta`, `choices[].text`), the final
//! usage chunk, `{"error": ...}` and `[DONE]`; bodies with `choices[].message`.
//!
//! Each is read by [`crate::scan`] first (one pass, the members needed taken, the rest
//! checked and skipped), and by serde's typed parse where that declines; the two read alike
//! (`tests/scan.rs`).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{EventInfo, Usage, borrowed, non_empty_text, raw};
use crate::scan::Scan;

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
                    out.add(c);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Fold(std::marker::PhantomData))
    }
}

impl<'a> Choices<'a> {
    fn add(&mut self, c: Choice<'a>) {
        self.count += 1;
        let d = c.delta.as_ref().or(c.message.as_ref());
        let answer = d.is_some_and(Delta::answer) || non_empty_text(c.text);
        self.answer |= answer;
        self.content |= answer || d.is_some_and(Delta::reasoning);
        if let Some(r) = c.finish_reason {
            self.finished.push((c.index, r));
        }
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
    #[serde(borrow, default, deserialize_with = "raw")]
    text: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default, deserialize_with = "raw")]
    content: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw")]
    reasoning: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw")]
    reasoning_content: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw")]
    tool_calls: Option<&'a str>,
}

impl Delta<'_> {
    /// Content or tool calls: the answer.
    fn answer(&self) -> bool {
        non_empty_text(self.content) || non_empty_text(self.tool_calls)
    }

    fn reasoning(&self) -> bool {
        non_empty_text(self.reasoning) || non_empty_text(self.reasoning_content)
    }
}

/// Classifies one chat or completions event's data (or a whole non-streamed JSON body).
pub(super) fn classify(data: &[u8]) -> EventInfo<'_> {
    if data == b"[DONE]" {
        return EventInfo::done();
    }
    // One UTF-8 check of the whole text; then neither reader checks a string again.
    let Ok(text) = simdutf8::basic::from_utf8(data) else {
        return EventInfo::invalid();
    };
    match scan(text).or_else(|| serde_json::from_str(text).ok()) {
        Some(chunk) => info(chunk),
        None => EventInfo::invalid(),
    }
}

fn info(chunk: Chunk<'_>) -> EventInfo<'_> {
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

/// Marks member `k` seen; `None` for a member given twice (an error to serde).
fn first(seen: &mut u8, k: u8) -> Option<u8> {
    let bit = 1 << k;
    if *seen & bit != 0 {
        return None;
    }
    *seen |= bit;
    Some(k)
}

/// `null`, or a member of `T` read by `read`.
fn nullable<'a, T>(
    s: &mut Scan<'a>,
    read: impl FnOnce(&mut Scan<'a>) -> Option<T>,
) -> Option<Option<T>> {
    if s.null() {
        Some(None)
    } else {
        read(s).map(Some)
    }
}

/// A string member kept as it is (`borrowed`'s reading).
fn kept<'a>(s: &mut Scan<'a>) -> Option<Cow<'a, str>> {
    s.string().map(Cow::Borrowed)
}

/// The fast reading of a chunk ([`crate::scan`]); `None` where serde is to read it.
fn scan(text: &str) -> Option<Chunk<'_>> {
    let mut s = Scan::new(text);
    let mut c = Chunk {
        model: None,
        choices: None,
        usage: None,
        error: None,
        system_fingerprint: None,
    };
    let mut seen = 0;
    s.object(|s, key| {
        let k = match key {
            "model" => 0,
            "choices" => 1,
            "usage" => 2,
            "error" => 3,
            "system_fingerprint" => 4,
            _ => return s.skip(),
        };
        match first(&mut seen, k)? {
            0 => c.model = nullable(s, kept)?,
            1 => c.choices = nullable(s, choices)?,
            2 => c.usage = nullable(s, usage)?,
            3 => c.error = nullable(s, |s| s.skip().map(|()| IgnoredAny))?,
            _ => c.system_fingerprint = nullable(s, kept)?,
        }
        Some(())
    })?;
    s.end()?;
    Some(c)
}

fn choices<'a>(s: &mut Scan<'a>) -> Option<Choices<'a>> {
    let mut out = Choices::default();
    s.array(|s| choice(s).map(|c| out.add(c)))?;
    Some(out)
}

fn choice<'a>(s: &mut Scan<'a>) -> Option<Choice<'a>> {
    let mut c = Choice {
        index: 0,
        delta: None,
        message: None,
        text: None,
        finish_reason: None,
    };
    let mut seen = 0;
    s.object(|s, key| {
        let k = match key {
            "index" => 0,
            "delta" => 1,
            "message" => 2,
            "text" => 3,
            "finish_reason" => 4,
            _ => return s.skip(),
        };
        match first(&mut seen, k)? {
            0 => c.index = u32::try_from(s.u64()?).ok()?,
            1 => c.delta = nullable(s, delta)?,
            2 => c.message = nullable(s, delta)?,
            3 => c.text = nullable(s, Scan::raw)?,
            _ => c.finish_reason = nullable(s, kept)?,
        }
        Some(())
    })?;
    Some(c)
}

fn delta<'a>(s: &mut Scan<'a>) -> Option<Delta<'a>> {
    let mut d = Delta {
        content: None,
        reasoning: None,
        reasoning_content: None,
        tool_calls: None,
    };
    let mut seen = 0;
    s.object(|s, key| {
        let k = match key {
            "content" => 0,
            "reasoning" => 1,
            "reasoning_content" => 2,
            "tool_calls" => 3,
            _ => return s.skip(),
        };
        first(&mut seen, k)?;
        let v = nullable(s, Scan::raw)?;
        match k {
            0 => d.content = v,
            1 => d.reasoning = v,
            2 => d.reasoning_content = v,
            _ => d.tool_calls = v,
        }
        Some(())
    })?;
    Some(d)
}

fn usage(s: &mut Scan<'_>) -> Option<ChatUsage> {
    let mut u = ChatUsage {
        prompt_tokens: 0,
        completion_tokens: 0,
        prompt_tokens_details: None,
        completion_tokens_details: None,
    };
    let mut seen = 0;
    s.object(|s, key| {
        let k = match key {
            "prompt_tokens" => 0,
            "completion_tokens" => 1,
            "prompt_tokens_details" => 2,
            "completion_tokens_details" => 3,
            _ => return s.skip(),
        };
        match first(&mut seen, k)? {
            0 => u.prompt_tokens = s.u64()?,
            1 => u.completion_tokens = s.u64()?,
            2 => {
                u.prompt_tokens_details = nullable(s, |s| {
                    detail(s, "cached_tokens").map(|cached_tokens| PromptDetails { cached_tokens })
                })?
            }
            _ => {
                u.completion_tokens_details = nullable(s, |s| {
                    detail(s, "reasoning_tokens")
                        .map(|reasoning_tokens| CompletionDetails { reasoning_tokens })
                })?
            }
        }
        Some(())
    })?;
    Some(u)
}

/// A details object of usage: the one count it is read for (`null` or absent: `None`).
fn detail(s: &mut Scan<'_>, name: &str) -> Option<Option<u64>> {
    let mut count = None;
    let mut seen = 0;
    s.object(|s, key| {
        if key != name {
            return s.skip();
        }
        first(&mut seen, 0)?;
        count = nullable(s, Scan::u64)?;
        Some(())
    })?;
    Some(count)
}

#[cfg(test)]
pub(super) mod differential {
    //! The two readers side by side, for the tests.
    use super::*;

    /// What the fast reader makes of `text`, and what serde does (each `None` where it
    /// declines or refuses).
    pub(in super::super) fn both(text: &str) -> (Option<EventInfo<'_>>, Option<EventInfo<'_>>) {
        (
            scan(text).map(info),
            serde_json::from_str(text).ok().map(info),
        )
    }
}
