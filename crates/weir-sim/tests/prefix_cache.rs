//! The prefix cache over real sockets: a prompt that starts with whole blocks of an earlier
//! one reports them cached, on every API in its own field.

mod common;

use common::*;
use weir_sim::SimConfig;

/// A prompt text of `blocks` blocks of 16 tokens (64 bytes each) and a bit.
fn long(blocks: usize, tail: &str) -> String {
    format!("{}{tail}", "weir river gate ".repeat(4 * blocks))
}

#[tokio::test]
async fn chat_reports_cached_tokens_with_prompt_details() {
    let s = Server::start(SimConfig {
        enable_prompt_tokens_details: true,
        ..SimConfig::fast()
    })
    .await;
    let usage = r#","stream":true,"stream_options":{"include_usage":true}"#;
    let cached = |body: String| {
        let s = &s;
        async move {
            let a = s.post(CHAT, &[], &body).await;
            let last = datas(&a.body).pop().unwrap();
            let details = &last["usage"]["prompt_tokens_details"];
            assert_eq!(details["created_cache_tokens"], 0);
            (
                details["cached_tokens"].as_u64().unwrap(),
                last["usage"]["prompt_tokens"].as_u64().unwrap(),
            )
        }
    };
    let first = long(4, "first");
    assert_eq!(cached(chat_body(&first, 2, usage)).await.0, 0);
    // The same prompt again: its whole blocks.
    let (hit, prompt) = cached(chat_body(&first, 2, usage)).await;
    assert_eq!(hit, 64);
    assert!(prompt > hit);
    // A prompt that shares the first blocks.
    let (hit, _) = cached(chat_body(&long(4, "second, and longer"), 2, usage)).await;
    assert_eq!(hit, 64);
    // A different start: nothing.
    let (hit, _) = cached(chat_body(&format!("x{first}"), 2, usage)).await;
    assert_eq!(hit, 0);
    // Whole bodies carry it too.
    let v = s.post(CHAT, &[], &chat_body(&first, 2, "")).await.json();
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 64);
    s.shutdown().await;
}

#[tokio::test]
async fn without_the_flag_chat_usage_is_unchanged() {
    let s = Server::start(SimConfig::fast()).await;
    let prompt = long(4, "");
    for _ in 0..2 {
        let v = s.post(CHAT, &[], &chat_body(&prompt, 2, "")).await.json();
        assert_eq!(v["usage"]["prompt_tokens_details"], serde_json::Value::Null);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn responses_and_messages_report_cache_reads() {
    let s = Server::start(SimConfig::fast()).await;
    let prompt = long(3, "!");
    let body = responses_body(&prompt, 2, "");
    let responses = || s.post(RESPONSES, &[], &body);
    let first = responses().await.json();
    assert_eq!(first["usage"]["input_tokens_details"]["cached_tokens"], 0);
    let again = responses().await.json();
    assert_eq!(again["usage"]["input_tokens_details"]["cached_tokens"], 48);
    assert_eq!(
        again["usage"]["input_tokens"],
        first["usage"]["input_tokens"]
    );
    // The chat-like APIs share one cache: the same user message hits on Messages.
    let body = messages_body(&prompt, 2, r#","stream":true"#);
    let a = s.post(MESSAGES, &[], &body).await;
    let start = &named(&a.body, "message_start")[0]["message"]["usage"];
    let delta = &named(&a.body, "message_delta")[0]["usage"];
    assert_eq!(delta["cache_read_input_tokens"], 48);
    let whole = start["input_tokens"].as_u64().unwrap();
    assert_eq!(delta["input_tokens"].as_u64(), Some(whole - 48));
    let v = s
        .post(MESSAGES, &[], &messages_body(&prompt, 2, ""))
        .await
        .json();
    assert_eq!(v["usage"]["cache_read_input_tokens"], 48);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_disabled_cache_reports_nothing() {
    let s = Server::start(SimConfig {
        prefix_cache_blocks: 0,
        ..SimConfig::fast()
    })
    .await;
    let prompt = long(3, "");
    for _ in 0..2 {
        let v = s
            .post(RESPONSES, &[], &responses_body(&prompt, 2, ""))
            .await
            .json();
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 0);
    }
    s.shutdown().await;
}
