mod captures;
mod scan;

use super::*;

/// Usage with both counts and no details.
fn whole(prompt_tokens: u64, completion_tokens: u64) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens,
        ..Usage::default()
    }
}

#[test]
fn classify_shapes() {
    let role = br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
    assert!(!classify(role).content);
    let tok =
        br#"{"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;
    let i = classify(tok);
    assert!(i.content && i.answer && i.finished.is_empty());
    assert!(matches!(i.model, Some(Cow::Borrowed("m"))));
    let escaped_model = br#"{"model":"m\u00e9\"","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"st\u006fp"}]}"#;
    let i = classify(escaped_model);
    assert_eq!(i.model.as_deref(), Some("mé\""));
    assert_eq!(i.finished, vec![(0, Cow::Borrowed("stop"))]);
    let tool = br#"{"choices":[{"index":1,"delta":{"tool_calls":[{"id":"x"}]},"finish_reason":"tool_calls"}]}"#;
    let i = classify(tool);
    assert!(i.content && i.answer);
    assert_eq!(i.finished, vec![(1, Cow::Borrowed("tool_calls"))]);
    let reasoning = br#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#;
    let i = classify(reasoning);
    assert!(i.content && !i.answer);
    let reasoning = br#"{"choices":[{"index":0,"delta":{"reasoning":"hm","content":""}}]}"#;
    let i = classify(reasoning);
    assert!(i.content && !i.answer);
    let empty_text = br#"{"choices":[{"index":0,"text":""}]}"#;
    assert!(!classify(empty_text).content);
    let text = br#"{"choices":[{"index":0,"text":" a"}]}"#;
    assert!(classify(text).answer);
    let usage = br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8},"system_fingerprint":"fp"}"#;
    let i = classify(usage);
    assert!(i.usage_only);
    assert_eq!(i.usage, Some(whole(3, 5)));
    assert_eq!(i.system_fingerprint.as_deref(), Some("fp"));
    let err = br#"{"error": {"message": "boom", "type": "InternalServerError", "param": null, "code": 500}}"#;
    assert!(classify(err).error);
    let done = classify(b"[DONE]");
    assert!(done.done && done.end);
    assert!(classify(b"not json").invalid);
    assert!(classify(b"{\"x\":1}").invalid);
    let escaped = br#"{"choices":[{"index":0,"delta":{"content":"\"q\""}}]}"#;
    assert!(classify(escaped).content);
    // Not UTF-8 (a lone continuation byte in a token): not JSON.
    assert!(classify(b"{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\x80\"}}]}").invalid);
    let multibyte = "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"é\"}}]}";
    assert!(classify(multibyte.as_bytes()).content);
    // The event's name plays no part in chat.
    assert_eq!(classify_event(Api::Chat, Some(b"x"), tok), classify(tok));
    assert_eq!(classify_event(Api::Completions, None, text), classify(text));
}

#[test]
fn chat_usage_details() {
    let u = br#"{"choices":[],"usage":{"prompt_tokens":46,"completion_tokens":8,"prompt_tokens_details":{"cached_tokens":32,"created_cache_tokens":0},"completion_tokens_details":{"reasoning_tokens":5}}}"#;
    let want = Usage {
        cached_tokens: Some(32),
        reasoning_tokens: Some(5),
        ..whole(46, 8)
    };
    assert_eq!(classify(u).usage, Some(want));
    let nulls = br#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1,"prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":null}}}"#;
    assert_eq!(classify(nulls).usage, Some(whole(4, 1)));
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

fn responses(name: &str, data: &str) -> EventInfo<'static> {
    let (name, data) = (name.to_string().leak(), data.to_string().leak());
    let name = (!name.is_empty()).then_some(name.as_bytes());
    classify_event(Api::Responses, name, data.as_bytes())
}

#[test]
fn responses_deltas() {
    for (kind, answer) in [
        ("response.output_text.delta", true),
        ("response.function_call_arguments.delta", true),
        ("response.reasoning_text.delta", false),
        ("response.reasoning_summary_text.delta", false),
    ] {
        let full = format!(r#"{{"type":"{kind}","delta":"a b","sequence_number":3}}"#);
        let i = responses(kind, &full);
        assert!(
            i.content && i.answer == answer && !i.end && !i.invalid,
            "{kind}"
        );
        let empty = format!(r#"{{"type":"{kind}","delta":"","sequence_number":3}}"#);
        let i = responses(kind, &empty);
        assert!(!i.content && !i.answer && !i.invalid, "{kind}");
        // Without an `event:` line the data's type decides; without a type, the name.
        assert_eq!(responses("", &full), responses(kind, &full));
        let untyped = responses(kind, r#"{"delta":"x"}"#);
        assert!(untyped.content && untyped.answer == answer, "{kind}");
    }
    let other = responses(
        "response.output_text.done",
        r#"{"type":"response.output_text.done","text":"abc"}"#,
    );
    assert!(!other.content && !other.invalid);
    let escaped = responses("", r#"{"type":"response.output_text.delta","delta":"\n"}"#);
    assert!(escaped.answer);
}

#[test]
fn responses_end_and_failure() {
    let failed = r#"{"type":"response.failed","response":{"model":"m","status":"failed","error":{"code":"server_error","message":"boom"},"incomplete_details":null,"usage":null},"sequence_number":9}"#;
    let i = responses("response.failed", failed);
    assert!(i.end && i.error && !i.invalid);
    assert_eq!(i.finished, vec![(0, Cow::Borrowed("failed"))]);
    assert_eq!(i.model.as_deref(), Some("m"));
    let error =
        r#"{"type":"error","code":"ERR","message":"boom","param":null,"sequence_number":4}"#;
    let i = responses("error", error);
    assert!(i.error && !i.end && !i.invalid);
    let incomplete = r#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":4},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":6}}}}"#;
    let i = responses("response.incomplete", incomplete);
    assert!(i.end && !i.error);
    assert_eq!(i.finished, vec![(0, Cow::Borrowed("max_output_tokens"))]);
    let want = Usage {
        cached_tokens: Some(4),
        reasoning_tokens: Some(6),
        ..whole(7, 9)
    };
    assert_eq!(i.usage, Some(want));
    let completed = r#"{"type":"response.completed","response":{"status":"completed","usage":{"input_tokens":1,"output_tokens":2}}}"#;
    let i = responses("response.completed", completed);
    assert!(i.end && i.finished == vec![(0, Cow::Borrowed("completed"))]);
    // A status in progress is not a finish; usage is read from the final event only.
    let created = r#"{"type":"response.created","response":{"model":"m","status":"in_progress","usage":null}}"#;
    let i = responses("response.created", created);
    assert!(!i.end && i.finished.is_empty() && i.model.as_deref() == Some("m"));
    assert!(responses("", r#"{"delta":"x"}"#).invalid);
    assert!(responses("x", "not json").invalid);
    let plain_error = responses(
        "",
        r#"{"error":{"message":"m","type":"NotFoundError","code":404}}"#,
    );
    assert!(plain_error.error && !plain_error.invalid);
    assert!(responses("", "[DONE]").done && responses("", "[DONE]").end);
}

fn messages(data: &str) -> EventInfo<'static> {
    let data = data.to_string().leak();
    let name = data
        .split("\"type\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next());
    classify_event(Api::Messages, name.map(str::as_bytes), data.as_bytes())
}

#[test]
fn messages_deltas() {
    for (delta, content, answer) in [
        (r#"{"type":"text_delta","text":"hi"}"#, true, true),
        (r#"{"type":"text_delta","text":""}"#, false, false),
        (r#"{"type":"thinking_delta","thinking":"hm"}"#, true, false),
        (r#"{"type":"thinking_delta","thinking":""}"#, false, false),
        (
            r#"{"type":"input_json_delta","partial_json":"{\"a\":"}"#,
            true,
            true,
        ),
        (
            r#"{"type":"input_json_delta","partial_json":""}"#,
            false,
            false,
        ),
        (
            r#"{"type":"signature_delta","signature":"abc"}"#,
            false,
            false,
        ),
    ] {
        let e = format!(r#"{{"type":"content_block_delta","index":0,"delta":{delta}}}"#);
        let i = messages(&e);
        assert!(
            i.content == content && i.answer == answer && !i.invalid,
            "{delta}"
        );
    }
    let start =
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
    assert_eq!(messages(start), EventInfo::default());
    assert_eq!(messages(r#"{"type":"ping"}"#), EventInfo::default());
    let stop = messages(r#"{"type":"message_stop"}"#);
    assert!(stop.end && !stop.error);
    let error = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let i = messages(error);
    assert!(i.error && !i.end && !i.invalid);
    let untyped = classify_event(Api::Messages, Some(b"message_stop"), b"{}");
    assert!(untyped.end);
    assert!(classify_event(Api::Messages, None, b"{}").invalid);
}

#[test]
fn messages_usage_is_whole_input_and_merges() {
    // Anthropic's own shape: input_tokens leaves out cache reads and writes.
    let start = r#"{"type":"message_start","message":{"id":"x","type":"message","model":"claude","usage":{"input_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":1}}}"#;
    let i = messages(start);
    let input = Usage {
        cached_tokens: Some(100),
        reported: Reported::Input,
        ..whole(125, 0)
    };
    assert_eq!(i.usage, Some(input));
    assert_eq!(i.model.as_deref(), Some("claude"));
    let delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":42,"output_tokens_details":{"thinking_tokens":30}}}"#;
    let i = messages(delta);
    assert_eq!(i.finished, vec![(0, Cow::Borrowed("end_turn"))]);
    let output = Usage {
        reasoning_tokens: Some(30),
        reported: Reported::Output,
        ..whole(0, 42)
    };
    assert_eq!(i.usage, Some(output));
    let mut u = input;
    u.merge(&output);
    let want = Usage {
        cached_tokens: Some(100),
        reasoning_tokens: Some(30),
        ..whole(125, 42)
    };
    assert_eq!(u, want);
    assert!(u.has_input() && u.has_output());
    // vLLM's message_delta repeats the input (uncached part) with the cache fields: the later
    // event wins, field by field.
    let vllm = r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":14,"output_tokens":16,"cache_creation_input_tokens":0,"cache_read_input_tokens":32}}"#;
    u.merge(&messages(vllm).usage.unwrap());
    let want = Usage {
        cached_tokens: Some(32),
        reasoning_tokens: Some(30),
        ..whole(46, 16)
    };
    assert_eq!(u, want);
}

#[test]
fn merge_keeps_what_the_later_usage_left_out() {
    let mut u = Usage {
        reported: Reported::Input,
        ..whole(10, 0)
    };
    assert!(u.has_input() && !u.has_output());
    u.merge(&Usage {
        reported: Reported::Input,
        cached_tokens: Some(3),
        ..whole(12, 0)
    });
    assert_eq!(
        (u.prompt_tokens, u.cached_tokens, u.reported),
        (12, Some(3), Reported::Input)
    );
    u.merge(&whole(20, 5));
    assert_eq!(
        u,
        Usage {
            cached_tokens: Some(3),
            ..whole(20, 5)
        }
    );
    let mut only_out = Usage {
        reported: Reported::Output,
        ..whole(0, 7)
    };
    only_out.merge(&Usage {
        reported: Reported::Output,
        ..whole(0, 9)
    });
    assert_eq!(
        (only_out.completion_tokens, only_out.reported),
        (9, Reported::Output)
    );
}

#[test]
fn bodies() {
    let error = br#"{"type":"error","error":{"type":"NotFoundError","message":"nope"}}"#;
    let i = classify_body(Api::Messages, error);
    assert!(i.error && !i.invalid);
    let openai_error =
        br#"{"error":{"message":"nope","type":"NotFoundError","param":"model","code":404}}"#;
    for api in [Api::Chat, Api::Completions, Api::Responses, Api::Messages] {
        let i = classify_body(api, openai_error);
        assert!(i.error && !i.invalid, "{api:?}");
        assert!(classify_body(api, b"{\"x\":1}").invalid, "{api:?}");
        assert!(classify_body(api, b"nope").invalid, "{api:?}");
    }
    let thinking = br#"{"type":"message","model":"m","content":[{"type":"thinking","thinking":"hm"}],"stop_reason":"max_tokens","usage":{"input_tokens":3,"output_tokens":4}}"#;
    let i = classify_body(Api::Messages, thinking);
    assert!(i.content && !i.answer && i.usage == Some(whole(3, 4)));
    let tool = br#"{"type":"message","content":[{"type":"tool_use","id":"t","name":"f","input":{"a":1}}],"stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":4}}"#;
    assert!(classify_body(Api::Messages, tool).answer);
    let reasoning = br#"{"model":"m","status":"completed","output":[{"type":"reasoning","summary":[],"content":[{"type":"reasoning_text","text":"hm"}]}],"usage":{"input_tokens":1,"output_tokens":2}}"#;
    let i = classify_body(Api::Responses, reasoning);
    assert!(i.content && !i.answer && i.finished == vec![(0, Cow::Borrowed("completed"))]);
    let call = br#"{"status":"completed","output":[{"type":"function_call","name":"f","arguments":"{}","call_id":"c"},{"type":"odd","content":"a string"}]}"#;
    assert!(classify_body(Api::Responses, call).answer);
}
