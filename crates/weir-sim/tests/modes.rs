//! `x-sim-reasoning: N` and `x-sim-tool-call: 1` on each API: where the tokens go, the
//! events and fields that carry them, and the usage that counts them.

mod common;

use common::*;
use http::StatusCode;
use serde_json::Value;
use weir_sim::SimConfig;

const REASON3: (&str, &str) = ("x-sim-reasoning", "3");
const TOOL: (&str, &str) = ("x-sim-tool-call", "1");
const STREAM_USAGE: &str = r#","stream":true,"stream_options":{"include_usage":true}"#;
const TOOLS: &str =
    r#","tools":[{"type":"function","function":{"name":"get_level","parameters":{}}}]"#;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The arguments string parses to `{"input": ...}`.
fn assert_arguments(args: &str) {
    let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{e}: {args}"));
    assert!(v["input"].is_string(), "{args}");
}

#[tokio::test]
async fn chat_reasoning() {
    let srv = Server::start(SimConfig::fast()).await;
    let body = chat_body("hi", 6, STREAM_USAGE);
    let a = srv.post(CHAT, &[REASON3], &body).await;
    let chunks = datas(&a.body);
    let deltas: Vec<&Value> = chunks[1..7]
        .iter()
        .map(|c| &c["choices"][0]["delta"])
        .collect();
    assert!(
        deltas[..3]
            .iter()
            .all(|d| !s(&d["reasoning"]).is_empty() && d.get("content").is_none())
    );
    assert!(deltas[3..].iter().all(|d| !s(&d["content"]).is_empty()));
    let usage = &chunks[7]["usage"];
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 3);
    assert_eq!(usage["completion_tokens"], 6);
    // Whole: the same split.
    let v = srv
        .post(CHAT, &[REASON3], &chat_body("hi", 6, ""))
        .await
        .json();
    let msg = &v["choices"][0]["message"];
    assert!(!s(&msg["reasoning"]).is_empty() && !s(&msg["content"]).is_empty());
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        3
    );

    srv.shutdown().await;
}

#[tokio::test]
async fn chat_tool_calls() {
    let srv = Server::start(SimConfig::fast()).await;
    // A tool call after two tokens of reasoning.
    let headers = [("x-sim-reasoning", "2"), TOOL];
    let a = srv
        .post(
            CHAT,
            &headers,
            &chat_body("hi", 6, &format!("{TOOLS}{STREAM_USAGE}")),
        )
        .await;
    let chunks = datas(&a.body);
    let calls: Vec<&Value> = chunks[3..7]
        .iter()
        .map(|c| &c["choices"][0]["delta"]["tool_calls"][0])
        .collect();
    assert_eq!(s(&calls[0]["function"]["name"]), "get_level");
    assert!(s(&calls[0]["id"]).starts_with("chatcmpl-tool-"));
    assert_eq!(calls[0]["type"], "function");
    assert!(calls[1].get("id").is_none() && calls[1]["index"] == 0);
    let args: String = calls
        .iter()
        .map(|c| s(&c["function"]["arguments"]))
        .collect();
    assert_arguments(&args);
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "tool_calls");
    let v = srv
        .post(CHAT, &[TOOL], &chat_body("hi", 5, TOOLS))
        .await
        .json();
    let choice = &v["choices"][0];
    assert_eq!(
        (&choice["finish_reason"], &choice["message"]["content"]),
        (&Value::from("tool_calls"), &Value::Null)
    );
    assert_arguments(s(
        &choice["message"]["tool_calls"][0]["function"]["arguments"],
    ));
    // Without tools in the request the function is sim_tool; a bad header is a 400.
    let v = srv
        .post(CHAT, &[TOOL], &chat_body("hi", 2, ""))
        .await
        .json();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "sim_tool"
    );
    let a = srv
        .post(
            CHAT,
            &[("x-sim-tool-call", "maybe")],
            &chat_body("hi", 2, ""),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    srv.shutdown().await;
}

#[tokio::test]
async fn responses_reasoning() {
    let srv = Server::start(SimConfig::fast()).await;
    let body = responses_body("hi", 6, r#","stream":true"#);
    let a = srv.post(RESPONSES, &[REASON3], &body).await;
    let names: Vec<String> = events(&a.body).into_iter().filter_map(|(n, _)| n).collect();
    let expected = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ];
    assert_eq!(names, expected);
    let seqs: Vec<u64> = datas(&a.body)
        .iter()
        .map(|d| d["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..expected.len() as u64).collect::<Vec<_>>());
    let done = &named(&a.body, "response.completed")[0]["response"];
    assert_eq!(
        done["usage"]["output_tokens_details"]["reasoning_tokens"],
        3
    );
    assert_eq!(done["output"][0]["type"], "reasoning");
    assert_eq!(done["output"][1]["type"], "message");
    assert_eq!(
        named(&a.body, "response.output_text.delta")[0]["output_index"],
        1
    );

    srv.shutdown().await;
}

#[tokio::test]
async fn responses_function_calls() {
    let srv = Server::start(SimConfig::fast()).await;
    let body = responses_body(
        "hi",
        5,
        r#","stream":true,"tools":[{"type":"function","name":"get_level"}]"#,
    );
    let a = srv.post(RESPONSES, &[TOOL], &body).await;
    let added = &named(&a.body, "response.output_item.added")[0]["item"];
    assert_eq!(
        (s(&added["type"]), s(&added["name"])),
        ("function_call", "get_level")
    );
    assert!(s(&added["call_id"]).starts_with("call_") && s(&added["id"]).starts_with("fc_"));
    let deltas = named(&a.body, "response.function_call_arguments.delta");
    assert_eq!(deltas.len(), 5);
    let args: String = deltas.iter().map(|d| s(&d["delta"])).collect();
    assert_arguments(&args);
    let done = &named(&a.body, "response.function_call_arguments.done")[0];
    assert_eq!(
        (s(&done["arguments"]), s(&done["name"])),
        (args.as_str(), "get_level")
    );
    let completed = &named(&a.body, "response.completed")[0]["response"];
    assert_eq!(completed["tool_choice"], "auto");
    assert_eq!(completed["tools"][0]["name"], "get_level");
    // Whole.
    let v = srv
        .post(RESPONSES, &[REASON3, TOOL], &responses_body("hi", 6, ""))
        .await
        .json();
    let kinds: Vec<&str> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| s(&o["type"]))
        .collect();
    assert_eq!(kinds, ["reasoning", "function_call"]);
    assert_arguments(s(&v["output"][1]["arguments"]));
    assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], 3);
    srv.shutdown().await;
}

#[tokio::test]
async fn messages_thinking() {
    let srv = Server::start(SimConfig::fast()).await;
    let body = messages_body("hi", 6, r#","stream":true"#);
    let a = srv.post(MESSAGES, &[REASON3], &body).await;
    let ev: Vec<(String, Value)> = events(&a.body)
        .into_iter()
        .map(|(n, d)| (n.unwrap(), serde_json::from_str(&d).unwrap()))
        .collect();
    let kinds: Vec<String> = ev
        .iter()
        .map(|(n, d)| {
            match d["delta"]["type"]
                .as_str()
                .or(d["content_block"]["type"].as_str())
            {
                Some(t) if n.starts_with("content_block") => format!("{n}:{t}"),
                _ => n.clone(),
            }
        })
        .collect();
    let expected = [
        "message_start",
        "content_block_start:thinking",
        "content_block_delta:thinking_delta",
        "content_block_delta:thinking_delta",
        "content_block_delta:thinking_delta",
        "content_block_delta:signature_delta",
        "content_block_stop",
        "content_block_start:text",
        "content_block_delta:text_delta",
        "content_block_delta:text_delta",
        "content_block_delta:text_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ];
    assert_eq!(kinds, expected);
    assert_eq!(
        (&ev[7].1["index"], &ev[11].1["index"]),
        (&Value::from(1), &Value::from(1))
    );

    srv.shutdown().await;
}

#[tokio::test]
async fn messages_tool_use() {
    let srv = Server::start(SimConfig::fast()).await;
    let body = messages_body(
        "hi",
        4,
        r#","stream":true,"tools":[{"name":"get_level","input_schema":{}}]"#,
    );
    let a = srv.post(MESSAGES, &[TOOL], &body).await;
    let start = &named(&a.body, "content_block_start")[0]["content_block"];
    assert_eq!(
        (s(&start["type"]), s(&start["name"])),
        ("tool_use", "get_level")
    );
    let json: String = named(&a.body, "content_block_delta")
        .iter()
        .map(|d| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            s(&d["delta"]["partial_json"]).to_owned()
        })
        .collect();
    assert_arguments(&json);
    assert_eq!(
        named(&a.body, "message_delta")[0]["delta"]["stop_reason"],
        "tool_use"
    );
    // Whole: thinking (signed), then the tool_use block with its input parsed.
    let v = srv
        .post(MESSAGES, &[REASON3, TOOL], &messages_body("hi", 6, ""))
        .await
        .json();
    let content = v["content"].as_array().unwrap();
    assert_eq!(
        (s(&content[0]["type"]), s(&content[1]["type"])),
        ("thinking", "tool_use")
    );
    assert_eq!(s(&content[0]["signature"]).len(), 32);
    assert!(content[1]["input"]["input"].is_string());
    assert_eq!(v["stop_reason"], "tool_use");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_stop_token_sends_nothing_on_messages() {
    // Without ignore_eos the last token of a stopped generation is EOS (empty): chat sends
    // an empty delta, Messages nothing, so its deltas are one fewer than its tokens.
    let srv = Server::start(SimConfig::fast()).await;
    let body = r#"{"model":"tiny-llama","messages":[{"role":"user","content":"hi"}],"max_tokens":400,"stream":true}"#;
    let a = srv.post(MESSAGES, &[("x-request-id", "short")], body).await;
    let delta = &named(&a.body, "message_delta")[0];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    let tokens = delta["usage"]["output_tokens"].as_u64().unwrap();
    assert_eq!(
        named(&a.body, "content_block_delta").len() as u64,
        tokens - 1
    );
    srv.shutdown().await;
}
