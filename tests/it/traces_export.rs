//! Trace export under stress and at the process edges: a dead collector costs spans (counted),
//! never requests; the `weir` binary takes its OTLP settings from `OTEL_*` variables, its
//! access log names the SERVER span, and SIGTERM flushes the spans of finished requests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::otlp::*;
use crate::common::prom::sum;
use crate::common::*;
use http::StatusCode;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use weir::config::TelemetryConfig;
use weir::gateway;
use weir_sim::SimConfig;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// `n` streamed requests, `concurrency` at a time; every one must finish whole. Returns the
/// wall time they took.
async fn load(addr: SocketAddr, n: usize, concurrency: usize) -> Duration {
    let c = client();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let c = c.clone();
        tasks.spawn(async move {
            let (status, _, body) =
                send(&c, post(addr, "/v1/chat/completions", &chat(true, 8))).await;
            drop(permit);
            assert_eq!(status, StatusCode::OK);
            assert!(body.ends_with(b"data: [DONE]\n\n"), "a whole stream");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("request task");
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_spans_not_requests() {
    let sim = start_sim(SimConfig {
        itl: Duration::from_millis(2),
        ..SimConfig::fast()
    })
    .await;
    // A port where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let off = start_gateway(&[sim]).await;
    let mut config = gateway_config(&[sim]);
    config.telemetry = TelemetryConfig {
        enabled: true,
        endpoint: format!("http://{dead}"),
        max_queue_size: 8,
        max_export_batch_size: 4,
        scheduled_delay: Duration::from_millis(10),
        ..TelemetryConfig::default()
    };
    let on = gateway::start(config).await.unwrap();
    assert!(on.state.telemetry.enabled());

    load(off.addr, 20, 10).await;
    load(on.addr, 20, 10).await;
    let t_off = load(off.addr, 200, 10).await;
    let t_on = load(on.addr, 200, 10).await;
    let ratio = t_on.as_secs_f64() / t_off.as_secs_f64();
    eprintln!("200 streams: {t_off:?} without traces, {t_on:?} to a dead collector");
    assert!(
        ratio < 2.0,
        "tracing to a dead collector slowed requests: {t_on:?} vs {t_off:?} without"
    );

    let m = wait_for_metrics(on.admin_addr, "dropped spans", |m| {
        sum(
            m,
            "weir_telemetry_dropped_spans_total",
            &[("reason", "queue_full")],
        )
        .is_some_and(|v| v > 0.0)
    })
    .await;
    let dropped = sum(&m, "weir_telemetry_dropped_spans_total", &[]).unwrap();
    eprintln!("{dropped} spans dropped");
    assert!(
        dropped <= 2.0 * 240.0,
        "{dropped} spans dropped of 480 made"
    );
    let off_metrics = scrape(off.admin_addr).await;
    assert_eq!(
        sum(&off_metrics, "weir_telemetry_dropped_spans_total", &[]),
        Some(0.0)
    );
    on.shutdown().await;
    off.shutdown().await;
}

async fn next_line(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a log line within 10 s")
        .expect("weir still running")
}

#[cfg(unix)]
#[tokio::test]
async fn the_binary_traces_from_otel_variables_and_flushes_on_sigterm() {
    let mut col = Collector::http().await;
    let sim = start_sim(SimConfig::fast()).await;
    let mut cmd = Command::new(WEIR);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        cmd.env_remove(k);
    }
    let mut child = Child(
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args([
                "--model",
                "tiny-llama",
                "--backend",
                &format!("http://{sim}"),
            ])
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", col.addr),
            )
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_SERVICE_NAME", "weir-cli")
            // Nothing is exported on a timer: the spans can only come from the SIGTERM flush.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .expect("weir starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let addr: SocketAddr = loop {
        let v = next_line(&mut rx).await;
        if v["message"] == "weir is serving" {
            break v["addr"].as_str().unwrap().parse().unwrap();
        }
    };

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut req = post(addr, "/v1/chat/completions", &chat(true, 4));
    req.headers_mut().insert(
        "traceparent",
        format!("00-{trace}-b7ad6b7169203331-01").parse().unwrap(),
    );
    let (status, headers, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let line = loop {
        let v = next_line(&mut rx).await;
        if v["target"] == "weir::access" {
            break v;
        }
    };
    assert_eq!(line["trace_id"], trace);

    let kill = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    // The request's two spans, and weir's own health-check span bridged from `tracing`.
    let mut all = Vec::new();
    while all
        .iter()
        .filter(|r: &&otlp::Received| r.span.trace_id == unhex(trace))
        .count()
        < 2
        || !all
            .iter()
            .any(|r: &otlp::Received| r.span.name == "health_check")
    {
        all.push(col.next().await);
    }
    let health = all.iter().find(|r| r.span.name == "health_check").unwrap();
    assert_eq!(health.span.kind, SpanKind::Client as i32);
    assert_eq!(
        str_attr(&health.span, "backend"),
        Some(sim.to_string().as_str())
    );
    assert_eq!(health.service, "weir-cli");
    let spans: Vec<_> = all
        .into_iter()
        .filter(|r| r.span.trace_id == unhex(trace))
        .collect();
    let server = spans
        .iter()
        .find(|r| r.span.kind == SpanKind::Server as i32)
        .expect("the SERVER span");
    let client_span = spans
        .iter()
        .find(|r| r.span.kind == SpanKind::Client as i32)
        .expect("the CLIENT span");
    assert_eq!(
        line["span_id"],
        hex(&server.span.span_id),
        "the log names the SERVER span"
    );
    assert_eq!(server.service, "weir-cli");
    assert_eq!(hex(&server.span.parent_span_id), "b7ad6b7169203331");
    assert_eq!(
        headers["x-sim-traceparent"],
        format!("00-{trace}-{}-01", hex(&client_span.span.span_id))
    );
    let code = tokio::task::spawn_blocking(move || {
        let status = child.0.wait();
        (status, child)
    })
    .await
    .unwrap()
    .0
    .expect("weir exits");
    assert!(code.success(), "{code:?}");
}
