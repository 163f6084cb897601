//! Integration tests of the vLLM simulator over real sockets, against vLLM 0.32 captures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::StoppableSim;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use weir_sim::{Fault, SimConfig};

const BOUND: Duration = Duration::from_secs(10);

fn fixture_dir() -> PathBuf {
    std::env::var_os("WEIR_VLLM_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vllm-0.32.0"),
        PathBuf::from,
    )
}

fn fixture(name: &str) -> String {
    let path = fixture_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn open(
    c: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Incoming> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    tokio::time::timeout(BOUND, c.request(req))
        .await
        .expect("request timed out")
        .unwrap()
}

async fn call(
    c: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let resp = open(c, method, url, headers, body).await;
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(BOUND, body.collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

async fn post(c: &HttpClient, url: &str, body: &str) -> (StatusCode, HeaderMap, String) {
    call(c, Method::POST, url, &[], body).await
}

/// Reads SSE events (without the trailing blank line) until `count` arrived.
async fn read_events(body: &mut Incoming, buf: &mut Vec<u8>, count: usize) -> Vec<String> {
    let mut events = Vec::new();
    loop {
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            events.push(String::from_utf8(event[..end].to_vec()).unwrap());
            if events.len() == count {
                return events;
            }
        }
        let frame = tokio::time::timeout(BOUND, body.frame())
            .await
            .expect("no event in time");
        let frame = frame.expect("stream ended early").unwrap();
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
}

/// Replaces the values that legitimately differ between two servers.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match k.as_str() {
                    "id" if v.is_string() => *v = Value::from("ID"),
                    "created" => *v = Value::from(0),
                    "content" | "text" if v.is_string() => *v = Value::from(""),
                    "prompt_tokens" | "total_tokens" | "completion_tokens" => *v = Value::from(0),
                    "system_fingerprint" => *v = Value::from("FP"),
                    _ => normalize(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// A JSON document with the differing values normalised; checks it is compact JSON first.
fn shape(json: &str, exact_roundtrip: bool) -> String {
    let mut v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    if exact_roundtrip {
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            json,
            "not compact JSON in key order"
        );
    }
    normalize(&mut v);
    serde_json::to_string(&v).unwrap()
}

/// The events of an SSE body with normalised JSON, after checking the framing.
fn sse_shape(body: &str, ours: bool) -> Vec<String> {
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "no [DONE] at the end: {body}"
    );
    let events: Vec<&str> = body.strip_suffix("\n\n").unwrap().split("\n\n").collect();
    events
        .iter()
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"));
            if data == "[DONE]" {
                data.to_owned()
            } else {
                shape(data, ours)
            }
        })
        .collect()
}

fn usage_of(event: &str) -> Option<(u64, u64, u64)> {
    let v: Value = serde_json::from_str(event.strip_prefix("data: ")?).ok()?;
    let u = v.get("usage")?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap();
    Some((
        n("prompt_tokens"),
        n("completion_tokens"),
        n("total_tokens"),
    ))
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .next()
        .unwrap_or_else(|| panic!("no {name} {label} in\n{text}"))
}

async fn metrics(c: &HttpClient, s: &StoppableSim) -> String {
    call(c, Method::GET, &s.url("/metrics"), &[], "").await.2
}

/// Polls /metrics until `pred` holds, within a bound.
async fn wait_metrics(c: &HttpClient, s: &StoppableSim, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + BOUND;
    loop {
        let text = metrics(c, s).await;
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "metrics never matched:\n{text}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

fn chat_body(max_tokens: u32, extra: &str) -> String {
    format!(
        r#"{{"model":"tiny-llama","messages":[{{"role":"user","content":"Tell me about weirs."}}],"max_tokens":{max_tokens},"ignore_eos":true{extra}}}"#
    )
}

#[tokio::test]
async fn chat_stream_with_usage_matches_fixture() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let body = chat_body(
        32,
        r#","stream":true,"stream_options":{"include_usage":true}"#,
    );
    let (status, headers, text) = post(&client(), &s.url(CHAT), &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(
        sse_shape(&text, true),
        sse_shape(&fixture("chat_stream_usage.sse"), false)
    );
    let events: Vec<&str> = text.split("\n\n").collect();
    let (prompt, completion, total) = usage_of(events[33]).unwrap();
    assert_eq!((completion, total), (32, prompt + 32));
    s.shutdown().await;
}

#[tokio::test]
async fn chat_stream_continuous_usage_matches_fixture() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let extra =
        r#","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}"#;
    let (_, _, text) = post(&client(), &s.url(CHAT), &chat_body(32, extra)).await;
    assert_eq!(
        sse_shape(&text, true),
        sse_shape(&fixture("chat_stream_continuous_usage.sse"), false)
    );
    for (i, event) in text.split("\n\n").take(34).enumerate() {
        let (prompt, completion, total) = usage_of(event).unwrap();
        assert_eq!(completion, (i as u64).min(32), "event {i}");
        assert_eq!(total, prompt + completion);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn chat_stream_without_usage_matches_fixture() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let (_, _, text) = post(&client(), &s.url(CHAT), &chat_body(8, r#","stream":true"#)).await;
    assert_eq!(
        sse_shape(&text, true),
        sse_shape(&fixture("chat_stream_no_usage.sse"), false)
    );
    // continuous_usage_stats alone has no effect.
    let extra = r#","stream":true,"stream_options":{"continuous_usage_stats":true}"#;
    let (_, _, text) = post(&client(), &s.url(CHAT), &chat_body(8, extra)).await;
    assert_eq!(
        sse_shape(&text, true),
        sse_shape(&fixture("chat_stream_no_usage.sse"), false)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn completions_stream_matches_fixture() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let body = r#"{"model":"tiny-llama","prompt":"Once upon a time","max_tokens":16,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, headers, text) = post(&client(), &s.url(COMPLETIONS), body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(
        sse_shape(&text, true),
        sse_shape(&fixture("completions_stream.sse"), false)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn non_streamed_bodies_match_fixtures() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let c = client();
    let (status, headers, text) = post(&c, &s.url(CHAT), &chat_body(32, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["content-length"], text.len().to_string().as_str());
    assert_eq!(
        shape(&text, true),
        shape(&fixture("chat_nonstream.json"), false)
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 32);
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len()
            >= 32
    );

    let body =
        r#"{"model":"tiny-llama","prompt":"Once upon a time","max_tokens":16,"ignore_eos":true}"#;
    let (status, _, text) = post(&c, &s.url(COMPLETIONS), body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        shape(&text, true),
        shape(&fixture("completions_nonstream.json"), false)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn prompt_plus_max_tokens_is_capped_like_vllm() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    // 32 bytes of content: 14 prompt tokens with the sim's estimate, as in the capture.
    let body = r#"{"messages":[{"role":"user","content":"abcdefghijklmnopqrstuvwxyz012345"}],"max_tokens":500,"ignore_eos":true}"#;
    let (status, _, text) = post(&client(), &s.url(CHAT), body).await;
    assert_eq!(status, StatusCode::OK);
    let expected = fixture("ok_prompt_plus_max_tokens_capped_200.json");
    assert_eq!(shape(&text, true), shape(&expected, false));
    let v: Value = serde_json::from_str(&text).unwrap();
    let e: Value = serde_json::from_str(&expected).unwrap();
    assert_eq!(v["usage"], e["usage"]);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    s.shutdown().await;
}

#[tokio::test]
async fn error_fixtures_are_reproduced() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let c = client();
    let long_prompt = "x".repeat(2048);
    let long = format!(r#"{{"model":"tiny-llama","prompt":"{long_prompt}","max_tokens":4}}"#);
    let cases: Vec<(&str, Method, &str, String)> = vec![
        ("err_invalid_json", Method::POST, CHAT, r#"{"model": "tiny-llama", "x": }"#.to_owned()),
        ("err_max_tokens_too_big", Method::POST, CHAT, chat_body(100_000, "")),
        ("err_max_tokens_too_big_stream", Method::POST, CHAT, chat_body(100_000, r#","stream":true"#)),
        ("err_missing_messages", Method::POST, CHAT, r#"{"model":"tiny-llama"}"#.to_owned()),
        ("err_negative_max_tokens", Method::POST, CHAT, r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-1}"#.to_owned()),
        ("err_not_found_route", Method::GET, "/v1/nothing-here", String::new()),
        ("err_prompt_too_long_completions", Method::POST, COMPLETIONS, long),
        ("err_unknown_model", Method::POST, CHAT, r#"{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}"#.to_owned()),
        ("err_unknown_model_stream", Method::POST, CHAT, r#"{"model":"no-such-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#.to_owned()),
        ("err_wrong_method", Method::GET, CHAT, String::new()),
    ];
    for (name, method, path, body) in cases {
        let (status, headers, text) = call(&c, method, &s.url(path), &[], &body).await;
        let want_status: u16 = fixture(&format!("{name}.status")).trim().parse().unwrap();
        assert_eq!(status.as_u16(), want_status, "{name}");
        assert_eq!(text, fixture(&format!("{name}.body")), "{name}");
        assert_eq!(headers["content-type"], "application/json", "{name}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn models_health_and_content_types() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let c = client();
    let (status, headers, text) = call(&c, Method::GET, &s.url("/v1/models"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(shape(&text, true), shape(&fixture("models.json"), false));
    let (status, headers, text) = call(&c, Method::GET, &s.url("/health"), &[], "").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, ""));
    assert_eq!(headers["content-length"], "0");
    assert!(headers.get("content-type").is_none());
    let (status, headers, _) = call(&c, Method::GET, &s.url("/metrics"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=1.0.0; charset=utf-8"
    );
    let (status, _, text) = call(&c, Method::POST, &s.url("/health"), &[], "").await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"detail":"Method Not Allowed"}"#
        )
    );

    let custom = SimConfig {
        model: "m\"x".to_owned(),
        max_model_len: 4096,
        ..SimConfig::fast()
    };
    let s2 = StoppableSim::any_port(custom).await;
    let (_, _, text) = call(&c, Method::GET, &s2.url("/v1/models"), &[], "").await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (
            v["data"][0]["id"].as_str(),
            v["data"][0]["max_model_len"].as_u64()
        ),
        (Some("m\"x"), Some(4096))
    );
    s2.shutdown().await;
    s.shutdown().await;
}

#[tokio::test]
async fn same_request_id_gives_identical_bytes() {
    let config = SimConfig {
        fixed_created: Some(1_700_000_000),
        ..SimConfig::fast()
    };
    let s = StoppableSim::any_port(config).await;
    let c = client();
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":50,"stream":true,"stream_options":{"include_usage":true}}"#;
    let get = |id: &'static str| {
        let (c, url) = (c.clone(), s.url(CHAT));
        async move {
            call(&c, Method::POST, &url, &[("x-request-id", id)], body)
                .await
                .2
        }
    };
    let (a, b, other) = (get("req-1").await, get("req-1").await, get("req-2").await);
    assert_eq!(a, b);
    assert_ne!(a, other);
    assert!(a.contains(r#""created":1700000000"#));
    // Non-streamed and streamed text agree for the same seed.
    let (_, _, full) = call(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[("x-request-id", "req-1")],
        &body.replace("true,\"stream_options\":{\"include_usage\":true}", "false"),
    )
    .await;
    let v: Value = serde_json::from_str(&full).unwrap();
    let streamed: String = a
        .split("\n\n")
        .filter_map(|e| serde_json::from_str::<Value>(e.strip_prefix("data: ")?).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        streamed
    );
    s.shutdown().await;
}

#[tokio::test]
async fn output_length_and_finish_reason_without_ignore_eos() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let c = client();
    let mut saw_stop = false;
    for i in 0..20 {
        let id = format!("len-{i}");
        let body = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":8}"#;
        let (_, _, text) = call(
            &c,
            Method::POST,
            &s.url(CHAT),
            &[("x-request-id", &id)],
            body,
        )
        .await;
        let v: Value = serde_json::from_str(&text).unwrap();
        let n = v["usage"]["completion_tokens"].as_u64().unwrap();
        let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
        assert!((1..=8).contains(&n));
        assert_eq!(finish, if n < 8 { "stop" } else { "length" });
        saw_stop |= finish == "stop";
    }
    assert!(saw_stop);
    // max_completion_tokens is accepted; default max_tokens is bounded.
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":3,"ignore_eos":true}"#;
    let (_, _, text) = post(&c, &s.url(CHAT), body).await;
    assert!(text.contains(r#""completion_tokens":3,"#), "{text}");
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"ignore_eos":true}"#;
    let (_, _, text) = post(&c, &s.url(CHAT), body).await;
    assert!(text.contains(r#""completion_tokens":64,"#), "{text}");
    s.shutdown().await;
}

#[tokio::test]
async fn ttft_and_itl_are_honoured() {
    let config = SimConfig {
        ttft: Duration::from_millis(300),
        itl: Duration::from_millis(10),
        ..SimConfig::default()
    };
    let s = StoppableSim::any_port(config).await;
    let c = client();
    let start = Instant::now();
    let mut resp = open(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[],
        &chat_body(5, r#","stream":true"#),
    )
    .await;
    let mut buf = Vec::new();
    let role = read_events(resp.body_mut(), &mut buf, 1).await;
    assert!(role[0].contains(r#""role":"assistant""#));
    let role_at = start.elapsed();
    let rest = read_events(resp.body_mut(), &mut buf, 6).await;
    assert_eq!(rest[5], "data: [DONE]");
    let total = start.elapsed();
    assert!(total >= Duration::from_millis(340), "{total:?}");
    assert!(
        role_at < Duration::from_millis(150),
        "role chunk late: {role_at:?}"
    );
    assert!(total < Duration::from_secs(3), "{total:?}");

    // Header overrides, non-streamed: 40ms + 2 x 5ms.
    let fast = StoppableSim::any_port(SimConfig::fast()).await;
    let start = Instant::now();
    let headers = [("x-sim-ttft-ms", "40"), ("x-sim-itl-ms", "5")];
    let (status, _, _) = call(
        &c,
        Method::POST,
        &fast.url(CHAT),
        &headers,
        &chat_body(3, ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        start.elapsed() >= Duration::from_millis(50),
        "{:?}",
        start.elapsed()
    );
    let (status, _, _) = call(
        &c,
        Method::POST,
        &fast.url(CHAT),
        &[("x-sim-ttft-ms", "soon")],
        &chat_body(3, ""),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    fast.shutdown().await;
    s.shutdown().await;
}

#[tokio::test]
async fn http_fault_error_rate_and_fault_flag() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let c = client();
    let (status, _, text) = call(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[("x-sim-fault", "http=503")],
        &chat_body(4, r#","stream":true"#),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["error"]["type"].as_str(), v["error"]["code"].as_u64()),
        (Some("ServiceUnavailableError"), Some(503))
    );
    let (status, _, _) = call(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[("x-sim-fault", "explode=1")],
        &chat_body(4, ""),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let text = metrics(&c, &s).await;
    assert_eq!(
        metric(
            &text,
            "vllm:request_success_total",
            r#"finished_reason="error""#
        ),
        1.0
    );
    s.shutdown().await;

    let s = StoppableSim::any_port(SimConfig {
        error_rate: 1.0,
        ..SimConfig::fast()
    })
    .await;
    let (status, _, text) = post(&c, &s.url(CHAT), &chat_body(4, "")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        text.starts_with(r#"{"error":{"message":"#)
            && text.contains(r#""type":"InternalServerError","param":null,"code":500}}"#),
        "{text}"
    );
    s.shutdown().await;

    let s = StoppableSim::any_port(SimConfig {
        fault: Some(Fault::Http(429)),
        ..SimConfig::fast()
    })
    .await;
    let (status, _, _) = post(&c, &s.url(COMPLETIONS), r#"{"prompt":"hi"}"#).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The header wins over the flag.
    let headers = [("x-sim-fault", "error-event=100")];
    let (status, _, _) = call(
        &c,
        Method::POST,
        &s.url(COMPLETIONS),
        &headers,
        r#"{"prompt":"hi","max_tokens":2}"#,
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    s.shutdown().await;
}

#[tokio::test]
async fn error_event_fault_then_done() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let c = client();
    let (status, _, text) = call(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[("x-sim-fault", "error-event=3")],
        &chat_body(10, r#","stream":true"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<&str> = text.strip_suffix("\n\n").unwrap().split("\n\n").collect();
    assert_eq!(events.len(), 6, "{text}");
    assert!(events[0].contains(r#""role":"assistant""#));
    assert!(
        events[1..4]
            .iter()
            .all(|e| e.contains(r#""delta":{"content":"#))
    );
    assert_eq!(
        events[4],
        r#"data: {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.", "type": "InternalServerError", "param": null, "code": 500}}"#
    );
    assert_eq!(events[5], "data: [DONE]");
    let text = metrics(&c, &s).await;
    assert_eq!(
        metric(
            &text,
            "vllm:request_success_total",
            r#"finished_reason="error""#
        ),
        1.0
    );
    assert_eq!(metric(&text, "vllm:generation_tokens_total", "engine"), 3.0);
    s.shutdown().await;
}

#[tokio::test]
async fn close_fault_breaks_the_body() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let c = client();
    let resp = open(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[("x-sim-fault", "close=2")],
        &chat_body(10, r#","stream":true"#),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let result = tokio::time::timeout(BOUND, resp.into_body().collect())
        .await
        .unwrap();
    assert!(result.is_err(), "the body ended cleanly");
    // Non-streamed too.
    let resp = open(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[("x-sim-fault", "close=2")],
        &chat_body(10, ""),
    )
    .await;
    let result = tokio::time::timeout(BOUND, resp.into_body().collect())
        .await
        .unwrap();
    assert!(result.is_err(), "the body ended cleanly");
    s.shutdown().await;
}

#[tokio::test]
async fn stall_fault_sends_nothing_and_abort_is_counted() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let c = client();
    let mut resp = open(
        &c,
        Method::POST,
        &s.url(COMPLETIONS),
        &[("x-sim-fault", "stall=2")],
        r#"{"prompt":"hi","max_tokens":10,"ignore_eos":true,"stream":true}"#,
    )
    .await;
    let mut buf = Vec::new();
    let events = read_events(resp.body_mut(), &mut buf, 2).await;
    assert!(events.iter().all(|e| e.contains(r#""text":"#)));
    let next = tokio::time::timeout(Duration::from_millis(150), resp.body_mut().frame()).await;
    assert!(next.is_err(), "got more after the stall");
    assert!(buf.is_empty());
    let text = metrics(&c, &s).await;
    assert_eq!(metric(&text, "vllm:num_requests_running", "engine"), 1.0);
    drop(resp);
    wait_metrics(&c, &s, |t| {
        metric(
            t,
            "vllm:request_success_total",
            r#"finished_reason="abort""#,
        ) == 1.0
            && metric(t, "vllm:num_requests_running", "engine") == 0.0
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn client_disconnect_counts_abort() {
    let config = SimConfig {
        itl: Duration::from_millis(20),
        ttft: Duration::ZERO,
        ..SimConfig::default()
    };
    let s = StoppableSim::any_port(config).await;
    let c = client();
    let before = metrics(&c, &s).await;
    for reason in ["stop", "length", "abort", "error", "repetition"] {
        let label = format!(r#"finished_reason="{reason}""#);
        assert_eq!(metric(&before, "vllm:request_success_total", &label), 0.0);
    }
    let mut resp = open(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[],
        &chat_body(500, r#","stream":true"#),
    )
    .await;
    let mut buf = Vec::new();
    read_events(resp.body_mut(), &mut buf, 3).await;
    drop(resp);
    let text = wait_metrics(&c, &s, |t| {
        metric(
            t,
            "vllm:request_success_total",
            r#"finished_reason="abort""#,
        ) == 1.0
    })
    .await;
    assert!(metric(&text, "vllm:generation_tokens_total", "engine") < 500.0);
    s.shutdown().await;
}

#[tokio::test]
async fn queueing_counts_waiting_requests() {
    let config = SimConfig {
        max_num_seqs: 1,
        ttft: Duration::ZERO,
        itl: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let s = StoppableSim::any_port(config).await;
    let c = client();
    let mut first = open(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[],
        &chat_body(500, r#","stream":true"#),
    )
    .await;
    let mut buf1 = Vec::new();
    read_events(first.body_mut(), &mut buf1, 2).await;
    let mut second = open(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[],
        &chat_body(500, r#","stream":true"#),
    )
    .await;
    wait_metrics(&c, &s, |t| {
        metric(t, "vllm:num_requests_waiting", "engine") == 1.0
            && metric(t, "vllm:num_requests_running", "engine") == 1.0
            && metric(t, "vllm:kv_cache_usage_perc", "engine") == 1.0
    })
    .await;
    drop(first);
    let mut buf2 = Vec::new();
    let events = read_events(second.body_mut(), &mut buf2, 2).await;
    assert!(events[0].contains(r#""role":"assistant""#));
    let text = metrics(&c, &s).await;
    assert_eq!(metric(&text, "vllm:num_requests_waiting", "engine"), 0.0);
    drop(second);
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_count_tokens_and_finished_requests() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let c = client();
    let (_, _, text) = post(
        &c,
        &s.url(CHAT),
        &chat_body(
            7,
            r#","stream":true,"stream_options":{"include_usage":true}"#,
        ),
    )
    .await;
    let events: Vec<&str> = text.split("\n\n").collect();
    let (prompt, _, _) = usage_of(events[8]).unwrap();
    post(
        &c,
        &s.url(COMPLETIONS),
        r#"{"prompt":"hello","max_tokens":5,"ignore_eos":true}"#,
    )
    .await;
    let m = metrics(&c, &s).await;
    assert_eq!(
        metric(
            &m,
            "vllm:request_success_total",
            r#"finished_reason="length""#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "vllm:generation_tokens_total",
            r#"model_name="tiny-llama""#
        ),
        12.0
    );
    assert_eq!(
        metric(&m, "vllm:prompt_tokens_total", "engine"),
        prompt as f64 + 3.0
    );
    assert_eq!(
        metric(&m, "vllm:time_to_first_token_seconds_count", "engine"),
        2.0
    );
    assert!(
        m.contains(r#"vllm:num_requests_running{engine="0",model_name="tiny-llama"} 0"#),
        "{m}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn h2c_and_many_concurrent_streams() {
    let config = SimConfig {
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(2),
        ..SimConfig::default()
    };
    let s = StoppableSim::any_port(config).await;
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let (status, _, text) = post(&h2, &s.url(CHAT), &chat_body(4, r#","stream":true"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.ends_with("data: [DONE]\n\n"));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (c, url) = (
            h2.clone(),
            s.url(if i % 2 == 0 { CHAT } else { COMPLETIONS }),
        );
        let body = if i % 2 == 0 {
            chat_body(20, r#","stream":true"#)
        } else {
            r#"{"prompt":"x","max_tokens":20,"ignore_eos":true,"stream":true}"#.to_owned()
        };
        tasks.push(tokio::spawn(async move { post(&c, &url, &body).await.2 }));
    }
    for t in tasks {
        let text = t.await.unwrap();
        assert_eq!(
            text.matches("\n\n").count(),
            if text.contains("chat.completion") {
                22
            } else {
                21
            }
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_cuts_stalled_streams() {
    let s = StoppableSim::any_port(SimConfig {
        fault: Some(Fault::Stall { after: 1 }),
        ..SimConfig::fast()
    })
    .await;
    let c = client();
    let mut resp = open(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[],
        &chat_body(5, r#","stream":true"#),
    )
    .await;
    let mut buf = Vec::new();
    read_events(resp.body_mut(), &mut buf, 2).await;
    s.shutdown().await;
    let rest = tokio::time::timeout(BOUND, resp.into_body().collect())
        .await
        .unwrap();
    assert!(rest.is_err());
}

#[tokio::test]
async fn hostile_bodies_get_errors_not_panics() {
    let s = StoppableSim::any_port(SimConfig::fast()).await;
    let c = client();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let bodies = [
        "",
        "[]",
        "\"x\"",
        "null",
        "{",
        "{\"messages\": 5}",
        "{\"messages\": [1, \"a\", {\"content\": [1, {\"text\": 5}]}]}",
        "{\"messages\": [], \"max_tokens\": 1e400}",
        "{\"messages\": [], \"max_tokens\": 18446744073709551616}",
        "{\"messages\": [], \"max_tokens\": \"abc\"}",
        "{\"messages\": [], \"max_tokens\": 2.5}",
        "{\"messages\": [], \"n\": 3}",
        "{\"messages\": [], \"stream\": \"yes\", \"stream_options\": 7}",
        "{\"model\": 5, \"messages\": []}",
        "{\"a\":\"\\q\"}",
        "{\"a\":tru}",
        "{\"é\":}",
        deep.as_str(),
        "{\"prompt\": [[]]}",
        "{\"prompt\": [\"a\", \"b\"]}",
        "{\"prompt\": {}}",
        "{\"messages\": [], \"max_tokens\": -9223372036854775808}",
    ];
    for body in bodies {
        for path in [CHAT, COMPLETIONS, "/v1/embeddings"] {
            let (status, _, text) = post(&c, &s.url(path), body).await;
            assert!(
                status.is_client_error() || status.is_success(),
                "{status} for {body:?} on {path}"
            );
            assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
        }
    }
    let (status, _, text) = call(
        &c,
        Method::POST,
        &s.url(CHAT),
        &[],
        "{\"messages\": [], \"n\": 2}",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains(r#""param":"n""#));
    let (status, _, text) = post(&c, &s.url(CHAT), r#"{"a":tru}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text.contains("'loc': 'body.5'") && text.contains("Expecting value"),
        "{text}"
    );
    let (status, _, text) = post(&c, &s.url("/v1/embeddings"), r#"{"input":["a","b"]}"#).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    s.shutdown().await;
}

#[test]
fn fault_syntax() {
    assert_eq!("http=503".parse(), Ok(Fault::Http(503)));
    assert_eq!("error-event=4".parse(), Ok(Fault::ErrorEvent { after: 4 }));
    assert_eq!("close=0".parse(), Ok(Fault::Close { after: 0 }));
    assert_eq!("stall=7".parse(), Ok(Fault::Stall { after: 7 }));
    for bad in [
        "", "http", "http=200", "http=abc", "close=-1", "nap=3", "stall=",
    ] {
        assert!(bad.parse::<Fault>().is_err(), "{bad}");
    }
    for f in [
        Fault::Http(502),
        Fault::ErrorEvent { after: 1 },
        Fault::Close { after: 2 },
        Fault::Stall { after: 3 },
    ] {
        assert_eq!(f.to_string().parse(), Ok(f));
    }
}

#[test]
fn config_defaults_match_the_cli() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimConfig,
    }
    let parsed = Cli::parse_from(["weir-sim"]).sim;
    let default = SimConfig::default();
    assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    let parsed = Cli::parse_from([
        "weir-sim",
        "--ttft",
        "1s",
        "--itl-jitter",
        "3ms",
        "--fault",
        "stall=2",
        "--fixed-created",
        "5",
    ])
    .sim;
    assert_eq!(
        (parsed.ttft, parsed.itl_jitter),
        (Duration::from_secs(1), Duration::from_millis(3))
    );
    assert_eq!(
        (parsed.fault, parsed.fixed_created),
        (Some(Fault::Stall { after: 2 }), Some(5))
    );
    let fast = SimConfig::fast();
    assert_eq!((fast.ttft, fast.itl), (Duration::ZERO, Duration::ZERO));
}
