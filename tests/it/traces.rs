//! OTLP traces, decoded by a real receiver: span names, kinds, links and attributes of
//! streamed, non-streamed, failed and cancelled requests, and the trace context in and out.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::otlp::*;
use crate::common::*;
use http::StatusCode;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use weir::config::Config;
use weir::config::{Protocol, TelemetryConfig};
use weir::gateway::{self, Gateway};
use weir_sim::SimConfig;

/// A gateway in front of `sim` exporting to `collector`.
fn traced(sim: SocketAddr, collector: &Collector) -> Config {
    let mut c = gateway_config(&[sim]);
    c.telemetry = TelemetryConfig {
        enabled: true,
        protocol: match collector.protocol {
            "grpc" => Protocol::Grpc,
            _ => Protocol::HttpProtobuf,
        },
        endpoint: collector.endpoint.clone(),
        service_name: "weir-test".into(),
        scheduled_delay: Duration::from_millis(20),
        ..TelemetryConfig::default()
    };
    c
}

/// A sampled client `traceparent` for trace number `n`: (header, trace id, span id).
fn client_trace(n: u64) -> (String, String, String) {
    let trace = format!("{n:032x}");
    let span = format!("{:016x}", n + 0xabc);
    (format!("00-{trace}-{span}-01"), trace, span)
}

/// Sends a chat request as part of the client's trace `n`; returns status, the traceparent
/// the simulator received and the body.
async fn chat_in_trace(
    gw: &Gateway,
    n: u64,
    body: &serde_json::Value,
    fault: Option<&str>,
) -> (StatusCode, String, Vec<u8>) {
    let mut req = post(gw.addr, "/v1/chat/completions", body);
    req.headers_mut()
        .insert("traceparent", client_trace(n).0.parse().unwrap());
    req.headers_mut()
        .insert("tracestate", "vendor=abc".parse().unwrap());
    if let Some(f) = fault {
        req.headers_mut().insert("x-sim-fault", f.parse().unwrap());
    }
    let (status, headers, body) = send(&client(), req).await;
    let tp = headers
        .get("x-sim-traceparent")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, tp, body.to_vec())
}

/// The SERVER and CLIENT spans of trace `n`, checked for names, kinds, links and the
/// traceparent the simulator got.
async fn request_spans(
    col: &mut Collector,
    n: u64,
    sim_traceparent: &str,
) -> (otlp::Received, otlp::Received) {
    let (_, trace, client_span) = client_trace(n);
    let mut spans = col.trace(&unhex(&trace), 2).await;
    spans.sort_by_key(|r| r.span.kind);
    let (server, client) = (spans.remove(0), spans.remove(0));
    assert_eq!(server.span.kind, SpanKind::Server as i32);
    assert_eq!(client.span.kind, SpanKind::Client as i32);
    assert_eq!(server.span.name, "chat tiny-llama");
    assert_eq!(client.span.name, "chat tiny-llama");
    assert_eq!(server.service, "weir-test");
    assert_eq!(
        hex(&server.span.parent_span_id),
        client_span,
        "child of the client's span"
    );
    assert_eq!(client.span.parent_span_id, server.span.span_id);
    assert_eq!(server.span.trace_state, "vendor=abc");
    assert_eq!(
        sim_traceparent,
        format!("00-{trace}-{}-01", hex(&client.span.span_id)),
        "the backend's parent is the CLIENT span"
    );
    assert!(client.span.start_time_unix_nano >= server.span.start_time_unix_nano);
    assert!(client.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    for r in [&server, &client] {
        let text = format!("{:?}", r.span);
        assert!(!text.contains("How high is the weir"), "no prompt on spans");
    }
    (server, client)
}

/// Attributes both spans carry.
fn check_common(span: &opentelemetry_proto::tonic::trace::v1::Span, sim: SocketAddr) {
    assert_eq!(str_attr(span, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(str_attr(span, "gen_ai.provider.name"), Some("vllm"));
    assert_eq!(str_attr(span, "gen_ai.request.model"), Some("tiny-llama"));
    assert_eq!(str_attr(span, "server.address"), Some("127.0.0.1"));
    assert_eq!(int_attr(span, "server.port"), Some(i64::from(sim.port())));
    assert_eq!(
        str_attr(span, "weir.backend"),
        Some(sim.to_string().as_str())
    );
}

fn status(span: &opentelemetry_proto::tonic::trace::v1::Span) -> i32 {
    span.status.as_ref().map_or(0, |s| s.code)
}

fn first_token(span: &opentelemetry_proto::tonic::trace::v1::Span) -> Option<u64> {
    let events: Vec<_> = span
        .events
        .iter()
        .filter(|e| e.name == "first_token")
        .collect();
    assert!(events.len() <= 1);
    events.first().map(|e| e.time_unix_nano)
}

fn usage(body: &[u8], streamed: bool) -> (i64, i64) {
    let v: serde_json::Value = if streamed {
        let data = sse_data(body);
        let chunk = data.iter().find(|d| d.contains("\"usage\":{")).unwrap();
        serde_json::from_str(chunk).unwrap()
    } else {
        serde_json::from_slice(body).unwrap()
    };
    let u = &v["usage"];
    (
        u["prompt_tokens"].as_i64().unwrap(),
        u["completion_tokens"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn a_streamed_request_over_grpc() {
    let mut col = Collector::grpc().await;
    let itl = Duration::from_millis(5);
    let sim = start_sim(SimConfig {
        itl,
        ..SimConfig::fast()
    })
    .await;
    let gw = gateway::start(traced(sim, &col)).await.unwrap();
    let mut body = chat(true, 9);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let (status_code, tp, bytes) = chat_in_trace(&gw, 1, &body, None).await;
    assert_eq!(status_code, StatusCode::OK);
    let (input, output) = usage(&bytes, true);
    assert_eq!(output, 9);
    let (server, client) = request_spans(&mut col, 1, &tp).await;
    let (s, c) = (&server.span, &client.span);
    for span in [s, c] {
        check_common(span, sim);
        assert_eq!(bool_attr(span, "gen_ai.request.stream"), Some(true));
        assert_eq!(int_attr(span, "gen_ai.request.max_tokens"), Some(9));
        assert_eq!(str_attr(span, "gen_ai.response.model"), Some("tiny-llama"));
        assert_eq!(int_attr(span, "gen_ai.usage.input_tokens"), Some(input));
        assert_eq!(int_attr(span, "gen_ai.usage.output_tokens"), Some(9));
        assert_eq!(
            strings_attr(span, "gen_ai.response.finish_reasons"),
            Some(vec!["length".to_string()])
        );
        assert_eq!(int_attr(span, "http.response.status_code"), Some(200));
        assert_eq!(str_attr(span, "error.type"), None);
        assert_eq!(status(span), SpanStatus::Unset as i32);
        // The first token came, and the stream went on after it. The simulator sends the
        // last of the 9 tokens no earlier than 8 gaps of `itl` after admission, which is
        // after the span's start: the span lasts at least that (a late first token may
        // shorten the time after it, so that has no lower bound).
        let first = first_token(span).expect("first_token event");
        assert!(span.start_time_unix_nano < first && first < span.end_time_unix_nano);
        let e2e = span.end_time_unix_nano - span.start_time_unix_nano;
        assert!(e2e >= 8 * itl.as_nanos() as u64, "{e2e} ns");
    }
    assert_eq!(str_attr(s, "weir.outcome"), Some("ok"));
    assert_eq!(str_attr(s, "weir.api"), Some("chat_completions"));
    let ttft = f64_attr(s, "gen_ai.response.time_to_first_chunk").unwrap();
    let upstream_ttft = f64_attr(c, "gen_ai.response.time_to_first_chunk").unwrap();
    assert!(
        0.0 < upstream_ttft && upstream_ttft <= ttft,
        "{upstream_ttft} {ttft}"
    );
    let e2e = (s.end_time_unix_nano - s.start_time_unix_nano) as f64 / 1e9;
    assert!(ttft < e2e);
    let (p50, max) = (
        f64_attr(s, "weir.itl.p50").unwrap(),
        f64_attr(s, "weir.itl.max").unwrap(),
    );
    assert!(p50 > 0.0 && max >= p50, "{p50} {max}");
    assert_eq!(
        str_attr(c, "weir.outcome"),
        None,
        "outcome is the SERVER span's"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn non_streamed_and_failed_requests_over_http() {
    let mut col = Collector::http().await;
    let sim = start_sim(SimConfig::fast()).await;
    let gw = gateway::start(traced(sim, &col)).await.unwrap();

    let (code, tp, bytes) = chat_in_trace(&gw, 2, &chat(false, 7), None).await;
    assert_eq!(code, StatusCode::OK);
    let (input, _) = usage(&bytes, false);
    let (server, client) = request_spans(&mut col, 2, &tp).await;
    for span in [&server.span, &client.span] {
        check_common(span, sim);
        assert_eq!(bool_attr(span, "gen_ai.request.stream"), Some(false));
        assert_eq!(int_attr(span, "gen_ai.request.max_tokens"), Some(7));
        assert_eq!(int_attr(span, "gen_ai.usage.input_tokens"), Some(input));
        assert_eq!(int_attr(span, "gen_ai.usage.output_tokens"), Some(7));
        assert_eq!(str_attr(span, "gen_ai.response.model"), Some("tiny-llama"));
        assert_eq!(
            strings_attr(span, "gen_ai.response.finish_reasons"),
            Some(vec!["length".to_string()])
        );
        // No stream, no chunks: no first-chunk time.
        assert_eq!(first_token(span), None);
        assert_eq!(f64_attr(span, "gen_ai.response.time_to_first_chunk"), None);
        assert_eq!(status(span), SpanStatus::Unset as i32);
    }
    assert_eq!(str_attr(&server.span, "weir.outcome"), Some("ok"));

    // The backend answers 503.
    let (code, tp, _) = chat_in_trace(&gw, 3, &chat(true, 5), Some("http=503")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    let (server, client) = request_spans(&mut col, 3, &tp).await;
    for span in [&server.span, &client.span] {
        check_common(span, sim);
        assert_eq!(str_attr(span, "error.type"), Some("503"));
        assert_eq!(int_attr(span, "http.response.status_code"), Some(503));
        assert_eq!(status(span), SpanStatus::Error as i32);
        // No usage came: counted content events, none, as the access log says.
        assert_eq!(int_attr(span, "gen_ai.usage.input_tokens"), None);
        assert_eq!(int_attr(span, "gen_ai.usage.output_tokens"), Some(0));
    }
    assert_eq!(
        str_attr(&server.span, "weir.outcome"),
        Some("upstream_error")
    );
    assert_eq!(bool_attr(&server.span, "weir.usage.estimated"), Some(true));

    // An error event after 3 tokens of a 200 stream.
    let (code, tp, _) = chat_in_trace(&gw, 4, &chat(true, 10), Some("error-event=3")).await;
    assert_eq!(code, StatusCode::OK);
    let (server, client) = request_spans(&mut col, 4, &tp).await;
    for span in [&server.span, &client.span] {
        assert_eq!(str_attr(span, "error.type"), Some("stream_error"));
        assert_eq!(status(span), SpanStatus::Error as i32);
        assert!(first_token(span).is_some());
    }
    assert_eq!(
        str_attr(&server.span, "weir.outcome"),
        Some("upstream_error")
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_stream_ends_its_spans_as_cancelled() {
    let mut col = Collector::grpc().await;
    let sim = start_sim(SimConfig {
        itl: Duration::from_millis(20),
        ..SimConfig::fast()
    })
    .await;
    let gw = gateway::start(traced(sim, &col)).await.unwrap();
    let c = client();
    let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 500));
    req.headers_mut()
        .insert("traceparent", client_trace(5).0.parse().unwrap());
    req.headers_mut()
        .insert("tracestate", "vendor=abc".parse().unwrap());
    let res = open(&c, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tp = res.headers()["x-sim-traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = res.into_body();
    read_until(&mut body, |b| sse_data(b).len() >= 4).await;
    drop(body);
    let (server, client) = request_spans(&mut col, 5, &tp).await;
    for span in [&server.span, &client.span] {
        check_common(span, sim);
        assert_eq!(str_attr(span, "error.type"), Some("cancelled"));
        assert_eq!(status(span), SpanStatus::Error as i32);
        assert!(first_token(span).is_some());
        let out = int_attr(span, "gen_ai.usage.output_tokens").unwrap();
        assert!((3..500).contains(&out), "{out}");
    }
    assert_eq!(str_attr(&server.span, "weir.outcome"), Some("cancelled"));
    assert_eq!(bool_attr(&server.span, "weir.usage.estimated"), Some(true));
    gw.shutdown().await;
}

#[tokio::test]
async fn new_traces_and_parent_based_sampling() {
    let mut col = Collector::http().await;
    let sim = start_sim(SimConfig::fast()).await;
    let mut config = traced(sim, &col);
    config.telemetry.sample_ratio = 0.0;
    let gw = gateway::start(config).await.unwrap();

    // No traceparent and a ratio of 0: not sampled, but the backend still gets valid ids.
    let req = post(gw.addr, "/v1/chat/completions", &chat(true, 3));
    let (code, headers, _) = send(&client(), req).await;
    assert_eq!(code, StatusCode::OK);
    let unsampled = headers["x-sim-traceparent"].to_str().unwrap().to_string();
    let parts: Vec<&str> = unsampled.split('-').collect();
    assert_eq!((parts[0], parts[3]), ("00", "00"), "{unsampled}");
    assert_ne!(parts[1], "0".repeat(32));

    // A sampled client: parent-based sampling follows it.
    let (code, tp, _) = chat_in_trace(&gw, 6, &chat(true, 3), None).await;
    assert_eq!(code, StatusCode::OK);
    request_spans(&mut col, 6, &tp).await;

    // Shutdown exports everything that ended: nothing of the unsampled trace.
    gw.shutdown().await;
    let rest = col.drain();
    assert!(
        rest.iter().all(|r| hex(&r.span.trace_id) != parts[1]),
        "an unsampled request was exported"
    );
}

#[tokio::test]
async fn a_request_without_traceparent_starts_a_trace() {
    let mut col = Collector::grpc().await;
    let sim = start_sim(SimConfig::fast()).await;
    let gw = gateway::start(traced(sim, &col)).await.unwrap();
    let req = post(gw.addr, "/v1/chat/completions", &chat(false, 2));
    let (code, headers, _) = send(&client(), req).await;
    assert_eq!(code, StatusCode::OK);
    let tp = headers["x-sim-traceparent"].to_str().unwrap().to_string();
    let trace = tp.split('-').nth(1).unwrap().to_string();
    let mut spans = col.trace(&unhex(&trace), 2).await;
    spans.sort_by_key(|r| r.span.kind);
    let (server, client) = (&spans[0].span, &spans[1].span);
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(tp, format!("00-{trace}-{}-01", hex(&client.span_id)));
    gw.shutdown().await;
}

#[tokio::test]
async fn with_tracing_off_the_context_still_goes_upstream() {
    let sim = start_sim(SimConfig::fast()).await;
    let gw = start_gateway(&[sim]).await;
    assert!(!gw.state.telemetry.enabled());
    let (tp, trace, span) = client_trace(7);
    let tp = tp.replace("-01", "-00");
    let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 2));
    req.headers_mut().insert("traceparent", tp.parse().unwrap());
    let (_, headers, _) = send(&client(), req).await;
    let got = headers["x-sim-traceparent"].to_str().unwrap();
    let parts: Vec<&str> = got.split('-').collect();
    assert_eq!(parts[1], trace, "same trace");
    assert_ne!(parts[2], span, "the gateway's own span id");
    assert_eq!(parts[3], "00", "the client's sampling decision is kept");
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        prom::value(
            &m,
            "weir_telemetry_dropped_spans_total",
            &[("reason", "queue_full")]
        ),
        0.0
    );
    gw.shutdown().await;
}
