//! From a P99 to the requests behind it: the latency histograms carry exemplars in the
//! OpenMetrics exposition, Prometheus (Debian's, exemplar storage on) stores them from its
//! scrape, and the trace ids it gives back are those of the slow requests' access-log
//! lines and spans. A client asking for the classic format gets it unchanged.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::ops::{Proc, TempDir, free_port, poll, tool, try_get, urlencode};
use crate::common::otlp::*;
use crate::common::*;
use http::StatusCode;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use weir::config::{Protocol, TelemetryConfig};
use weir::gateway;
use weir_sim::SimConfig;

/// Debian's Prometheus with exemplar storage on, scraping `target` every second.
async fn prometheus(target: std::net::SocketAddr) -> Option<(Proc, std::net::SocketAddr, TempDir)> {
    let bin = tool("prometheus")?;
    let dir = TempDir::new("exemplars");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: weir\n    static_configs: [{{targets: ['{target}']}}]\n"
    );
    std::fs::write(dir.path("prometheus.yml"), config).unwrap();
    let args = [
        format!("--config.file={}", dir.path("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.path("data").display()),
        format!("--web.listen-address={addr}"),
        "--enable-feature=exemplar-storage".to_string(),
    ];
    let proc = Proc::spawn(&bin, &args, dir.path("prometheus.log"));
    let ready = poll(Duration::from_secs(30), || async {
        try_get(addr, "/-/ready")
            .await
            .filter(|(s, _)| s.is_success())
    });
    assert!(
        ready.await.is_some(),
        "Prometheus not ready\n{}",
        proc.log_tail()
    );
    Some((proc, addr, dir))
}

/// The trace ids of the TTFT exemplars Prometheus has of at least `min` seconds.
async fn slow_exemplars(prom: std::net::SocketAddr, min: f64) -> BTreeSet<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let q = format!(
        "/api/v1/query_exemplars?query={}&start={}&end={}",
        urlencode("gen_ai_server_time_to_first_token_seconds_bucket"),
        now - 300,
        now + 60
    );
    let Some((StatusCode::OK, body)) = try_get(prom, &q).await else {
        return BTreeSet::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut ids = BTreeSet::new();
    for series in v["data"].as_array().into_iter().flatten() {
        for e in series["exemplars"].as_array().into_iter().flatten() {
            let value: f64 = e["value"].as_str().unwrap_or("0").parse().unwrap_or(0.0);
            if value >= min {
                ids.insert(
                    e["labels"]["trace_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    }
    ids
}

#[tokio::test]
async fn slow_requests_lead_from_prometheus_exemplars_to_their_logs_and_traces() {
    let log = AccessLog::capture();
    let mut col = Collector::grpc().await;
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.telemetry = TelemetryConfig {
        enabled: true,
        protocol: Protocol::Grpc,
        endpoint: col.endpoint.clone(),
        scheduled_delay: Duration::from_millis(20),
        ..TelemetryConfig::default()
    };
    let gw = gateway::start(c).await.unwrap();
    let Some((prom, prom_addr, _dir)) = prometheus(gw.admin_addr).await else {
        return;
    };
    let client = client();
    // Fast requests, and three made slow on purpose: their TTFT lands in the 0.75 s bucket.
    for i in 0..9 {
        let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 3));
        let id = if i % 3 == 2 {
            format!("slow-{i}")
        } else {
            format!("fast-{i}")
        };
        if id.starts_with("slow") {
            req.headers_mut()
                .insert("x-sim-ttft-ms", "600".parse().unwrap());
        }
        req.headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        assert_eq!(send(&client, req).await.0, StatusCode::OK);
    }
    let slow_lines: Vec<_> = log
        .lines()
        .into_iter()
        .filter(|l| l["request_id"].as_str().unwrap_or("").starts_with("slow"))
        .collect();
    assert_eq!(slow_lines.len(), 3);
    let logged: BTreeSet<String> = slow_lines
        .iter()
        .map(|l| l["trace_id"].as_str().unwrap().to_string())
        .collect();
    // One slot per bucket keeps the latest: of the three slow requests, the last one.
    let last = slow_lines[2]["trace_id"].as_str().unwrap().to_string();
    let found = poll(Duration::from_secs(30), || async {
        let got = slow_exemplars(prom_addr, 0.6).await;
        got.contains(&last).then_some(got)
    })
    .await
    .unwrap_or_else(|| panic!("no exemplar of {last} in Prometheus\n{}", prom.log_tail()));
    assert!(
        found.is_subset(&logged),
        "exemplars {found:?} are slow requests {logged:?}"
    );
    // The span of that trace reached the OTLP receiver.
    let spans = col.trace(&unhex(&last), 2).await;
    assert!(spans.iter().any(|r| r.span.kind == SpanKind::Server as i32));
}

#[tokio::test]
async fn the_classic_format_is_unchanged_and_openmetrics_carries_the_exemplars() {
    let sim = start_sim(SimConfig::fast()).await;
    let gw = start_gateway(&[sim]).await;
    let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 3));
    req.headers_mut().insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    assert_eq!(send(&client(), req).await.0, StatusCode::OK);
    wait_for_metrics(gw.admin_addr, "the request recorded", |m| {
        m.contains("weir_requests_total{")
    })
    .await;
    // No Accept header: the classic text format, no exemplars.
    let req = http::Request::get(format!("http://{}/metrics", gw.admin_addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let classic = String::from_utf8(body.to_vec()).unwrap();
    assert!(!classic.contains("trace_id") && !classic.contains("# EOF"));
    assert!(classic.contains("# TYPE weir_requests_total counter"));
    // As Prometheus asks with exemplar storage on: OpenMetrics with the request's ids.
    let req = http::Request::get(format!("http://{}/metrics", gw.admin_addr))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let om = String::from_utf8(body.to_vec()).unwrap();
    assert!(om.ends_with("# EOF\n"));
    assert!(
        om.contains("# TYPE weir_requests counter"),
        "counters typed without _total"
    );
    let exemplar = om
        .lines()
        .find(|l| {
            l.starts_with("gen_ai_server_time_to_first_token_seconds_bucket{") && l.contains(" # {")
        })
        .expect("a TTFT bucket with an exemplar");
    assert!(
        exemplar.contains("trace_id=\"0af7651916cd43dd8448eb211c80319c\""),
        "{exemplar}"
    );
    // The same series and values as the classic format, bucket for bucket.
    let sample = |text: &str, prefix: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.split(" # ").next().unwrap().to_string())
            .collect()
    };
    let p = "gen_ai_server_time_to_first_token_seconds_bucket{";
    assert_eq!(sample(&om, p), sample(&classic, p));
}
