//! The integration tests, one binary: each module starts real servers (the simulator, the
//! gateway, and for some the Prometheus tools and an OTLP receiver) on 127.0.0.1 and talks
//! to them over real sockets.

mod common;

mod apis;
mod backends;
mod bench;
mod bench_truth;
mod cli;
mod discovery;
mod edge;
mod errors;
mod exemplars;
mod gateway;
mod hostile;
mod inspect_props;
mod kubernetes;
mod limits;
mod observer;
mod openai_sdk;
mod ops;
mod otlp_metrics;
mod replicas;
mod report;
mod series;
mod sim;
mod tenants;
mod tls;
mod top;
mod traces;
mod traces_export;
mod upstream;
mod workers;
