//! The Responses and Messages APIs over real sockets, against the vLLM 0.32 captures:
//! framing, event names, key order, usage and errors; and what the simulator's metrics count.

mod common;

use common::*;
use http::StatusCode;
use serde_json::Value;
use weir_sim::SimConfig;

fn fixed() -> SimConfig {
    SimConfig {
        fixed_created: Some(1_796_178_191),
        ..SimConfig::fast()
    }
}

#[tokio::test]
async fn responses_stream_matches_fixture() {
    let s = Server::start(fixed()).await;
    let body = responses_body("Tell me about weirs.", 16, r#","stream":true"#);
    let a = s.post(RESPONSES, &[("x-request-id", "r-1")], &body).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let capture = fixture("responses_stream.sse");
    assert_eq!(
        sse_shape_runs(&a.body, true),
        sse_shape_runs(&capture, false)
    );
    assert_eq!(named(&a.body, "response.output_text.delta").len(), 16);
    let seqs: Vec<u64> = datas(&a.body)
        .iter()
        .map(|d| d["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    // The usage, and the text of the deltas in the done events and the final response.
    let done = named(&a.body, "response.completed").remove(0);
    let r = &done["response"];
    let u = &r["usage"];
    assert_eq!(
        (u["output_tokens"].as_u64(), r["status"].as_str()),
        (Some(16), Some("incomplete"))
    );
    let input = u["input_tokens"].as_u64().unwrap();
    assert_eq!(u["total_tokens"].as_u64(), Some(input + 16));
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r["created_at"], 1_796_178_191);
    let deltas: String = named(&a.body, "response.output_text.delta")
        .iter()
        .map(|d| d["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        named(&a.body, "response.output_text.done")[0]["text"],
        deltas.as_str()
    );
    assert_eq!(r["output"][0]["content"][0]["text"], deltas.as_str());
    // The same request id: the same text, whole.
    let whole = s
        .post(
            RESPONSES,
            &[("x-request-id", "r-1")],
            &responses_body("Tell me about weirs.", 16, ""),
        )
        .await;
    assert_eq!(
        whole.json()["output"][0]["content"][0]["text"],
        deltas.as_str()
    );
    s.shutdown().await;
}

#[tokio::test]
async fn responses_nonstream_matches_fixture() {
    let s = Server::start(SimConfig::fast()).await;
    let a = s
        .post(
            RESPONSES,
            &[],
            &responses_body("Tell me about weirs.", 16, ""),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(
        shape(&a.body, true),
        shape(&fixture("responses_nonstream.json"), false)
    );
    // Ended by EOS: completed, no incomplete_details.
    let a = s
        .post(
            RESPONSES,
            &[("x-request-id", "short")],
            r#"{"input":"hi","max_output_tokens":400}"#,
        )
        .await;
    let v = a.json();
    let out = v["usage"]["output_tokens"].as_u64().unwrap();
    assert!(out < 400, "the seed of `short` draws fewer than 400 tokens");
    assert_eq!(
        (v["status"].as_str(), &v["incomplete_details"]),
        (Some("completed"), &Value::Null)
    );
    assert_eq!(v["max_output_tokens"], 400);
    s.shutdown().await;
}

#[tokio::test]
async fn messages_stream_matches_fixture() {
    let s = Server::start(SimConfig::fast()).await;
    let body = messages_body("Tell me about weirs.", 16, r#","stream":true"#);
    let a = s
        .post(MESSAGES, &[("anthropic-version", "2023-06-01")], &body)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let capture = fixture("messages_stream.sse");
    assert_eq!(
        sse_shape_runs(&a.body, true),
        sse_shape_runs(&capture, false)
    );
    assert_eq!(named(&a.body, "content_block_delta").len(), 16);
    let start = named(&a.body, "message_start").remove(0);
    let input = start["message"]["usage"]["input_tokens"].as_u64().unwrap();
    let delta = named(&a.body, "message_delta").remove(0);
    assert_eq!(delta["usage"]["output_tokens"], 16);
    assert_eq!(delta["usage"]["input_tokens"].as_u64(), Some(input));
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert!(!a.body.contains("[DONE]"));
    s.shutdown().await;
}

#[tokio::test]
async fn messages_nonstream_matches_fixture() {
    let s = Server::start(SimConfig::fast()).await;
    let a = s
        .post(
            MESSAGES,
            &[],
            &messages_body("Tell me about weirs.", 16, ""),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(
        shape(&a.body, true),
        shape(&fixture("messages_nonstream.json"), false)
    );
    // A system prompt counts; EOS ends with end_turn.
    let body = r#"{"model":"tiny-llama","system":"Be brief.","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":400}"#;
    let v = s
        .post(MESSAGES, &[("x-request-id", "short")], body)
        .await
        .json();
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 2 + 4 + 3 + 4 + 1);
    s.shutdown().await;
}

#[tokio::test]
async fn chat_usage_with_prompt_details_matches_fixture() {
    let s = Server::start(SimConfig {
        enable_prompt_tokens_details: true,
        ..SimConfig::fast()
    })
    .await;
    let body = chat_body(
        "hi",
        8,
        r#","stream":true,"stream_options":{"include_usage":true}"#,
    );
    let a = s.post(CHAT, &[], &body).await;
    assert_eq!(
        sse_shape(&a.body, true),
        sse_shape(&fixture("chat_stream_usage_prompt_details.sse"), false)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_model_errors_match_fixtures() {
    let s = Server::start(SimConfig::fast()).await;
    for (path, name, body) in [
        (
            RESPONSES,
            "err_responses_unknown_model",
            r#"{"model":"nope","input":"hi"}"#,
        ),
        (
            MESSAGES,
            "err_messages_unknown_model",
            r#"{"model":"nope","messages":[{"role":"user","content":"hi"}],"max_tokens":8}"#,
        ),
    ] {
        let a = s.post(path, &[], body).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{name}");
        assert_eq!(a.headers["content-type"], "application/json");
        assert_eq!(a.body, fixture(&format!("{name}.body")), "{name}");
        let stream = body.replace(r#""model":"nope""#, r#""model":"nope","stream":true"#);
        assert_eq!(
            s.post(path, &[], &stream).await.body,
            a.body,
            "{name} streamed"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn messages_errors_are_anthropic_shaped() {
    let s = Server::start(SimConfig::fast()).await;
    let missing = r#"{"model":"tiny-llama","messages":[{"role":"user","content":"hi"}]}"#;
    let too_big = messages_body("hi", 100_000, "");
    let bad_header = messages_body("hi", 4, "");
    for (body, headers, status) in [
        (missing, vec![], StatusCode::BAD_REQUEST),
        (too_big.as_str(), vec![], StatusCode::BAD_REQUEST),
        ("{", vec![], StatusCode::BAD_REQUEST),
        (
            bad_header.as_str(),
            vec![("x-sim-reasoning", "many")],
            StatusCode::BAD_REQUEST,
        ),
        (
            bad_header.as_str(),
            vec![("x-sim-fault", "http=503")],
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ] {
        let a = s.post(MESSAGES, &headers, body).await;
        assert_eq!(a.status, status, "{body}");
        let v = a.json();
        assert_eq!(v["type"], "error", "{}", a.body);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(v["error"]["type"].is_string());
        assert_eq!(v.as_object().unwrap().len(), 2);
    }
    let a = s.post(MESSAGES, &[], missing).await;
    assert!(a.body.contains("body.max_tokens"), "{}", a.body);
    // The Responses API keeps OpenAI-shaped errors.
    let a = s.post(RESPONSES, &[], r#"{"model":"tiny-llama"}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("body.input")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_count_the_new_apis_as_vllm_would() {
    let s = Server::start(SimConfig::fast()).await;
    let streamed = r#","stream":true"#;
    s.post(RESPONSES, &[], &responses_body("hi", 5, streamed))
        .await;
    s.post(RESPONSES, &[], &responses_body("hi", 6, "")).await;
    s.post(MESSAGES, &[], &messages_body("hi", 7, streamed))
        .await;
    s.post(MESSAGES, &[], &messages_body("hi", 8, "")).await;
    let text = s.metrics().await;
    assert_eq!(
        metric(&text, "vllm:generation_tokens_total{"),
        f64::from(5 + 6 + 7 + 8)
    );
    assert_eq!(
        metric(
            &text,
            r#"vllm:request_success_total{engine="0",finished_reason="length""#
        ),
        4.0
    );
    // "hi" is 1 token: 2 + (4 + 1) per request (the chat template), as chat counts it.
    assert_eq!(metric(&text, "vllm:prompt_tokens_total{"), 4.0 * 7.0);
    assert_eq!(metric(&text, "vllm:num_requests_running{"), 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn faults_apply_to_the_new_apis() {
    let s = Server::start(SimConfig::fast()).await;
    let body = responses_body("hi", 6, r#","stream":true"#);
    let a = s
        .post(RESPONSES, &[("x-sim-fault", "error-event=2")], &body)
        .await;
    let names: Vec<String> = events(&a.body).into_iter().filter_map(|(n, _)| n).collect();
    assert_eq!(names.last().map(String::as_str), Some("error"));
    assert_eq!(named(&a.body, "response.output_text.delta").len(), 2);
    let body = messages_body("hi", 6, r#","stream":true"#);
    let a = s
        .post(MESSAGES, &[("x-sim-fault", "error-event=3")], &body)
        .await;
    let last = datas(&a.body).pop().unwrap();
    assert_eq!(last["error"]["type"], "internal_error");
    assert_eq!(named(&a.body, "content_block_delta").len(), 3);
    // The hostile faults are chat's and completions' only.
    let a = s
        .post(MESSAGES, &[("x-sim-fault", "token-flood")], &body)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["type"], "error");
    let text = s.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"vllm:request_success_total{engine="0",finished_reason="error""#
        ),
        2.0
    );
    s.shutdown().await;
}
