//! `weir bench`: a client-side load generator for OpenAI-compatible endpoints (weir, vLLM
//! or anything else), measuring with the same definitions and the same SSE parser as the
//! gateway: TTFT, ITL, TPOT, e2e, throughput and goodput against SLOs. `--api` picks the
//! API: chat (default), completions, responses (OpenAI Responses), messages (Anthropic
//! Messages) or embeddings (not streamed).

mod api;
mod events;
mod measure;
pub mod report;

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
pub use report::{Report, Slo};

/// Arguments of `weir bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the endpoint (weir, vLLM, ...).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, default_value = "tiny-llama")]
    pub model: String,
    /// Closed loop: this many requests in flight at all times.
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: Poisson arrivals at this many requests per second.
    #[arg(long)]
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
    /// Goodput SLOs, e.g. `ttft=200ms,itl=50ms` (keys: ttft, tpot, itl, e2e).
    #[arg(long)]
    pub slo: Option<Slo>,
    /// Also write the report(s) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Default for BenchArgs {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".to_owned(),
            model: "tiny-llama".to_owned(),
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
            slo: None,
            json: None,
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
    pub ok: bool,
    pub ttft: Option<f64>,
    pub tpot: Option<f64>,
    pub e2e: f64,
    pub itl: Vec<f32>,
    pub output_tokens: u64,
    pub input_tokens: u64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Runs `weir bench` from the command line: prints a table per run, writes JSON if asked.
pub async fn run(args: BenchArgs) -> std::io::Result<()> {
    let loads: Vec<Load> = if !args.sweep.is_empty() {
        args.sweep.iter().map(|&c| Load::Closed(c.max(1))).collect()
    } else if let Some(r) = args.rate {
        vec![Load::Poisson(r)]
    } else {
        vec![Load::Closed(args.concurrency.unwrap_or(16).max(1))]
    };
    let mut reports = Vec::new();
    for load in loads {
        eprintln!(
            "weir bench: {} against {} ...",
            report::describe(load),
            args.url
        );
        let r = run_load(&args, load).await?;
        print!("{}", r.table());
        reports.push(r);
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&reports).map_err(std::io::Error::other)?;
        std::fs::write(path, json)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// One run of `load`, bounded by `args.requests` and `args.duration`, after the warm-up.
pub async fn run_load(args: &BenchArgs, load: Load) -> std::io::Result<Report> {
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build_http();
    drive(&client, args, load).await
}

async fn drive(client: &HttpClient, args: &BenchArgs, load: Load) -> std::io::Result<Report> {
    let api = args.effective_api();
    let headers = parse_headers(&args.headers, api)?;
    let body = Bytes::from(api::request_body(args, api).to_string());
    let uri: http::Uri = format!("{}{}", args.url.trim_end_matches('/'), api.path())
        .parse()
        .map_err(std::io::Error::other)?;
    let client = client.clone();
    let budget = Arc::new(AtomicUsize::new(args.requests.unwrap_or(usize::MAX)));
    let started = Instant::now();
    // Requests started before `measured` are the warm-up: sent, awaited and not counted.
    let measured = started + args.warmup;
    let deadline = measured + args.duration;
    let one = {
        let (client, uri, body, headers) =
            (client.clone(), uri.clone(), body.clone(), headers.clone());
        move || {
            let (client, uri, body, headers) =
                (client.clone(), uri.clone(), body.clone(), headers.clone());
            async move { measure::measure(&client, api, uri, body, headers).await }
        }
    };
    // Whether a request starting now is sent, and whether it is counted; None: stop.
    let admit = move |budget: &AtomicUsize| {
        let now = Instant::now();
        if now >= deadline {
            None
        } else if now < measured {
            Some(false)
        } else {
            budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .ok()
                .map(|_| true)
        }
    };
    let mut samples = Vec::new();
    match load {
        Load::Closed(n) => {
            let ramp = args.ramp_up;
            let workers: Vec<_> = (0..n)
                .map(|i| {
                    let (one, budget) = (one.clone(), budget.clone());
                    let first = started + ramp.mul_f64(i as f64 / n as f64);
                    tokio::spawn(async move {
                        tokio::time::sleep_until(first).await;
                        let mut out = Vec::new();
                        while let Some(counted) = admit(&budget) {
                            let s = one().await;
                            if counted {
                                out.push(s);
                            }
                        }
                        out
                    })
                })
                .collect();
            for w in workers {
                samples.extend(w.await.map_err(std::io::Error::other)?);
            }
        }
        Load::Poisson(rate) => {
            let mut tasks = Vec::new();
            let mut next = Instant::now();
            while next < deadline {
                tokio::time::sleep_until(next).await;
                let Some(counted) = admit(&budget) else {
                    break;
                };
                tasks.push((counted, tokio::spawn(one())));
                // Exponential inter-arrival time.
                let gap = -(1.0 - fastrand::f64()).ln() / rate.max(1e-9);
                next += Duration::from_secs_f64(gap.min(3600.0));
            }
            for (counted, t) in tasks {
                let s = t.await.map_err(std::io::Error::other)?;
                if counted {
                    samples.push(s);
                }
            }
        }
    }
    let elapsed = Instant::now().saturating_duration_since(measured);
    Ok(Report::new(load, &samples, elapsed, args.slo.as_ref()))
}

/// The `--header`s, then those `api` needs that they do not give.
fn parse_headers(raw: &[String], api: Api) -> std::io::Result<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for h in raw {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| std::io::Error::other(format!("--header {h}: expected NAME:VALUE")))?;
        let name =
            http::HeaderName::from_bytes(k.trim().as_bytes()).map_err(std::io::Error::other)?;
        let value = http::HeaderValue::from_str(v.trim()).map_err(std::io::Error::other)?;
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
    }
}
