//! OTLP metrics: the measurements of `/metrics`, pushed to a collector through the
//! OpenTelemetry SDK's metrics pipeline (`[telemetry] metrics = true` or
//! `OTEL_METRICS_EXPORTER=otlp`). The instruments take the OpenTelemetry GenAI names where the
//! conventions have one (`gen_ai.server.time_to_first_token`, ...) and `weir.*` otherwise, the
//! Prometheus histograms' bucket bounds (SLO thresholds merged in) and the attributes
//! `gen_ai.request.model`, `gen_ai.operation.name`, `weir.backend` (plus `weir.outcome` or
//! `gen_ai.token.type` where the Prometheus series have outcome or token type). As on
//! `/metrics`, `[metrics] histogram_backend = false` leaves `weir.backend` off the histograms
//! (the counters keep it).
//!
//! Built once at start, held by `Telemetry`; a request takes a [`RequestMetrics`] only when
//! they are on. It records once per finished request (`finish`) and once per inter-token gap
//! (`gap`), with the request's attributes built once and reused.
//!
//! The SDK's `PeriodicReader` collects and exports on a thread of its own, outside tokio,
//! where the OTLP clients (tonic, hyper) cannot run: the exporter here runs them on a
//! single-threaded tokio runtime of its own, driven by that thread while it exports. So an
//! export never depends on the gateway's runtime (single-threaded with one core), and the
//! last one at shutdown or drop needs nothing from it.
//!
//! Exemplars: opentelemetry_sdk 0.33 has the data model (`HistogramDataPoint::exemplars`)
//! but no exemplar filter or reservoir: every data point is exported with none
//! (opentelemetry-rust#3369). The trace ids of slow requests are on `/metrics` (OpenMetrics).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Histogram, Meter};

use crate::config::SloConfig;
use crate::labels::{OUTCOMES, Operation};
use crate::metrics::{
    DURATION_BUCKETS, OVERHEAD_BUCKETS, Series, TOKEN_BUCKETS, TPOT_BUCKETS, TTFT_BUCKETS,
};
use crate::slo::merge_buckets;

mod export;
pub use export::start;

const MODEL: &str = "gen_ai.request.model";
const OPERATION: &str = "gen_ai.operation.name";
const BACKEND: &str = "weir.backend";
const OUTCOME: &str = "weir.outcome";
const TOKEN_TYPE: &str = "gen_ai.token.type";

/// Every instrument, made once.
pub struct Instruments {
    ttft: Histogram<f64>,
    ttfat: Histogram<f64>,
    tpot: Histogram<f64>,
    itl: Histogram<f64>,
    upstream_ttft: Histogram<f64>,
    overhead: Histogram<f64>,
    duration: Histogram<f64>,
    token_usage: Histogram<u64>,
    requests: Counter<u64>,
    tokens: Counter<u64>,
    /// The histograms carry `weir.backend`.
    histogram_backend: bool,
    /// The bound instruments of each series recorded so far, by the series' address.
    series: RwLock<HashMap<usize, Arc<Bound>>>,
}

fn seconds(m: &Meter, name: &'static str, help: &'static str, bounds: &[f64]) -> Histogram<f64> {
    m.f64_histogram(name)
        .with_unit("s")
        .with_description(help)
        .with_boundaries(bounds.to_vec())
        .build()
}

impl Instruments {
    /// The instruments of `meter`; TTFT and ITL/TPOT bounds with `slo`'s thresholds added,
    /// as the Prometheus histograms have them, and `weir.backend` on the histograms when
    /// `histogram_backend`.
    pub fn new(meter: &Meter, slo: &SloConfig, histogram_backend: bool) -> Instruments {
        let ttft = merge_buckets(TTFT_BUCKETS, &slo.ttft_bounds());
        let itl = merge_buckets(TPOT_BUCKETS, &slo.itl_bounds());
        let m = meter;
        Instruments {
            ttft: seconds(
                m,
                "gen_ai.server.time_to_first_token",
                "Time from the request head to the first content-bearing event sent to the client.",
                &ttft,
            ),
            ttfat: seconds(
                m,
                "weir.time_to_first_answer_token",
                "Time from the request head to the first content-bearing event that is not reasoning.",
                &ttft,
            ),
            tpot: seconds(
                m,
                "gen_ai.server.time_per_output_token",
                "Per request: (e2e - TTFT) / (output tokens - 1).",
                &itl,
            ),
            itl: seconds(
                m,
                "weir.inter_token_latency",
                "Gap between successive content-bearing events of a request (one sample per gap).",
                &itl,
            ),
            upstream_ttft: seconds(
                m,
                "weir.upstream.time_to_first_token",
                "Time from sending the request upstream to the first content-bearing event received.",
                TTFT_BUCKETS,
            ),
            overhead: seconds(
                m,
                "weir.gateway.overhead",
                "TTFT minus upstream TTFT: what the gateway added before the first token.",
                OVERHEAD_BUCKETS,
            ),
            duration: seconds(
                m,
                "gen_ai.server.request.duration",
                "Time from the request head to the end of the response body.",
                DURATION_BUCKETS,
            ),
            token_usage: m
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Tokens per request, as reported by the backend (or estimated).")
                .with_boundaries(TOKEN_BUCKETS.to_vec())
                .build(),
            requests: m
                .u64_counter("weir.requests")
                .with_unit("{request}")
                .with_description("Finished requests by outcome.")
                .build(),
            tokens: m
                .u64_counter("weir.tokens")
                .with_unit("{token}")
                .with_description("Tokens processed, by type.")
                .build(),
            histogram_backend,
            series: RwLock::new(HashMap::new()),
        }
    }

    /// The bound instruments of a request's series, made on its first request.
    fn bound(&self, l: &Labels<'_>) -> Arc<Bound> {
        let key = l.key();
        let found = self.series.read().ok().and_then(|m| m.get(&key).cloned());
        if let Some(b) = found {
            return b;
        }
        let b = Arc::new(Bound::new(l, self.histogram_backend));
        match self.series.write() {
            Ok(mut m) => m.entry(key).or_insert(b).clone(),
            Err(_) => b,
        }
    }
}

/// The labels of a request, where its record keeps them.
pub struct Labels<'a> {
    /// The request's Prometheus series: its model label.
    pub series: &'a Arc<Series>,
    pub operation: Operation,
    pub backend: &'a Arc<str>,
}

impl Labels<'_> {
    /// Which series: the same for the same labels while the request holds it.
    fn key(&self) -> usize {
        Arc::as_ptr(self.series) as usize
    }

    fn attributes(&self) -> [KeyValue; 3] {
        [
            KeyValue::new(MODEL, Arc::<str>::from(self.series.model())),
            KeyValue::new(OPERATION, self.operation.as_str()),
            KeyValue::new(BACKEND, self.backend.clone()),
        ]
    }
}

/// What a finished request measured, as `record.rs` derived it for every other output.
pub struct Finished {
    pub outcome: &'static str,
    pub e2e: Duration,
    pub ttft: Option<Duration>,
    pub ttfat: Option<Duration>,
    pub tpot: Option<Duration>,
    pub upstream_ttft: Option<Duration>,
    pub overhead: Option<Duration>,
    pub input: Option<u64>,
    /// Output tokens, of a generation only.
    pub output: Option<u64>,
    pub cache_read: u64,
    pub reasoning: u64,
}

/// One series' instruments, each bound to its attribute set at its first use (so that only
/// what was recorded is exported, as with unbound instruments); a record is then an update
/// of its aggregator, without the SDK's hash and lookup of the attributes.
struct Bound {
    /// Holds the series, so that its address (the key) is not reused.
    series: Arc<Series>,
    base: [KeyValue; 3],
    /// The histograms' attributes: `base`, without `weir.backend` when it is off.
    hist: Vec<KeyValue>,
    ttft: OnceLock<BoundHistogram<f64>>,
    ttfat: OnceLock<BoundHistogram<f64>>,
    tpot: OnceLock<BoundHistogram<f64>>,
    itl: OnceLock<BoundHistogram<f64>>,
    upstream_ttft: OnceLock<BoundHistogram<f64>>,
    overhead: OnceLock<BoundHistogram<f64>>,
    /// By outcome, in `OUTCOMES`' order.
    duration: [OnceLock<BoundHistogram<f64>>; OUTCOMES.len()],
    requests: [OnceLock<BoundCounter<u64>>; OUTCOMES.len()],
    /// By token type, in `TOKEN_TYPES`' order.
    usage: [OnceLock<BoundHistogram<u64>>; 2],
    tokens: [OnceLock<BoundCounter<u64>>; TOKEN_TYPES.len()],
}

const TOKEN_TYPES: [&str; 4] = ["input", "output", "cache_read", "reasoning"];

/// The base attributes and one more.
fn and(base: &[KeyValue], kv: KeyValue) -> Vec<KeyValue> {
    let mut v = base.to_vec();
    v.push(kv);
    v
}

impl Bound {
    fn new(l: &Labels<'_>, histogram_backend: bool) -> Bound {
        let base = l.attributes();
        let n = if histogram_backend { 3 } else { 2 };
        Bound {
            series: l.series.clone(),
            hist: base[..n].to_vec(),
            base,
            ttft: OnceLock::new(),
            ttfat: OnceLock::new(),
            tpot: OnceLock::new(),
            itl: OnceLock::new(),
            upstream_ttft: OnceLock::new(),
            overhead: OnceLock::new(),
            duration: Default::default(),
            requests: Default::default(),
            usage: Default::default(),
            tokens: Default::default(),
        }
    }

    fn latency(&self, cell: &OnceLock<BoundHistogram<f64>>, h: &Histogram<f64>, d: Duration) {
        cell.get_or_init(|| h.bind(&self.hist))
            .record(d.as_secs_f64());
    }

    fn record(&self, i: &Instruments, f: &Finished) {
        let some = |cell, h, d: Option<Duration>| d.map(|d| self.latency(cell, h, d));
        some(&self.ttft, &i.ttft, f.ttft);
        some(&self.upstream_ttft, &i.upstream_ttft, f.upstream_ttft);
        some(&self.overhead, &i.overhead, f.overhead);
        some(&self.ttfat, &i.ttfat, f.ttfat);
        some(&self.tpot, &i.tpot, f.tpot);
        if let Some(o) = OUTCOMES.iter().position(|o| *o == f.outcome) {
            let outcome = || KeyValue::new(OUTCOME, OUTCOMES[o]);
            self.duration[o]
                .get_or_init(|| i.duration.bind(&and(&self.hist, outcome())))
                .record(f.e2e.as_secs_f64());
            self.requests[o]
                .get_or_init(|| i.requests.bind(&and(&self.base, outcome())))
                .add(1);
        }
        let counts = [f.input, f.output, Some(f.cache_read), Some(f.reasoning)];
        for (t, n) in counts.into_iter().enumerate() {
            let Some(n) = n else { continue };
            let attrs = |base: &[KeyValue]| and(base, KeyValue::new(TOKEN_TYPE, TOKEN_TYPES[t]));
            if let Some(usage) = self.usage.get(t) {
                usage
                    .get_or_init(|| i.token_usage.bind(&attrs(&self.hist)))
                    .record(n);
            }
            self.tokens[t]
                .get_or_init(|| i.tokens.bind(&attrs(&self.base)))
                .add(n);
        }
    }
}

/// One request's handle on the instruments: its series' bound instruments, found once, at its
/// first gap or at its end.
pub struct RequestMetrics {
    instruments: Arc<Instruments>,
    bound: OnceLock<Arc<Bound>>,
}

impl RequestMetrics {
    pub fn new(instruments: Arc<Instruments>) -> RequestMetrics {
        RequestMetrics {
            instruments,
            bound: OnceLock::new(),
        }
    }

    /// Runs `f` with the request's series' instruments (found again if its series changed
    /// since: the gateway picks the backend before the first gap, so it does not).
    fn with_bound<R>(&self, l: &Labels<'_>, f: impl FnOnce(&Bound) -> R) -> R {
        let bound = self.bound.get_or_init(|| self.instruments.bound(l));
        if Arc::ptr_eq(&bound.series, l.series) {
            f(bound)
        } else {
            f(&self.instruments.bound(l))
        }
    }

    /// One inter-token gap.
    pub fn gap(&self, l: &Labels<'_>, gap: Duration) {
        let i = &self.instruments;
        self.with_bound(l, |b| b.latency(&b.itl, &i.itl, gap));
    }

    /// Every other measurement of a finished request.
    pub fn finish(&self, l: &Labels<'_>, f: &Finished) {
        self.with_bound(l, |b| b.record(&self.instruments, f));
    }
}
