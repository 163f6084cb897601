//! weir: a reverse proxy for vLLM / OpenAI-compatible backends that measures every request
//! in-band and exports what it sees as Prometheus metrics and JSON access logs.
//!
//! ```text
//! client ──► server    (hyper-util auto: HTTP/1.1 + h2c, graceful shutdown)   server.rs
//!        ──► stack     (catch panic, x-request-id)                             app.rs
//!        ──► inspect   (read the JSON body once: model, stream, max_tokens;
//!                       inject stream_options.include_usage when streaming)   inspect.rs
//!        ──► route     (model → the backends serving it; unknown model → 404)  balance.rs
//!        ──► balance   (P2C on outstanding requests, queue-aware or weighted
//!                       round-robin; active + passive health)                  balance.rs, health.rs
//!        ──► forward   (pooled hyper-util client, hop-by-hop hygiene,
//!                       x-forwarded-*, traceparent, retry once before the
//!                       first byte, connect/first-token/idle/total timeouts)   forward.rs, app.rs
//!        ◄── observe   (body wrapper parsing SSE as it passes: TTFT, ITL,
//!                       usage, outcome; finishes exactly once)                 observe/
//!        ◄── metrics · access log                                             metrics.rs, observe.rs
//! ```
//!
//! `admin.rs` serves `/metrics`, `/healthz`, `/readyz`, `/backends`; `gateway.rs` starts
//! both listeners; `sim.rs` is the vLLM simulator; `demo.rs` runs both with a load.

pub mod admin;
pub mod app;
pub mod balance;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod health;
pub mod inspect;
pub mod metrics;
pub mod observe;
pub mod server;
pub mod sim;
pub mod slo;
pub mod telemetry;
