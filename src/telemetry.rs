//! Telemetry set-up: the JSON log subscriber (access log on target `weir::access`, the
//! rest filtered by `RUST_LOG`).

use tracing_subscriber::EnvFilter;

/// Installs the global JSON subscriber writing to stdout; `default_filter` applies when
/// `RUST_LOG` is not set.
pub fn init_logging(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}
