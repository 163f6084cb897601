//! weir: a reverse proxy for vLLM / OpenAI-compatible backends that measures every request
//! in-band and exports what it sees as Prometheus metrics, JSON access logs and OTLP traces.
//!
//! ```text
//! client ──► server    (hyper-util auto: HTTP/1.1 + h2c, graceful shutdown)   server.rs
//!        ──► stack     (catch panic, x-request-id)                             app.rs
//!        ──► trace     (client's traceparent in; SERVER span starts)           trace.rs
//!        ──► inspect   (read the JSON body once: model, stream, max_tokens;
//!                       inject stream_options.include_usage when streaming)   inspect.rs
//!        ──► balance   (pick a backend: round-robin, passive up/down)          balance.rs
//!        ──► forward   (pooled hyper-util client, hop-by-hop hygiene, x-forwarded-*,
//!                       CLIENT span + its traceparent, connect timeout)        forward.rs
//!        ◄── observe   (body wrapper parsing SSE as it passes: TTFT, ITL,
//!                       usage, outcome; finishes exactly once)                 observe/
//!        ◄── metrics · access log · spans end                                 metrics.rs, observe.rs, trace.rs
//! ```
//!
//! `admin.rs` serves `/metrics`, `/healthz`, `/readyz`, `/backends`; `gateway.rs` starts
//! both listeners; `telemetry.rs` sets up logging and the OTLP export queue; `sim.rs` is the
//! vLLM simulator; `demo.rs` runs both with a load.

pub mod admin;
pub mod app;
pub mod balance;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod inspect;
pub mod metrics;
pub mod observe;
pub mod server;
pub mod sim;
pub mod telemetry;
pub mod trace;
