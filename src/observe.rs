//! Observation: what is known of a request when its response starts (`Exchange`), what its
//! body showed on the way (`Measurement`), and the one `record()` that turns both into
//! metrics, the access-log line and the request's spans when it ends, however it ends.

pub mod body;
mod strip;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::balance::Load;
use crate::config::Timeouts;
use crate::metrics::{Metrics, Operation, Series};
use crate::telemetry::access::AccessLine;
use weir_sse::{EventInfo, Usage};

pub use body::ObservedBody;

/// How a request ended: exactly one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    UpstreamError,
    ClientError,
    Timeout(&'static str),
    Cancelled,
    Unavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientError => "client_error",
            Outcome::Timeout(_) => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Unavailable => "unavailable",
        }
    }

    /// The outcome a status alone implies.
    pub fn from_status(status: StatusCode) -> Outcome {
        if status.is_server_error() {
            Outcome::UpstreamError
        } else if status.is_client_error() {
            Outcome::ClientError
        } else {
            Outcome::Ok
        }
    }
}

/// What is known of a request once it is on its way: owned by the response's observer.
pub struct Exchange {
    pub t0: Instant,
    /// When the request was handed to the upstream client.
    pub sent: Instant,
    pub request_id: String,
    pub trace: crate::trace::RequestTrace,
    pub model: Option<String>,
    pub operation: Operation,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub n: u32,
    pub strip_usage: bool,
    pub backend: Arc<str>,
    pub status: StatusCode,
    pub series: Arc<Series>,
    pub metrics: Metrics,
    /// Counts as load on the backend until the exchange is dropped.
    pub load: Option<Load>,
    /// The backend's timeouts (first token, idle, total).
    pub timeouts: Timeouts,
    /// The API key's name, when auth is on.
    pub tenant: Option<Arc<str>>,
    /// Longest SSE line the observer holds.
    pub max_sse_line: usize,
}

/// What the response body showed, filled in as it passes.
#[derive(Debug, Default)]
pub struct Measurement {
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
    pub content_events: u64,
    /// Inter-token gaps in microseconds (for the log's p50 and max).
    pub itl_us: Vec<u32>,
    pub usage: Option<Usage>,
    pub finish_reasons: Vec<String>,
    pub response_model: Option<String>,
    pub done: bool,
    pub stream_error: bool,
    pub invalid_events: u32,
    /// The observer had to skip part of the stream (an over-long line).
    pub degraded: bool,
}

impl Measurement {
    /// Takes in one event seen at `now`; ITL goes straight to its histogram.
    pub fn on_event(&mut self, info: &EventInfo<'_>, now: Instant, series: &Series) {
        if info.done {
            self.done = true;
            return;
        }
        self.invalid_events += u32::from(info.invalid);
        self.stream_error |= info.error;
        if info.content {
            self.content_events += 1;
            if let Some(last) = self.last_token {
                let gap = now.saturating_duration_since(last);
                series.itl.observe(gap.as_secs_f64());
                self.itl_us
                    .push(u32::try_from(gap.as_micros()).unwrap_or(u32::MAX));
            } else {
                self.first_token = Some(now);
            }
            self.last_token = Some(now);
        }
        if let Some(u) = info.usage {
            self.usage = Some(u);
        }
        for (_, reason) in &info.finished {
            self.finish_reasons.push(reason.to_string());
        }
        if self.response_model.is_none() {
            self.response_model = info.model.as_deref().map(str::to_string);
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Records a finished request: every metric, the access-log line and its spans. Called exactly once
/// per request, from the body observer's `finish()` or for an answer the gateway gave itself.
pub fn record(ex: &Exchange, m: &Measurement, outcome: Outcome, end: Instant) {
    let s = &ex.series;
    let e2e = end.saturating_duration_since(ex.t0);
    s.observe_duration(outcome.as_str(), secs(e2e));
    s.count_request(outcome.as_str(), status_class(ex.status));
    if let Outcome::Timeout(kind) = outcome {
        ex.metrics.timeout(kind);
    }
    ex.metrics.in_flight().dec();
    if let Some(t) = &ex.tenant {
        ex.metrics.tenant_request(t, outcome.as_str());
    }

    let ttft = m.first_token.map(|t| t.saturating_duration_since(ex.t0));
    if let Some(ttft) = ttft {
        s.ttft.observe(secs(ttft));
        let upstream = m
            .first_token
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(ex.sent));
        s.upstream_ttft.observe(secs(upstream));
        s.overhead.observe(secs(ttft.saturating_sub(upstream)));
    }
    let estimated = m.usage.is_none() && ex.operation.is_generation() && ex.stream;
    let output = match m.usage {
        Some(u) => Some(u.completion_tokens),
        None if estimated => Some(m.content_events),
        None => None,
    };
    if let Some(u) = m.usage {
        s.input_tokens.observe(u.prompt_tokens as f64);
        s.input_tokens_total.inc_by(u.prompt_tokens);
    }
    if let Some(out) = output.filter(|_| ex.operation.is_generation()) {
        s.output_tokens.observe(out as f64);
        s.output_tokens_total.inc_by(out);
    }
    let tpot = match (ttft, output) {
        (Some(ttft), Some(out)) if out > 1 && outcome == Outcome::Ok => {
            Some(e2e.saturating_sub(ttft) / u32::try_from(out - 1).unwrap_or(u32::MAX))
        }
        _ => None,
    };
    if let Some(t) = tpot {
        s.tpot.observe(secs(t));
    }
    let finished = crate::slo::Finished {
        streamed_generation: ex.stream && ex.operation.is_generation(),
        outcome,
        ttft,
        tpot,
        e2e,
    };
    ex.metrics.slo().record(s.model(), &finished);

    let (itl_p50, itl_max) = itl_summary(&m.itl_us);
    let finish_reasons = m.finish_reasons.join(",");
    let (mut trace_hex, mut span_hex) = ([0u8; 32], [0u8; 16]);
    AccessLine {
        trace_id: hex_str(&ex.trace.trace_id().to_bytes(), &mut trace_hex),
        span_id: hex_str(&ex.trace.span_id().to_bytes(), &mut span_hex),
        request_id: &ex.request_id,
        tenant: ex.tenant.as_deref(),
        model: ex.model.as_deref().unwrap_or(""),
        model_label: s.model(),
        response_model: m.response_model.as_deref(),
        operation: ex.operation.as_str(),
        stream: ex.stream,
        max_tokens: ex.max_tokens,
        backend: &ex.backend,
        status: ex.status.as_u16(),
        outcome: outcome.as_str(),
        timeout: match outcome {
            Outcome::Timeout(k) => Some(k),
            _ => None,
        },
        ttft_ms: ttft.map(ms),
        tpot_ms: tpot.map(ms),
        itl_p50_ms: itl_p50,
        itl_max_ms: itl_max,
        e2e_ms: ms(e2e),
        input_tokens: m.usage.map(|u| u.prompt_tokens),
        output_tokens: output,
        tokens_estimated: estimated,
        finish_reasons: &finish_reasons,
        degraded: m.degraded,
    }
    .emit();
    let summary = crate::trace::Summary {
        output_tokens: output,
        tokens_estimated: estimated,
        itl_p50_ms: itl_p50,
        itl_max_ms: itl_max,
    };
    ex.trace.finish(ex, m, outcome, end, &summary);
}

/// `bytes` in lower-case hex, written into `buf` (twice as long).
fn hex_str<'a>(bytes: &[u8], buf: &'a mut [u8]) -> &'a str {
    match hex::encode_to_slice(bytes, buf) {
        Ok(()) => std::str::from_utf8(buf).unwrap_or_default(),
        Err(_) => "",
    }
}

/// Median and maximum of the gaps, in milliseconds.
fn itl_summary(gaps_us: &[u32]) -> (Option<f64>, Option<f64>) {
    if gaps_us.is_empty() {
        return (None, None);
    }
    let mut v = gaps_us.to_vec();
    let mid = v.len() / 2;
    let (_, p50, _) = v.select_nth_unstable(mid);
    let p50 = f64::from(*p50) / 1e3;
    let max = gaps_us.iter().max().map(|&m| f64::from(m) / 1e3);
    (Some(p50), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itl_summary_median_and_max() {
        assert_eq!(itl_summary(&[]), (None, None));
        assert_eq!(itl_summary(&[3000, 1000, 2000]), (Some(2.0), Some(3.0)));
    }

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
}
