//! The series families of DESIGN.md's contract, each registered as it is built, with the
//! closed label sets exported from the start.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::{
    BACKEND, DURATION_BUCKETS, MODEL, OPERATION, OVERHEAD_BUCKETS, TOKEN_BUCKETS, TOKEN_TYPE,
    TTFT_BUCKETS,
};
use crate::labels::{ErrorKind, REJECT_REASONS, RETRY_REASONS, TIMEOUT_KINDS};

/// Every family but the SLO's (`slo.rs`) and the dropped spans' (`telemetry`).
pub(super) struct Families {
    pub retries: IntCounterVec,
    pub rejected: IntCounterVec,
    pub tenants: IntCounterVec,
    pub ttft: HistogramVec,
    pub ttfat: HistogramVec,
    pub tpot: HistogramVec,
    pub itl: HistogramVec,
    pub duration: HistogramVec,
    pub token_usage: HistogramVec,
    pub upstream_ttft: HistogramVec,
    pub overhead: HistogramVec,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub timeouts: IntCounterVec,
    pub tokens: IntCounterVec,
    pub in_flight: IntGauge,
    pub backend_up: IntGaugeVec,
    pub endpoint_up: IntGaugeVec,
    pub discovery_errors: IntCounterVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("unique metric names");
    c
}

fn hist(r: &Registry, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        r,
        HistogramVec::new(opts, labels).expect("static histogram definition"),
    )
}

/// A counter family; `zeros` are label values exported at 0 from the start (one label).
fn counter(r: &Registry, name: &str, help: &str, labels: &[&str], zeros: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static counter definition");
    for z in zeros {
        c.with_label_values(&[z]);
    }
    register(r, c)
}

impl Families {
    /// Builds and registers every family; TTFT and ITL/TPOT take the given buckets. The
    /// histograms carry `backend` when `histogram_backend`; the counters always do.
    pub(super) fn new(
        r: &Registry,
        ttft_buckets: &[f64],
        itl_buckets: &[f64],
        histogram_backend: bool,
    ) -> Families {
        let hist_labels = |extra: Option<&'static str>| {
            let mut l = vec![MODEL, OPERATION];
            l.extend(histogram_backend.then_some(BACKEND));
            l.extend(extra);
            l
        };
        let common = hist_labels(None);
        let with = |extra: &'static str| [MODEL, OPERATION, BACKEND, extra];
        let errors: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        Families {
            retries: counter(
                r,
                "weir_retries_total",
                "Requests retried on another backend, by reason.",
                &["reason"],
                &RETRY_REASONS,
            ),
            rejected: counter(
                r,
                "weir_rejected_total",
                "Connections and requests refused by a limit, by reason.",
                &["reason"],
                &REJECT_REASONS,
            ),
            tenants: counter(
                r,
                "weir_tenant_requests_total",
                "Finished requests by API key name and outcome.",
                &["tenant", "outcome"],
                &[],
            ),
            ttft: hist(
                r,
                "gen_ai_server_time_to_first_token_seconds",
                "Time from the request head to the first content-bearing event sent to the client.",
                ttft_buckets,
                &common,
            ),
            ttfat: hist(
                r,
                "weir_time_to_first_answer_token_seconds",
                "Time from the request head to the first content-bearing event that is not reasoning.",
                ttft_buckets,
                &common,
            ),
            tpot: hist(
                r,
                "gen_ai_server_time_per_output_token_seconds",
                "Per request: (e2e - TTFT) / (output tokens - 1).",
                itl_buckets,
                &common,
            ),
            itl: hist(
                r,
                "weir_inter_token_latency_seconds",
                "Gap between successive content-bearing events of a request (one sample per gap).",
                itl_buckets,
                &common,
            ),
            duration: hist(
                r,
                "gen_ai_server_request_duration_seconds",
                "Time from the request head to the end of the response body.",
                DURATION_BUCKETS,
                &hist_labels(Some("outcome")),
            ),
            token_usage: hist(
                r,
                "gen_ai_client_token_usage",
                "Tokens per request, as reported by the backend (or estimated).",
                TOKEN_BUCKETS,
                &hist_labels(Some(TOKEN_TYPE)),
            ),
            upstream_ttft: hist(
                r,
                "weir_upstream_time_to_first_token_seconds",
                "Time from sending the request upstream to the first content-bearing event received.",
                TTFT_BUCKETS,
                &common,
            ),
            overhead: hist(
                r,
                "weir_gateway_overhead_seconds",
                "TTFT minus upstream TTFT: what the gateway added before the first token.",
                OVERHEAD_BUCKETS,
                &common,
            ),
            requests: counter(
                r,
                "weir_requests_total",
                "Finished requests by outcome and HTTP status class.",
                &[MODEL, OPERATION, BACKEND, "outcome", "code"],
                &[],
            ),
            errors: counter(
                r,
                "weir_errors_total",
                "Errors by kind.",
                &["kind"],
                &errors,
            ),
            timeouts: counter(
                r,
                "weir_timeouts_total",
                "Timeouts by kind.",
                &["kind"],
                &TIMEOUT_KINDS,
            ),
            tokens: counter(
                r,
                "weir_tokens_total",
                "Tokens processed, by type.",
                &with(TOKEN_TYPE),
                &[],
            ),
            in_flight: register(
                r,
                IntGauge::new("weir_requests_in_flight", "Requests not finished yet.")
                    .expect("static gauge definition"),
            ),
            backend_up: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "weir_backend_up",
                        "1 when the backend is usable, 0 when not.",
                    ),
                    &[BACKEND],
                )
                .expect("static gauge definition"),
            ),
            endpoint_up: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "weir_backend_endpoint_up",
                        "1 when the endpoint (an address a DNS backend's name resolved to) is usable, 0 when not.",
                    ),
                    &[BACKEND, "endpoint"],
                )
                .expect("static gauge definition"),
            ),
            discovery_errors: counter(
                r,
                "weir_discovery_errors_total",
                "DNS resolutions of a backend's name that failed (error) or found no address (empty); the last known endpoints are kept.",
                &[BACKEND, "kind"],
                &[],
            ),
        }
    }
}
