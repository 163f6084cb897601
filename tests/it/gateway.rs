//! The gateway end to end: real sockets on 127.0.0.1, `weir sim` as the backend, and the
//! gateway's own `/metrics` as the witness.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::common::prom::{quantile, sum, value};
use crate::common::*;
use http::StatusCode;
use serde_json::json;
use weir::gateway;
use weir_sim::SimConfig;

fn sim_with(ttft_ms: u64, itl_ms: u64) -> SimConfig {
    SimConfig {
        ttft: Duration::from_millis(ttft_ms),
        itl: Duration::from_millis(itl_ms),
        ..SimConfig::fast()
    }
}

#[tokio::test]
async fn ttft_itl_tpot_and_usage_come_out_as_the_backend_was_told() {
    let sim = start_sim(sim_with(100, 10)).await;
    let gw = start_gateway(&[sim]).await;
    let c = client();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (c, req) = (
                c.clone(),
                post(gw.addr, "/v1/chat/completions", &chat(true, 20)),
            );
            tokio::spawn(async move { send(&c, req).await })
        })
        .collect();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with(b"data: [DONE]\n\n"));
    }
    let m = scrape(gw.admin_addr).await;
    let ok = [CHAT[0], CHAT[1], ("outcome", "ok")];
    assert_eq!(value(&m, "weir_requests_total", &ok), 4.0);
    // TTFT: 100 ms at the simulator, never less; a slow machine may add some.
    let ttft_sum = value(&m, "gen_ai_server_time_to_first_token_seconds_sum", &CHAT);
    assert_eq!(
        value(&m, "gen_ai_server_time_to_first_token_seconds_count", &CHAT),
        4.0
    );
    let ttft_mean = ttft_sum / 4.0;
    assert!((0.1..0.3).contains(&ttft_mean), "TTFT mean {ttft_mean}");
    assert_eq!(
        value(
            &m,
            "gen_ai_server_time_to_first_token_seconds_bucket",
            &[CHAT[0], CHAT[1], ("le", "0.08")]
        ),
        0.0
    );
    // ITL: one sample per gap (19 per request), 10 ms each. A token the machine delays
    // shortens the gap after it, so no single gap has a lower bound; but the simulator
    // sends the last token no earlier than TTFT + 19 ITL after admission, so the TTFT and
    // the gaps of a request add up to at least that.
    assert_eq!(
        value(&m, "weir_inter_token_latency_seconds_count", &CHAT),
        4.0 * 19.0
    );
    let itl_sum = value(&m, "weir_inter_token_latency_seconds_sum", &CHAT);
    assert!(
        ttft_sum + itl_sum >= 4.0 * (0.1 + 19.0 * 0.01),
        "TTFT {ttft_sum} ITL {itl_sum}"
    );
    assert!(itl_sum / 76.0 < 0.03, "ITL mean {}", itl_sum / 76.0);
    let itl_p50 = quantile(&m, "weir_inter_token_latency_seconds", &CHAT, 0.5);
    assert!(itl_p50 < 0.02, "ITL p50 {itl_p50}");
    // TPOT: (e2e - TTFT) / 19 per request.
    let tpot_mean = value(&m, "gen_ai_server_time_per_output_token_seconds_sum", &CHAT) / 4.0;
    assert!(tpot_mean > 0.0 && tpot_mean < 0.03, "TPOT mean {tpot_mean}");
    // Usage: 20 output tokens each, from the usage chunk the gateway asked for.
    assert_eq!(
        value(
            &m,
            "weir_tokens_total",
            &[CHAT[0], CHAT[1], ("gen_ai_token_type", "output")]
        ),
        80.0
    );
    assert!(
        value(
            &m,
            "weir_tokens_total",
            &[CHAT[0], CHAT[1], ("gen_ai_token_type", "input")]
        ) > 0.0
    );
    // The gateway's own overhead is small against the backend's TTFT.
    let overhead = value(&m, "weir_gateway_overhead_seconds_sum", &CHAT) / 4.0;
    let upstream = value(&m, "weir_upstream_time_to_first_token_seconds_sum", &CHAT) / 4.0;
    assert!(
        overhead < 0.02 && upstream >= 0.1,
        "overhead {overhead}, upstream TTFT {upstream}"
    );
    assert_eq!(value(&m, "weir_requests_in_flight", &[]), 0.0);
}

#[tokio::test]
async fn usage_is_injected_for_metrics_and_stripped_for_the_client() {
    let sim_cfg = SimConfig {
        fixed_created: Some(1_795_434_079),
        ..SimConfig::fast()
    };
    let sim = start_sim(sim_cfg).await;
    let gw = start_gateway(&[sim]).await;
    let c = client();
    let with_id = |addr, body: &serde_json::Value, id: &str| {
        let mut r = post(addr, "/v1/chat/completions", body);
        r.headers_mut().insert("x-request-id", id.parse().unwrap());
        r
    };
    // Without usage: exactly the bytes the backend sends a client that did not ask.
    let body = chat(true, 12);
    let (_, _, direct) = send(&c, with_id(sim, &body, "req-1")).await;
    let (status, headers, through) = send(&c, with_id(gw.addr, &body, "req-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-request-id"], "req-1");
    assert!(!String::from_utf8_lossy(&through).contains("\"usage\""));
    assert_eq!(
        String::from_utf8_lossy(&through),
        String::from_utf8_lossy(&direct)
    );

    // A client that asked for usage gets it, untouched.
    let mut body = chat(true, 12);
    body["stream_options"] = json!({"include_usage": true});
    let (_, _, direct) = send(&c, with_id(sim, &body, "req-2")).await;
    let (_, _, through) = send(&c, with_id(gw.addr, &body, "req-2")).await;
    assert!(String::from_utf8_lossy(&through).contains("\"usage\""));
    assert_eq!(through, direct);

    // Both were counted from the backend's usage.
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(
            &m,
            "weir_tokens_total",
            &[CHAT[0], CHAT[1], ("gen_ai_token_type", "output")]
        ),
        24.0
    );
    assert_eq!(
        value(
            &m,
            "gen_ai_client_token_usage_count",
            &[CHAT[0], ("gen_ai_token_type", "output")]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_client_that_goes_away_is_cancelled_and_the_backend_aborts() {
    let sim = start_sim(sim_with(5, 20)).await;
    let gw = start_gateway(&[sim]).await;
    let c = client();
    let res = open(&c, post(gw.addr, "/v1/chat/completions", &chat(true, 500))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let seen = read_until(&mut body, |b| sse_data(b).len() >= 4).await;
    assert!(seen.starts_with(b"data: "));
    drop(body);
    let cancelled = [CHAT[0], CHAT[1], ("outcome", "cancelled")];
    wait_for_metrics(gw.admin_addr, "the cancelled request", |m| {
        sum(m, "weir_requests_total", &cancelled) == Some(1.0)
    })
    .await;
    let abort = [("finished_reason", "abort")];
    wait_for_metrics(sim, "the simulator's abort", |m| {
        sum(m, "vllm:request_success_total", &abort) == Some(1.0)
    })
    .await;
    let m = scrape(gw.admin_addr).await;
    // Its TTFT was real and is kept; it has no TPOT (it never finished).
    assert_eq!(
        value(&m, "gen_ai_server_time_to_first_token_seconds_count", &CHAT),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "gen_ai_server_time_per_output_token_seconds_count",
            &CHAT
        ),
        0.0
    );
    assert_eq!(value(&m, "weir_requests_in_flight", &[]), 0.0);
}

#[tokio::test]
async fn an_error_event_mid_stream_is_forwarded_and_counted() {
    let sim = start_sim(SimConfig::fast()).await;
    let gw = start_gateway(&[sim]).await;
    let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 10));
    req.headers_mut()
        .insert("x-sim-fault", "error-event=3".parse().unwrap());
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_data(&body);
    assert!(
        events.iter().any(|e| e.starts_with("{\"error\"")),
        "{events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(
            &m,
            "weir_requests_total",
            &[CHAT[0], ("outcome", "upstream_error"), ("code", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "stream_error")]),
        1.0
    );
}

#[tokio::test]
async fn a_stream_cut_by_the_backend_is_an_upstream_error() {
    let sim = start_sim(sim_with(5, 5)).await;
    let gw = start_gateway(&[sim]).await;
    let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 10));
    req.headers_mut()
        .insert("x-sim-fault", "close=3".parse().unwrap());
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    // The client gets an error event and a clean end, never a hang.
    let events = sse_data(&body);
    let error: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["code"], 502, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        events.iter().filter(|e| e.contains("\"content\"")).count(),
        4,
        "role chunk + 3 tokens"
    );
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(
            &m,
            "weir_requests_total",
            &[CHAT[0], ("outcome", "upstream_error")]
        ),
        1.0
    );
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "stream_error")]),
        1.0
    );
}

#[tokio::test]
async fn a_backend_that_is_down_gives_an_openai_error_and_is_ejected() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = start_gateway(&[dead]).await;
    let c = client();
    // Three failed connects (the passive threshold) eject the backend.
    for _ in 0..3 {
        let (status, headers, body) =
            send(&c, post(gw.addr, "/v1/chat/completions", &chat(true, 5))).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], 502);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unavailable")
        );
    }
    // Then the gateway answers at once: 503 with Retry-After.
    let (status, headers, _) =
        send(&c, post(gw.addr, "/v1/chat/completions", &chat(true, 5))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(
            &m,
            "weir_requests_total",
            &[CHAT[0], ("outcome", "unavailable"), ("code", "5xx")]
        ),
        4.0
    );
    assert_eq!(value(&m, "weir_errors_total", &[("kind", "connect")]), 3.0);
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "no_backend")]),
        1.0
    );
    assert_eq!(value(&m, "weir_backend_up", &[]), 0.0);
    let (ready, _) = get_text(gw.admin_addr, "/readyz").await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    let (_, backends) = get_text(gw.admin_addr, "/backends").await;
    let v: serde_json::Value = serde_json::from_str(&backends).unwrap();
    assert_eq!(v["backends"][0]["state"], "ejected");
    assert_eq!(v["backends"][0]["last_error"], "connect");
}

#[tokio::test]
async fn non_streamed_requests_are_measured_from_the_json_body() {
    let sim = start_sim(sim_with(30, 1)).await;
    let gw = start_gateway(&[sim]).await;
    let c = client();
    let (status, _, body) = send(&c, post(gw.addr, "/v1/chat/completions", &chat(false, 7))).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 7);
    let completion =
        json!({"model": "tiny-llama", "prompt": "weir", "max_tokens": 5, "ignore_eos": true});
    let (status, _, _) = send(&c, post(gw.addr, "/v1/completions", &completion)).await;
    assert_eq!(status, StatusCode::OK);
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(
            &m,
            "weir_tokens_total",
            &[CHAT[0], CHAT[1], ("gen_ai_token_type", "output")]
        ),
        7.0
    );
    let text = [CHAT[0], ("gen_ai_operation_name", "text_completion")];
    assert_eq!(
        value(
            &m,
            "weir_tokens_total",
            &[text[0], text[1], ("gen_ai_token_type", "output")]
        ),
        5.0
    );
    let prompt = v["usage"]["prompt_tokens"].as_f64().unwrap();
    assert_eq!(
        value(
            &m,
            "weir_tokens_total",
            &[CHAT[0], CHAT[1], ("gen_ai_token_type", "input")]
        ),
        prompt
    );
    // No first chunk in a non-streamed response: no TTFT, but an e2e of at least the 30 ms.
    assert_eq!(
        sum(&m, "gen_ai_server_time_to_first_token_seconds_count", &CHAT),
        Some(0.0)
    );
    let e2e = value(
        &m,
        "gen_ai_server_request_duration_seconds_sum",
        &[CHAT[0], CHAT[1], ("outcome", "ok")],
    );
    assert!(e2e >= 0.03, "e2e {e2e}");
}

#[tokio::test]
async fn h2c_clients_are_served_and_measured() {
    let sim = start_sim(sim_with(5, 2)).await;
    let gw = start_gateway(&[sim]).await;
    let c = h2c_client();
    let res = open(&c, post(gw.addr, "/v1/chat/completions", &chat(true, 6))).await;
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert!(res.headers().contains_key("x-request-id"));
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_requests_total", &[CHAT[0], ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "weir_tokens_total",
            &[CHAT[0], ("gen_ai_token_type", "output")]
        ),
        6.0
    );
}

#[tokio::test]
async fn backend_errors_and_bad_requests_are_client_errors_with_bounded_labels() {
    let sim = start_sim(SimConfig::fast()).await;
    let gw = start_gateway(&[sim]).await;
    let c = client();
    // vLLM's own 404 passes through unchanged; the model label is bounded to `other`.
    let mut body = chat(true, 5);
    body["model"] = json!("no-such-model");
    let (status, _, got) = send(&c, post(gw.addr, "/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&got).contains("does not exist"));
    // Invalid JSON is answered by the gateway.
    let mut req = post(gw.addr, "/v1/chat/completions", &json!(null));
    *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"{\"model\": "));
    let (status, _, got) = send(&c, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(v["error"]["type"], "BadRequestError");
    // An HTTP error from the backend.
    let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 5));
    req.headers_mut()
        .insert("x-sim-fault", "http=503".parse().unwrap());
    let (status, _, _) = send(&c, req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let m = scrape(gw.admin_addr).await;
    let other = [
        ("gen_ai_request_model", "other"),
        ("outcome", "client_error"),
        ("code", "4xx"),
    ];
    assert_eq!(value(&m, "weir_requests_total", &other), 2.0);
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "bad_request")]),
        1.0
    );
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "upstream_5xx")]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "weir_requests_total",
            &[CHAT[0], ("outcome", "upstream_error"), ("code", "5xx")]
        ),
        1.0
    );
    assert!(!m.contains("no-such-model"));
}

#[tokio::test]
async fn only_the_api_surface_is_proxied_and_the_rest_is_refused_and_counted() {
    let log = AccessLog::capture();
    let sim = start_sim(SimConfig::fast()).await;
    let gw = start_gateway(&[sim]).await;
    let (status, models) = get_text(gw.addr, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    assert!(models.contains("tiny-llama"));
    // The backend's own metrics and anything else off the API surface: weir's 404.
    for path in ["/metrics", "/nope", "/reset_prefix_cache"] {
        let (status, body) = get_text(gw.addr, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], 404, "OpenAI-shaped: {body}");
        assert!(!body.contains("vllm:"), "nothing of the backend's");
    }
    let m = wait_for_metrics(gw.admin_addr, "four requests", |m| {
        sum(m, "weir_requests_total", &[]) == Some(4.0)
    })
    .await;
    let other = [("gen_ai_operation_name", "other")];
    assert_eq!(
        value(&m, "weir_requests_total", &[other[0], ("code", "2xx")]),
        1.0
    );
    assert_eq!(
        value(&m, "weir_requests_total", &[other[0], ("code", "4xx")]),
        3.0
    );
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "bad_request")]),
        3.0
    );
    let refused: Vec<_> = log
        .lines()
        .into_iter()
        .filter(|l| l["reason"] == "path_not_allowed")
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    // Requests that are not measured are told apart by their method and path.
    let paths: Vec<&str> = refused
        .iter()
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/metrics", "/nope", "/reset_prefix_cache"]);
    assert!(refused.iter().all(|l| l["method"] == "GET"));
    // The simulator never saw them.
    let served = value(&scrape(sim).await, "vllm:request_success_total", &[]);
    assert_eq!(served, 0.0);
    let (status, _) = get_text(gw.admin_addr, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get_text(gw.admin_addr, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn every_path_is_proxied_when_the_config_says_so() {
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.proxy.paths = vec!["/*".into()];
    let gw = gateway::start(c).await.unwrap();
    let (status, text) = get_text(gw.addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("vllm:"), "the backend's own metrics");
}

#[tokio::test]
async fn shutdown_lets_an_open_stream_finish() {
    let sim = start_sim(sim_with(5, 10)).await;
    let gw = start_gateway(&[sim]).await;
    let addr = gw.addr;
    let c = client();
    let res = open(&c, post(addr, "/v1/chat/completions", &chat(true, 30))).await;
    let mut body = res.into_body();
    let first = read_until(&mut body, |b| !sse_data(b).is_empty()).await;
    let stopping = tokio::spawn(gw.shutdown());
    let rest = http_body_util::BodyExt::collect(body)
        .await
        .expect("stream completes")
        .to_bytes();
    let mut all = first;
    all.extend_from_slice(&rest);
    assert!(all.ends_with(b"data: [DONE]\n\n"));
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_connection_that_sent_nothing() {
    let sim = start_sim(SimConfig::fast()).await;
    let gw = start_gateway(&[sim]).await;
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // The gateway has the connection (it counts toward nothing else, so a served request on
    // another connection shows that the accept loop has gone past it).
    let (status, _) = get_text(gw.addr, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    // The grace period is 30 s: a connection still waiting for its first bytes must not
    // hold the shutdown that long.
    tokio::time::timeout(Duration::from_secs(5), gw.shutdown())
        .await
        .expect("shut down without waiting out the grace period");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent connection is closed");
    assert_eq!(n.unwrap_or(0), 0);
}

#[tokio::test]
async fn a_client_gone_before_the_response_head_is_cancelled_too() {
    let sim = start_sim(SimConfig::fast()).await;
    let gw = start_gateway(&[sim]).await;
    let c = client();
    // Not streamed: the backend answers only after generating, 5 s from now.
    let mut req = post(gw.addr, "/v1/chat/completions", &chat(false, 5));
    req.headers_mut()
        .insert("x-sim-ttft-ms", "5000".parse().unwrap());
    let pending = tokio::spawn(async move { c.request(req).await });
    wait_for_metrics(gw.admin_addr, "the request in flight", |m| {
        sum(m, "weir_requests_in_flight", &[]) == Some(1.0)
    })
    .await;
    pending.abort();
    // Nothing was sent: 499, as nginx logs it.
    let cancelled = [CHAT[0], ("outcome", "cancelled"), ("code", "4xx")];
    wait_for_metrics(gw.admin_addr, "the cancelled request", |m| {
        sum(m, "weir_requests_total", &cancelled) == Some(1.0)
            && sum(m, "weir_requests_in_flight", &[]) == Some(0.0)
    })
    .await;
    let abort = [("finished_reason", "abort")];
    wait_for_metrics(sim, "the simulator's abort", |m| {
        sum(m, "vllm:request_success_total", &abort) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn backends_take_turns() {
    let sims = [
        start_sim(SimConfig::fast()).await,
        start_sim(SimConfig::fast()).await,
    ];
    let mut config = gateway_config(&sims);
    config.balance = weir::config::Strategy::RoundRobin;
    let gw = weir::gateway::start(config).await.unwrap();
    let c = client();
    for _ in 0..6 {
        let (status, _, _) = send(&c, post(gw.addr, "/v1/chat/completions", &chat(true, 2))).await;
        assert_eq!(status, StatusCode::OK);
    }
    for sim in sims {
        let m = scrape(sim).await;
        assert_eq!(value(&m, "vllm:request_success_total", &[]), 3.0, "{sim}");
    }
    let m = scrape(gw.admin_addr).await;
    for sim in sims {
        let name = sim.to_string();
        assert_eq!(
            value(
                &m,
                "weir_requests_total",
                &[("backend", name.as_str()), ("outcome", "ok")]
            ),
            3.0
        );
        assert_eq!(
            value(&m, "weir_backend_up", &[("backend", name.as_str())]),
            1.0
        );
    }
    let (status, backends) = get_text(gw.admin_addr, "/backends").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&backends).unwrap();
    assert_eq!(v["backends"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["backends"][0]["up"], true);
}

/// The upstream request is dropped within 100 ms of the client going away, whether tokens
/// are flowing or the backend is silent.
#[tokio::test]
async fn the_upstream_is_dropped_promptly_when_the_client_leaves() {
    let sim = start_sim(sim_with(0, 20)).await;
    let gw = start_gateway(&[sim]).await;
    for (i, fault) in [None, Some("stall=2")].into_iter().enumerate() {
        let c = client();
        let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 500));
        if let Some(f) = fault {
            req.headers_mut().insert("x-sim-fault", f.parse().unwrap());
        }
        let res = open(&c, req).await;
        let mut body = res.into_body();
        read_until(&mut body, |b| sse_data(b).len() >= 3).await;
        let left = tokio::time::Instant::now();
        drop(body);
        drop(c);
        let aborts = (i + 1) as f64;
        let abort = [("finished_reason", "abort")];
        wait_for_metrics(sim, "the simulator's abort", |m| {
            sum(m, "vllm:request_success_total", &abort) == Some(aborts)
        })
        .await;
        let took = left.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "{fault:?}: upstream dropped after {took:?}"
        );
    }
}

#[tokio::test]
async fn the_clients_upload_is_not_the_gateways_overhead() {
    use tokio::io::AsyncWriteExt;
    let sim = start_sim(SimConfig::fast()).await;
    let gw = start_gateway(&[sim]).await;
    let body = chat(true, 3).to_string();
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // A client slow to upload: the body comes 300 ms after the head (the scenario, not a wait
    // for anything).
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // Read to the chunked body's last chunk.
    while !answer.ends_with(b"\r\n0\r\n\r\n") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let m = wait_for_metrics(gw.admin_addr, "the request recorded", |m| {
        sum(m, "weir_requests_total", &[]) == Some(1.0)
    })
    .await;
    // TTFT starts at the head; the gateway's overhead once the body is in.
    let ttft = value(&m, "gen_ai_server_time_to_first_token_seconds_sum", &CHAT);
    let overhead = value(&m, "weir_gateway_overhead_seconds_sum", &CHAT);
    assert!(ttft >= 0.3, "TTFT {ttft}");
    assert!(overhead < 0.1, "overhead {overhead}");
}

#[tokio::test]
async fn errors_on_the_messages_api_are_anthropic_shaped() {
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.backends[0].models = vec!["tiny-llama".into()];
    let gw = gateway::start(c).await.unwrap();
    let body =
        json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, got) = send(&client(), post(gw.addr, "/v1/messages", &body)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
    // The shape vLLM answers /v1/messages errors in (tests/fixtures: err_messages_unknown_model).
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "NotFoundError", "{v}");
    assert_eq!(v["error"]["message"], "The model `nope` does not exist.");
    // The same refusal on the OpenAI APIs keeps OpenAI's shape.
    let (_, _, got) = send(
        &client(),
        post(
            gw.addr,
            "/v1/chat/completions",
            &json!({"model": "nope", "messages": []}),
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(v["error"]["code"], 404, "{v}");
}
