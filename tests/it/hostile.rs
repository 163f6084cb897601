//! Backends that misbehave: whatever they send is forwarded as received (or ended cleanly),
//! counted by kind, and never panics the gateway or grows its memory.

use std::time::Duration;

use crate::common::hostile::{Step, end_chunks, sse_head, start};
use crate::common::prom::{sum, value};
use crate::common::*;
use http::StatusCode;
use serde_json::json;
use weir::gateway;

const ROLE: &[u8] = br#"data: {"id":"c","object":"chat.completion.chunk","model":"tiny-llama","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}

"#;
const TOKEN: &[u8] = br#"data: {"id":"c","object":"chat.completion.chunk","model":"tiny-llama","choices":[{"index":0,"delta":{"content":"hi"}}]}

"#;
const DONE: &[u8] = b"data: [DONE]\n\n";

/// The body a client gets for a streamed chat that asked for usage (nothing to strip).
fn with_usage() -> serde_json::Value {
    let mut body = chat(true, 5);
    body["stream_options"] = json!({"include_usage": true});
    body
}

fn chunks(parts: &[&[u8]]) -> Vec<Step> {
    parts.iter().map(|p| Step::Chunk(p.to_vec())).collect()
}

async fn outcome_counts(admin: std::net::SocketAddr) -> String {
    wait_for_metrics(admin, "the request to finish", |m| {
        sum(m, "weir_requests_in_flight", &[]) == Some(0.0)
    })
    .await
}

#[tokio::test]
async fn garbage_and_invalid_events_are_forwarded_and_counted() {
    let parts: [&[u8]; 6] = [
        ROLE,
        b"data: {not json\n\n",
        b"\xff\xfe garbage \x00 line\n\n",
        b"data: \xff\xfe\x80\n\n",
        TOKEN,
        DONE,
    ];
    let mut script = vec![sse_head()];
    script.extend(chunks(&parts));
    script.push(end_chunks());
    let backend = start(script).await;
    let gw = start_gateway(&[backend]).await;
    let (status, _, body) = send(
        &client(),
        post(gw.addr, "/v1/chat/completions", &with_usage()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.to_vec(), parts.concat(), "forwarded byte for byte");
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_requests_total", &[("outcome", "upstream_error")]),
        1.0
    );
    assert_eq!(value(&m, "weir_errors_total", &[("kind", "protocol")]), 1.0);
    // The one real token was still measured.
    assert_eq!(
        value(&m, "gen_ai_server_time_to_first_token_seconds_count", &[]),
        1.0
    );
}

#[tokio::test]
async fn a_stream_without_done_is_an_upstream_error() {
    let parts: [&[u8]; 2] = [ROLE, TOKEN];
    let mut script = vec![sse_head()];
    script.extend(chunks(&parts));
    script.push(end_chunks());
    let gw = start_gateway(&[start(script).await]).await;
    let (_, _, body) = send(
        &client(),
        post(gw.addr, "/v1/chat/completions", &with_usage()),
    )
    .await;
    assert_eq!(body.to_vec(), parts.concat());
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_requests_total", &[("outcome", "upstream_error")]),
        1.0
    );
    assert_eq!(value(&m, "weir_errors_total", &[("kind", "protocol")]), 1.0);
}

#[tokio::test]
async fn a_close_in_the_middle_of_an_event_ends_with_an_error_event() {
    let half: &[u8] = br#"data: {"id":"c","choices":[{"index":0,"del"#;
    let mut script = vec![sse_head()];
    script.extend(chunks(&[ROLE, TOKEN, half]));
    script.push(Step::Close);
    let gw = start_gateway(&[start(script).await]).await;
    let (status, _, body) = send(
        &client(),
        post(gw.addr, "/v1/chat/completions", &with_usage()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sent = [ROLE, TOKEN, half].concat();
    assert!(body.starts_with(&sent));
    let rest = String::from_utf8_lossy(&body[sent.len()..]).into_owned();
    // The broken event is closed off, then the error event and [DONE].
    assert!(rest.starts_with("\n\ndata: {\"error\":"), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "stream_error")]),
        1.0
    );
}

#[tokio::test]
async fn html_or_the_wrong_content_type_is_passed_on_and_counted() {
    let html = b"<html><body>502 Bad Gateway (but status 200)</body></html>";
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n",
        html.len()
    );
    let gw =
        start_gateway(&[start(vec![Step::Raw(head.into_bytes()), Step::Raw(html.to_vec())]).await])
            .await;
    let (status, headers, body) = send(
        &client(),
        post(gw.addr, "/v1/chat/completions", &chat(true, 5)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html");
    assert_eq!(body.to_vec(), html.to_vec());
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_requests_total", &[("outcome", "upstream_error")]),
        1.0
    );
    assert_eq!(value(&m, "weir_errors_total", &[("kind", "protocol")]), 1.0);
}

#[tokio::test]
async fn endless_keep_alives_hit_the_first_token_timeout() {
    let script = vec![
        sse_head(),
        Step::Chunk(ROLE.to_vec()),
        Step::Forever(b": ping\n\n".to_vec(), Duration::from_millis(20)),
    ];
    let mut c = gateway_config(&[start(script).await]);
    c.timeouts.first_token = Duration::from_millis(300);
    let gw = gateway::start(c).await.unwrap();
    let (_, _, body) = send(
        &client(),
        post(gw.addr, "/v1/chat/completions", &with_usage()),
    )
    .await;
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(": ping\n\n"), "keep-alives are passed on");
    assert!(text.contains("first_token timeout"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_timeouts_total", &[("kind", "first_token")]),
        1.0
    );
}

/// A backend that keeps the connection busy: comments (no token) as fast as it can write.
fn busy_backend() -> Vec<Step> {
    let mut junk = Vec::new();
    while junk.len() < 256 * 1024 {
        junk.extend_from_slice(b": busy\n\n");
    }
    vec![
        sse_head(),
        Step::Chunk(ROLE.to_vec()),
        Step::Forever(junk, Duration::ZERO),
    ]
}

#[tokio::test]
async fn a_backend_busy_with_no_tokens_still_hits_the_first_token_and_total_timeouts() {
    for (kind, first_token, total) in [("first_token", 300, 60_000), ("total", 60_000, 300)] {
        let mut c = gateway_config(&[start(busy_backend()).await]);
        c.timeouts.first_token = Duration::from_millis(first_token);
        c.timeouts.total = Duration::from_millis(total);
        let gw = gateway::start(c).await.unwrap();
        let started = tokio::time::Instant::now();
        let req = post(gw.addr, "/v1/chat/completions", &with_usage());
        let (_, _, body) = tokio::time::timeout(Duration::from_secs(10), send(&client(), req))
            .await
            .unwrap_or_else(|_| panic!("{kind}: the stream outlived its deadline by 10 s"));
        assert!(started.elapsed() >= Duration::from_millis(300));
        let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(300)..]).into_owned();
        assert!(tail.contains(&format!("{kind} timeout")), "{kind}: {tail}");
        assert!(tail.ends_with("data: [DONE]\n\n"), "{tail}");
        let m = outcome_counts(gw.admin_addr).await;
        assert_eq!(
            value(&m, "weir_timeouts_total", &[("kind", kind)]),
            1.0,
            "{kind}"
        );
    }
}

#[tokio::test]
async fn a_body_that_ends_with_the_connection_inside_an_event_ends_with_an_error_event() {
    // No length and no chunking: the body ends when the backend closes the connection.
    let half: &[u8] = br#"data: {"id":"c","choices":[{"index":0,"del"#;
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    let script = vec![
        Step::Raw(head.to_vec()),
        Step::Raw(ROLE.to_vec()),
        Step::Raw(TOKEN.to_vec()),
        Step::Raw(half.to_vec()),
        Step::Close,
    ];
    let gw = start_gateway(&[start(script).await]).await;
    let req = post(gw.addr, "/v1/chat/completions", &with_usage());
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let sent = [ROLE, TOKEN, half].concat();
    assert!(body.starts_with(&sent));
    let rest = String::from_utf8_lossy(&body[sent.len()..]).into_owned();
    assert!(rest.starts_with("\n\ndata: {\"error\":"), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "stream_error")]),
        1.0
    );
}

#[tokio::test]
async fn a_status_that_is_not_an_answer_becomes_a_502() {
    for status in ["999 Whatever", "101 Switching Protocols"] {
        let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        let gw = start_gateway(&[start(vec![Step::Raw(head.into_bytes())]).await]).await;
        let (got, _, body) = send(
            &client(),
            post(gw.addr, "/v1/chat/completions", &with_usage()),
        )
        .await;
        assert_eq!(got, StatusCode::BAD_GATEWAY, "{status}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&status[..3]),
            "{v}"
        );
        let m = outcome_counts(gw.admin_addr).await;
        let failed = [("outcome", "upstream_error"), ("code", "5xx")];
        assert_eq!(value(&m, "weir_requests_total", &failed), 1.0, "{status}");
        assert_eq!(value(&m, "weir_errors_total", &[("kind", "protocol")]), 1.0);
    }
}

#[tokio::test]
async fn a_compressed_stream_is_passed_on_unmeasured_not_counted_an_error() {
    let log = AccessLog::capture();
    let gzip: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03not really gzip";
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n";
    let script = vec![
        Step::Raw(head.to_vec()),
        Step::Chunk(gzip.to_vec()),
        end_chunks(),
    ];
    let gw = start_gateway(&[start(script).await]).await;
    let mut req = post(gw.addr, "/v1/chat/completions", &with_usage());
    req.headers_mut()
        .insert("accept-encoding", "gzip".parse().unwrap());
    req.headers_mut()
        .insert("x-request-id", "gz".parse().unwrap());
    let (status, headers, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(body.to_vec(), gzip, "passed on as it came");
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(value(&m, "weir_requests_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(sum(&m, "weir_errors_total", &[]), Some(0.0));
    let line = &log.of("gz")[0];
    assert_eq!(line["unmeasured"], true, "{line}");
}

#[tokio::test]
async fn an_oversized_event_is_passed_on_unparsed_and_the_rest_still_measured() {
    let mut huge = b"data: {\"x\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 3 << 20));
    huge.extend_from_slice(b"\"}\n\n");
    let mut script = vec![sse_head(), Step::Chunk(ROLE.to_vec())];
    // The long line arrives in pieces, as it would over a network.
    script.extend(huge.chunks(64 * 1024).map(|c| Step::Chunk(c.to_vec())));
    script.extend(chunks(&[TOKEN, TOKEN, DONE]));
    script.push(end_chunks());
    let gw = start_gateway(&[start(script).await]).await;
    let (status, _, body) = send(
        &client(),
        post(gw.addr, "/v1/chat/completions", &with_usage()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body.len(),
        ROLE.len() + huge.len() + 2 * TOKEN.len() + DONE.len()
    );
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_inter_token_latency_seconds_count", &[]),
        1.0,
        "both tokens after it counted"
    );
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "protocol")]),
        1.0,
        "marked degraded"
    );
    assert_eq!(value(&m, "weir_requests_total", &[("outcome", "ok")]), 1.0);
}

#[tokio::test]
async fn a_huge_non_streamed_body_passes_whole() {
    let mut body = b"{\"choices\":[{\"index\":0,\"message\":{\"content\":\"".to_vec();
    body.extend(std::iter::repeat_n(b'z', 20 << 20));
    body.extend_from_slice(b"\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}");
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let gw =
        start_gateway(&[start(vec![Step::Raw(head.into_bytes()), Step::Raw(body.clone())]).await])
            .await;
    let (status, _, got) = send(
        &client(),
        post(gw.addr, "/v1/chat/completions", &chat(false, 5)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got.len(), body.len());
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(value(&m, "weir_requests_total", &[("outcome", "ok")]), 1.0);
    // Too large to keep for its usage: passed on unmeasured rather than buffered.
    assert_eq!(
        sum(&m, "weir_tokens_total", &[("gen_ai_token_type", "output")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_json_body_beyond_the_memory_budget_passes_unmeasured() {
    let log = AccessLog::capture();
    let mut body = b"{\"choices\":[{\"index\":0,\"message\":{\"content\":\"".to_vec();
    body.extend(std::iter::repeat_n(b'z', 3 << 20));
    body.extend_from_slice(b"\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}");
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let script = vec![Step::Raw(head.into_bytes()), Step::Raw(body.clone())];
    let mut c = gateway_config(&[start(script).await]);
    // Room for one request body of 1 MiB and a little more: not for a 3 MiB answer.
    c.limits.max_request_body = 1 << 20;
    c.limits.max_buffered_bytes = 2 << 20;
    let gw = gateway::start(c).await.unwrap();
    let mut req = post(gw.addr, "/v1/chat/completions", &chat(false, 5));
    req.headers_mut()
        .insert("x-request-id", "big".parse().unwrap());
    let (status, _, got) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got.len(), body.len(), "passed on whole");
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(value(&m, "weir_requests_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(
        sum(&m, "weir_tokens_total", &[("gen_ai_token_type", "output")]),
        Some(0.0)
    );
    assert_eq!(log.of("big")[0]["unmeasured"], true);
    assert_eq!(gw.state.buffered.used(), 0, "everything given back");
}

#[tokio::test]
async fn empty_answers_are_ok_not_cancelled() {
    let answers = [
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
    ];
    for answer in answers {
        let gw = start_gateway(&[start(vec![Step::Raw(answer.as_bytes().to_vec())]).await]).await;
        let (status, _, _) = send(
            &client(),
            post(
                gw.addr,
                "/v1/embeddings",
                &json!({"model": "tiny-llama", "input": "x"}),
            ),
        )
        .await;
        assert!(status.is_success(), "{answer}");
        let m = outcome_counts(gw.admin_addr).await;
        assert_eq!(
            value(
                &m,
                "weir_requests_total",
                &[("outcome", "ok"), ("code", "2xx")]
            ),
            1.0,
            "{answer}"
        );
    }
    // HEAD: the response has a length but no body.
    let sim = start_sim(weir_sim::SimConfig::fast()).await;
    let gw = start_gateway(&[sim]).await;
    let req = http::Request::head(format!("http://{}/v1/models", gw.addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, _, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(
        value(
            &m,
            "weir_requests_total",
            &[("outcome", "ok"), ("code", "2xx")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_token_count_that_is_not_one_never_takes_the_counters_down() {
    let usage = br#"data: {"id":"c","choices":[],"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551615}}

"#;
    let mut script = vec![sse_head()];
    script.extend(chunks(&[ROLE, TOKEN, usage, DONE]));
    script.push(end_chunks());
    let gw = start_gateway(&[start(script).await]).await;
    let (status, _, _) = send(
        &client(),
        post(gw.addr, "/v1/chat/completions", &with_usage()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let m = outcome_counts(gw.admin_addr).await;
    // The usage is left out (the one token seen is the estimate) and counted as protocol.
    let output = sum(&m, "weir_tokens_total", &[("gen_ai_token_type", "output")]).unwrap();
    let input = sum(&m, "weir_tokens_total", &[("gen_ai_token_type", "input")]).unwrap();
    assert_eq!((input, output), (0.0, 1.0));
    assert_eq!(value(&m, "weir_errors_total", &[("kind", "protocol")]), 1.0);
}

#[tokio::test]
async fn junk_models_never_become_labels() {
    let sim = start_sim(weir_sim::SimConfig::fast()).await;
    let gw = start_gateway(&[sim]).await;
    let c = client();
    for junk in [
        "",
        "x\"y",
        "../../etc/passwd",
        "a{b=\"c\"}",
        &"m".repeat(5000),
    ] {
        let mut body = chat(true, 2);
        body["model"] = json!(junk);
        let _ = send(&c, post(gw.addr, "/v1/chat/completions", &body)).await;
    }
    let m = scrape(gw.admin_addr).await;
    let models: std::collections::BTreeSet<String> = crate::common::prom::samples(&m)
        .into_iter()
        .filter_map(|s| s.labels.get("gen_ai_request_model").cloned())
        .collect();
    assert_eq!(models.into_iter().collect::<Vec<_>>(), ["other"]);
}

#[tokio::test]
async fn the_simulators_floods_end_by_the_deadlines_and_are_counted() {
    // A backend that never ends an event, floods finish reasons, tokens or comments: each
    // stream ends with the gateway's error event once its deadline passes.
    let sim = start_sim(weir_sim::SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.timeouts.first_token = Duration::from_millis(300);
    c.timeouts.total = Duration::from_millis(600);
    let gw = gateway::start(c).await.unwrap();
    let cases = [
        ("endless-event", "first_token"),
        ("finish-flood", "first_token"),
        ("junk-flood", "first_token"),
        ("token-flood", "total"),
    ];
    for (fault, kind) in cases {
        let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 5));
        req.headers_mut()
            .insert("x-sim-fault", fault.parse().unwrap());
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(20), send(&client(), req))
            .await
            .unwrap_or_else(|_| panic!("{fault}: not ended"));
        assert_eq!(status, StatusCode::OK);
        let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(300)..]).into_owned();
        assert!(
            tail.contains(&format!("({kind} timeout)")),
            "{fault}: {tail}"
        );
        assert!(tail.ends_with("data: [DONE]\n\n"), "{fault}: {tail}");
    }
    let m = outcome_counts(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_timeouts_total", &[("kind", "first_token")]),
        3.0
    );
    assert_eq!(value(&m, "weir_timeouts_total", &[("kind", "total")]), 1.0);
    // The endless event was too long to read: counted as the backend's protocol error.
    assert!(value(&m, "weir_errors_total", &[("kind", "protocol")]) >= 1.0);
    // The backend saw each stream abandoned.
    let abort = [("finished_reason", "abort")];
    wait_for_metrics(sim, "the floods' aborts", |m| {
        sum(m, "vllm:request_success_total", &abort) == Some(4.0)
    })
    .await;
}
