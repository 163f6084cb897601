//! The metrics pipeline: the OTLP exporter, run on a tokio runtime of its own by the SDK's
//! `PeriodicReader` thread, and the instruments made from its meter provider.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

use super::Instruments;
use crate::config::{Protocol, SloConfig, TelemetryConfig};

/// The OTLP exporter, run on a tokio runtime of its own by the reader's thread.
struct OwnRuntime {
    exporter: opentelemetry_otlp::MetricExporter,
    /// Taken at drop, to stop it without blocking wherever the last owner drops it.
    runtime: Option<tokio::runtime::Runtime>,
}

impl PushMetricExporter for OwnRuntime {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        match &self.runtime {
            Some(rt) => rt.block_on(self.exporter.export(metrics)),
            None => Ok(()),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.exporter.temporality()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts the metrics pipeline: the exporter, its reader (every `metrics_interval`) and the
/// instruments.
pub fn start(
    config: &TelemetryConfig,
    slo: &SloConfig,
    histogram_backend: bool,
    resource: Resource,
) -> Result<(Arc<Instruments>, SdkMeterProvider), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let exporter = {
        // tonic's channel starts its worker on the runtime it is made in.
        let _in = runtime.enter();
        exporter(config)?
    };
    let exporter = OwnRuntime {
        exporter,
        runtime: Some(runtime),
    };
    let reader = PeriodicReader::builder(exporter)
        .with_interval(config.metrics_interval)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let scope = opentelemetry::InstrumentationScope::builder("weir")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let meter = provider.meter_with_scope(scope);
    Ok((
        Arc::new(Instruments::new(&meter, slo, histogram_backend)),
        provider,
    ))
}

fn exporter(config: &TelemetryConfig) -> Result<opentelemetry_otlp::MetricExporter, String> {
    let endpoint = config.metrics_endpoint();
    let builder = opentelemetry_otlp::MetricExporter::builder();
    let protocol = config.metrics_protocol();
    otlp_exporter!(builder, protocol, endpoint, config.export_timeout)
}
