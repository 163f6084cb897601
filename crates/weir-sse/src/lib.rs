//! The tee's SSE parser: finds `data:` events in the bytes as they pass, keeping only the
//! unfinished tail of a line, and classifies each event's JSON (tokens, usage, finish, error).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// One complete event: its joined `data` and where it sits in the stream (absolute offsets,
/// `end` just past the blank line that closed it).
#[derive(Debug)]
pub struct Event<'a> {
    pub data: &'a [u8],
    pub start: u64,
    pub end: u64,
}

/// Incremental WHATWG event-stream parser (only `data:` matters; other fields are ignored).
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of a line that began in an earlier chunk and has not ended yet.
    tail: Vec<u8>,
    /// Joined `data` of the current event when it cannot be borrowed from one chunk.
    data: Vec<u8>,
    has_data: bool,
    /// The previous chunk ended in `\r`: a leading `\n` completes that line ending.
    skip_lf: bool,
    /// A line longer than `max_line` is being skipped.
    overlong: bool,
    max_line: usize,
    /// Absolute offset of the first byte not yet fed.
    offset: u64,
    /// Absolute offset where the current event began.
    event_start: u64,
    /// Set once a line had to be skipped for its length: measurements may be incomplete.
    pub degraded: bool,
}

/// Default cap on one SSE line held across chunks.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(DEFAULT_MAX_LINE)
    }
}

impl SseParser {
    pub fn new(max_line: usize) -> Self {
        SseParser {
            tail: Vec::new(),
            data: Vec::new(),
            has_data: false,
            skip_lf: false,
            overlong: false,
            max_line,
            offset: 0,
            event_start: 0,
            degraded: false,
        }
    }

    /// Absolute offset of the next byte to be fed.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where the last complete event (or comment block) ends: bytes before it are whole.
    pub fn release_limit(&self) -> u64 {
        self.event_start
    }

    /// True when bytes fed so far end exactly at an event boundary.
    pub fn at_boundary(&self) -> bool {
        self.tail.is_empty() && !self.has_data && !self.overlong && self.event_start == self.offset
    }

    /// Feeds one network chunk; `on_event` is called for every event completed in it.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) {
        let base = self.offset;
        self.offset += chunk.len() as u64;
        let mut pos = 0;
        if self.skip_lf {
            self.skip_lf = false;
            if chunk.first() == Some(&b'\n') {
                pos = 1;
                if self.event_start == base {
                    self.event_start = base + 1;
                }
            }
        }
        // A first data line borrowed from this chunk, not yet copied into `self.data`.
        let mut borrowed: Option<(usize, usize)> = None;
        while pos < chunk.len() {
            let Some(rel) = memchr::memchr2(b'\n', b'\r', &chunk[pos..]) else {
                // Unfinished line: keep it (bounded), and any borrowed data it follows.
                self.spill(chunk, &mut borrowed);
                let rest = &chunk[pos..];
                if self.overlong || self.tail.len() + rest.len() > self.max_line {
                    self.overlong = true;
                    self.degraded = true;
                    self.tail.clear();
                } else {
                    self.tail.extend_from_slice(rest);
                }
                return;
            };
            let eol = pos + rel;
            let next = if chunk[eol] == b'\r' {
                if eol + 1 < chunk.len() {
                    if chunk[eol + 1] == b'\n' {
                        eol + 2
                    } else {
                        eol + 1
                    }
                } else {
                    self.skip_lf = true;
                    eol + 1
                }
            } else {
                eol + 1
            };
            let line_end = base + next as u64;
            if self.overlong {
                self.overlong = false;
                self.tail.clear();
            } else if self.tail.is_empty() {
                if eol == pos {
                    self.dispatch(chunk, &mut borrowed, line_end, &mut on_event);
                } else {
                    self.field(chunk, pos, eol, &mut borrowed);
                }
            } else {
                self.spill(chunk, &mut borrowed);
                let mut line = std::mem::take(&mut self.tail);
                line.extend_from_slice(&chunk[pos..eol]);
                if line.is_empty() {
                    self.dispatch(chunk, &mut borrowed, line_end, &mut on_event);
                } else {
                    self.owned_field(&line);
                }
                line.clear();
                self.tail = line;
            }
            pos = next;
        }
        self.spill(chunk, &mut borrowed);
    }

    /// A complete non-empty line lying inside `chunk[start..end]`.
    fn field(
        &mut self,
        chunk: &[u8],
        start: usize,
        end: usize,
        borrowed: &mut Option<(usize, usize)>,
    ) {
        let line = &chunk[start..end];
        if let Some(v) = data_value(line) {
            let v_start = end - v.len();
            if !self.has_data {
                self.has_data = true;
                *borrowed = Some((v_start, end));
            } else {
                self.spill(chunk, borrowed);
                self.data.push(b'\n');
                self.data.extend_from_slice(v);
            }
        }
    }

    fn owned_field(&mut self, line: &[u8]) {
        if let Some(v) = data_value(line) {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.has_data = true;
            self.data.extend_from_slice(v);
        }
    }

    /// Moves borrowed data into the owned buffer (the event continues past this chunk or
    /// gains another data line).
    fn spill(&mut self, chunk: &[u8], borrowed: &mut Option<(usize, usize)>) {
        if let Some((s, e)) = borrowed.take() {
            self.data.extend_from_slice(&chunk[s..e]);
        }
    }

    fn dispatch(
        &mut self,
        chunk: &[u8],
        borrowed: &mut Option<(usize, usize)>,
        end: u64,
        on_event: &mut impl FnMut(Event<'_>),
    ) {
        let start = self.event_start;
        self.event_start = end;
        if !self.has_data {
            return;
        }
        self.has_data = false;
        if let Some((s, e)) = borrowed.take() {
            on_event(Event {
                data: &chunk[s..e],
                start,
                end,
            });
        } else {
            on_event(Event {
                data: &self.data,
                start,
                end,
            });
            self.data.clear();
        }
    }
}

/// The value of a `data` field line, or None for comments and other fields.
fn data_value(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data")?;
    match rest.first() {
        None => Some(rest),
        Some(b':') => {
            let v = &rest[1..];
            Some(v.strip_prefix(b" ").unwrap_or(v))
        }
        Some(_) => None,
    }
}

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

    fn events(chunks: &[&[u8]]) -> Vec<(String, u64, u64)> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e| {
                out.push((String::from_utf8_lossy(e.data).into_owned(), e.start, e.end))
            });
        }
        out
    }

    #[test]
    fn line_endings_comments_and_multiline_data() {
        let s = b": keep-alive\n\ndata: a\r\ndata:b\r\rid: 7\nevent: x\ndata\n\ndata: [DONE]\n\n";
        let got = events(&[s]);
        let data: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(data, ["a\nb", "", "[DONE]"]);
        // Offsets: the comment event spans 0..14, then "data: a\r\ndata:b\r\r" = 14..31.
        assert_eq!((got[0].1, got[0].2), (14, 31));
        assert_eq!(got[2].2, s.len() as u64);
    }

    #[test]
    fn crlf_split_across_chunks() {
        let got = events(&[b"data: x\r", b"\n\r", b"\ndata: y\r\n\r\n"]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "x");
        // The blank line's `\r` ends the event; its `\n` came in the next chunk.
        assert_eq!((got[0].1, got[0].2), (0, 10));
        assert_eq!(got[1].0, "y");
        assert_eq!((got[1].1, got[1].2), (11, 22));
    }

    #[test]
    fn overlong_line_is_skipped_and_marked() {
        let mut p = SseParser::new(8);
        let mut out = Vec::new();
        for c in [&b"data: 0123"[..], b"456789abc", b"\n\ndata: ok\n\n"] {
            p.feed(c, |e| out.push(e.data.to_vec()));
        }
        assert!(p.degraded);
        assert_eq!(out, vec![b"ok".to_vec()]);
        assert!(p.at_boundary());
    }

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
}
