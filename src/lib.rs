//! weir: a reverse proxy for vLLM / OpenAI-compatible backends that measures every request
//! in-band and exports what it sees as Prometheus metrics, JSON access logs and OTLP traces.
//!
//! ```text
//! client ──► server    (hyper-util: HTTP/1.1 + h2c, or TLS with ALPN; graceful
//!                       shutdown; a worker per core, each accepting and
//!                       serving its own connections)     server.rs, tls.rs, workers.rs
//!        ──► edge      (x-request-id; the request's record starts: t0, trace
//!                       context, the config it works with; recorded exactly
//!                       once however it ends)                                  edge.rs, record.rs
//!        ──► panic     (a panic below becomes a recorded 500)                  app.rs
//!        ──► gates     (limits: connections, head, in flight, body size;
//!                       API keys → tenant)                                     gate.rs, keys.rs
//!        ──► proxy     (inspect the JSON body once: model, stream, max_tokens;
//!                       inject stream_options.include_usage when streaming)   proxy.rs, inspect.rs
//!        ──► route     (model → the backends serving it; unknown model → 404)  balance.rs
//!        ──► balance   (P2C on outstanding requests, queue-aware or weighted
//!                       round-robin; active + passive health; a DNS
//!                       backend's addresses as endpoints)             balance.rs, health.rs, discovery.rs
//!        ──► forward   (pooled HTTP/1.1 connections, each driven by the task
//!                       of the request using it; hop-by-hop hygiene,
//!                       x-forwarded-*, CLIENT span + traceparent, one retry
//!                       before the first byte, connect/first-token/idle/total
//!                       timeouts)                                  proxy.rs, forward.rs, upstream.rs
//!        ◄── observe   (body wrapper parsing SSE as it passes: TTFT, ITL,
//!                       usage, outcome; bounded whatever the backend sends;
//!                       finishes exactly once)                                 observe/
//!        ◄── record    (metrics, SLO, access log, spans end)                   record.rs, metrics.rs, slo.rs, trace.rs
//! ```
//!
//! Below the stack: `labels.rs` (the closed label sets, a leaf), `config.rs` (plain data),
//! `state.rs` (what a reload swaps whole: config, pool, keys). `admin.rs` serves
//! `/metrics`, `/healthz`, `/readyz`, `/backends`; `gateway.rs` starts both listeners;
//! `telemetry.rs` sets up logging and the OTLP export queue; `demo.rs` runs the gateway in
//! front of the simulator (`weir-sim`) with a load. The SSE parser (`weir-sse`) and the
//! load generator (`weir-bench`) are crates of their own.

pub mod admin;
pub mod app;
pub mod backend;
pub mod balance;
pub mod budget;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod edge;
pub mod error;
pub mod fds;
pub mod forward;
pub mod gate;
pub mod gateway;
pub mod health;
pub mod inspect;
pub mod keys;
pub mod labels;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod record;
pub mod server;
pub mod slo;
pub mod state;
pub mod telemetry;
pub mod tenants;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod workers;
