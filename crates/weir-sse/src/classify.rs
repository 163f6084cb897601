//! Classification of one event's JSON (or a whole non-streamed body): what measurement
//! needs from it, read without building a tree of the document.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// Token usage as the backend reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// What one event (or a non-streamed body) says, as far as measurement cares.
#[derive(Debug, Default, PartialEq)]
pub struct EventInfo<'a> {
    pub done: bool,
    /// Not JSON, or JSON of an unexpected shape.
    pub invalid: bool,
    /// `{"error": ...}`: vLLM's mid-stream error.
    pub error: bool,
    /// A choice carries content, reasoning, tool calls or completion text.
    pub content: bool,
    /// `choices` is empty and usage is present: the chunk the gateway may have asked for.
    pub usage_only: bool,
    pub usage: Option<Usage>,
    pub model: Option<Cow<'a, str>>,
    pub system_fingerprint: Option<Cow<'a, str>>,
    /// (choice index, finish reason) for each choice that finished in this event.
    pub finished: Vec<(u32, Cow<'a, str>)>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Choices<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(borrow, default)]
    system_fingerprint: Option<Cow<'a, str>>,
}

/// What a `choices` array says, gathered while it is read: no vector of choices is built
/// per event.
#[derive(Default)]
struct Choices<'a> {
    count: usize,
    content: bool,
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
                    out.content |= d.is_some_and(Delta::has_content) || non_empty(c.text);
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
    #[serde(borrow, default)]
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

/// Non-empty string, or non-empty array (tool calls).
fn non_empty(v: Option<&RawValue>) -> bool {
    match v.map(RawValue::get) {
        None | Some("null") | Some("\"\"") | Some("[]") => false,
        Some(s) => s.starts_with('"') || s.starts_with('[') || s.starts_with('{'),
    }
}

impl Delta<'_> {
    fn has_content(&self) -> bool {
        non_empty(self.content)
            || non_empty(self.reasoning)
            || non_empty(self.reasoning_content)
            || non_empty(self.tool_calls)
    }
}

/// Classifies one event's data (or a whole non-streamed JSON body).
pub fn classify(data: &[u8]) -> EventInfo<'_> {
    if data == b"[DONE]" {
        return EventInfo {
            done: true,
            ..EventInfo::default()
        };
    }
    // One UTF-8 check of the whole event, then a parse that need not check each string.
    let parsed = std::str::from_utf8(data).map(serde_json::from_str::<Chunk<'_>>);
    let Ok(Ok(chunk)) = parsed else {
        return EventInfo {
            invalid: true,
            ..EventInfo::default()
        };
    };
    let mut info = EventInfo {
        error: chunk.error.is_some(),
        usage: chunk.usage,
        model: chunk.model,
        system_fingerprint: chunk.system_fingerprint,
        ..EventInfo::default()
    };
    match chunk.choices {
        Some(choices) => {
            info.usage_only = choices.count == 0 && info.usage.is_some();
            info.content = choices.content;
            info.finished = choices.finished;
        }
        None => info.invalid = !info.error && info.usage.is_none(),
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_shapes() {
        let role = br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert!(!classify(role).content);
        let tok = br#"{"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;
        let i = classify(tok);
        assert!(i.content && i.finished.is_empty() && i.model.as_deref() == Some("m"));
        let tool = br#"{"choices":[{"index":1,"delta":{"tool_calls":[{"id":"x"}]},"finish_reason":"tool_calls"}]}"#;
        let i = classify(tool);
        assert!(i.content);
        assert_eq!(i.finished, vec![(1, Cow::Borrowed("tool_calls"))]);
        let reasoning = br#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#;
        assert!(classify(reasoning).content);
        let empty_text = br#"{"choices":[{"index":0,"text":""}]}"#;
        assert!(!classify(empty_text).content);
        let usage = br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8},"system_fingerprint":"fp"}"#;
        let i = classify(usage);
        assert!(i.usage_only);
        assert_eq!(
            i.usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 5
            })
        );
        assert_eq!(i.system_fingerprint.as_deref(), Some("fp"));
        let err = br#"{"error": {"message": "boom", "type": "InternalServerError", "param": null, "code": 500}}"#;
        assert!(classify(err).error);
        assert!(classify(b"[DONE]").done);
        assert!(classify(b"not json").invalid);
        assert!(classify(b"{\"x\":1}").invalid);
        let escaped = br#"{"choices":[{"index":0,"delta":{"content":"\"q\""}}]}"#;
        assert!(classify(escaped).content);
        // Not UTF-8 (a lone continuation byte in a token): not JSON.
        assert!(
            classify(b"{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\x80\"}}]}").invalid
        );
        let multibyte = "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"é\"}}]}";
        assert!(classify(multibyte.as_bytes()).content);
    }

    /// Today's handling of absurd token counts: anything a u64 holds is taken as is (up to
    /// 2^64-1, for the caller to bound); anything else (negative, fractional or exponent
    /// notation, past 2^64-1, null, a string) fails the whole event's parse, so the event
    /// counts as invalid and its content and finish reasons are lost with it.
    #[test]
    fn absurd_usage_values() {
        let event = |v: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":"x"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{v},"completion_tokens":1}}}}"#
            )
        };
        let max = event("18446744073709551615");
        let i = classify(max.as_bytes());
        assert!(!i.invalid && i.content);
        assert_eq!(i.usage.map(|u| u.prompt_tokens), Some(u64::MAX));
        for v in ["18446744073709551616", "-1", "3.0", "1e3", "null", "\"5\""] {
            let e = event(v);
            let i = classify(e.as_bytes());
            assert!(i.invalid && !i.content && i.usage.is_none(), "{v}");
            assert!(i.finished.is_empty(), "{v}");
        }
        let absent = br#"{"choices":[],"usage":{}}"#;
        assert_eq!(classify(absent).usage, Some(Usage::default()));
    }
}
