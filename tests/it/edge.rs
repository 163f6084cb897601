//! The edge: every request the proxy listener parses — refused by a gate, by routing,
//! answered by a panic, proxied, cancelled — is counted once, logged once and traced once;
//! and a reload swaps the config and the pool together.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::common::otlp::*;
use crate::common::prom::{sum, value};
use crate::common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use weir::config::{KeyConfig, Protocol, TelemetryConfig};
use weir::gateway;
use weir::proxy::{Proxy, ResponseBody};
use weir_sim::SimConfig;

/// The proxy, but a request with `x-test-panic` panics on its way (a fault for the test):
/// in the service's `call` itself when the header says `call`, else in its future.
#[derive(Clone)]
struct PanicOnPath(Proxy);

impl tower::Service<Request<Incoming>> for PanicOnPath {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        match req.headers().get("x-test-panic").map(|v| v.as_bytes()) {
            Some(b"call") => panic!("the test's fault, at once"),
            Some(_) => return Box::pin(async { panic!("the test's fault") }),
            None => {}
        }
        self.0.call(req)
    }
}

/// A panic in the innermost service's `call` (not in its future) is answered and recorded
/// like one in its future.
#[tokio::test]
async fn a_panic_in_the_services_call_is_answered_and_recorded() {
    let log = AccessLog::capture();
    let sim = start_sim(SimConfig::fast()).await;
    let gw = gateway::start_with(gateway_config(&[sim]), |state| {
        weir::app::service_with(state.clone(), PanicOnPath(Proxy::new(state)))
    })
    .await
    .unwrap();
    let client = client();
    let mut req = post(gw.addr, "/v1/chat/completions", &chat(false, 2));
    req.headers_mut()
        .insert("x-test-panic", "call".parse().unwrap());
    req.headers_mut()
        .insert("x-request-id", "panics-at-once".parse().unwrap());
    let (status, _, body) = send(&client, req).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], 500, "OpenAI-shaped");
    // The gateway serves on.
    let (status, _, _) = send(
        &client,
        post(gw.addr, "/v1/chat/completions", &chat(false, 2)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let m = wait_for_metrics(gw.admin_addr, "two requests", |m| {
        sum(m, "weir_requests_total", &[]) == Some(2.0)
    })
    .await;
    assert_eq!(value(&m, "weir_errors_total", &[("kind", "internal")]), 1.0);
    let lines = log.of("panics-at-once");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "internal_error");
    assert_eq!(lines[0]["reason"], "panic");
    assert!(lines[0]["error"].as_str().unwrap().contains("at once"));
}

/// A request of trace `n` with request id `id`.
fn traced(
    mut req: Request<http_body_util::Full<bytes::Bytes>>,
    n: u64,
    id: &str,
) -> Request<http_body_util::Full<bytes::Bytes>> {
    let h = req.headers_mut();
    h.insert(
        "traceparent",
        format!("00-{n:032x}-{:016x}-01", n + 7).parse().unwrap(),
    );
    h.insert("x-request-id", id.parse().unwrap());
    req
}

#[tokio::test]
async fn refusals_panics_and_proxied_requests_are_each_recorded_once() {
    let log = AccessLog::capture();
    let mut col = Collector::grpc().await;
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.backends[0].models = vec!["tiny-llama".into()];
    c.limits.max_request_body = 4096;
    c.auth.keys = vec![KeyConfig {
        name: "team-a".into(),
        sha256: sha256("sk-a"),
        ..Default::default()
    }];
    c.telemetry = TelemetryConfig {
        enabled: true,
        protocol: Protocol::Grpc,
        endpoint: col.endpoint.clone(),
        scheduled_delay: Duration::from_millis(20),
        ..TelemetryConfig::default()
    };
    let gw = gateway::start_with(c, |state| {
        weir::app::service_with(state.clone(), PanicOnPath(Proxy::new(state)))
    })
    .await
    .unwrap();
    let client = client();
    let keyed = |mut req: Request<_>| {
        req.headers_mut()
            .insert("authorization", "Bearer sk-a".parse().unwrap());
        req
    };
    let panicking = |mut req: Request<_>| {
        req.headers_mut()
            .insert("x-test-panic", "1".parse().unwrap());
        req
    };
    let mut big = chat(false, 2);
    big["messages"][0]["content"] = "x".repeat(8192).into();
    let mut unknown = chat(false, 2);
    unknown["model"] = "no-such-model".into();
    let cases = [
        (
            post(gw.addr, "/v1/chat/completions", &chat(false, 2)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            keyed(post(gw.addr, "/v1/chat/completions", &big)),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            keyed(post(gw.addr, "/v1/chat/completions", &unknown)),
            StatusCode::NOT_FOUND,
        ),
        (
            panicking(keyed(post(
                gw.addr,
                "/v1/chat/completions",
                &chat(false, 2),
            ))),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        (
            keyed(post(gw.addr, "/v1/chat/completions", &chat(false, 2))),
            StatusCode::OK,
        ),
    ];
    for (n, (req, want)) in cases.into_iter().enumerate() {
        let (status, _, body) = send(&client, traced(req, n as u64 + 1, &format!("r{n}"))).await;
        assert_eq!(status, want, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if want != StatusCode::OK {
            assert_eq!(v["error"]["code"], want.as_u16(), "OpenAI-shaped");
        }
    }

    // Counted once each, with the code they were answered with.
    let m = wait_for_metrics(gw.admin_addr, "five requests", |m| {
        sum(m, "weir_requests_total", &[]) == Some(5.0)
            && sum(m, "weir_requests_in_flight", &[]) == Some(0.0)
    })
    .await;
    let count = |outcome, code| {
        sum(
            &m,
            "weir_requests_total",
            &[("outcome", outcome), ("code", code)],
        )
    };
    assert_eq!(count("client_error", "4xx"), Some(3.0));
    assert_eq!(count("internal_error", "5xx"), Some(1.0));
    assert_eq!(count("ok", "2xx"), Some(1.0));
    for (kind, n) in [
        ("unauthorized", 1.0),
        ("body_too_large", 1.0),
        ("bad_request", 1.0),
        ("internal", 1.0),
    ] {
        assert_eq!(
            value(&m, "weir_errors_total", &[("kind", kind)]),
            n,
            "{kind}"
        );
    }
    // The tenant is known once the key passed: not for the 401, nor for the 413, which the
    // limits refuse before the key is looked at.
    assert_eq!(
        value(
            &m,
            "weir_tenant_requests_total",
            &[("tenant", "team-a"), ("outcome", "client_error")]
        ),
        1.0,
    );

    // Logged once each, with the reason the gateway answered itself.
    let expect = [
        ("r0", 401, "client_error", Some("unauthorized")),
        ("r1", 413, "client_error", Some("body_too_large")),
        ("r2", 404, "client_error", Some("unknown_model")),
        ("r3", 500, "internal_error", Some("panic")),
        ("r4", 200, "ok", None),
    ];
    for (id, status, outcome, reason) in expect {
        let lines = log.of(id);
        assert_eq!(lines.len(), 1, "{id}: {lines:?}");
        let l = &lines[0];
        assert_eq!(l["status"], status, "{l}");
        assert_eq!(l["outcome"], outcome, "{l}");
        assert_eq!(l["reason"].as_str(), reason, "{l}");
        let keyed = !matches!(id, "r0" | "r1");
        assert_eq!(l["tenant"].as_str(), keyed.then_some("team-a"), "{l}");
        assert_eq!(l["trace_id"].as_str().unwrap().len(), 32);
    }
    assert!(
        log.of("r3")[0]["error"]
            .as_str()
            .unwrap()
            .contains("the test's fault")
    );
    assert!(log.of("r2")[0]["model"] == "no-such-model");
    assert_eq!(log.lines().len(), 5);

    // Traced once each: one SERVER span, and a CLIENT span only for the proxied request.
    for (n, (_, status, _, _)) in expect.iter().enumerate() {
        let trace = format!("{:032x}", n + 1);
        let spans = col
            .trace(&unhex(&trace), if *status == 200 { 2 } else { 1 })
            .await;
        let server: Vec<_> = spans
            .iter()
            .filter(|r| r.span.kind == SpanKind::Server as i32)
            .collect();
        assert_eq!(server.len(), 1, "trace {n}");
        assert_eq!(
            int_attr(&server[0].span, "http.response.status_code"),
            Some(i64::from(*status))
        );
    }
    let late = tokio::time::timeout(Duration::from_millis(300), col.next()).await;
    assert!(late.is_err(), "no other span: {late:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_config_and_pool_together() {
    // Two configs: A sends to sim A and takes bodies up to 64 KiB; B sends to sim B and
    // takes bodies up to 1 KiB. A 1.5 KiB body is served under A and refused under B: a
    // request that used B's pool with A's limits would bring sim B a 1.5 KiB body.
    let (sim_a, sim_b) = (
        start_sim(SimConfig::fast()).await,
        start_sim(SimConfig::fast()).await,
    );
    let config = move |b: bool| {
        let mut c = gateway_config(&[if b { sim_b } else { sim_a }]);
        c.limits.max_request_body = if b { 1024 } else { 64 * 1024 };
        c
    };
    let gw = Arc::new(gateway::start(config(false)).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let (gw, stop) = (gw.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                gw.state.reload(config(n % 2 == 1));
                std::thread::sleep(Duration::from_micros(300));
            }
            n
        })
    };
    // Big requests generate 3 tokens, small ones 1: what a backend generated tells which
    // kind it served.
    let mut big = chat(false, 3);
    big["messages"][0]["content"] = "x".repeat(1500).into();
    let clients = (0..4).map(|_| {
        let (big, addr) = (big.clone(), gw.addr);
        tokio::spawn(async move {
            let (client, mut big_ok, mut refused) = (client(), 0.0, 0.0);
            for _ in 0..150 {
                let req = post(addr, "/v1/chat/completions", &big);
                match send(&client, req).await.0 {
                    StatusCode::OK => big_ok += 1.0,
                    StatusCode::PAYLOAD_TOO_LARGE => refused += 1.0,
                    s => panic!("unexpected {s}"),
                }
                let small = post(addr, "/v1/chat/completions", &chat(false, 1));
                assert_eq!(send(&client, small).await.0, StatusCode::OK);
            }
            (big_ok, refused)
        })
    });
    let (mut big_ok, mut refused) = (0.0, 0.0);
    for c in clients.collect::<Vec<_>>() {
        let (ok, no) = c.await.unwrap();
        (big_ok, refused) = (big_ok + ok, refused + no);
    }
    stop.store(true, Ordering::Relaxed);
    let reloads = reloader.join().unwrap();
    let (a, b) = (scrape(sim_a).await, scrape(sim_b).await);
    let served = |m: &str| sum(m, "vllm:request_success_total", &[]).unwrap_or(0.0);
    let generated = |m: &str| sum(m, "vllm:generation_tokens_total", &[]).unwrap_or(0.0);
    assert_eq!(served(&a) + served(&b), big_ok + 600.0, "each served once");
    assert!(
        reloads > 20 && served(&b) > 0.0 && big_ok > 0.0 && refused > 0.0,
        "both configs were in force: {reloads} reloads"
    );
    // Sim B served only small requests: never a body that only A's limit lets through.
    assert_eq!(generated(&b), served(&b), "a 1.5 KiB body reached B");
    assert_eq!(generated(&a), served(&a) + 2.0 * big_ok);
}
