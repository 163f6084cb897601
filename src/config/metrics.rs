//! `[metrics]`: the shape of the Prometheus (and OTLP) series, read at start.

use serde::Deserialize;

/// `[metrics]`: how many series the latency and token histograms cost.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The latency and token histograms carry the `backend` label (the backend's configured
    /// name). False drops it from them: their series then do not grow with the number of
    /// backends, and the counters and gauges keep `backend`. Fixed at start (the histograms
    /// are built once): a reload that changes it says a restart is needed.
    pub histogram_backend: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            histogram_backend: true,
        }
    }
}
