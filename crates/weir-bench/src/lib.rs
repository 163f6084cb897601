//! `weir bench`: a client-side load generator for OpenAI-compatible endpoints (weir, vLLM
//! or anything else), measuring with the same definitions and the same SSE parser as the
//! gateway: TTFT, ITL, TPOT, e2e, throughput and goodput against SLOs. `--api` picks the
//! API: chat (default), completions, responses (OpenAI Responses), messages (Anthropic
//! Messages) or embeddings (not streamed).
//!
//! It tells the truth about failures: each failed request's cause is kept (connection
//! refused, an HTTP status with the backend's message, a timeout, a broken stream), the
//! causes are counted in the table and the JSON, and the command fails when every request
//! failed or more than `--max-error-rate` did. `--report` draws the run as an HTML page.

mod api;
mod cause;
mod events;
mod html;
mod measure;
mod models;
mod points;
mod progress;
pub mod report;
mod summary;
mod svg;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

pub use api::Api;
pub use cause::{CauseCount, Failure, Kind, MAX_CAUSES};
pub use points::{Points, RequestPoint};
pub use report::{Report, Slo};
pub use summary::{Document, Row};
pub use svg::colour;

use measure::Target;
use progress::Progress;

/// Arguments of `weir bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the endpoint (weir, vLLM, ...).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The model named in every request. Without it, the first model the endpoint's
    /// `/v1/models` lists.
    #[arg(long)]
    pub model: Option<String>,
    /// Closed loop: this many requests in flight at all times.
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: Poisson arrivals at this many requests per second.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Closed-loop runs at each of these concurrencies, one after the other.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["rate", "concurrency"])]
    pub sweep: Vec<usize>,
    /// Prompt length in (approximate) tokens.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// max_tokens of each request (sent with ignore_eos, so every request generates them all).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// Send non-streamed requests.
    #[arg(long)]
    pub no_stream: bool,
    /// The API to load: chat (/v1/chat/completions), completions (/v1/completions),
    /// responses (/v1/responses), messages (/v1/messages, with `anthropic-version:
    /// 2023-06-01`) or embeddings (/v1/embeddings, never streamed).
    #[arg(long, value_enum, default_value_t = Api::Chat)]
    pub api: Api,
    /// The same as `--api completions`.
    #[arg(long, conflicts_with = "api")]
    pub completions: bool,
    /// Stop after this many requests (per run).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Stop starting requests after this long (per run).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Run the same load this long first and discard it (connections warm, caches filled).
    /// The load runs on without a pause into the measured part, so it starts in a steady state.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Closed loop: start the clients evenly over this long instead of all at once. Identical
    /// requests started together stay in lock-step (every stream starts and gets its tokens in
    /// the same instant); a ramp of about one request's duration spreads them out.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp_up: Duration,
    /// Extra request header `name:value`; repeat for several.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// Give a request up after this long (from its start to the end of its body) and count
    /// it as failed by timeout.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Goodput SLOs, e.g. `ttft=200ms,itl=50ms` (keys: ttft, tpot, itl, e2e).
    #[arg(long)]
    pub slo: Option<Slo>,
    /// Fail (exit status 1) when more than this fraction of a run's requests fail, e.g.
    /// 0.01. Without it, only a run in which every request failed fails; 1 allows even that.
    #[arg(long, value_name = "FRACTION", value_parser = summary::parse_fraction)]
    pub max_error_rate: Option<f64>,
    /// Also write the report(s) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the run(s) as a self-contained HTML page (tables and charts) in this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

impl Default for BenchArgs {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".to_owned(),
            model: None,
            concurrency: None,
            rate: None,
            sweep: Vec::new(),
            prompt_tokens: 128,
            max_tokens: 64,
            no_stream: false,
            api: Api::Chat,
            completions: false,
            requests: None,
            duration: Duration::from_secs(30),
            warmup: Duration::ZERO,
            ramp_up: Duration::ZERO,
            headers: Vec::new(),
            timeout: Duration::from_secs(600),
            slo: None,
            max_error_rate: None,
            json: None,
            report: None,
        }
    }
}

impl BenchArgs {
    /// The API loaded: `--api`, or completions with `--completions`.
    pub fn effective_api(&self) -> Api {
        if self.completions {
            Api::Completions
        } else {
            self.api
        }
    }
}

/// How one run sends its load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    Closed(usize),
    Poisson(f64),
}

/// One request's measurements.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Seconds from the start of the run's measured part to the request's start.
    pub start: f64,
    pub ttft: Option<f64>,
    pub tpot: Option<f64>,
    pub e2e: f64,
    pub itl: Vec<f32>,
    pub output_tokens: u64,
    pub input_tokens: u64,
    /// Why the request failed; `None` when it succeeded.
    pub error: Option<Failure>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How long a connection may take to open before the request fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept (and its TCP keep-alive interval).
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Runs `weir bench` from the command line: a table per run and a summary across a sweep,
/// JSON and HTML when asked; an error naming the cause when the runs failed (every request
/// of a run, or more than `--max-error-rate` of them).
pub async fn run(args: BenchArgs) -> io::Result<()> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let m = discover_model(&client(), &args).await?;
            eprintln!("weir bench: model {m} (from /v1/models)");
            m
        }
    };
    let args = BenchArgs {
        model: Some(model.clone()),
        ..args
    };
    let mut runs = Vec::new();
    for load in loads(&args) {
        eprintln!(
            "weir bench: {} against {} ...",
            report::describe(load),
            args.url
        );
        let r = run_load(&args, load).await?;
        print!("{}", r.table());
        runs.push(r);
    }
    let sweep = (!args.sweep.is_empty()).then(|| runs.iter().map(Row::of).collect::<Vec<_>>());
    if let Some(rows) = &sweep {
        print!("{}", summary::sweep_table(rows));
    }
    let doc = Document {
        url: args.url.clone(),
        model,
        api: args.effective_api(),
        runs,
        sweep,
    };
    write_files(&args, &doc)?;
    summary::verdict(&doc.runs, args.max_error_rate).map_err(io::Error::other)
}

/// The runs `args` asks for: each level of a sweep, a Poisson rate, or one concurrency.
fn loads(args: &BenchArgs) -> Vec<Load> {
    if !args.sweep.is_empty() {
        args.sweep.iter().map(|&c| Load::Closed(c.max(1))).collect()
    } else if let Some(r) = args.rate {
        vec![Load::Poisson(r)]
    } else {
        vec![Load::Closed(args.concurrency.unwrap_or(16).max(1))]
    }
}

/// `--json` and `--report`.
fn write_files(args: &BenchArgs, doc: &Document) -> io::Result<()> {
    let write = |path: &PathBuf, bytes: &[u8]| {
        std::fs::write(path, bytes)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
    };
    if let Some(path) = &args.json {
        write(
            path,
            &serde_json::to_vec_pretty(doc).map_err(io::Error::other)?,
        )?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.report {
        write(path, html::page(doc).as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The model of `--model`'s absence: the first that `{url}/v1/models` lists.
async fn discover_model(client: &HttpClient, args: &BenchArgs) -> io::Result<String> {
    let headers = parse_headers(&args.headers, args.effective_api())?;
    models::first_model(client, &args.url, &headers)
        .await
        .map_err(|why| {
            io::Error::other(format!(
                "no --model given, and {}/v1/models could not be read: {why}",
                args.url.trim_end_matches('/')
            ))
        })
}

/// The client of a run: pooled connections, as many as the load keeps open.
fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_keepalive(Some(POOL_IDLE));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(POOL_IDLE)
        .build(connector)
}

/// One run of `load`, bounded by `args.requests` and `args.duration`, after the warm-up.
/// Without `args.model`, the model is the first that the endpoint's `/v1/models` lists.
pub async fn run_load(args: &BenchArgs, load: Load) -> io::Result<Report> {
    let client = client();
    let model = match &args.model {
        Some(m) => m.clone(),
        None => discover_model(&client, args).await?,
    };
    drive(&client, args, &model, load).await
}

/// Which requests are sent, and which are counted.
struct Gate {
    budget: AtomicUsize,
    /// Requests started before this are the warm-up: sent, awaited and not counted.
    measured: Instant,
    deadline: Instant,
}

impl Gate {
    /// Whether a request starting now is sent, and whether it is counted; None: stop.
    fn admit(&self) -> Option<bool> {
        let now = Instant::now();
        if now >= self.deadline {
            None
        } else if now < self.measured {
            Some(false)
        } else {
            self.budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .ok()
                .map(|_| true)
        }
    }
}

async fn drive(
    client: &HttpClient,
    args: &BenchArgs,
    model: &str,
    load: Load,
) -> io::Result<Report> {
    let api = args.effective_api();
    let started = Instant::now();
    let measured = started + args.warmup;
    let target = Arc::new(Target {
        client: client.clone(),
        api,
        uri: format!("{}{}", args.url.trim_end_matches('/'), api.path())
            .parse()
            .map_err(|e| io::Error::other(format!("--url {}: {e}", args.url)))?,
        body: Bytes::from(api::request_body(args, api, model).to_string()),
        headers: parse_headers(&args.headers, api)?,
        timeout: args.timeout,
        origin: measured,
    });
    let gate = Arc::new(Gate {
        budget: AtomicUsize::new(args.requests.unwrap_or(usize::MAX)),
        measured,
        deadline: measured + args.duration,
    });
    let progress = Arc::new(Progress::default());
    let ticker = progress::show(progress.clone(), measured);
    let samples = match load {
        Load::Closed(n) => closed(target, gate, progress, n, args.ramp_up).await?,
        Load::Poisson(rate) => poisson(target, gate, progress, rate).await?,
    };
    drop(ticker);
    let elapsed = Instant::now().saturating_duration_since(measured);
    Ok(Report::new(load, &samples, elapsed, args.slo.as_ref()))
}

/// `n` clients, each sending its next request when the last one ended; they start spread
/// over `ramp`.
async fn closed(
    target: Arc<Target>,
    gate: Arc<Gate>,
    progress: Arc<Progress>,
    n: usize,
    ramp: Duration,
) -> io::Result<Vec<Sample>> {
    let started = Instant::now();
    let workers: Vec<_> = (0..n)
        .map(|i| {
            let (target, gate, progress) = (target.clone(), gate.clone(), progress.clone());
            let first = started + ramp.mul_f64(i as f64 / n as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(first).await;
                let mut out = Vec::new();
                while let Some(counted) = gate.admit() {
                    let s = measure::measure(&target).await;
                    if counted {
                        progress.record(&s);
                        out.push(s);
                    }
                }
                out
            })
        })
        .collect();
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await.map_err(io::Error::other)?);
    }
    Ok(samples)
}

/// Requests started at Poisson arrivals of `rate` a second, whatever is still in flight.
async fn poisson(
    target: Arc<Target>,
    gate: Arc<Gate>,
    progress: Arc<Progress>,
    rate: f64,
) -> io::Result<Vec<Sample>> {
    let mut tasks = Vec::new();
    let mut next = Instant::now();
    while next < gate.deadline {
        tokio::time::sleep_until(next).await;
        let Some(counted) = gate.admit() else {
            break;
        };
        let (target, progress) = (target.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let s = measure::measure(&target).await;
            counted.then(|| {
                progress.record(&s);
                s
            })
        }));
        // Exponential inter-arrival time.
        let gap = -(1.0 - fastrand::f64()).ln() / rate.max(1e-9);
        next += Duration::from_secs_f64(gap.min(3600.0));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.map_err(io::Error::other)?);
    }
    Ok(samples)
}

/// `--rate`: a positive number of requests per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("`{s}`: expected requests per second, more than 0")),
    }
}

/// The `--header`s, then those `api` needs that they do not give.
fn parse_headers(raw: &[String], api: Api) -> io::Result<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for h in raw {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| io::Error::other(format!("--header {h}: expected NAME:VALUE")))?;
        let name = http::HeaderName::from_bytes(k.trim().as_bytes()).map_err(io::Error::other)?;
        let value = http::HeaderValue::from_str(v.trim()).map_err(io::Error::other)?;
        map.append(name, value);
    }
    for (name, value) in api.headers() {
        if !map.contains_key(*name) {
            map.insert(*name, http::HeaderValue::from_static(value));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn defaults_match_the_cli_and_api_parses() {
        let parsed = Cli::parse_from(["bench"]).bench;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", BenchArgs::default()));
        for (flag, api) in [
            ("chat", Api::Chat),
            ("completions", Api::Completions),
            ("responses", Api::Responses),
            ("messages", Api::Messages),
            ("embeddings", Api::Embeddings),
        ] {
            let a = Cli::parse_from(["bench", "--api", flag]).bench;
            assert_eq!(a.effective_api(), api);
        }
        let a = Cli::parse_from(["bench", "--completions"]).bench;
        assert_eq!(a.effective_api(), Api::Completions);
        assert!(Cli::try_parse_from(["bench", "--completions", "--api", "chat"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--api", "rerank"]).is_err());
        assert_eq!(
            Cli::parse_from(["bench", "--rate", "2.5"]).bench.rate,
            Some(2.5)
        );
        for bad in ["0", "-1", "NaN", "inf", "fast"] {
            assert!(
                Cli::try_parse_from(["bench", "--rate", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
