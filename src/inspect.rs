//! Inspection: reads a measured request's JSON body once (model, stream, max_tokens, n) and,
//! for a streamed generation, asks the backend for usage (`stream_options.include_usage`).

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use weir_sse::scan::Scan;

use crate::error::GatewayError;

/// What the gateway learnt from a request body, and the body to send upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub model: Option<String>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    /// Choices per request (`n`), at least 1.
    pub n: u32,
    /// The gateway added `include_usage` the client did not ask for: the usage-only chunk
    /// must be removed from what the client receives.
    pub strip_usage: bool,
    /// The body to send upstream (the client's own bytes unless usage was injected).
    pub body: Bytes,
}

/// The fields of a request body that measurement needs, read as vLLM's request models
/// (pydantic, lax) read them: a key given twice counts with its last value (Python's `json`),
/// an integer may come as a float without a fractional part or as a string of digits, and a
/// field of the wrong type is left out rather than spoiling the others.
#[derive(Debug, Default, PartialEq)]
struct Head<'a> {
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    /// The Responses API's name for it.
    max_output_tokens: Option<i64>,
    n: Option<i64>,
    /// Present (an object), and its `include_usage`.
    stream_options: Option<Option<bool>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Head<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HeadVisitor(std::marker::PhantomData))
    }
}

struct HeadVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for HeadVisitor<'a> {
    type Value = Head<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Head<'a>, M::Error> {
        let mut head = Head::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if Head::reads(&key) {
                head.set(&key, map.next_value::<&'de RawValue>()?.get());
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(head)
    }
}

impl<'a> Head<'a> {
    /// Whether a member of this name is read (its value is taken as its JSON text).
    fn reads(key: &str) -> bool {
        matches!(
            key,
            "model"
                | "stream"
                | "max_tokens"
                | "max_completion_tokens"
                | "max_output_tokens"
                | "n"
                | "stream_options"
        )
    }

    /// Takes a member's value, its JSON text `raw`, as vLLM's request models read it.
    fn set(&mut self, key: &str, raw: &'a str) {
        match key {
            "model" => self.model = serde_json::from_str::<Cow<'a, str>>(raw).ok(),
            "stream" => self.stream = lax_bool(raw),
            "max_tokens" => self.max_tokens = lax_int(raw),
            "max_completion_tokens" => self.max_completion_tokens = lax_int(raw),
            "max_output_tokens" => self.max_output_tokens = lax_int(raw),
            "n" => self.n = lax_int(raw),
            "stream_options" => self.stream_options = stream_options(raw),
            _ => {}
        }
    }

    /// The body read in one pass by [`weir_sse::scan`], members in order as serde's pass
    /// takes them; `None` where that reader declines (serde reads the body then, and its
    /// verdict stands: the two read alike, `tests::the_fast_reading_is_serdes`).
    fn scan(text: &'a str) -> Option<Head<'a>> {
        let mut head = Head::default();
        let mut s = Scan::new(text);
        s.object(|s, key| {
            if Head::reads(key) {
                head.set(key, s.raw()?);
                Some(())
            } else {
                s.skip()
            }
        })?;
        s.end()?;
        Some(head)
    }
}

/// A member's name, borrowed from the body unless it has escapes: serde's own `Cow<str>`
/// always copies (an allocation for every member of every request).
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// `true` or `false` (`null`, or anything else: not given).
fn lax_bool(raw: &str) -> Option<bool> {
    serde_json::from_str::<bool>(raw).ok()
}

/// An integer as pydantic's lax mode takes one: `8`, `8.0`, `"8"`.
fn lax_int(raw: &str) -> Option<i64> {
    if let Ok(i) = serde_json::from_str::<i64>(raw) {
        return Some(i);
    }
    if let Ok(f) = serde_json::from_str::<f64>(raw) {
        return (f.is_finite() && f.fract() == 0.0).then_some(f as i64);
    }
    serde_json::from_str::<Cow<'_, str>>(raw)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// `stream_options`: an object (its `include_usage` read laxly), or not given.
fn stream_options(raw: &str) -> Option<Option<bool>> {
    let opts =
        serde_json::from_str::<std::collections::HashMap<Cow<'_, str>, &RawValue>>(raw).ok()?;
    Some(opts.get("include_usage").and_then(|v| lax_bool(v.get())))
}

/// Inspects a generation (`inject` = streamed requests may get `include_usage`) or another
/// JSON request (only the model is read). Invalid JSON is refused; valid JSON of an
/// unexpected shape is passed on untouched for the backend to judge.
pub fn inspect(body: Bytes, inject: bool) -> Result<Inspected, GatewayError> {
    // JSON is UTF-8 (RFC 8259), and the parser does not look inside the strings it skips.
    let Ok(text) = simdutf8::basic::from_utf8(&body) else {
        return Err(GatewayError::InvalidJson("the body is not UTF-8".into()));
    };
    let head = match Head::scan(text).map_or_else(|| serde_json::from_str::<Head<'_>>(text), Ok) {
        Ok(h) => h,
        Err(e) => {
            if let Err(e) = serde_json::from_str::<IgnoredAny>(text) {
                return Err(GatewayError::InvalidJson(e.to_string()));
            }
            tracing::debug!(error = %e, "request body of unexpected shape, passed on as is");
            return Ok(Inspected {
                model: None,
                stream: false,
                max_tokens: None,
                n: 1,
                strip_usage: false,
                body,
            });
        }
    };
    let stream = head.stream.unwrap_or(false);
    let wants_usage = head.stream_options.flatten().unwrap_or(false);
    let model = head.model.map(Cow::into_owned);
    let max_tokens = head
        .max_completion_tokens
        .or(head.max_tokens)
        .or(head.max_output_tokens)
        .and_then(|v| u64::try_from(v).ok());
    let n = head
        .n
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(1)
        .max(1);
    let has_options = head.stream_options.is_some();
    // With n > 1 vLLM puts `system_fingerprint` on every choice's finish chunk when usage
    // was not asked for, and only on the usage chunk when it was: the bytes it would have
    // sent the client cannot be given back without holding a finished choice while the
    // others stream on. Usage is not asked for then; the tokens are counted from events.
    let strip_usage = inject && stream && !wants_usage && n == 1;
    let body = if !strip_usage {
        body
    } else if has_options {
        rewrite_options(text)?
    } else {
        splice_options(&body)
    };
    Ok(Inspected {
        model,
        stream,
        max_tokens,
        n,
        strip_usage,
        body,
    })
}

/// Adds `"stream_options":{"include_usage":true}` before the object's closing brace,
/// leaving every byte the client sent in place.
fn splice_options(body: &[u8]) -> Bytes {
    const ADD: &[u8] = br#","stream_options":{"include_usage":true}"#;
    let close = body.iter().rposition(|&b| b == b'}').unwrap_or(body.len());
    let mut out = BytesMut::with_capacity(body.len() + ADD.len());
    out.extend_from_slice(&body[..close]);
    out.extend_from_slice(ADD);
    out.extend_from_slice(&body[close..]);
    out.freeze()
}

/// The client sent `stream_options` without `include_usage: true`: set it, and turn off
/// `continuous_usage_stats` (vLLM only honours it with include_usage, so the client would
/// not have seen it). Every other member is kept as it was sent, in its place, numbers
/// digit for digit (JSON numbers have no range; a parser's floats do).
fn rewrite_options(body: &str) -> Result<Bytes, GatewayError> {
    let top: Pairs<'_> =
        serde_json::from_str(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let not_object = || GatewayError::BadRequest("`stream_options` must be an object".into());
    // A key given twice counts with its last value.
    let last = top
        .0
        .iter()
        .rposition(|(k, _)| k == "stream_options")
        .ok_or_else(not_object)?;
    let opts: Pairs<'_> = serde_json::from_str(top.0[last].1.get()).map_err(|_| not_object())?;
    let continuous = opts.0.iter().any(|(k, _)| k == "continuous_usage_stats");
    let mut rewritten = String::from("{");
    for (k, v) in &opts.0 {
        if k != "include_usage" && k != "continuous_usage_stats" {
            push_member(&mut rewritten, k, v.get());
        }
    }
    push_member(&mut rewritten, "include_usage", "true");
    if continuous {
        push_member(&mut rewritten, "continuous_usage_stats", "false");
    }
    rewritten.push('}');
    let mut out = String::with_capacity(body.len() + 64);
    out.push('{');
    for (i, (k, v)) in top.0.iter().enumerate() {
        push_member(&mut out, k, if i == last { &rewritten } else { v.get() });
    }
    out.push('}');
    Ok(Bytes::from(out))
}

/// Appends `"key":value` to an object being written (after a `,` unless it is the first).
fn push_member(out: &mut String, key: &str, value: &str) {
    if !out.ends_with('{') {
        out.push(',');
    }
    out.push_str(&serde_json::Value::from(key).to_string());
    out.push(':');
    out.push_str(value);
}

/// A JSON object's members as they were sent: in order, repeated keys kept, values raw.
struct Pairs<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Pairs<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Pairs<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Pairs<'a>, M::Error> {
                let mut pairs = Vec::new();
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    pairs.push(entry);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn injects_usage_into_streamed_generations_only() {
        let b = Bytes::from_static(br#"{"model":"m","stream":true,"max_tokens":7,"messages":[]} "#);
        let i = inspect(b.clone(), true).unwrap();
        assert!(i.strip_usage && i.stream);
        assert_eq!(i.model.as_deref(), Some("m"));
        assert_eq!(i.max_tokens, Some(7));
        assert_eq!(json(&i.body)["stream_options"]["include_usage"], true);
        assert!(
            i.body
                .starts_with(br#"{"model":"m","stream":true,"max_tokens":7,"messages":[]"#)
        );

        let i = inspect(b.clone(), false).unwrap();
        assert!(!i.strip_usage);
        assert_eq!(i.body, b);

        let not_streamed = Bytes::from_static(br#"{"model":"m","prompt":"x"}"#);
        let i = inspect(not_streamed.clone(), true).unwrap();
        assert_eq!(i.body, not_streamed);
    }

    #[test]
    fn every_api_names_its_output_limit() {
        // Chat (max_completion_tokens before max_tokens), completions, and the Responses
        // API's max_output_tokens: the tokens-per-minute estimate takes each.
        for (body, want) in [
            (
                &br#"{"model":"m","max_tokens":7,"max_completion_tokens":9}"#[..],
                9,
            ),
            (br#"{"model":"m","max_tokens":7,"prompt":"x"}"#, 7),
            (br#"{"model":"m","input":"x","max_output_tokens":11}"#, 11),
        ] {
            let i = inspect(Bytes::from_static(body), false).unwrap();
            assert_eq!(
                i.max_tokens,
                Some(want),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn client_that_asked_for_usage_is_untouched() {
        let b = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
        );
        let i = inspect(b.clone(), true).unwrap();
        assert!(!i.strip_usage);
        assert_eq!(i.body, b);
    }

    #[test]
    fn existing_options_are_rewritten() {
        let b = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true},"n":1}"#,
        );
        let i = inspect(b, true).unwrap();
        assert!(i.strip_usage);
        assert_eq!(i.n, 1);
        let v = json(&i.body);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["continuous_usage_stats"], false);
        // Key order is kept.
        assert!(
            i.body
                .starts_with(br#"{"model":"m","stream":true,"stream_options""#)
        );
    }

    #[test]
    fn invalid_json_is_refused_but_odd_shapes_pass() {
        let e = inspect(Bytes::from_static(b"{\"model\": "), true).unwrap_err();
        assert!(matches!(e, GatewayError::InvalidJson(_)));
        let odd = Bytes::from_static(br#"{"model":5,"stream":"yes"}"#);
        let i = inspect(odd.clone(), true).unwrap();
        assert_eq!(i.body, odd);
        assert_eq!(i.model, None);
        assert!(!i.strip_usage);
    }

    #[test]
    fn max_completion_tokens_wins_and_negatives_are_ignored() {
        let b = Bytes::from_static(br#"{"max_tokens":5,"max_completion_tokens":9}"#);
        assert_eq!(inspect(b, true).unwrap().max_tokens, Some(9));
        let b = Bytes::from_static(br#"{"max_tokens":-1,"n":0}"#);
        let i = inspect(b, true).unwrap();
        assert_eq!((i.max_tokens, i.n), (None, 1));
    }

    #[test]
    fn fields_are_read_as_vllm_reads_them() {
        // A key given twice counts with its last value; integers may be floats or strings.
        let b = Bytes::from_static(
            br#"{"model":"a","stream":false,"model":"m","max_tokens":8.0,"n":"2","stream":true}"#,
        );
        let i = inspect(b.clone(), true).unwrap();
        assert_eq!(i.model.as_deref(), Some("m"));
        assert_eq!((i.stream, i.max_tokens, i.n), (true, Some(8), 2));
        // n > 1: usage is not asked for, the bytes stay vLLM's.
        assert!(!i.strip_usage);
        assert_eq!(i.body, b);
        let one = Bytes::from_static(br#"{"model":"m","stream":true,"n":"1"}"#);
        let i = inspect(one, true).unwrap();
        assert!(i.strip_usage);
        assert_eq!(json(&i.body)["stream_options"]["include_usage"], true);
        // A field of the wrong type is left out; the others still count.
        let b = Bytes::from_static(br#"{"model":["x"],"max_tokens":8.5,"stream":true}"#);
        let i = inspect(b, true).unwrap();
        assert_eq!((i.model, i.max_tokens, i.stream), (None, None, true));
        // `stream_options: null` is no options: usage is still asked for.
        let b = Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":null}"#);
        let i = inspect(b, true).unwrap();
        assert!(i.strip_usage);
        let v: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn a_body_that_is_not_utf8_is_refused_even_inside_a_skipped_string() {
        let b = Bytes::from_static(b"{\"model\":\"m\",\"messages\":[{\"content\":\"\xff\xfe\"}]}");
        assert!(matches!(
            inspect(b, true),
            Err(GatewayError::InvalidJson(_))
        ));
    }

    #[test]
    fn options_are_rewritten_keeping_every_other_byte_as_sent() {
        let b = Bytes::from_static(
            br#"{"x":9954000E00790,"stream":true,"stream_options":{"include_usage":false},"stream_options":{"a":1.50}}"#,
        );
        let i = inspect(b, true).unwrap();
        assert!(i.strip_usage);
        assert_eq!(
            std::str::from_utf8(&i.body).unwrap(),
            r#"{"x":9954000E00790,"stream":true,"stream_options":{"include_usage":false},"stream_options":{"a":1.50,"include_usage":true}}"#
        );
        let again = inspect(i.body, true).unwrap();
        assert!(!again.strip_usage, "the rewritten body asks for usage");
    }

    /// Where the one-pass reader reads a body, serde's pass reads the same; it reads the
    /// bodies clients send, and declines what it cannot be sure of.
    fn agree(text: &str) -> bool {
        let fast = Head::scan(text);
        if let Some(f) = &fast {
            assert_eq!(
                Some(f),
                serde_json::from_str::<Head<'_>>(text).ok().as_ref(),
                "{text}"
            );
        }
        fast.is_some()
    }

    #[test]
    fn the_fast_reading_is_serdes() {
        for text in [
            r#"{"model":"tiny-llama","messages":[{"role":"user","content":"Hi \"there\"\n\u00e9"}],"max_tokens":32,"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"model":"m","prompt":["a","b"],"max_tokens":8.0,"n":"2","temperature":0.7,"logit_bias":{"50256":-100}}"#,
            r#"{"model":"a","stream":false,"model":"m","stream":true,"stream_options":null}"#,
            r#" { "model" : ["x"] , "max_tokens" : 8.5 , "tools" : [ { "type" : "function" } ] } "#,
            r#"{"input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}],"max_output_tokens":11}"#,
            "{}",
        ] {
            assert!(agree(text), "{text}");
        }
        let deep = format!("{{\"x\":{}1{}}}", "[".repeat(70), "]".repeat(70));
        for text in [
            // serde unescapes the key: this is `model`.
            r#"{"mod\u0065l":"m"}"#,
            r#"{"messages":[{"content":"\ud83d\ude00"}]}"#,
            r#"["model"]"#,
            r#"{"model":"m",}"#,
            r#"{"model":"m"} x"#,
            deep.as_str(),
        ] {
            assert!(!agree(text), "read: {text}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Request-shaped bodies with every read member given values of every kind, some
        /// twice, and the same with a few bytes cut out.
        #[test]
        fn where_the_fast_reading_reads_it_reads_what_serde_reads(
            members in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "model", "stream", "max_tokens", "max_completion_tokens",
                        "max_output_tokens", "n", "stream_options", "messages", "x",
                        "mod\\u0065l",
                    ]),
                    proptest::sample::select(vec![
                        "null", "true", "false", "8", "-1", "8.0", "8.5", "1e3", "\"8\"",
                        "\" 9 \"", "\"m\"", "\"m\\u00e9\"", "\"\\ud83d\\ude00\"", "[]",
                        "{}", "{\"include_usage\":true}", "{\"include_usage\":\"x\"}",
                        "[{\"role\":\"user\",\"content\":\"hi\"}]", "01", "tru",
                    ]),
                    proptest::sample::select(vec!["", " ", "\n"]),
                ),
                0..8,
            ),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            len in 0usize..3,
        ) {
            let text = format!(
                "{{{}}}",
                members
                    .iter()
                    .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            agree(&text);
            let at = cut.index(text.len() + 1);
            let end = (at + len).min(text.len());
            let mut cut_text = text.clone();
            cut_text.replace_range(at..end, "");
            agree(&cut_text);
        }
    }
}
