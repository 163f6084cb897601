//! OTLP metrics, decoded by a real receiver (gRPC and HTTP/protobuf): after N streamed
//! requests through the gateway, every instrument is there with its GenAI or `weir.` name,
//! unit and attributes, and holds what the Prometheus series hold — the same bucket bounds
//! (SLO thresholds merged in), counts, sums and token totals, equal to the usage the client
//! got. The last export goes out at shutdown, from the library and from the `weir` binary
//! configured by `OTEL_*` variables.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::otlp::*;
use crate::common::prom::{samples, sum};
use crate::common::*;
use http::StatusCode;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::HistogramDataPoint;
use weir::config::{Protocol, TelemetryConfig};
use weir::gateway::{self, Gateway};
use weir_sim::SimConfig;

const N: u64 = 5;

/// A gateway in front of a fast simulator, pushing metrics to `col` every 100 ms (or only at
/// shutdown), with SLO thresholds that are not among the default buckets.
async fn gateway_to(col: &Collector, interval: Duration) -> Gateway {
    let sim = start_sim(SimConfig::fast()).await;
    let mut config = gateway_config(&[sim]);
    config.slo.ttft = Duration::from_millis(123);
    config.slo.itl = Duration::from_millis(33);
    config.telemetry = TelemetryConfig {
        metrics: true,
        protocol: match col.protocol {
            "grpc" => Protocol::Grpc,
            _ => Protocol::HttpProtobuf,
        },
        metrics_endpoint: col.metrics_endpoint.clone(),
        metrics_interval: interval,
        service_name: "weir-otlp".into(),
        ..TelemetryConfig::default()
    };
    gateway::start(config).await.unwrap()
}

/// `n` streamed chats that ask for the usage; returns the usage they were told, summed
/// (prompt, completion).
async fn chats(addr: SocketAddr, n: u64) -> (u64, u64) {
    let mut body = chat(true, 8);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let (mut input, mut output) = (0, 0);
    for _ in 0..n {
        let (status, _, bytes) = send(&client(), post(addr, "/v1/chat/completions", &body)).await;
        assert_eq!(status, StatusCode::OK);
        let usage = sse_data(&bytes)
            .iter()
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .find(|v| v["usage"].is_object())
            .expect("a usage chunk")["usage"]
            .clone();
        input += usage["prompt_tokens"].as_u64().unwrap();
        output += usage["completion_tokens"].as_u64().unwrap();
    }
    (input, output)
}

/// The one point whose attributes are `want`.
fn only<'a, P>(
    points: &'a [P],
    of: impl Fn(&P) -> &[KeyValue],
    want: &BTreeMap<String, String>,
) -> &'a P {
    let found: Vec<&P> = points.iter().filter(|p| attr_map(of(p)) == *want).collect();
    assert_eq!(found.len(), 1, "one point with {want:?}");
    found[0]
}

fn with(base: &BTreeMap<String, String>, k: &str, v: &str) -> BTreeMap<String, String> {
    let mut m = base.clone();
    m.insert(k.into(), v.into());
    m
}

fn counter_value(
    r: &ExportMetricsServiceRequest,
    name: &str,
    want: &BTreeMap<String, String>,
) -> u64 {
    int_value(only(counter(metric(r, name)), |p| &p.attributes, want))
}

/// The OTLP point holds what the Prometheus histogram `name{labels}` holds.
fn same_as_prometheus(p: &HistogramDataPoint, prom: &str, name: &str, labels: &[(&str, &str)]) {
    let mut buckets: Vec<(f64, f64)> = samples(prom)
        .into_iter()
        .filter(|s| s.name == format!("{name}_bucket"))
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let bounds: Vec<f64> = buckets
        .iter()
        .map(|b| b.0)
        .filter(|b| b.is_finite())
        .collect();
    assert_eq!(p.explicit_bounds, bounds, "{name}: bounds");
    let mut seen = 0;
    let cumulative: Vec<f64> = p
        .bucket_counts
        .iter()
        .map(|c| {
            seen += c;
            seen as f64
        })
        .collect();
    let prom_counts: Vec<f64> = buckets.iter().map(|b| b.1).collect();
    assert_eq!(cumulative, prom_counts, "{name}: bucket counts");
    assert_eq!(
        Some(p.count as f64),
        sum(prom, &format!("{name}_count"), labels),
        "{name}"
    );
    let prom_sum = sum(prom, &format!("{name}_sum"), labels).unwrap();
    assert!(
        (p.sum.unwrap() - prom_sum).abs() < 1e-9,
        "{name}: {:?} vs {prom_sum}",
        p.sum
    );
}

async fn export_of_n_requests(col: Collector) {
    let mut col = col;
    let gw = gateway_to(&col, Duration::from_millis(100)).await;
    let (input, output) = chats(gw.addr, N).await;
    let prom = wait_for_metrics(gw.admin_addr, "the requests", |m| {
        sum(m, "weir_requests_total", &[]) == Some(N as f64)
    })
    .await;
    let backend = samples(&prom)
        .into_iter()
        .find(|s| s.name == "weir_requests_total")
        .unwrap()
        .labels["backend"]
        .clone();
    let base: BTreeMap<String, String> = [
        ("gen_ai.request.model", "tiny-llama"),
        ("gen_ai.operation.name", "chat"),
        ("weir.backend", backend.as_str()),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let ok = with(&base, "weir.outcome", "ok");
    col.metrics_until(|r| counter_total(r, "weir.requests") == N)
        .await;
    // The export after: the last request's record is whole in it, and in the scrape.
    let r = col.next_metrics().await;
    let prom = scrape(gw.admin_addr).await;

    let rm = &r.resource_metrics[0];
    let resource = attr_map(&rm.resource.as_ref().unwrap().attributes);
    assert_eq!(resource["service.name"], "weir-otlp");
    let scope = rm.scope_metrics[0].scope.as_ref().unwrap();
    assert_eq!(scope.name, "weir");

    for (otlp, unit, prom_name) in [
        (
            "gen_ai.server.time_to_first_token",
            "s",
            "gen_ai_server_time_to_first_token_seconds",
        ),
        (
            "weir.time_to_first_answer_token",
            "s",
            "weir_time_to_first_answer_token_seconds",
        ),
        (
            "gen_ai.server.time_per_output_token",
            "s",
            "gen_ai_server_time_per_output_token_seconds",
        ),
        (
            "weir.inter_token_latency",
            "s",
            "weir_inter_token_latency_seconds",
        ),
        (
            "weir.upstream.time_to_first_token",
            "s",
            "weir_upstream_time_to_first_token_seconds",
        ),
        (
            "weir.gateway.overhead",
            "s",
            "weir_gateway_overhead_seconds",
        ),
    ] {
        let m = metric(&r, otlp);
        assert_eq!(m.unit, unit, "{otlp}");
        let p = only(histogram(m), |p| &p.attributes, &base);
        same_as_prometheus(p, &prom, prom_name, &[("backend", &backend)]);
        if otlp != "weir.inter_token_latency" {
            assert_eq!(p.count, N, "{otlp}: one per request");
        }
    }
    let ttft = only(
        histogram(metric(&r, "gen_ai.server.time_to_first_token")),
        |p| &p.attributes,
        &base,
    );
    assert!(
        ttft.explicit_bounds.contains(&0.123),
        "the SLO threshold is a bound"
    );
    let itl = only(
        histogram(metric(&r, "weir.inter_token_latency")),
        |p| &p.attributes,
        &base,
    );
    assert!(itl.explicit_bounds.contains(&0.033));
    assert!(itl.count >= N, "gaps: {}", itl.count);

    let duration = metric(&r, "gen_ai.server.request.duration");
    assert_eq!(duration.unit, "s");
    let p = only(histogram(duration), |p| &p.attributes, &ok);
    assert_eq!(p.count, N);
    same_as_prometheus(
        p,
        &prom,
        "gen_ai_server_request_duration_seconds",
        &[("outcome", "ok"), ("backend", &backend)],
    );

    let usage = metric(&r, "gen_ai.client.token.usage");
    assert_eq!(usage.unit, "{token}");
    for (t, total) in [("input", input), ("output", output)] {
        let want = with(&base, "gen_ai.token.type", t);
        let p = only(histogram(usage), |p| &p.attributes, &want);
        assert_eq!((p.count, p.sum), (N, Some(total as f64)), "{t} tokens");
        same_as_prometheus(
            p,
            &prom,
            "gen_ai_client_token_usage",
            &[("gen_ai_token_type", t), ("backend", &backend)],
        );
        assert_eq!(counter_value(&r, "weir.tokens", &want), total, "{t} tokens");
    }
    for t in ["cache_read", "reasoning"] {
        let got = counter_value(&r, "weir.tokens", &with(&base, "gen_ai.token.type", t));
        let labels = [("gen_ai_token_type", t), ("backend", &backend)];
        let prom_total = sum(&prom, "weir_tokens_total", &labels);
        assert_eq!(Some(got as f64), prom_total, "{t} tokens");
    }
    assert_eq!(metric(&r, "weir.tokens").unit, "{token}");
    assert_eq!(metric(&r, "weir.requests").unit, "{request}");
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_over_grpc_hold_what_prometheus_holds() {
    export_of_n_requests(Collector::grpc().await).await;
}

#[tokio::test]
async fn metrics_over_http_hold_what_prometheus_holds() {
    export_of_n_requests(Collector::http().await).await;
}

/// `[metrics] histogram_backend = false`: over OTLP as on `/metrics`, one point per
/// histogram for the model's requests on two backends, without `weir.backend`, holding what
/// the Prometheus histogram holds; the counters keep a point per backend.
#[tokio::test]
async fn without_backend_on_histograms_the_backends_share_one_point() {
    let mut col = Collector::http().await;
    let sims = [
        start_sim(SimConfig::fast()).await,
        start_sim(SimConfig::fast()).await,
    ];
    let mut config = gateway_config(&sims);
    config.balance = weir::config::Strategy::RoundRobin;
    config.metrics.histogram_backend = false;
    config.telemetry = TelemetryConfig {
        metrics: true,
        protocol: Protocol::HttpProtobuf,
        metrics_endpoint: col.metrics_endpoint.clone(),
        metrics_interval: Duration::from_millis(100),
        ..TelemetryConfig::default()
    };
    let gw = gateway::start(config).await.unwrap();
    let n = 4;
    chats(gw.addr, n).await;
    wait_for_metrics(gw.admin_addr, "the requests", |m| {
        sum(m, "weir_requests_total", &[]) == Some(n as f64)
    })
    .await;
    col.metrics_until(|r| counter_total(r, "weir.requests") == n)
        .await;
    let r = col.next_metrics().await;
    let prom = scrape(gw.admin_addr).await;
    let base: BTreeMap<String, String> = [
        ("gen_ai.request.model", "tiny-llama"),
        ("gen_ai.operation.name", "chat"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let ttft = histogram(metric(&r, "gen_ai.server.time_to_first_token"));
    assert_eq!(ttft.len(), 1, "one point for both backends");
    let p = only(ttft, |p| &p.attributes, &base);
    assert_eq!(p.count, n);
    same_as_prometheus(p, &prom, "gen_ai_server_time_to_first_token_seconds", &[]);
    let duration = histogram(metric(&r, "gen_ai.server.request.duration"));
    let p = only(
        duration,
        |p| &p.attributes,
        &with(&base, "weir.outcome", "ok"),
    );
    assert_eq!(p.count, n);
    let usage = histogram(metric(&r, "gen_ai.client.token.usage"));
    assert_eq!(usage.len(), 2, "input and output");
    assert!(
        usage
            .iter()
            .all(|p| !attr_map(&p.attributes).contains_key("weir.backend"))
    );
    let requests = counter(metric(&r, "weir.requests"));
    let backends: std::collections::BTreeSet<String> = requests
        .iter()
        .map(|p| attr_map(&p.attributes)["weir.backend"].clone())
        .collect();
    assert_eq!(backends.len(), 2, "a point per backend: {backends:?}");
    assert_eq!(requests.iter().map(int_value).sum::<u64>(), n);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_last_metrics_go_out_at_shutdown() {
    let mut col = Collector::http().await;
    // No export on the timer before the test ends: this one can only come from the shutdown.
    let gw = gateway_to(&col, Duration::from_secs(600)).await;
    chats(gw.addr, 3).await;
    gw.shutdown().await;
    let r = col.next_metrics().await;
    assert_eq!(counter_total(&r, "weir.requests"), 3);
}

#[cfg(unix)]
#[tokio::test]
async fn the_binary_pushes_metrics_from_otel_variables() {
    let mut col = Collector::http().await;
    let sim = start_sim(SimConfig::fast()).await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        cmd.env_remove(k);
    }
    let sim_url = format!("http://{sim}");
    let mut child = Child(
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--model", "tiny-llama", "--backend", &sim_url])
            .env("OTEL_METRICS_EXPORTER", "otlp")
            .env("OTEL_TRACES_EXPORTER", "none")
            // A base URL: `/v1/metrics` goes under it.
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", col.addr),
            )
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "600000")
            .env("OTEL_SERVICE_NAME", "weir-cli")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .expect("weir starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let addr: SocketAddr = tokio::task::spawn_blocking(move || {
        loop {
            let v = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("weir serves");
            if v["message"] == "weir is serving" {
                break v["addr"].as_str().unwrap().parse().unwrap();
            }
        }
    })
    .await
    .unwrap();
    let (input, _) = chats(addr, 2).await;
    let kill = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let r = col.next_metrics().await;
    let resource = attr_map(&r.resource_metrics[0].resource.as_ref().unwrap().attributes);
    assert_eq!(resource["service.name"], "weir-cli");
    let tokens = counter(metric(&r, "weir.tokens"));
    let input_points: Vec<_> = tokens
        .iter()
        .filter(|p| attr_map(&p.attributes)["gen_ai.token.type"] == "input")
        .collect();
    assert_eq!(input_points.len(), 1);
    assert_eq!(int_value(input_points[0]), input);
    let code = tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.0.wait()
    })
    .await
    .unwrap()
    .expect("weir exits");
    assert!(code.success(), "{code:?}");
}
