//! `weir demo`: the simulator and the gateway in one process, a bounded load through the
//! gateway, and a summary per model read from the gateway's own metrics.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::proto::MetricFamily;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::config::{BackendConfig, Config};
use crate::gateway;
use weir_sim::{self as sim, SimConfig};

/// Arguments of `weir demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Requests to send through the gateway.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// max_tokens of each request.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: u32,
    /// Simulated time to first token.
    #[arg(long, default_value = "60ms", value_parser = humantime::parse_duration)]
    pub ttft: Duration,
    /// Simulated time per output token.
    #[arg(long, default_value = "12ms", value_parser = humantime::parse_duration)]
    pub itl: Duration,
    /// Gateway listener (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Gateway admin listener.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub admin_listen: SocketAddr,
    /// Leave the simulator and the gateway running after the load, until Ctrl-C.
    #[arg(long)]
    pub keep_serving: bool,
}

/// Binds `addr`, or any free port on the same interface when it is taken.
async fn bind_or_any(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    match TcpListener::bind(addr).await {
        Ok(l) => l.local_addr(),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                .await?
                .local_addr()
        }
        Err(e) => Err(e),
    }
}

pub async fn run(args: DemoArgs) -> std::io::Result<()> {
    let sim_config = SimConfig {
        ttft: args.ttft,
        ttft_jitter: args.ttft * 2 / 3,
        itl: args.itl,
        itl_jitter: args.itl * 2 / 3,
        ..SimConfig::default()
    };
    let model = sim_config.model.clone();
    let sim_listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let sim_addr = sim_listener.local_addr()?;
    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let sim_task = tokio::spawn(sim::serve(sim_listener, sim_config, async move {
        let _ = sim_stopped.await;
    }));

    // Probe the ports first: a taken default port falls back to a free one.
    let mut config = Config {
        listen: bind_or_any(args.listen).await?,
        admin_listen: bind_or_any(args.admin_listen).await?,
        models: vec![model.clone()],
        backends: vec![BackendConfig {
            name: "sim-0".into(),
            ..BackendConfig::new(format!("http://{sim_addr}"))
        }],
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    };
    // OTEL_* variables turn traces on for the demo too (to look at them in Jaeger).
    let telemetry = &mut config.telemetry;
    telemetry
        .apply_env(|k| std::env::var(k).ok())
        .and_then(|()| telemetry.validate())
        .map_err(std::io::Error::other)?;
    let gw = gateway::start(config).await?;
    let base = format!("http://{}", gw.addr);
    eprintln!(
        "weir demo: gateway {base} -> simulated vLLM at {sim_addr} (model {model}: TTFT {:?} plus up to {:?} of random jitter, {:?} plus up to {:?} per token)",
        args.ttft,
        args.ttft * 2 / 3,
        args.itl,
        args.itl * 2 / 3
    );
    eprintln!(
        "sending {} requests, {} at a time (streamed chat, completions, non-streamed, a few injected faults)",
        args.requests, args.concurrency
    );

    let started = Instant::now();
    drive(&base, &model, &args).await;
    let elapsed = started.elapsed();

    let families = gw.state.metrics.registry().gather();
    print_summary(&families, elapsed, &args);
    if let Some(line) = crate::telemetry::first_access_line() {
        println!(
            "\nThe access-log line of the first request (the gateway writes one per request on stdout; --log-format pretty|json):\n{line}"
        );
    }

    if args.keep_serving {
        let admin = format!("http://{}", gw.admin_addr);
        println!("\ngateway: {base}   (Ctrl-C to stop)");
        println!("metrics: {admin}/metrics");
        println!("watch:   weir top --admin {admin}");
        println!(
            "try:     curl -N {base}/v1/chat/completions -H 'content-type: application/json' \\\n           -d '{{\"model\":\"{model}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'"
        );
        gateway::shutdown_signal().await;
    } else {
        println!(
            "\nThe gateway has stopped. `weir demo --keep-serving` leaves it running for curl, its /metrics and `weir top`."
        );
    }
    gw.shutdown().await;
    let _ = stop_sim.send(());
    sim_task.await.map_err(std::io::Error::other)??;
    Ok(())
}

/// The request mix: mostly streamed chat, some completions and non-streamed requests, and
/// a few with faults injected by the simulator so that the outcomes are not all `ok`.
fn request(i: usize, base: &str, model: &str, max_tokens: u32) -> Request<Full<Bytes>> {
    let (path, body) = match i % 10 {
        8 => (
            "/v1/completions",
            serde_json::json!({"model": model, "prompt": "The weir", "max_tokens": max_tokens, "stream": true, "ignore_eos": true}),
        ),
        9 => (
            "/v1/chat/completions",
            serde_json::json!({"model": model, "max_tokens": max_tokens, "ignore_eos": true,
                "messages": [{"role": "user", "content": "Summarise the river."}]}),
        ),
        _ => (
            "/v1/chat/completions",
            serde_json::json!({"model": model, "max_tokens": max_tokens, "stream": true, "ignore_eos": true,
                "stream_options": {"include_usage": i % 3 == 0},
                "messages": [{"role": "user", "content": format!("Tell me about weir number {i}.")}]}),
        ),
    };
    let mut req = Request::post(format!("{base}{path}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static request");
    let fault = match i % 50 {
        17 => Some("error-event=5"),
        33 => Some("http=503"),
        _ => None,
    };
    if let Some(f) = fault {
        req.headers_mut()
            .insert("x-sim-fault", header::HeaderValue::from_static(f));
    }
    req
}

async fn drive(base: &str, model: &str, args: &DemoArgs) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let total = args.requests;
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, next, done) = (client.clone(), next.clone(), done.clone());
        let (base, model, max_tokens) = (base.to_string(), model.to_string(), args.max_tokens);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let req = request(i, &base, &model, max_tokens);
                if let Ok(res) = client.request(req).await {
                    let _ = res.into_body().collect().await;
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(n, total);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    eprintln!();
}

/// A progress bar on a terminal; a line per quarter otherwise (logs, CI).
fn progress(done: usize, total: usize) {
    const WIDTH: usize = 40;
    let filled = WIDTH * done / total.max(1);
    let mut err = std::io::stderr().lock();
    if !err.is_terminal() {
        let quarter = total.div_ceil(4).max(1);
        if done % quarter == 0 || done == total {
            let _ = writeln!(err, "{done}/{total} requests");
        }
        return;
    }
    let _ = write!(
        err,
        "\r[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    );
    let _ = err.flush();
}

/// Per model: (label set → value) of one family, summed over the other labels.
fn by_model<'a>(
    families: &'a [MetricFamily],
    name: &str,
) -> impl Iterator<Item = (String, &'a prometheus::proto::Metric)> {
    families
        .iter()
        .filter(move |f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            let model = label(m, "gen_ai_request_model").unwrap_or_default();
            (model, m)
        })
}

fn label(m: &prometheus::proto::Metric, name: &str) -> Option<String> {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value().to_string())
}

/// Merged cumulative buckets of a histogram per model.
type Buckets = BTreeMap<String, Vec<(f64, u64)>>;

fn histograms(families: &[MetricFamily], name: &str) -> Buckets {
    let mut out: Buckets = BTreeMap::new();
    for (model, m) in by_model(families, name) {
        let h = m.get_histogram();
        let entry = out.entry(model).or_default();
        for (i, b) in h.get_bucket().iter().enumerate() {
            if entry.len() <= i {
                entry.push((b.upper_bound(), 0));
            }
            entry[i].1 += b.cumulative_count();
        }
    }
    out
}

/// histogram_quantile: linear interpolation within the bucket that holds the rank.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev = (0.0, 0u64);
    for &(le, c) in buckets {
        if c as f64 >= rank {
            let span = (c - prev.1).max(1) as f64;
            return Some(prev.0 + (le - prev.0) * (rank - prev.1 as f64) / span);
        }
        prev = (le, c);
    }
    Some(prev.0)
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.1} ms", s * 1e3))
}

fn print_summary(families: &[MetricFamily], elapsed: Duration, args: &DemoArgs) {
    let mut outcomes: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (model, m) in by_model(families, "weir_requests_total") {
        let outcome = label(m, "outcome").unwrap_or_default();
        *outcomes
            .entry(model)
            .or_default()
            .entry(outcome)
            .or_default() += m.get_counter().value();
    }
    let mut output_tokens: BTreeMap<String, f64> = BTreeMap::new();
    for (model, m) in by_model(families, "weir_tokens_total") {
        if label(m, "gen_ai_token_type").as_deref() == Some("output") {
            *output_tokens.entry(model).or_default() += m.get_counter().value();
        }
    }
    let mut slo: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (model, m) in by_model(families, "weir_slo_requests_total") {
        if label(m, "slo").as_deref() == Some("all") {
            let (met, judged) = slo.entry(model).or_default();
            *judged += m.get_counter().value();
            if label(m, "met").as_deref() == Some("true") {
                *met += m.get_counter().value();
            }
        }
    }
    let ttft = histograms(families, "gen_ai_server_time_to_first_token_seconds");
    let itl = histograms(families, "weir_inter_token_latency_seconds");
    let tpot = histograms(families, "gen_ai_server_time_per_output_token_seconds");
    let overhead = histograms(families, "weir_gateway_overhead_seconds");
    let q = |b: &Buckets, m: &str, q: f64| b.get(m).and_then(|b| quantile(b, q));

    println!(
        "\n{} requests in {:.1} s, as weir measured them (from its own /metrics):\n",
        args.requests,
        elapsed.as_secs_f64()
    );
    println!(
        "{:<14} {:>8}  {:<34} {:>10} {:>10} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "model",
        "requests",
        "outcomes",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99",
        "TPOT p50",
        "output tok/s",
        "goodput"
    );
    for (model, outs) in &outcomes {
        let total: f64 = outs.values().sum();
        let outs_text = outs
            .iter()
            .map(|(o, n)| format!("{o}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let tok_s = output_tokens.get(model).copied().unwrap_or(0.0) / elapsed.as_secs_f64();
        let goodput = slo
            .get(model)
            .filter(|(_, judged)| *judged > 0.0)
            .map_or("-".to_owned(), |(met, judged)| {
                format!("{:.1}%", 100.0 * met / judged)
            });
        println!(
            "{:<14} {:>8}  {:<34} {:>10} {:>10} {:>9} {:>9} {:>9} {:>12.0} {:>8}",
            model,
            total,
            outs_text,
            fmt_ms(q(&ttft, model, 0.5)),
            fmt_ms(q(&ttft, model, 0.99)),
            fmt_ms(q(&itl, model, 0.5)),
            fmt_ms(q(&itl, model, 0.99)),
            fmt_ms(q(&tpot, model, 0.5)),
            tok_s,
            goodput
        );
    }
    let targets = Config::default().slo;
    println!(
        "\ngoodput: the streamed requests that met both SLOs (TTFT <= {:?}, mean ITL <= {:?}; [slo] in the config)",
        targets.ttft, targets.itl
    );
    let all_overhead = overhead
        .values()
        .fold(Vec::<(f64, u64)>::new(), |mut acc, b| {
            for (i, &(le, c)) in b.iter().enumerate() {
                if acc.len() <= i {
                    acc.push((le, 0));
                }
                acc[i].1 += c;
            }
            acc
        });
    println!(
        "\ngateway overhead before the first token: p50 {:.3} ms, p99 {:.3} ms",
        quantile(&all_overhead, 0.5).unwrap_or(0.0) * 1e3,
        quantile(&all_overhead, 0.99).unwrap_or(0.0) * 1e3
    );
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        let b = [(0.1, 0), (0.2, 50), (0.4, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&b, 0.5), Some(0.2));
        let p75 = quantile(&b, 0.75).unwrap();
        assert!((p75 - 0.3).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(&[(1.0, 0)], 0.5), None);
    }
}
