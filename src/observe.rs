//! Observation: what is known of a request when its response starts (`Exchange`), what its
//! body showed on the way (`Measurement`), and the one `record()` that turns both into
//! metrics and the access-log line when the request ends, however it ends.

pub mod body;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::balance::Load;
use crate::config::Timeouts;
use crate::metrics::{Metrics, Operation, Series};
use sse::{EventInfo, Usage};

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

/// Trace identifiers of a request (W3C trace context), for the log and the upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: u128,
    pub span_id: u64,
}

impl TraceIds {
    /// Continues the client's `traceparent` when it is valid, starts a new trace otherwise.
    pub fn from_traceparent(header: Option<&[u8]>) -> TraceIds {
        let parent = header
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(parse_traceparent);
        TraceIds {
            trace_id: parent.unwrap_or_else(|| fastrand::u128(1..)),
            span_id: fastrand::u64(1..),
        }
    }

    /// `traceparent` for the upstream request (sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{:032x}-{:016x}-01", self.trace_id, self.span_id)
    }
}

fn parse_traceparent(v: &str) -> Option<u128> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let _flags = parts.next()?;
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let id = u128::from_str_radix(trace, 16).ok()?;
    u64::from_str_radix(span, 16).ok()?;
    (id != 0).then_some(id)
}

/// What is known of a request once it is on its way: owned by the response's observer.
pub struct Exchange {
    pub t0: Instant,
    /// When the request was handed to the upstream client.
    pub sent: Instant,
    pub request_id: String,
    pub trace: TraceIds,
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

/// Records a finished request: every metric and the access-log line. Called exactly once
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
    tracing::info!(
        target: "weir::access",
        trace_id = %format_args!("{:032x}", ex.trace.trace_id),
        span_id = %format_args!("{:016x}", ex.trace.span_id),
        request_id = %ex.request_id,
        model = ex.model.as_deref().unwrap_or(""),
        model_label = s.model(),
        response_model = m.response_model.as_deref(),
        operation = ex.operation.as_str(),
        stream = ex.stream,
        max_tokens = ex.max_tokens,
        backend = &*ex.backend,
        status = ex.status.as_u16(),
        outcome = outcome.as_str(),
        timeout = match outcome { Outcome::Timeout(k) => Some(k), _ => None },
        ttft_ms = ttft.map(ms),
        tpot_ms = tpot.map(ms),
        itl_p50_ms = itl_p50,
        itl_max_ms = itl_max,
        e2e_ms = ms(e2e),
        input_tokens = m.usage.map(|u| u.prompt_tokens),
        output_tokens = output,
        tokens_estimated = estimated,
        finish_reasons = %finish_reasons,
        degraded = m.degraded,
        "request finished"
    );
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
    fn traceparent_is_continued_or_started() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceIds::from_traceparent(Some(tp));
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(t.span_id, 0x00f067aa0ba902b7);
        assert!(
            t.traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"junk",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let t = TraceIds::from_traceparent(Some(bad));
            assert_ne!(t.trace_id, 0);
            assert_ne!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        }
    }

    #[test]
    fn itl_summary_median_and_max() {
        assert_eq!(itl_summary(&[]), (None, None));
        assert_eq!(itl_summary(&[3000, 1000, 2000]), (Some(2.0), Some(3.0)));
    }
}
