//! The series count per replica (README, "Metrics: how many series"): weir in front of
//! simulators, M models with B backends each, both settings of `[metrics]
//! histogram_backend`, traffic that creates every series of each (model, operation,
//! backend), and the scrape's count equal to the formula — its bucket counts read from the
//! exposition. Without `backend` on the histograms the count grows with the backends only by
//! their counters and gauges.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::common::prom::{Sample, samples, sum};
use crate::common::*;
use http::StatusCode;
use weir::config::{BackendConfig, Config, Strategy};
use weir::labels::{ErrorKind, REJECT_REASONS, RETRY_REASONS, TIMEOUT_KINDS};
use weir_sim::SimConfig;

/// The latency histograms, one series set per (model, operation[, backend]).
pub(crate) const LATENCY: [&str; 6] = [
    "gen_ai_server_time_to_first_token_seconds",
    "weir_time_to_first_answer_token_seconds",
    "gen_ai_server_time_per_output_token_seconds",
    "weir_inter_token_latency_seconds",
    "weir_upstream_time_to_first_token_seconds",
    "weir_gateway_overhead_seconds",
];
/// By token type (input, output), created with the others.
pub(crate) const TOKEN_USAGE: &str = "gen_ai_client_token_usage";
/// By outcome, created at a request's end.
pub(crate) const DURATION: &str = "gen_ai_server_request_duration_seconds";

/// What the generations are sent to: (path, body) for a model.
fn generations(model: &str) -> [(&'static str, serde_json::Value); 2] {
    let mut chat = chat(true, 4);
    chat["model"] = model.into();
    let completion = serde_json::json!({
        "model": model, "prompt": "How high is the weir?", "max_tokens": 4,
        "ignore_eos": true, "stream": true,
    });
    [
        ("/v1/chat/completions", chat),
        ("/v1/completions", completion),
    ]
}

fn model(i: usize) -> String {
    format!("model-{i}")
}

/// The number of `le` values (finite bounds and +Inf) of a histogram family.
fn les(all: &[Sample], family: &str) -> usize {
    let bucket = format!("{family}_bucket");
    let les: BTreeSet<&str> = all
        .iter()
        .filter(|s| s.name == bucket)
        .filter_map(|s| s.labels.get("le").map(String::as_str))
        .collect();
    assert!(les.len() > 1, "{family}: buckets in the exposition");
    les.len()
}

/// One scrape of weir with `models` models served by `per_model` simulators each, after the
/// traffic: every model's chat and text completion on each of its backends, and one chat for
/// a model no backend serves. Returns the scrape.
async fn scrape_after_traffic(models: usize, per_model: usize, histogram_backend: bool) -> String {
    let mut backends = Vec::new();
    for i in 0..models {
        for _ in 0..per_model {
            let sim = start_sim(SimConfig {
                model: model(i),
                ..SimConfig::fast()
            })
            .await;
            backends.push((i, sim));
        }
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|(_, a)| *a).collect();
    let mut config: Config = gateway_config(&addrs);
    config.models = (0..models).map(model).collect();
    for (b, (i, _)) in config.backends.iter_mut().zip(&backends) {
        *b = BackendConfig {
            models: vec![model(*i)],
            ..b.clone()
        };
    }
    // Each run of `per_model` requests of a model goes once to each of its backends.
    config.balance = Strategy::RoundRobin;
    config.metrics.histogram_backend = histogram_backend;
    let gw = weir::gateway::start(config).await.unwrap();
    let client = client();
    for i in 0..models {
        for (path, body) in generations(&model(i)) {
            for _ in 0..per_model {
                let (status, _, _) = send(&client, post(gw.addr, path, &body)).await;
                assert_eq!(status, StatusCode::OK, "{path} for {}", model(i));
            }
        }
    }
    let mut unknown = chat(true, 4);
    unknown["model"] = "not-served".into();
    let (status, _, _) = send(&client, post(gw.addr, "/v1/chat/completions", &unknown)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let requests = (models * 2 * per_model + 1) as f64;
    let text = wait_for_metrics(gw.admin_addr, "every request counted", |t| {
        sum(t, "weir_requests_total", &[]) == Some(requests)
    })
    .await;
    gw.shutdown().await;
    text
}

/// The formula of README's "Metrics: how many series", for this test's traffic: `triples`
/// (model, operation, backend) with requests, each with one outcome; `hist_keys` the
/// histograms' label sets (the triples, or their (model, operation) pairs without `backend`);
/// `judged` models with SLO series (those with a streamed generation); `backends` backends.
struct Expected {
    triples: usize,
    hist_keys: usize,
    judged: usize,
    backends: usize,
}

impl Expected {
    fn count(&self, all: &[Sample]) -> usize {
        // A histogram of n bounds: n + 1 buckets (+Inf), _sum and _count.
        let h = |family| les(all, family) + 2;
        let created = LATENCY.iter().map(|f| h(f)).sum::<usize>() + 2 * h(TOKEN_USAGE);
        let per_outcome = h(DURATION);
        // Exported from the start: the process collector's series, the closed sets of
        // retries, rejections, errors and timeouts, requests in flight, dropped spans
        // (queue_full, export_failed, shutdown), the limit store's errors (error, timeout).
        let process = all
            .iter()
            .filter(|s| s.name.starts_with("process_"))
            .count();
        let fixed = process
            + RETRY_REASONS.len()
            + REJECT_REASONS.len()
            + ErrorKind::ALL.len()
            + TIMEOUT_KINDS.len()
            + 1
            + 3
            + 2;
        // weir_backend_up; the SLO's requests (3 slos x met) and thresholds (2) per model;
        // per triple 4 token counters and one (outcome, code) of weir_requests_total.
        fixed
            + self.backends
            + self.judged * (6 + 2)
            + self.triples * (4 + 1)
            + self.hist_keys * (created + per_outcome)
    }
}

fn histograms(all: &[Sample]) -> impl Iterator<Item = &Sample> {
    all.iter().filter(|s| {
        LATENCY.iter().chain([&TOKEN_USAGE, &DURATION]).any(|f| {
            s.name
                .strip_prefix(f)
                .is_some_and(|rest| rest.starts_with('_'))
        })
    })
}

#[tokio::test]
async fn the_series_count_is_the_documented_formula_with_and_without_backend_on_histograms() {
    for histogram_backend in [true, false] {
        for models in [1, 2] {
            let mut first = None;
            for per_model in [1, 2, 3] {
                let text = scrape_after_traffic(models, per_model, histogram_backend).await;
                let all = samples(&text);
                let backends = models * per_model;
                let names: BTreeSet<&str> = all
                    .iter()
                    .filter(|s| s.name == "weir_requests_total")
                    .filter_map(|s| s.labels.get("backend").map(String::as_str))
                    .collect();
                assert_eq!(
                    names.len(),
                    backends + 1,
                    "every backend and `none` served: {names:?}"
                );
                // Chat and text completion of every model on each of its backends, and the
                // chat of the model no backend serves (`other` on `none`).
                let triples = models * 2 * per_model + 1;
                let hist_keys = if histogram_backend {
                    triples
                } else {
                    models * 2 + 1
                };
                let want = Expected {
                    triples,
                    hist_keys,
                    // Every model with a streamed generation, `other` too (its client
                    // error is not judged, but its SLO series are made).
                    judged: models + 1,
                    backends,
                }
                .count(&all);
                assert_eq!(
                    all.len(),
                    want,
                    "M={models} B={per_model} histogram_backend={histogram_backend}\n{text}"
                );
                let labelled = histograms(&all)
                    .filter(|s| s.labels.contains_key("backend"))
                    .count();
                let total = histograms(&all).count();
                assert!(total > 0);
                if histogram_backend {
                    assert_eq!(labelled, total, "every histogram series has `backend`");
                } else {
                    assert_eq!(labelled, 0, "no histogram series has `backend`");
                }
                eprintln!(
                    "M={models} B={per_model} histogram_backend={histogram_backend}: {} series",
                    all.len()
                );
                let (n1, b1) = *first.get_or_insert((all.len(), backends));
                if !histogram_backend {
                    // Each further backend: its weir_backend_up, and per operation its 4
                    // token counters and its one weir_requests_total series.
                    let per_backend = 1 + 2 * (4 + 1);
                    assert_eq!(all.len() - n1, (backends - b1) * per_backend);
                }
            }
        }
    }
}
