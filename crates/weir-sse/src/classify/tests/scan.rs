//! The fast chat reader (`scan`) against serde's typed parse: where it reads a text, it reads
//! what serde reads; it reads vLLM's own chat and completions events and bodies; and it
//! declines what it cannot be sure of, leaving those to serde.

use proptest::prelude::*;

use super::super::chat::differential::both;
use super::captures::fixture;
use crate::SseParser;

/// Whether the fast reader read `text`; where it did, serde read the same.
fn agree(text: &str) -> bool {
    let (fast, serde) = both(text);
    if let Some(f) = &fast {
        assert_eq!(Some(f), serde.as_ref(), "{text}");
    }
    fast.is_some()
}

#[test]
fn reads_every_chat_and_completions_capture() {
    for file in ["chat_nonstream.json", "completions_nonstream.json"] {
        let body = fixture(file);
        assert!(agree(std::str::from_utf8(&body).unwrap()), "{file}");
    }
    for file in [
        "chat_stream_usage.sse",
        "chat_stream_continuous_usage.sse",
        "chat_stream_no_usage.sse",
        "chat_stream_usage_prompt_details.sse",
        "completions_stream.sse",
    ] {
        let mut events = 0;
        SseParser::default().feed(&fixture(file), |e| {
            if e.data != b"[DONE]" {
                events += 1;
                assert!(agree(std::str::from_utf8(e.data).unwrap()), "{file}");
            }
        });
        assert!(events > 5, "{file}");
    }
}

#[test]
fn reads_valid_texts_of_every_form() {
    for text in [
        // Whitespace between every token.
        " {\t\"model\" : \"m\" ,\n\"choices\"\r: [ { \"index\" : 1 , \"delta\" : { \"content\" : [ ] } , \"finish_reason\" : \"stop\" } ] } ",
        // Escapes in strings that are skipped or kept as text.
        r#"{"id":"\u00e9\n\"\\\/\b\f\r\t","choices":[{"index":0,"delta":{"content":"\"q\" \u00e9"}}]}"#,
        // Numbers of every form where they are skipped.
        r#"{"created":-0,"a":1.5e+3,"b":2E-2,"c":[0,-1.25,3e7],"choices":[]}"#,
        // Nulls for every nullable member.
        r#"{"model":null,"choices":[{"delta":null,"message":null,"text":null,"finish_reason":null}],"usage":null,"error":null,"system_fingerprint":null}"#,
        // An error, of any shape; usage with details; usage alone.
        r#"{"error":{"message":"boom","code":500}}"#,
        r#"{"error":[]}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":null,"x":1}}}"#,
        r#"{"usage":{"completion_tokens":18446744073709551615}}"#,
        // Valid JSON that says nothing measurement needs: read, and invalid to it.
        "{}",
        r#"{"x":{"y":[[[{}]]]}}"#,
        // Text and tool calls, raw values of every kind.
        r#"{"choices":[{"index":4294967295,"text":" a"},{"index":0,"message":{"tool_calls":[{"id":"x"}],"reasoning":{"a":1}}},{"text":""},{"text":7}]}"#,
    ] {
        assert!(agree(text), "{text}");
    }
}

#[test]
fn declines_what_it_cannot_be_sure_of() {
    let deep = format!("{{\"x\":{}1{}}}", "[".repeat(70), "]".repeat(70));
    for text in [
        // A member given twice (serde: duplicate field), at each level.
        r#"{"model":"a","model":"b"}"#,
        r#"{"choices":[{"index":0,"index":1}]}"#,
        r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
        r#"{"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
        // A key with an escape (serde matches `usage` here).
        r#"{"us\u0061ge":{"prompt_tokens":1}}"#,
        // A kept string with an escape (serde copies it unescaped).
        r#"{"model":"m\u00e9","choices":[]}"#,
        r#"{"choices":[{"finish_reason":"st\u006fp"}]}"#,
        // Surrogate escapes, paired or not.
        r#"{"x":"\ud83d\ude00","choices":[]}"#,
        r#"{"x":"\ud800","choices":[]}"#,
        // Counts that are not plain integers in range.
        r#"{"usage":{"prompt_tokens":1.0}}"#,
        r#"{"usage":{"prompt_tokens":1e2}}"#,
        r#"{"usage":{"prompt_tokens":-1}}"#,
        r#"{"usage":{"prompt_tokens":null}}"#,
        r#"{"usage":{"prompt_tokens":"1"}}"#,
        r#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
        r#"{"choices":[{"index":4294967296}]}"#,
        r#"{"choices":[{"index":01}]}"#,
        // Shapes serde reads differently (a struct from an array) or refuses.
        r#"["m",[]]"#,
        r#"{"choices":[null]}"#,
        r#"{"choices":{}}"#,
        r#"{"model":1}"#,
        // Not JSON.
        r#"{"choices":[],}"#,
        r#"{"choices":[1,]}"#,
        r#"{"choices":[]} x"#,
        r#"{"x":01,"choices":[]}"#,
        r#"{"x":1.,"choices":[]}"#,
        r#"{"x":-,"choices":[]}"#,
        r#"{"x":nul,"choices":[]}"#,
        r#"{"x":"\q","choices":[]}"#,
        r#"{"x":"\u12g4","choices":[]}"#,
        "{\"x\":\"a\u{1}b\",\"choices\":[]}",
        r#"{"x":"open"#,
        "",
        &deep,
    ] {
        assert!(!agree(text), "read: {text}");
    }
}

/// Chat-shaped JSON: the members measurement reads, at every level, with values of every
/// kind (and some that are not JSON), between random whitespace.
fn chatty() -> impl Strategy<Value = String> {
    let ws = prop_oneof!["", " ", "\n\t"];
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("0".to_string()),
        Just("7".to_string()),
        Just("4294967296".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-1".to_string()),
        Just("1.5e3".to_string()),
        Just("01".to_string()),
        Just("\"\"".to_string()),
        Just("\"stop\"".to_string()),
        Just("\"\\u00e9\\n\"".to_string()),
        Just("\"\\ud83d\\ude00\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        "\"[a-z\\\\\"\u{1}é]{0,4}\"",
    ];
    let key = prop_oneof![
        Just("model"),
        Just("choices"),
        Just("usage"),
        Just("error"),
        Just("system_fingerprint"),
        Just("index"),
        Just("delta"),
        Just("message"),
        Just("text"),
        Just("finish_reason"),
        Just("content"),
        Just("reasoning"),
        Just("reasoning_content"),
        Just("tool_calls"),
        Just("prompt_tokens"),
        Just("completion_tokens"),
        Just("prompt_tokens_details"),
        Just("completion_tokens_details"),
        Just("cached_tokens"),
        Just("reasoning_tokens"),
        Just("x"),
        Just("us\\u0061ge"),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec((key.clone(), inner.clone(), ws.clone()), 0..6).prop_map(
                |members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }
            ),
            prop::collection::vec(inner, 0..4).prop_map(|items| format!("[{}]", items.join(","))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Wherever the fast reader reads a text, serde reads the same: texts of chat's shape,
    /// and the same with a byte range cut out or a character put in.
    #[test]
    fn where_it_reads_it_reads_what_serde_reads(
        text in chatty(),
        cut in any::<prop::sample::Index>(),
        len in 0usize..4,
        put in prop_oneof![Just(None), any::<char>().prop_map(Some)],
    ) {
        agree(&text);
        let at = cut.index(text.len() + 1);
        if text.is_char_boundary(at) {
            let mut changed = text.clone();
            match put {
                Some(c) => changed.insert(at, c),
                None => {
                    let end = (at..=text.len().min(at + len))
                        .rev()
                        .find(|&e| text.is_char_boundary(e))
                        .unwrap_or(at);
                    changed.replace_range(at..end, "");
                }
            }
            agree(&changed);
        }
    }
}
