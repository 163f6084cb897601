//! weir: a reverse proxy for vLLM / OpenAI-compatible backends that measures every request
//! in-band and exports what it sees as Prometheus metrics, JSON access logs and OTLP traces.
//!
//! ```text
//! client ──► server    (hyper-util auto: HTTP/1.1 + h2c, graceful shutdown)   server.rs
//!        ──► stack     (catch panic, x-request-id, API keys → tenant)          app.rs, auth.rs
//!        ──► trace     (client's traceparent in; SERVER span starts)           trace.rs
//!        ──► inspect   (read the JSON body once: model, stream, max_tokens;
//!                       inject stream_options.include_usage when streaming)   inspect.rs
//!        ──► route     (model → the backends serving it; unknown model → 404)  balance.rs
//!        ──► balance   (P2C on outstanding requests, queue-aware or weighted
//!                       round-robin; active + passive health)                  balance.rs, health.rs
//!        ──► forward   (pooled HTTP/1.1 connections, each driven by the task
//!                       of the request using it; hop-by-hop hygiene,
//!                       x-forwarded-*, CLIENT span + traceparent, one retry
//!                       before the first byte, connect/first-token/idle/total
//!                       timeouts)                          forward.rs, upstream.rs, app.rs
//!        ◄── observe   (body wrapper parsing SSE as it passes: TTFT, ITL,
//!                       usage, outcome; finishes exactly once)                 observe/
//!        ◄── metrics · access log · spans end                                 metrics.rs, observe.rs, trace.rs
//! ```
//!
//! `admin.rs` serves `/metrics`, `/healthz`, `/readyz`, `/backends`; `gateway.rs` starts
//! both listeners; `telemetry.rs` sets up logging and the OTLP export queue; `sim.rs` is the
//! vLLM simulator; `demo.rs` runs both with a load; `bench.rs` is the client-side load
//! generator.

pub mod admin;
pub mod app;
pub mod auth;
pub mod balance;
pub mod config;
pub mod demo;
pub mod error;
pub mod fds;
pub mod forward;
pub mod gateway;
pub mod health;
pub mod inspect;
pub mod metrics;
pub mod observe;
pub mod server;
pub mod slo;
pub mod telemetry;
pub mod trace;
pub mod upstream;
