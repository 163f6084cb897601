//! W3C trace context at the request's edges: `traceparent`/`tracestate` read from the client
//! and written for the backend, and the ids a request uses when tracing is off.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The client's context: its `traceparent` and `tracestate` when the traceparent is valid,
/// an empty context otherwise.
pub(super) fn extract(headers: &HeaderMap) -> Context {
    // Without a traceparent the propagator finds nothing (it reads tracestate only beside a
    // valid one): most clients send none, and their requests skip its lookups by name.
    if !headers.contains_key(TRACEPARENT) {
        return Context::new();
    }
    TraceContextPropagator::new().extract_with_context(&Context::new(), &Headers(headers))
}

/// Ids of a request traced by nobody: the client's trace (and sampling decision) with a span
/// id of the gateway's own, or a new sampled trace.
pub(super) fn own_ids(parent: &Context) -> SpanContext {
    let p = parent.span().span_context().clone();
    let span_id = SpanId::from(fastrand::u64(1..));
    if p.is_valid() {
        SpanContext::new(
            p.trace_id(),
            span_id,
            p.trace_flags(),
            false,
            p.trace_state().clone(),
        )
    } else {
        let trace_id = TraceId::from(fastrand::u128(1..));
        SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    }
}

/// Sets `traceparent` (and `tracestate`, when there is one) for the upstream request.
pub fn inject(cx: &SpanContext, headers: &mut HeaderMap) {
    // `00-{trace id}-{span id}-{flags}` in lower-case hex, written in place (no formatter).
    let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let hexed = hex::encode_to_slice(cx.trace_id().to_bytes(), &mut tp[3..35])
        .and_then(|()| hex::encode_to_slice(cx.span_id().to_bytes(), &mut tp[36..52]))
        .and_then(|()| hex::encode_to_slice([cx.trace_flags().to_u8()], &mut tp[53..55]));
    if let (Ok(()), Ok(v)) = (hexed, HeaderValue::from_bytes(&tp)) {
        headers.insert(TRACEPARENT, v);
    }
    let state = cx.trace_state().header();
    match HeaderValue::from_str(&state) {
        Ok(v) if !state.is_empty() => {
            headers.insert(TRACESTATE, v);
        }
        _ => {
            headers.remove(TRACESTATE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Operation;
    use crate::trace::RequestTrace;
    use tokio::time::Instant;

    fn untraced(traceparent: Option<&str>, tracestate: Option<&str>) -> RequestTrace {
        let mut h = HeaderMap::new();
        if let Some(tp) = traceparent {
            h.insert("traceparent", tp.parse().unwrap());
        }
        if let Some(ts) = tracestate {
            h.insert("tracestate", ts.parse().unwrap());
        }
        RequestTrace::start(None, &h, Operation::Chat, Instant::now())
    }

    #[test]
    fn untraced_requests_continue_or_start_a_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let mut t = untraced(Some(tp), Some("vendor=abc"));
        assert_eq!(t.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id().to_string(), "00f067aa0ba902b7");
        let up = t.start_client(
            Operation::Chat,
            None,
            &"b:1".parse().unwrap(),
            Instant::now(),
        );
        let mut h = HeaderMap::new();
        h.insert("tracestate", "stale=1".parse().unwrap());
        inject(&up, &mut h);
        assert_eq!(
            h["traceparent"],
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-00", t.span_id())
        );
        assert_eq!(h["tracestate"], "vendor=abc");

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "junk",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let t = untraced(Some(bad), Some("vendor=abc"));
            assert_ne!(t.trace_id(), TraceId::INVALID);
            assert_ne!(t.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            let mut h = HeaderMap::new();
            h.insert("tracestate", "vendor=abc".parse().unwrap());
            inject(&t.upstream, &mut h);
            assert!(h["traceparent"].to_str().unwrap().ends_with("-01"));
            assert!(
                !h.contains_key("tracestate"),
                "a new trace drops the old state"
            );
        }

        // A tracestate without a traceparent is no context: a new trace, no state passed on.
        let t = untraced(None, Some("vendor=abc"));
        assert_ne!(t.trace_id(), TraceId::INVALID);
        let mut h = HeaderMap::new();
        inject(&t.upstream, &mut h);
        assert!(h["traceparent"].to_str().unwrap().ends_with("-01"));
        assert!(!h.contains_key("tracestate"));
    }
}
