//! Trace context of one request: made when the request head arrives, its CLIENT span started
//! just before the upstream call (`forward` sends it on as `traceparent`), both spans ended
//! by `observe::record` when the body ends. W3C `traceparent`/`tracestate` in and out, the
//! gateway's SERVER span and the upstream call's CLIENT span, named and attributed as
//! DESIGN.md says. Prompt and completion text are never put on a span.
//!
//! With tracing off no span is built: the request keeps the client's trace id (or a new one)
//! and a span id of its own, for the access log and the upstream `traceparent`.

use std::time::{Duration, SystemTime};

mod w3c;

use http::HeaderMap;
use http::uri::Authority;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::SdkTracer;
use tokio::time::Instant;

use crate::labels::{Operation, Outcome};
use crate::observe::{Measurement, Watch};
pub use w3c::inject;

/// `gen_ai.provider.name` of every backend.
const PROVIDER: &str = "vllm";

/// The trace context of one request.
pub struct RequestTrace {
    /// The SERVER span's context: its ids go in the access log.
    ids: SpanContext,
    /// What the upstream `traceparent` names: the CLIENT span (the SERVER ids with tracing off).
    upstream: SpanContext,
    live: Option<Box<Live>>,
}

/// The spans of a traced request.
struct Live {
    tracer: SdkTracer,
    /// `t0` on the wall clock: span times are `wall0 + (instant - t0)`.
    t0: Instant,
    wall0: SystemTime,
    server: Context,
    client: Option<Context>,
}

/// What the request's record knows of it besides the body observer's view.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub watch: &'a Watch,
    pub model: Option<&'a str>,
    pub max_tokens: Option<u64>,
    pub backend: &'a str,
}

/// What the record derived from the measurement, so spans and log say the same.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub tokens_estimated: bool,
    pub itl_p50_ms: Option<f64>,
    pub itl_max_ms: Option<f64>,
    /// The request's cost in USD (`weir.cost_usd` on the SERVER span).
    pub cost_usd: Option<f64>,
}

impl RequestTrace {
    /// Continues the client's `traceparent` (and `tracestate`) when valid, or starts a trace;
    /// with a tracer, starts the SERVER span at `t0`.
    pub fn start(
        tracer: Option<&SdkTracer>,
        headers: &HeaderMap,
        operation: Operation,
        t0: Instant,
    ) -> RequestTrace {
        let parent = w3c::extract(headers);
        let Some(tracer) = tracer else {
            let ids = w3c::own_ids(&parent);
            return RequestTrace {
                upstream: ids.clone(),
                ids,
                live: None,
            };
        };
        let wall0 = SystemTime::now();
        let span = tracer
            .span_builder(operation.as_str())
            .with_kind(SpanKind::Server)
            .with_start_time(wall0)
            .with_attributes([
                KeyValue::new("gen_ai.operation.name", operation.as_str()),
                KeyValue::new("gen_ai.provider.name", PROVIDER),
            ])
            .start_with_context(tracer, &parent);
        let ids = span.span_context().clone();
        RequestTrace {
            upstream: ids.clone(),
            ids,
            live: Some(Box::new(Live {
                tracer: tracer.clone(),
                t0,
                wall0,
                server: parent.with_span(span),
                client: None,
            })),
        }
    }

    /// The trace id for the access log.
    pub fn trace_id(&self) -> TraceId {
        self.ids.trace_id()
    }

    /// The SERVER span's id for the access log.
    pub fn span_id(&self) -> SpanId {
        self.ids.span_id()
    }

    /// Starts the CLIENT span of an upstream call sent at `sent` to `backend`, and returns the
    /// context to send on as `traceparent`. A second call (a retry) ends the previous one.
    pub fn start_client(
        &mut self,
        operation: Operation,
        model: Option<&str>,
        backend: &Authority,
        sent: Instant,
    ) -> SpanContext {
        let Some(live) = self.live.as_mut() else {
            return self.upstream.clone();
        };
        let at = live.wall(sent);
        if let Some(previous) = live.client.take() {
            let span = previous.span();
            span.set_status(Status::error("retried on another backend"));
            span.end_with_timestamp(at);
        }
        let address = [
            KeyValue::new(
                "server.address",
                backend
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            ),
            KeyValue::new("server.port", i64::from(backend.port_u16().unwrap_or(80))),
        ];
        let span = live
            .tracer
            .span_builder(span_name(operation, model))
            .with_kind(SpanKind::Client)
            .with_start_time(at)
            .with_attributes([
                KeyValue::new("gen_ai.operation.name", operation.as_str()),
                KeyValue::new("gen_ai.provider.name", PROVIDER),
                address[0].clone(),
                address[1].clone(),
            ])
            .start_with_context(&live.tracer, &live.server);
        self.upstream = span.span_context().clone();
        live.server.span().set_attributes(address);
        live.client = Some(Context::new().with_span(span));
        self.upstream.clone()
    }

    /// Puts what the request showed on its spans and ends them at `end`.
    pub fn finish(
        &self,
        ex: &Request<'_>,
        m: &Measurement,
        outcome: Outcome,
        end: Instant,
        s: &Summary,
    ) {
        let Some(live) = self.live.as_deref() else {
            return;
        };
        if !live.server.span().is_recording() {
            return;
        }
        let end_at = live.wall(end);
        let first_token = m.first_token.map(|t| (t, live.wall(t)));
        let common = attributes(ex, m, outcome, s);
        if let Some(client) = &live.client {
            let span = client.span();
            span.set_attributes(common.iter().cloned());
            if let Some((t, at)) = first_token {
                span.set_attribute(ttfc(t.saturating_duration_since(ex.watch.sent)));
                span.add_event_with_timestamp("first_token", at, Vec::new());
            }
            if outcome != Outcome::Ok {
                span.set_status(Status::error(outcome.as_str()));
            }
            span.end_with_timestamp(end_at);
        }
        let span = live.server.span();
        span.update_name(span_name(ex.watch.api.operation(), ex.model));
        span.set_attributes(common);
        span.set_attribute(KeyValue::new("weir.outcome", outcome.as_str()));
        if let Outcome::Timeout(kind) = outcome {
            span.set_attribute(KeyValue::new("weir.timeout", kind));
        }
        if let Some((t, at)) = first_token {
            span.set_attribute(ttfc(t.saturating_duration_since(ex.watch.t0)));
            span.add_event_with_timestamp("first_token", at, Vec::new());
        }
        if let Some(p50) = s.itl_p50_ms {
            span.set_attribute(KeyValue::new("weir.itl.p50", p50 / 1e3));
        }
        if let Some(max) = s.itl_max_ms {
            span.set_attribute(KeyValue::new("weir.itl.max", max / 1e3));
        }
        if let Some(usd) = s.cost_usd {
            span.set_attribute(KeyValue::new("weir.cost_usd", usd));
        }
        if s.tokens_estimated {
            span.set_attribute(KeyValue::new("weir.usage.estimated", true));
        }
        // A client's own error (4xx) is not the gateway's failure (HTTP server conventions).
        if outcome != Outcome::Ok && outcome != Outcome::ClientError {
            span.set_status(Status::error(outcome.as_str()));
        }
        span.end_with_timestamp(end_at);
    }
}

/// The attributes both spans of a finished request carry.
fn attributes(ex: &Request<'_>, m: &Measurement, outcome: Outcome, s: &Summary) -> Vec<KeyValue> {
    let mut common = Vec::with_capacity(12);
    if let Some(model) = ex.model {
        common.push(KeyValue::new("gen_ai.request.model", bounded(model)));
    }
    if ex.watch.api.is_measured() {
        common.push(KeyValue::new("gen_ai.request.stream", ex.watch.stream));
    }
    if let Some(max) = ex.max_tokens {
        common.push(KeyValue::new("gen_ai.request.max_tokens", int(max)));
    }
    if let Some(model) = m.response_model.as_deref() {
        common.push(KeyValue::new("gen_ai.response.model", bounded(model)));
    }
    let usage = [
        ("gen_ai.usage.input_tokens", s.input_tokens),
        ("gen_ai.usage.output_tokens", s.output_tokens),
        ("gen_ai.usage.cache_read.input_tokens", s.cache_read_tokens),
        ("gen_ai.usage.reasoning.output_tokens", s.reasoning_tokens),
    ];
    for (key, n) in usage {
        if let Some(n) = n {
            common.push(KeyValue::new(key, int(n)));
        }
    }
    if !m.finish_reasons.is_empty() {
        let reasons: Vec<StringValue> = m
            .reasons_in_order()
            .into_iter()
            .map(|r| StringValue::from(bounded(r)))
            .collect();
        common.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            Value::Array(Array::String(reasons)),
        ));
    }
    common.push(KeyValue::new("weir.backend", ex.backend.to_string()));
    common.push(KeyValue::new("weir.api", ex.watch.api.as_str()));
    common.push(KeyValue::new(
        "http.response.status_code",
        i64::from(ex.watch.status.as_u16()),
    ));
    if let Some(e) = error_type(ex, m, outcome) {
        common.push(KeyValue::new("error.type", e));
    }
    common
}

impl Live {
    fn wall(&self, t: Instant) -> SystemTime {
        self.wall0 + t.saturating_duration_since(self.t0)
    }
}

/// `{gen_ai.operation.name} {gen_ai.request.model}`, or the operation alone without a model.
fn span_name(operation: Operation, model: Option<&str>) -> String {
    match model {
        Some(m) => format!("{} {}", operation.as_str(), bounded(m)),
        None => operation.as_str().to_string(),
    }
}

/// `error.type`: the status code for an HTTP error, else what went wrong, in the words of
/// `weir_errors_total{kind}` and `outcome`.
fn error_type(ex: &Request<'_>, m: &Measurement, outcome: Outcome) -> Option<String> {
    let kind = match outcome {
        Outcome::Ok => return None,
        Outcome::Timeout(_) => "timeout",
        Outcome::Cancelled => "cancelled",
        Outcome::Unavailable => "unavailable",
        Outcome::InternalError => "internal_error",
        Outcome::ClientError | Outcome::UpstreamError if !ex.watch.status.is_success() => {
            return Some(ex.watch.status.as_str().to_string());
        }
        Outcome::UpstreamError if m.stream_error => "stream_error",
        Outcome::UpstreamError | Outcome::ClientError => "protocol",
    };
    Some(kind.to_string())
}

fn ttfc(d: Duration) -> KeyValue {
    KeyValue::new("gen_ai.response.time_to_first_chunk", d.as_secs_f64())
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A client- or backend-supplied string, cut to what a span takes.
fn bounded(s: &str) -> String {
    crate::observe::bounded(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let max = crate::observe::MAX_NAME;
        let s = "é".repeat(max);
        let b = bounded(&s);
        assert!(b.len() <= max && b.len() >= max - 1);
        assert_eq!(span_name(Operation::Chat, Some("m")), "chat m");
        assert_eq!(span_name(Operation::Other, None), "other");
    }
}
