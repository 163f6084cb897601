//! Telemetry set-up, beside the request flow: the JSON log subscriber (access log on target
//! `weir::access` in `telemetry/access.rs`, the rest filtered by `RUST_LOG`) and the OTLP trace
//! pipeline — the `[telemetry]` config and its `OTEL_*` variables, the exporter (gRPC or
//! HTTP/protobuf) and the bounded span queue (`telemetry/queue.rs`). The spans of each request
//! are made in `trace.rs`. Beside it, when turned on, the OTLP metrics pipeline
//! (`telemetry/otel_metrics.rs`): the measurements of `/metrics`, pushed to a collector.
//!
//! The request spans use the OpenTelemetry API directly, not `tracing` spans bridged by
//! tracing-opentelemetry: each gateway owns its tracer provider (tests run several gateways,
//! each with its own collector, in one process, while a `tracing` subscriber is global), the
//! spans need explicit start and end times (the SERVER span starts at the request head and
//! ends with the body, possibly in a `Drop`), the first-token event carries the time the
//! observer saw the token, attribute types (string arrays, doubles) map one to one, and with
//! tracing off nothing is built at all, whatever `RUST_LOG` says.
//!
//! tracing-opentelemetry bridges weir's own `tracing` spans — the work beside requests:
//! health-check rounds, config reloads — into the same pipeline, through a layer of the
//! global subscriber that the running gateway fills in (`Telemetry::bridge_tracing`).

/// The OTLP exporter of one signal, from its exporter's builder, over `protocol` (the span and
/// metric builders are different types with the same methods).
macro_rules! otlp_exporter {
    ($builder:expr, $protocol:expr, $endpoint:expr, $timeout:expr) => {
        match $protocol {
            Protocol::Grpc => $builder
                .with_tonic()
                .with_endpoint($endpoint)
                .with_timeout($timeout)
                .build(),
            Protocol::HttpProtobuf => $builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint($endpoint)
                .with_timeout($timeout)
                .build(),
        }
        .map_err(|e| e.to_string())
    };
}

pub mod access;
pub mod otel_metrics;
mod queue;
pub mod stdout;

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter as _};
use std::sync::OnceLock;
use tokio::time::Instant;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry, reload};

use crate::config::{Protocol, SamplerKind, SloConfig, TelemetryConfig};
use crate::labels::Operation;
use crate::metrics::Metrics;
use crate::trace::RequestTrace;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use otel_metrics::{Instruments, RequestMetrics};
use queue::{Dropped, QueueConfig, QueueHandle};

/// The bridge from `tracing` spans to OpenTelemetry; empty until a gateway with traces on
/// fills it in.
type Bridge = Option<tracing_opentelemetry::OpenTelemetryLayer<Registry, SdkTracer>>;

static BRIDGE: OnceLock<reload::Handle<Bridge, Registry>> = OnceLock::new();

/// How log lines are written: `auto` is `pretty` when stdout is a terminal and `json`
/// otherwise (a file, a pipe, a log collector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogStyle {
    #[default]
    Auto,
    /// One JSON object a line.
    Json,
    /// One readable line an event: time, level, target, message and `key=value` fields.
    Pretty,
}

impl LogStyle {
    /// `Json` or `Pretty`: `Auto` decided by whether stdout is a terminal.
    pub fn resolve(self) -> LogStyle {
        match self {
            LogStyle::Auto if std::io::stdout().is_terminal() => LogStyle::Pretty,
            LogStyle::Auto => LogStyle::Json,
            style => style,
        }
    }
}

/// The first access-log line written, in the log's style, when [`init_demo_logging`] asked
/// for it to be kept.
static FIRST_ACCESS: OnceLock<String> = OnceLock::new();

/// Installs the global subscriber: lines on stdout in `style` (`default_filter` applies when
/// `RUST_LOG` is not set) and the, at first empty, bridge of weir's own spans to OTLP.
pub fn init_logging(default_filter: &str, style: LogStyle) {
    install(default_filter, style, false);
}

/// [`init_logging`], also keeping the first access-log line, whatever the filter lets through
/// (see [`first_access_line`]): the demo shows one.
pub fn init_demo_logging(default_filter: &str, style: LogStyle) {
    install(default_filter, style, true);
}

/// The first access-log line, kept by [`init_demo_logging`]'s subscriber.
pub fn first_access_line() -> Option<&'static str> {
    FIRST_ACCESS.get().map(String::as_str)
}

fn install(default_filter: &str, style: LogStyle, keep_first_access: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (bridge, handle) = reload::Layer::new(None);
    // Only weir's own spans: never the exporter's (that would trace the exporting itself).
    let bridge = bridge.with_filter(Targets::new().with_target("weir", tracing::Level::INFO));
    let style = style.resolve();
    let lines = tracing_subscriber::fmt::layer()
        .event_format(access::LogFormat::styled(style))
        .with_writer(stdout::LineOut::new)
        .with_filter(filter);
    let keep = keep_first_access.then(|| {
        access::KeepFirst::new(&FIRST_ACCESS, style)
            .with_filter(Targets::new().with_target(access::TARGET, tracing::Level::INFO))
    });
    if Registry::default()
        .with(bridge)
        .with(lines)
        .with(keep)
        .try_init()
        .is_ok()
    {
        let _ = BRIDGE.set(handle);
    }
}

/// A value written as JSON in a log field (a list stays a list in a JSON log line).
pub struct Json<'a, T: serde::Serialize>(pub &'a T);

impl<T: serde::Serialize> std::fmt::Display for Json<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self.0).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}

/// A gateway's trace and OTLP metrics pipelines; with both off it holds nothing but the
/// dropped-spans counter.
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    pipeline: Mutex<Option<Pipeline>>,
    instruments: Option<Arc<Instruments>>,
    meters: Mutex<Option<SdkMeterProvider>>,
    export_timeout: Duration,
}

struct Pipeline {
    provider: SdkTracerProvider,
    queue: QueueHandle,
}

impl Telemetry {
    /// Registers `weir_telemetry_dropped_spans_total` in `metrics` and, when the config
    /// enables traces, starts the exporter on the current tokio runtime; when it enables
    /// metrics, the metrics pipeline (with `slo`'s thresholds in the bucket bounds, and
    /// `weir.backend` on the histograms as `metrics` has `backend` on its own). A pipeline
    /// that cannot start is logged and the gateway runs without it: telemetry never stops
    /// traffic.
    pub fn start(config: &TelemetryConfig, slo: &SloConfig, metrics: &Metrics) -> Telemetry {
        let dropped = Dropped::register(metrics.registry());
        let mut telemetry = Telemetry {
            tracer: None,
            pipeline: Mutex::new(None),
            instruments: None,
            meters: Mutex::new(None),
            export_timeout: config.export_timeout,
        };
        if config.metrics {
            telemetry.start_metrics(config, slo, metrics.histogram_backend());
        }
        if !config.enabled {
            return telemetry;
        }
        match pipeline(config, dropped) {
            Ok((tracer, pipeline)) => {
                tracing::info!(
                    endpoint = %config.traces_endpoint(),
                    protocol = config.protocol.as_str(),
                    service_name = %config.service_name,
                    "exporting traces over OTLP"
                );
                telemetry.tracer = Some(tracer);
                telemetry.pipeline = Mutex::new(Some(pipeline));
            }
            Err(error) => {
                tracing::error!(%error, "cannot start the trace exporter; running without traces")
            }
        }
        telemetry
    }

    fn start_metrics(&mut self, config: &TelemetryConfig, slo: &SloConfig, backend: bool) {
        match otel_metrics::start(config, slo, backend, resource(config)) {
            Ok((instruments, provider)) => {
                tracing::info!(
                    endpoint = %config.metrics_endpoint(),
                    protocol = config.metrics_protocol().as_str(),
                    interval_ms = config.metrics_interval.as_millis() as u64,
                    "exporting metrics over OTLP"
                );
                self.instruments = Some(instruments);
                self.meters = Mutex::new(Some(provider));
            }
            Err(error) => {
                tracing::error!(%error, "cannot start the metric exporter; running without it")
            }
        }
    }

    /// A request's handle on the OTLP metrics, when they are on.
    pub fn request_metrics(&self) -> Option<RequestMetrics> {
        self.instruments.clone().map(RequestMetrics::new)
    }

    /// Sends weir's own `tracing` spans (health checks, reloads) through this pipeline too,
    /// when the global subscriber is [`init_logging`]'s (the `weir` binary, with its one
    /// gateway); otherwise it does nothing.
    pub fn bridge_tracing(&self) {
        let (Some(tracer), Some(handle)) = (&self.tracer, BRIDGE.get()) else {
            return;
        };
        let layer = tracing_opentelemetry::layer().with_tracer(tracer.clone());
        if let Err(e) = handle.reload(Some(layer)) {
            tracing::warn!(error = %e, "cannot bridge weir's own spans to OTLP");
        }
    }

    /// Whether spans are made.
    pub fn enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// The trace context of a request whose head arrived at `t0`.
    pub fn request(&self, headers: &HeaderMap, operation: Operation, t0: Instant) -> RequestTrace {
        RequestTrace::start(self.tracer.as_ref(), headers, operation, t0)
    }

    /// Exports every span ended so far and stops the pipeline (at most twice the export
    /// timeout). Spans that end later are dropped and counted. Then exports the metrics a last
    /// time and stops their pipeline (as long again at most).
    pub async fn shutdown(&self) {
        self.shutdown_traces().await;
        let meters = self.meters.lock().ok().and_then(|mut m| m.take());
        if let Some(provider) = meters {
            // The reader's thread exports; the wait for it blocks, so not on the runtime.
            let last = tokio::task::spawn_blocking(move || provider.shutdown());
            match tokio::time::timeout(self.export_timeout * 2, last).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    tracing::warn!(%error, "the last metric export failed")
                }
                _ => tracing::warn!("metric export did not finish before shutdown"),
            }
        }
    }

    async fn shutdown_traces(&self) {
        let pipeline = self.pipeline.lock().ok().and_then(|mut p| p.take());
        if let Some(Pipeline { provider, queue }) = pipeline {
            if !queue.shutdown(self.export_timeout * 2).await {
                tracing::warn!("trace export did not finish before shutdown");
            }
            let _ = provider.shutdown();
        }
    }
}

fn pipeline(config: &TelemetryConfig, dropped: Dropped) -> Result<(SdkTracer, Pipeline), String> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err("no tokio runtime to run the exporter on".into());
    }
    let endpoint = config.traces_endpoint();
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = otlp_exporter!(builder, config.protocol, endpoint, config.export_timeout)?;
    let resource = resource(config);
    let mut exporter = exporter;
    exporter.set_resource(&resource);
    let (processor, queue) = queue::start(
        exporter,
        QueueConfig {
            max_queue_size: config.max_queue_size,
            max_export_batch_size: config.max_export_batch_size,
            scheduled_delay: config.scheduled_delay,
            export_timeout: config.export_timeout,
        },
        dropped,
    );
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(config))
        .with_resource(resource)
        .build();
    let scope = opentelemetry::InstrumentationScope::builder("weir")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let tracer = provider.tracer_with_scope(scope);
    Ok((tracer, Pipeline { provider, queue }))
}

/// `service.name`, `service.version` and the SDK's name and version: of spans and metrics.
fn resource(config: &TelemetryConfig) -> Resource {
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

fn sampler(config: &TelemetryConfig) -> Sampler {
    let ratio = || Sampler::TraceIdRatioBased(config.sample_ratio);
    match config.sampler {
        SamplerKind::AlwaysOn => Sampler::AlwaysOn,
        SamplerKind::AlwaysOff => Sampler::AlwaysOff,
        SamplerKind::Traceidratio => ratio(),
        SamplerKind::ParentbasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerKind::ParentbasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerKind::ParentbasedTraceidratio => Sampler::ParentBased(Box::new(ratio())),
    }
}
