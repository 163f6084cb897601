//! The Prometheus series of DESIGN.md's contract: built once in one `Metrics`, cloned into
//! the layers, rendered by the admin listener. Label values come only from the config.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

mod exemplars;
mod families;
mod openmetrics;

use crate::labels::{ErrorKind, OTHER, OUTCOMES, Operation, Outcome, STATUS_CLASSES};
pub use exemplars::{Exemplar, Exemplars, Ids};
use families::Families;
use http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry, TextEncoder,
};

pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
pub const TPOT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84,
    327.68,
];
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
];
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,
];

const MODEL: &str = "gen_ai_request_model";
const OPERATION: &str = "gen_ai_operation_name";
const BACKEND: &str = "backend";
const TOKEN_TYPE: &str = "gen_ai_token_type";

/// The `kind` of `weir_discovery_errors_total`: the lookup failed, or found no address.
pub const DISCOVERY_ERRORS: [&str; 2] = ["error", "empty"];

/// The `backend` label of a request no backend was picked for.
pub const NO_BACKEND: &str = "none";

/// All series, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("models", &self.inner.models)
            .finish()
    }
}

/// Most model label values; models discovered beyond this are counted as `other`.
pub const MAX_MODELS: usize = 256;

struct Inner {
    registry: Registry,
    /// The TTFT and the ITL/TPOT buckets, SLO thresholds included: the exemplars' bounds.
    ttft_buckets: Vec<f64>,
    itl_buckets: Vec<f64>,
    models: RwLock<Vec<Arc<str>>>,
    other: Arc<str>,
    none: Arc<str>,
    f: Families,
    slo: crate::slo::Slo,
    tenants: crate::tenants::TenantMetrics,
    series: RwLock<hashbrown::HashMap<SeriesKey, Arc<Series>>>,
    /// `weir_tls_handshake_errors_total{listener, reason}`.
    tls_handshake_errors: IntCounterVec,
    /// Each DNS backend's endpoints and whether each is up.
    endpoints: Mutex<HashMap<String, HashMap<String, bool>>>,
    /// The histograms carry `backend` (`[metrics] histogram_backend`).
    histogram_backend: bool,
}

/// A series' labels: (model, operation, backend).
#[derive(PartialEq, Eq, Hash)]
struct SeriesKey(Arc<str>, Operation, Arc<str>);

/// The same labels borrowed, to look a series up by: no `Arc` counts touched (their cache
/// lines are every worker's) and no hash keyed against flooding (the labels are bounded:
/// models known or `other`, backends configured).
#[derive(Hash)]
struct SeriesRef<'a>(&'a str, Operation, &'a str);

impl hashbrown::Equivalent<SeriesKey> for SeriesRef<'_> {
    fn equivalent(&self, k: &SeriesKey) -> bool {
        *k.0 == *self.0 && k.1 == self.1 && *k.2 == *self.2
    }
}

/// The label-resolved series of one (model, operation, backend): looked up once per
/// request so that per-token observations are a plain atomic update. Without `backend` on
/// the histograms (`[metrics] histogram_backend = false`) the series of one (model,
/// operation) share their histograms and exemplars; the counters stay each backend's own.
pub struct Series {
    pub ttft: Histogram,
    /// Time to the first answer (not reasoning) token.
    pub ttfat: Histogram,
    pub tpot: Histogram,
    pub itl: Histogram,
    pub upstream_ttft: Histogram,
    pub overhead: Histogram,
    pub input_tokens: Histogram,
    pub output_tokens: Histogram,
    pub input_tokens_total: IntCounter,
    pub output_tokens_total: IntCounter,
    /// Input tokens served from the prefix cache (a subset of input).
    pub cache_read_tokens_total: IntCounter,
    /// Output tokens spent reasoning (a subset of output).
    pub reasoning_tokens_total: IntCounter,
    /// The latest request in each bucket of each latency histogram.
    pub ex: Arc<SeriesExemplars>,
    labels: [String; 3],
    /// The histograms carry `backend`.
    histogram_backend: bool,
    duration: HistogramVec,
    requests: IntCounterVec,
    /// `duration`'s histogram of each outcome and `requests`' counter of each outcome and
    /// status class, found in their families once, when first used (no series exists before
    /// a request needs it): a request's end takes no lock and hashes no label.
    durations: [OnceLock<Histogram>; OUTCOMES.len()],
    counts: [OnceLock<IntCounter>; OUTCOMES.len() * STATUS_CLASSES.len()],
}

/// The exemplars of one series' latency histograms.
pub struct SeriesExemplars {
    pub ttft: Exemplars,
    pub ttfat: Exemplars,
    pub tpot: Exemplars,
    /// One per request: its largest gap.
    pub itl: Exemplars,
    pub upstream_ttft: Exemplars,
    pub overhead: Exemplars,
    /// End to end, by outcome (`OUTCOMES`' order).
    duration: Vec<Exemplars>,
}

impl SeriesExemplars {
    fn new(ttft: &[f64], itl: &[f64]) -> SeriesExemplars {
        SeriesExemplars {
            ttft: Exemplars::new(ttft),
            ttfat: Exemplars::new(ttft),
            tpot: Exemplars::new(itl),
            itl: Exemplars::new(itl),
            upstream_ttft: Exemplars::new(TTFT_BUCKETS),
            overhead: Exemplars::new(OVERHEAD_BUCKETS),
            duration: OUTCOMES
                .iter()
                .map(|_| Exemplars::new(DURATION_BUCKETS))
                .collect(),
        }
    }

    /// The end-to-end latency's exemplars of one outcome.
    pub fn duration(&self, outcome: Outcome) -> &Exemplars {
        &self.duration[outcome.index()]
    }

    /// The exemplars of a histogram family, by its name (and outcome label value for e2e).
    fn of(&self, family: &str, outcome: Option<&str>) -> Option<&Exemplars> {
        Some(match family {
            "gen_ai_server_time_to_first_token_seconds" => &self.ttft,
            "weir_time_to_first_answer_token_seconds" => &self.ttfat,
            "gen_ai_server_time_per_output_token_seconds" => &self.tpot,
            "weir_inter_token_latency_seconds" => &self.itl,
            "weir_upstream_time_to_first_token_seconds" => &self.upstream_ttft,
            "weir_gateway_overhead_seconds" => &self.overhead,
            "gen_ai_server_request_duration_seconds" => {
                let outcome = outcome?;
                return self
                    .duration
                    .get(OUTCOMES.iter().position(|o| *o == outcome)?);
            }
            _ => return None,
        })
    }
}

impl Series {
    /// `gen_ai_server_request_duration_seconds{outcome}`.
    pub fn observe_duration(&self, outcome: Outcome, seconds: f64) {
        let found = || {
            let [m, o, b] = &self.labels;
            let outcome = outcome.as_str();
            if self.histogram_backend {
                self.duration
                    .with_label_values(&[m.as_str(), o, b, outcome])
            } else {
                self.duration.with_label_values(&[m.as_str(), o, outcome])
            }
        };
        self.durations[outcome.index()]
            .get_or_init(found)
            .observe(seconds);
    }

    /// `weir_requests_total{outcome, code}`, the code by its status class.
    pub fn count_request(&self, outcome: Outcome, status: StatusCode) {
        let class = crate::labels::status_class(status);
        let found = || {
            let [m, o, b] = &self.labels;
            let (outcome, code) = (outcome.as_str(), STATUS_CLASSES[class]);
            self.requests
                .with_label_values(&[m.as_str(), o, b, outcome, code])
        };
        self.counts[outcome.index() * STATUS_CLASSES.len() + class]
            .get_or_init(found)
            .inc();
    }

    /// The model label value.
    pub fn model(&self) -> &str {
        &self.labels[0]
    }
}

/// The series at the time of a scrape, to find each histogram's exemplars.
struct Snapshot(Vec<Arc<Series>>);

impl openmetrics::Lookup for Snapshot {
    fn exemplars(&self, family: &str, m: &prometheus::proto::Metric) -> Option<&Exemplars> {
        let label = |n: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == n)
                .map(|l| l.value())
        };
        // Histograms without `backend`: every backend's series holds the same exemplars.
        let want = [
            label(MODEL)?,
            label(OPERATION)?,
            label(BACKEND).unwrap_or_default(),
        ];
        let s = self.0.iter().find(|s| {
            let [m, o, b] = &s.labels;
            m == want[0] && o == want[1] && (!s.histogram_backend || b == want[2])
        })?;
        s.ex.of(family, label("outcome"))
    }
}

impl Metrics {
    /// Builds every series; `models` are the model names that get their own label value.
    pub fn new(models: Vec<String>) -> Metrics {
        Metrics::with_slo(models, &crate::config::SloConfig::default())
    }

    /// As [`Metrics::new`], with the SLO series of `slo` and its thresholds added to the
    /// TTFT, TPOT and ITL buckets.
    pub fn with_slo(models: Vec<String>, slo: &crate::config::SloConfig) -> Metrics {
        Metrics::with_config(models, slo, &crate::config::MetricsConfig::default())
    }

    /// As [`Metrics::with_slo`], with the histograms' labels of `metrics` (`[metrics]`).
    pub fn with_config(
        models: Vec<String>,
        slo: &crate::config::SloConfig,
        metrics: &crate::config::MetricsConfig,
    ) -> Metrics {
        let histogram_backend = metrics.histogram_backend;
        let ttft_buckets = crate::slo::merge_buckets(TTFT_BUCKETS, &slo.ttft_bounds());
        let itl_buckets = crate::slo::merge_buckets(TPOT_BUCKETS, &slo.itl_bounds());
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric names");
        let tls_handshake_errors = IntCounterVec::new(
            prometheus::Opts::new(
                "weir_tls_handshake_errors_total",
                "TLS handshakes on a listener that failed, by reason",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(tls_handshake_errors.clone()))
            .expect("unique metric names");
        let inner = Inner {
            f: Families::new(&registry, &ttft_buckets, &itl_buckets, histogram_backend),
            tls_handshake_errors,
            ttft_buckets,
            itl_buckets,
            slo: crate::slo::Slo::new(slo, &registry),
            tenants: crate::tenants::TenantMetrics::new(&registry),
            registry,
            models: RwLock::new(Vec::new()),
            other: OTHER.into(),
            none: NO_BACKEND.into(),
            series: RwLock::new(hashbrown::HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            histogram_backend,
        };
        let metrics = Metrics {
            inner: Arc::new(inner),
        };
        metrics.add_models(&models);
        metrics
    }

    /// Adds model names to the label set (configured or discovered), up to [`MAX_MODELS`].
    pub fn add_models(&self, models: &[String]) {
        let Ok(mut known) = self.inner.models.write() else {
            return;
        };
        for m in models {
            if m.as_str() == OTHER || known.iter().any(|k| &**k == m) {
                continue;
            }
            if known.len() >= MAX_MODELS {
                tracing::warn!(model = %m, "too many models: counted as `other`");
                continue;
            }
            known.push(m.as_str().into());
        }
    }

    /// The label value for a requested model: itself when known, `other` otherwise.
    pub fn model_label(&self, model: Option<&str>) -> Arc<str> {
        let found = model.and_then(|m| {
            let known = self.inner.models.read().ok()?;
            known.iter().find(|k| &***k == m).cloned()
        });
        found.unwrap_or_else(|| self.inner.other.clone())
    }

    /// The `backend` label of requests no backend was picked for.
    pub fn no_backend(&self) -> Arc<str> {
        self.inner.none.clone()
    }

    /// The histograms carry the `backend` label (`[metrics] histogram_backend`).
    pub fn histogram_backend(&self) -> bool {
        self.inner.histogram_backend
    }

    /// The series of one (model, operation, backend), created on first use.
    pub fn series(&self, model: &Arc<str>, op: Operation, backend: &Arc<str>) -> Arc<Series> {
        let key = SeriesRef(model, op, backend);
        if let Some(s) = self
            .inner
            .series
            .read()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return s;
        }
        let i = &self.inner.f;
        let hb = self.inner.histogram_backend;
        let model_label: &str = model;
        let l = [model_label, op.as_str(), backend];
        let t = |x: &'static str| [model_label, op.as_str(), backend, x];
        // The histograms' labels: without `backend` when it is off.
        let h: &[&str] = if hb { &l } else { &l[..2] };
        let ht = |x: &'static str| {
            let mut v = h.to_vec();
            v.push(x);
            v
        };
        let mut map = self.inner.series.write().ok();
        if let Some(s) = map.as_ref().and_then(|m| m.get(&key)) {
            return s.clone();
        }
        // Without `backend` on the histograms, a (model, operation) has one set of
        // exemplars, as it has one set of histograms: that of another backend's series.
        let shared = map
            .as_ref()
            .filter(|_| !hb)
            .and_then(|m| m.iter().find(|(k, _)| *k.0 == *key.0 && k.1 == op))
            .map(|(_, s)| s.ex.clone());
        let ex = shared.unwrap_or_else(|| {
            Arc::new(SeriesExemplars::new(
                &self.inner.ttft_buckets,
                &self.inner.itl_buckets,
            ))
        });
        let s = Arc::new(Series {
            ttft: i.ttft.with_label_values(h),
            ttfat: i.ttfat.with_label_values(h),
            tpot: i.tpot.with_label_values(h),
            itl: i.itl.with_label_values(h),
            upstream_ttft: i.upstream_ttft.with_label_values(h),
            overhead: i.overhead.with_label_values(h),
            input_tokens: i.token_usage.with_label_values(&ht("input")),
            output_tokens: i.token_usage.with_label_values(&ht("output")),
            input_tokens_total: i.tokens.with_label_values(&t("input")),
            output_tokens_total: i.tokens.with_label_values(&t("output")),
            cache_read_tokens_total: i.tokens.with_label_values(&t("cache_read")),
            reasoning_tokens_total: i.tokens.with_label_values(&t("reasoning")),
            ex,
            labels: l.map(str::to_string),
            histogram_backend: hb,
            duration: i.duration.clone(),
            requests: i.requests.clone(),
            durations: Default::default(),
            counts: std::array::from_fn(|_| OnceLock::new()),
        });
        if let Some(m) = map.as_mut() {
            m.insert(SeriesKey(model.clone(), op, backend.clone()), s.clone());
        }
        s
    }

    pub fn error(&self, kind: ErrorKind) {
        self.inner
            .f
            .errors
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// The failed TLS handshakes of one listener (`proxy`, `admin`) and reason: exported at 0
    /// from the first call.
    pub fn tls_handshake_errors(&self, listener: &str, reason: &str) -> IntCounter {
        self.inner
            .tls_handshake_errors
            .with_label_values(&[listener, reason])
    }

    /// The counter of one rejection reason (handed to the server for connections).
    pub fn rejected(&self, reason: &str) -> IntCounter {
        self.inner.f.rejected.with_label_values(&[reason])
    }

    pub fn tenant_request(&self, tenant: &str, outcome: &str) {
        self.inner
            .f
            .tenants
            .with_label_values(&[tenant, outcome])
            .inc();
    }

    pub fn retry(&self, reason: &str) {
        self.inner.f.retries.with_label_values(&[reason]).inc();
    }

    pub fn timeout(&self, kind: &str) {
        self.inner.f.timeouts.with_label_values(&[kind]).inc();
    }

    /// The SLO judge and its series.
    pub fn slo(&self) -> &crate::slo::Slo {
        &self.inner.slo
    }

    /// The tenants' series: rate limiting, cost, the limit store.
    pub fn tenants(&self) -> &crate::tenants::TenantMetrics {
        &self.inner.tenants
    }

    pub fn in_flight(&self) -> &IntGauge {
        &self.inner.f.in_flight
    }

    /// A backend without endpoints (`discovery = "static"`) is up or not.
    pub fn set_backend_up(&self, backend: &str, up: bool) {
        self.inner
            .f
            .backend_up
            .with_label_values(&[backend])
            .set(i64::from(up));
    }

    /// Sets the endpoints of a DNS backend (`ip:port`): the gauges of those no longer listed
    /// go, new ones start at 0; `weir_backend_up` is 1 when any endpoint is up. Its discovery
    /// error counters are exported from the first call.
    pub fn set_endpoints(&self, backend: &str, endpoints: &[String]) {
        let f = &self.inner.f;
        let Ok(mut all) = self.inner.endpoints.lock() else {
            return;
        };
        if !all.contains_key(backend) {
            for kind in DISCOVERY_ERRORS {
                f.discovery_errors.with_label_values(&[backend, kind]);
            }
        }
        let known = all.entry(backend.to_owned()).or_default();
        known.retain(|e, _| {
            let keep = endpoints.contains(e);
            if !keep {
                let _ = f.endpoint_up.remove_label_values(&[backend, e]);
            }
            keep
        });
        for e in endpoints {
            known.entry(e.clone()).or_insert_with(|| {
                f.endpoint_up.with_label_values(&[backend, e]).set(0);
                false
            });
        }
        let any = known.values().any(|up| *up);
        f.backend_up
            .with_label_values(&[backend])
            .set(i64::from(any));
    }

    /// One endpoint of a DNS backend is up or not; an endpoint that is not (or no longer)
    /// among its endpoints is left out, so that a late health check cannot bring its series
    /// back.
    pub fn set_endpoint_up(&self, backend: &str, endpoint: &str, up: bool) {
        let f = &self.inner.f;
        let Ok(mut all) = self.inner.endpoints.lock() else {
            return;
        };
        let Some(known) = all.get_mut(backend) else {
            return;
        };
        let Some(state) = known.get_mut(endpoint) else {
            return;
        };
        *state = up;
        f.endpoint_up
            .with_label_values(&[backend, endpoint])
            .set(i64::from(up));
        let any = known.values().any(|up| *up);
        f.backend_up
            .with_label_values(&[backend])
            .set(i64::from(any));
    }

    /// A DNS resolution of `backend`'s name failed (`kind`: one of `DISCOVERY_ERRORS`).
    pub fn discovery_error(&self, backend: &str, kind: &str) {
        self.inner
            .f
            .discovery_errors
            .with_label_values(&[backend, kind])
            .inc();
    }

    /// Forgets a backend removed by a reload.
    pub fn remove_backend(&self, backend: &str) {
        let _ = self.inner.f.backend_up.remove_label_values(&[backend]);
        self.forget_endpoints(backend);
        if let Ok(mut m) = self.inner.series.write() {
            m.retain(|k, _| &*k.2 != backend);
        }
    }

    /// Forgets the endpoints of a backend that no longer has any (removed, or now static).
    pub fn forget_endpoints(&self, backend: &str) {
        if let Ok(mut all) = self.inner.endpoints.lock() {
            if let Some(known) = all.remove(backend) {
                for e in known.keys() {
                    let _ = self.inner.f.endpoint_up.remove_label_values(&[backend, e]);
                }
                for kind in DISCOVERY_ERRORS {
                    let _ = self
                        .inner
                        .f
                        .discovery_errors
                        .remove_label_values(&[backend, kind]);
                }
            }
        }
    }

    /// The registry, for readers inside the process (the demo's summary).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Prometheus text exposition of every series (the classic format, no exemplars).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.inner.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// The OpenMetrics exposition of every series, with the latency histograms' exemplars.
    pub fn render_openmetrics(&self) -> String {
        let families = self.inner.registry.gather();
        let series = self
            .inner
            .series
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        openmetrics::encode(&families, &Snapshot(series))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_models_are_other_and_series_are_cached() {
        let m = Metrics::new(vec!["a".into(), "b".into()]);
        assert_eq!(&*m.model_label(Some("b")), "b");
        assert_eq!(&*m.model_label(Some("zzz")), OTHER);
        assert_eq!(&*m.model_label(None), OTHER);
        m.add_models(&["zzz".into()]);
        assert_eq!(&*m.model_label(Some("zzz")), "zzz");
        let be: Arc<str> = "be".into();
        let other = m.model_label(Some("nope"));
        let s = m.series(&other, Operation::Chat, &be);
        assert_eq!(s.model(), OTHER);
        assert!(Arc::ptr_eq(&s, &m.series(&other, Operation::Chat, &be)));
        s.ttft.observe(0.2);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            "gen_ai_server_time_to_first_token_seconds_bucket{backend=\"be\",gen_ai_operation_name=\"chat\",gen_ai_request_model=\"other\",le=\"0.2\"} 1"
        ), "{text}");
        assert!(text.contains("weir_errors_total{kind=\"no_backend\"} 0"));
        assert!(text.contains("weir_timeouts_total{kind=\"first_token\"} 0"));
    }

    #[test]
    fn without_backend_on_histograms_backends_share_them_and_keep_their_counters() {
        let config = crate::config::MetricsConfig {
            histogram_backend: false,
        };
        let m = Metrics::with_config(vec!["a".into()], &Default::default(), &config);
        assert!(!m.histogram_backend());
        let model = m.model_label(Some("a"));
        let (x, y): (Arc<str>, Arc<str>) = ("x".into(), "y".into());
        let sx = m.series(&model, Operation::Chat, &x);
        let sy = m.series(&model, Operation::Chat, &y);
        assert!(!Arc::ptr_eq(&sx, &sy), "each backend its own series");
        assert!(Arc::ptr_eq(&sx.ex, &sy.ex), "one set of exemplars");
        sx.ttft.observe(0.2);
        sy.ttft.observe(0.3);
        sx.observe_duration(Outcome::Ok, 1.0);
        sy.observe_duration(Outcome::Ok, 2.0);
        sx.count_request(Outcome::Ok, StatusCode::OK);
        sy.count_request(Outcome::Ok, StatusCode::OK);
        sx.input_tokens_total.inc_by(3);
        sy.input_tokens_total.inc_by(4);
        let text = String::from_utf8(m.render()).unwrap();
        let l = "gen_ai_operation_name=\"chat\",gen_ai_request_model=\"a\"";
        for want in [
            format!("gen_ai_server_time_to_first_token_seconds_count{{{l}}} 2"),
            format!("gen_ai_server_request_duration_seconds_count{{{l},outcome=\"ok\"}} 2"),
            format!("weir_requests_total{{backend=\"x\",code=\"2xx\",{l},outcome=\"ok\"}} 1"),
            format!("weir_requests_total{{backend=\"y\",code=\"2xx\",{l},outcome=\"ok\"}} 1"),
            format!("weir_tokens_total{{backend=\"y\",{l},gen_ai_token_type=\"input\"}} 4"),
        ] {
            assert!(text.contains(&want), "{want} in\n{text}");
        }
        let histogram_lines = text
            .lines()
            .filter(|l| l.contains("_bucket{") || l.contains("_count{") || l.contains("_sum{"))
            .filter(|l| !l.starts_with("process_"));
        assert!(histogram_lines.clone().count() > 0);
        for line in histogram_lines {
            assert!(!line.contains("backend="), "{line}");
        }
        // The exemplar a request on `y` left is on the shared histogram's bucket.
        let ids = Ids {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
        };
        sy.ex.ttft.record(0.3, ids, 1.0);
        let om = m.render_openmetrics();
        let bucket =
            format!("gen_ai_server_time_to_first_token_seconds_bucket{{{l},le=\"0.3\"}} 2 # ");
        let line = om.lines().find(|x| x.starts_with(&bucket));
        assert!(
            line.is_some_and(|x| x.contains(&"ab".repeat(16))),
            "{bucket} in\n{om}"
        );
    }
}
