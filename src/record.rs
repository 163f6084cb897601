//! Recording, at the end of the flow: what is known of a request as it goes (`Exchange`,
//! made at the edge and filled in by the layers it passes) and the one `finish()` that turns
//! it and what its body showed into metrics, the SLO verdict, the access-log line and the
//! request's spans, however it ended.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, StatusCode};
use tokio::time::Instant;

use crate::backend::Load;
use crate::error::Answer;
use crate::labels::{Api, ErrorKind, Outcome};
use crate::metrics::{Exemplars, Ids, Metrics, Series};
use crate::observe::{Measurement, Recorder, Watch};
use crate::state::{Admitted, AppState, Shared};
use crate::telemetry::access::AccessLine;
use crate::telemetry::otel_metrics::{self, Labels, RequestMetrics};
use crate::tenants::{Billing, Used};
use crate::trace::RequestTrace;

/// What is known of a request on its way: owned by whichever part of the stack has it,
/// recorded exactly once.
pub struct Exchange {
    pub watch: Watch,
    pub request_id: String,
    pub method: Method,
    /// The request's path (no query: it may carry what is not the operator's to keep).
    pub path: Option<PathAndQuery>,
    pub trace: RequestTrace,
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub backend: Arc<str>,
    /// The series of (model, operation, backend), looked up once, when the backend is picked;
    /// a request that ends before that gets its series (backend `none`) when it is recorded.
    pub series: Option<Arc<Series>>,
    pub metrics: Metrics,
    /// Counts as load on the backend until the exchange is dropped.
    pub load: Option<Load>,
    /// Counts in flight to the backends until the exchange is dropped.
    pub admitted: Option<Admitted>,
    /// The API key's name, when auth is on and the key was good.
    pub tenant: Option<Arc<str>>,
    /// Set when the gateway answered itself.
    pub answer: Option<Answer>,
    /// The OTLP metrics, when they are on.
    pub otel: Option<RequestMetrics>,
    /// The tenant's limits and the model's price (`tenants.rs`).
    pub billing: Billing,
}

impl Exchange {
    /// The record of a request whose head arrived at `t0`, with the id the edge gave it:
    /// counted in flight from now on.
    pub fn start<B>(
        state: &AppState,
        shared: &Shared,
        req: &Request<B>,
        request_id: &HeaderValue,
        t0: Instant,
    ) -> Exchange {
        let api = Api::from_path(req.uri().path());
        let operation = api.operation();
        let metrics = &state.metrics;
        metrics.in_flight().inc();
        let request_id = request_id.to_str().unwrap_or_default().to_string();
        let config = &shared.config;
        let none = metrics.no_backend();
        let mut watch = Watch::new(t0, api, config.timeouts.clone(), config.limits.max_sse_line);
        watch.budget = Some(state.buffered.clone());
        Exchange {
            watch,
            request_id,
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            trace: state.telemetry.request(req.headers(), operation, t0),
            model: None,
            max_tokens: None,
            series: None,
            backend: none,
            metrics: metrics.clone(),
            load: None,
            admitted: None,
            tenant: None,
            answer: None,
            otel: state.telemetry.request_metrics(),
            billing: Billing::default(),
        }
    }

    /// Takes note of the gateway's own answer: its outcome replaces what the status implies.
    pub fn answered(&mut self, answer: Answer) {
        self.watch.answered = Some(answer.outcome);
        if let Some(kind) = answer.kind {
            self.metrics.error(kind);
        }
        self.answer = Some(answer);
    }

    /// The client went away before the response head: nothing was sent (nginx's 499).
    pub fn cancelled(mut self) {
        self.watch.status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
        self.finish(&Measurement::default(), Outcome::Cancelled, Instant::now());
    }
}

/// A request's record while the stack works on it: in the request's extensions, so that
/// each layer can fill it in, and held by the edge, which records it if no one else does.
/// Whoever takes the exchange out gives it back or finishes it.
///
/// The exchange is boxed: taking it out, putting it back and carrying it in the response
/// body move a pointer, not its bytes.
#[derive(Clone)]
pub struct Ledger(Arc<Mutex<Option<Box<Exchange>>>>);

impl Ledger {
    pub fn new(ex: Exchange) -> Ledger {
        Ledger(Arc::new(Mutex::new(Some(Box::new(ex)))))
    }

    pub fn take(&self) -> Option<Box<Exchange>> {
        self.0.lock().ok()?.take()
    }

    pub fn put(&self, ex: Box<Exchange>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(ex);
        }
    }

    /// Changes the exchange where it is (when no one has taken it out).
    pub fn with(&self, f: impl FnOnce(&mut Exchange)) {
        if let Some(ex) = self.0.lock().ok().as_mut().and_then(|s| s.as_deref_mut()) {
            f(ex);
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Recorder for Exchange {
    fn watch(&self) -> &Watch {
        &self.watch
    }

    fn gap(&self, gap: Duration) {
        // A gap comes from a backend's body: the backend, and so the series, was picked.
        let Some(series) = &self.series else { return };
        series.itl.observe(secs(gap));
        if let Some(o) = &self.otel {
            o.gap(&self.labels(series), gap);
        }
    }

    /// Every metric, the access-log line and the spans of a finished request.
    fn finish(mut self, m: &Measurement, outcome: Outcome, end: Instant) {
        let w = &self.watch;
        let s = &self.series_or_unpicked();
        let e2e = end.saturating_duration_since(w.t0);
        let ids = Ids {
            trace_id: self.trace.trace_id().to_bytes(),
            span_id: self.trace.span_id().to_bytes(),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        s.observe_duration(outcome, secs(e2e));
        s.ex.duration(outcome).record(secs(e2e), ids, now);
        s.count_request(outcome, w.status);
        self.count_errors(m, outcome);
        if let Outcome::Timeout(kind) = outcome {
            self.metrics.timeout(kind);
        }
        self.metrics.in_flight().dec();
        if let Some(t) = &self.tenant {
            self.metrics.tenant_request(t, outcome.as_str());
        }
        let figures = Figures::of(w, m, outcome, e2e);
        figures.observe(s, w, (ids, now));
        if let Some(o) = &self.otel {
            o.finish(&self.labels(s), &figures.otel(w, outcome));
        }
        let finished = crate::slo::Finished {
            streamed_generation: w.stream && w.api.is_generation(),
            outcome,
            ttft: figures.ttft,
            tpot: figures.tpot,
            e2e,
        };
        self.metrics.slo().record(s.model(), &finished);
        let cost = self.bill(&figures, s.model());
        self.log(m, outcome, &figures, (s.model(), cost));
        let summary = crate::trace::Summary {
            input_tokens: figures.input,
            output_tokens: figures.output,
            cache_read_tokens: figures.cache_read,
            reasoning_tokens: figures.reasoning,
            tokens_estimated: figures.estimated,
            itl_p50_ms: figures.itl_p50.map(ms),
            itl_max_ms: figures.itl_max.map(ms),
            cost_usd: cost,
        };
        let request = crate::trace::Request {
            watch: &self.watch,
            model: self.model.as_deref(),
            max_tokens: self.max_tokens,
            backend: &self.backend,
        };
        self.trace.finish(&request, m, outcome, end, &summary);
    }
}

/// What `finish()` derives from the measurement, so metrics, log and spans say the same.
struct Figures {
    ttft: Option<Duration>,
    /// Time to the first answer (not reasoning) token.
    ttfat: Option<Duration>,
    tpot: Option<Duration>,
    input: Option<u64>,
    output: Option<u64>,
    /// Input tokens from the prefix cache, output tokens spent reasoning (when reported).
    cache_read: Option<u64>,
    reasoning: Option<u64>,
    estimated: bool,
    itl_p50: Option<Duration>,
    itl_max: Option<Duration>,
    e2e: Duration,
    /// Request sent upstream → first token; TTFT less it and the client's upload.
    upstream_ttft: Option<Duration>,
    overhead: Option<Duration>,
}

impl Figures {
    fn of(w: &Watch, m: &Measurement, outcome: Outcome, e2e: Duration) -> Figures {
        let since_t0 = |t: Instant| t.saturating_duration_since(w.t0);
        let ttft = m.first_token.map(since_t0);
        let upstream_ttft = m.first_token.map(|t| t.saturating_duration_since(w.sent));
        // The gateway's own time: not the client's upload of its body.
        let upload = w.body_done.saturating_duration_since(w.t0);
        let overhead = ttft
            .zip(upstream_ttft)
            .map(|(t, up)| t.saturating_sub(up).saturating_sub(upload));
        let reported = m.usage.filter(|u| u.has_output());
        let estimated = reported.is_none() && w.api.is_generation() && w.stream;
        let output = match reported {
            Some(u) => Some(u.completion_tokens),
            None if estimated => Some(m.content_events),
            None => None,
        };
        let input = m.usage.filter(|u| u.has_input()).map(|u| u.prompt_tokens);
        // Per choice, as vLLM counts it: with `n` choices the tokens come `n` at a time.
        let per_choice = output.map(|out| out as f64 / f64::from(w.n.max(1)));
        let tpot = match (ttft, per_choice) {
            (Some(ttft), Some(out)) if out > 1.0 && outcome == Outcome::Ok => {
                Some(e2e.saturating_sub(ttft).div_f64(out - 1.0))
            }
            _ => None,
        };
        Figures {
            ttft,
            ttfat: m.first_answer.map(since_t0),
            tpot,
            input,
            output,
            cache_read: m.usage.and_then(|u| u.cached_tokens),
            reasoning: m.usage.and_then(|u| u.reasoning_tokens),
            estimated,
            itl_p50: m.gaps.median(),
            itl_max: m.gaps.max(),
            e2e,
            upstream_ttft,
            overhead,
        }
    }

    /// The latency and token series, each latency with this request as its bucket's
    /// exemplar (`ex`: its ids, and now on the wall clock).
    fn observe(&self, s: &Series, w: &Watch, ex: (Ids, f64)) {
        let (ids, now) = ex;
        let latency = |h: &prometheus::Histogram, e: &Exemplars, d: Duration| {
            h.observe(secs(d));
            e.record(secs(d), ids, now);
        };
        if let (Some(ttft), Some(up), Some(over)) = (self.ttft, self.upstream_ttft, self.overhead) {
            latency(&s.ttft, &s.ex.ttft, ttft);
            latency(&s.upstream_ttft, &s.ex.upstream_ttft, up);
            latency(&s.overhead, &s.ex.overhead, over);
        }
        if let Some(t) = self.ttfat {
            latency(&s.ttfat, &s.ex.ttfat, t);
        }
        // One exemplar per request for the gaps: its largest.
        if let Some(gap) = self.itl_max {
            s.ex.itl.record(secs(gap), ids, now);
        }
        if let Some(input) = self.input {
            s.input_tokens.observe(input as f64);
            s.input_tokens_total.inc_by(input);
        }
        if let Some(out) = self.output.filter(|_| w.api.is_generation()) {
            s.output_tokens.observe(out as f64);
            s.output_tokens_total.inc_by(out);
        }
        // Most requests report neither: no write to a line every worker shares for nothing
        // (the series exist from the first request of their labels).
        if let Some(n) = self.cache_read.filter(|&n| n > 0) {
            s.cache_read_tokens_total.inc_by(n);
        }
        if let Some(n) = self.reasoning.filter(|&n| n > 0) {
            s.reasoning_tokens_total.inc_by(n);
        }
        if let Some(t) = self.tpot {
            latency(&s.tpot, &s.ex.tpot, t);
        }
    }

    /// The same figures for the OTLP metrics.
    fn otel(&self, w: &Watch, outcome: Outcome) -> otel_metrics::Finished {
        otel_metrics::Finished {
            outcome: outcome.as_str(),
            e2e: self.e2e,
            ttft: self.ttft,
            ttfat: self.ttfat,
            tpot: self.tpot,
            upstream_ttft: self.upstream_ttft,
            overhead: self.overhead,
            input: self.input,
            output: self.output.filter(|_| w.api.is_generation()),
            cache_read: self.cache_read.unwrap_or(0),
            reasoning: self.reasoning.unwrap_or(0),
        }
    }
}

impl Exchange {
    /// The series picked with the backend, or that of a request that ended before one was.
    fn series_or_unpicked(&self) -> Arc<Series> {
        match &self.series {
            Some(s) => s.clone(),
            None => {
                let model = self.metrics.model_label(self.model.as_deref());
                let op = self.watch.api.operation();
                self.metrics.series(&model, op, &self.backend)
            }
        }
    }

    /// The request's labels, for the OTLP metrics.
    fn labels<'a>(&'a self, series: &'a Arc<Series>) -> Labels<'a> {
        Labels {
            series,
            operation: self.watch.api.operation(),
            backend: &self.backend,
        }
    }

    /// `weir_errors_total` for what the body showed (the gateway's own answers were counted
    /// when they were given).
    fn count_errors(&self, m: &Measurement, outcome: Outcome) {
        if self.answer.is_some() {
            return;
        }
        let status = self.watch.status;
        if status.is_server_error() {
            self.metrics.error(ErrorKind::Upstream5xx);
        } else if outcome == Outcome::UpstreamError && status.is_success() {
            let kind = if m.stream_error {
                ErrorKind::StreamError
            } else {
                ErrorKind::Protocol
            };
            self.metrics.error(kind);
        } else if m.invalid_events > 0 || m.degraded {
            self.metrics.error(ErrorKind::Protocol);
        }
    }

    /// The request's cost, counted per model and tenant; its tenant charged what it used.
    fn bill(&mut self, f: &Figures, model_label: &str) -> Option<f64> {
        let used = Used {
            input: f.input,
            cached: f.cache_read,
            output: f.output.filter(|_| self.watch.api.is_generation()),
            sent: *self.backend != *crate::metrics::NO_BACKEND,
        };
        let cost = self.billing.close(used)?;
        let tenant = self.tenant.as_deref().unwrap_or("");
        self.metrics.tenants().cost(model_label, tenant, cost);
        Some(cost)
    }

    /// The access line; `labels`: the model label and the request's cost.
    fn log(&self, m: &Measurement, outcome: Outcome, f: &Figures, labels: (&str, Option<f64>)) {
        let (model_label, cost_usd) = labels;
        let w = &self.watch;
        // One reason (or none) is written as it is; only several are put in order and joined.
        let joined;
        let finish_reasons = match m.finish_reasons.as_slice() {
            [] => "",
            [(_, reason)] => reason.as_str(),
            _ => {
                joined = m.reasons_in_order().join(",");
                &joined
            }
        };
        let (mut trace_hex, mut span_hex) = ([0u8; 32], [0u8; 16]);
        AccessLine {
            trace_id: hex_str(&self.trace.trace_id().to_bytes(), &mut trace_hex),
            span_id: hex_str(&self.trace.span_id().to_bytes(), &mut span_hex),
            request_id: &self.request_id,
            method: self.method.as_str(),
            path: crate::observe::bounded(self.path.as_ref().map_or("", |p| p.path())),
            tenant: self.tenant.as_deref(),
            model: self.model.as_deref().unwrap_or(""),
            model_label,
            response_model: m.response_model.as_deref(),
            operation: w.api.operation().as_str(),
            api: w.api.as_str(),
            stream: w.stream,
            max_tokens: self.max_tokens,
            backend: &self.backend,
            status: w.status.as_u16(),
            outcome: outcome.as_str(),
            timeout: match outcome {
                Outcome::Timeout(k) => Some(k),
                _ => None,
            },
            reason: self.answer.as_ref().map(|a| a.reason),
            error: self
                .answer
                .as_ref()
                .map(|a| a.detail.as_deref().unwrap_or(&a.message)),
            ttft_ms: f.ttft.map(ms),
            ttfat_ms: f.ttfat.map(ms),
            tpot_ms: f.tpot.map(ms),
            itl_p50_ms: f.itl_p50.map(ms),
            itl_max_ms: f.itl_max.map(ms),
            e2e_ms: ms(f.e2e),
            input_tokens: f.input,
            output_tokens: f.output,
            cache_read_tokens: f.cache_read,
            reasoning_tokens: f.reasoning,
            tokens_estimated: f.estimated,
            cost_usd,
            finish_reasons,
            degraded: m.degraded,
            unmeasured: m.unmeasured,
        }
        .emit();
    }
}

/// `bytes` in lower-case hex, written into `buf` (twice as long).
fn hex_str<'a>(bytes: &[u8], buf: &'a mut [u8]) -> &'a str {
    match hex::encode_to_slice(bytes, buf) {
        Ok(()) => std::str::from_utf8(buf).unwrap_or_default(),
        Err(_) => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_hex_as_traceparent_has_them() {
        let id =
            opentelemetry::trace::TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        let mut buf = [0u8; 32];
        assert_eq!(
            hex_str(&id.to_bytes(), &mut buf),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(hex_str(&[0, 1, 0xff], &mut [0u8; 6]), "0001ff");
    }

    #[test]
    fn tpot_is_per_choice() {
        let t0 = Instant::now();
        let mut w = Watch::new(
            t0,
            Api::ChatCompletions,
            crate::config::Timeouts::default(),
            1024,
        );
        (w.stream, w.n) = (true, 2);
        let m = Measurement {
            first_token: Some(t0 + Duration::from_millis(100)),
            usage: Some(weir_sse::Usage {
                prompt_tokens: 5,
                completion_tokens: 22,
                ..Default::default()
            }),
            ..Measurement::default()
        };
        // Two choices of 11 tokens each: 10 gaps after the first token, over 1 s.
        let f = Figures::of(&w, &m, Outcome::Ok, Duration::from_millis(1100));
        assert_eq!(f.tpot, Some(Duration::from_millis(100)));
        w.n = 1;
        let f = Figures::of(&w, &m, Outcome::Ok, Duration::from_millis(1100));
        assert_eq!(f.tpot, Some(Duration::from_millis(1000).div_f64(21.0)));
    }
}
