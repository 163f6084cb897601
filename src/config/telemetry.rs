//! The `[telemetry]` config table and the standard `OTEL_*` variables that override it: OTLP
//! traces and, beside them, OTLP metrics.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// `[telemetry]`: OTLP trace and metric export. Both off by default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export traces over OTLP.
    pub enabled: bool,
    /// `grpc` or `http/protobuf`.
    pub protocol: Protocol,
    /// The collector's traces endpoint; empty for the protocol's default
    /// (`http://localhost:4317`, `http://localhost:4318/v1/traces`). For `http/protobuf` an
    /// endpoint without a path gets `/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
    /// One of `OTEL_TRACES_SAMPLER`'s values.
    pub sampler: SamplerKind,
    /// The ratio of the `*traceidratio` samplers, 0 to 1.
    pub sample_ratio: f64,
    /// Spans waiting for export; more are dropped (and counted).
    pub max_queue_size: usize,
    /// Spans per export request.
    pub max_export_batch_size: usize,
    /// Longest wait before queued spans are exported.
    #[serde(with = "humantime_serde")]
    pub scheduled_delay: Duration,
    /// Longest time one export may take (retries included); its spans are dropped after it.
    /// The metrics' exports take it too.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Push the metrics over OTLP too (the Prometheus `/metrics` is served either way).
    pub metrics: bool,
    /// The collector's metrics endpoint; empty for `endpoint`'s collector (its host with
    /// `/v1/metrics` for `http/protobuf`) or the protocol's default. For `http/protobuf` an
    /// endpoint without a path gets `/v1/metrics`.
    pub metrics_endpoint: String,
    /// `grpc` or `http/protobuf` for the metrics; unset: `protocol`.
    pub metrics_protocol: Option<Protocol>,
    /// Time between two exports of the metrics.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: false,
            protocol: Protocol::Grpc,
            endpoint: String::new(),
            service_name: "weir".into(),
            sampler: SamplerKind::ParentbasedTraceidratio,
            sample_ratio: 1.0,
            max_queue_size: 2048,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
            metrics: false,
            metrics_endpoint: String::new(),
            metrics_protocol: None,
            metrics_interval: Duration::from_secs(60),
        }
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    fn parse(s: &str) -> Option<Protocol> {
        match s {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// The samplers of `OTEL_TRACES_SAMPLER` (the `parentbased_*` ones follow the client's
/// sampled flag when it sent a `traceparent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    ParentbasedTraceidratio,
}

impl SamplerKind {
    fn parse(s: &str) -> Option<SamplerKind> {
        Some(match s {
            "always_on" => SamplerKind::AlwaysOn,
            "always_off" => SamplerKind::AlwaysOff,
            "traceidratio" => SamplerKind::Traceidratio,
            "parentbased_always_on" => SamplerKind::ParentbasedAlwaysOn,
            "parentbased_always_off" => SamplerKind::ParentbasedAlwaysOff,
            "parentbased_traceidratio" => SamplerKind::ParentbasedTraceidratio,
            _ => return None,
        })
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(field, reason)
}

/// Reads one variable, trimmed; unset and empty are the same.
type Var<'a> = &'a dyn Fn(&str) -> Option<String>;

fn parse_ms(get: Var<'_>, k: &str) -> Result<Option<Duration>, ConfigError> {
    get(k)
        .map(|v| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| invalid(k, "expected milliseconds"))
        })
        .transpose()
}

fn parse_n(get: Var<'_>, k: &str) -> Result<Option<usize>, ConfigError> {
    get(k)
        .map(|v| v.parse().map_err(|_| invalid(k, "expected a number")))
        .transpose()
}

fn parse_protocol(get: Var<'_>, k: &str) -> Result<Option<Protocol>, ConfigError> {
    get(k)
        .map(|v| Protocol::parse(&v).ok_or_else(|| invalid(k, "supported: grpc, http/protobuf")))
        .transpose()
}

/// `base` (a collector's base URL) with the path of a signal's HTTP endpoint.
fn under(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// `endpoint` is an `http://host:port` URL; errors name `field`.
fn check_url(field: &str, endpoint: &str) -> Result<(), ConfigError> {
    if endpoint.is_empty() {
        return Ok(());
    }
    let uri: http::Uri = endpoint.parse().map_err(|_| invalid(field, "not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(invalid(
            field,
            "must be http://host:port (TLS to the collector is not built in: use a local \
             collector or agent)",
        ));
    }
    Ok(())
}

/// The URL of a signal's endpoint for `protocol`: `given` (an HTTP endpoint without a path
/// gets the signal's), or the protocol's default.
fn signal_endpoint(protocol: Protocol, given: &str, path: &str) -> String {
    match protocol {
        Protocol::Grpc if given.is_empty() => "http://localhost:4317".into(),
        Protocol::Grpc => given.into(),
        Protocol::HttpProtobuf if given.is_empty() => format!("http://localhost:4318{path}"),
        Protocol::HttpProtobuf => {
            let bare = given
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.path(), "" | "/"));
            if bare {
                under(given, path)
            } else {
                given.into()
            }
        }
    }
}

impl TelemetryConfig {
    /// Applies the standard OpenTelemetry variables over the config: each one that is set
    /// wins over its key. An OTLP endpoint variable or `OTEL_TRACES_EXPORTER=otlp` turns traces
    /// on; `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true` turns them off. Metrics are
    /// turned on by `OTEL_METRICS_EXPORTER=otlp` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`
    /// (not by the general endpoint, which they use when on), off by
    /// `OTEL_METRICS_EXPORTER=none` or `OTEL_SDK_DISABLED=true`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        self.apply_otlp_env(&get)?;
        self.apply_trace_env(&get)?;
        self.apply_metrics_env(&get)?;
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            self.enabled = false;
            self.metrics = false;
        }
        Ok(())
    }

    /// The exporters' variables: protocols and endpoints of both signals.
    fn apply_otlp_env(&mut self, get: Var<'_>) -> Result<(), ConfigError> {
        if let Some(p) = parse_protocol(get, "OTEL_EXPORTER_OTLP_PROTOCOL")? {
            self.protocol = p;
        }
        if let Some(p) = parse_protocol(get, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")? {
            // The traces' own: the metrics keep the general one.
            self.metrics_protocol.get_or_insert(self.protocol);
            self.protocol = p;
        }
        if let Some(p) = parse_protocol(get, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")? {
            self.metrics_protocol = Some(p);
        }
        let general = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(v) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            self.endpoint = v;
            self.enabled = true;
        } else if let Some(v) = &general {
            // A base URL: the HTTP traces path goes under it.
            self.endpoint = match self.protocol {
                Protocol::Grpc => v.clone(),
                Protocol::HttpProtobuf => under(v, "/v1/traces"),
            };
            self.enabled = true;
        }
        if let Some(v) = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            self.metrics_endpoint = v;
            self.metrics = true;
        } else if let Some(v) = &general {
            self.metrics_endpoint = match self.metrics_protocol() {
                Protocol::Grpc => v.clone(),
                Protocol::HttpProtobuf => under(v, "/v1/metrics"),
            };
        }
        Ok(())
    }

    fn apply_trace_env(&mut self, get: Var<'_>) -> Result<(), ConfigError> {
        if let Some(v) = get("OTEL_SERVICE_NAME") {
            self.service_name = v;
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER") {
            self.sampler = SamplerKind::parse(&v)
                .ok_or_else(|| invalid("OTEL_TRACES_SAMPLER", "not a supported sampler"))?;
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER_ARG") {
            self.sample_ratio = v
                .parse()
                .map_err(|_| invalid("OTEL_TRACES_SAMPLER_ARG", "expected a ratio 0..1"))?;
        }
        if let Some(n) = parse_n(get, "OTEL_BSP_MAX_QUEUE_SIZE")? {
            self.max_queue_size = n;
        }
        if let Some(n) = parse_n(get, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? {
            self.max_export_batch_size = n;
        }
        if let Some(d) = parse_ms(get, "OTEL_BSP_SCHEDULE_DELAY")? {
            self.scheduled_delay = d;
        }
        if let Some(d) = parse_ms(get, "OTEL_BSP_EXPORT_TIMEOUT")? {
            self.export_timeout = d;
        }
        match get("OTEL_TRACES_EXPORTER").as_deref() {
            None => {}
            Some("otlp") => self.enabled = true,
            Some("none") => self.enabled = false,
            Some(_) => return Err(invalid("OTEL_TRACES_EXPORTER", "supported: otlp, none")),
        }
        Ok(())
    }

    fn apply_metrics_env(&mut self, get: Var<'_>) -> Result<(), ConfigError> {
        if let Some(d) = parse_ms(get, "OTEL_METRIC_EXPORT_INTERVAL")? {
            self.metrics_interval = d;
        }
        // A list; `prometheus` is the scrape, served whatever the setting.
        if let Some(v) = get("OTEL_METRICS_EXPORTER") {
            let mut otlp = false;
            for e in v.split(',').map(str::trim) {
                match e {
                    "otlp" => otlp = true,
                    "prometheus" | "none" => {}
                    _ => {
                        return Err(invalid(
                            "OTEL_METRICS_EXPORTER",
                            "supported: otlp, prometheus, none",
                        ));
                    }
                }
            }
            self.metrics = otlp;
        }
        Ok(())
    }

    /// Checks the table; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url("telemetry.endpoint", &self.endpoint)?;
        check_url("telemetry.metrics_endpoint", &self.metrics_endpoint)?;
        if self.service_name.is_empty() {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid("telemetry.sample_ratio", "must be between 0 and 1"));
        }
        let positive = [
            ("telemetry.max_queue_size", self.max_queue_size == 0),
            (
                "telemetry.max_export_batch_size",
                self.max_export_batch_size == 0,
            ),
            ("telemetry.scheduled_delay", self.scheduled_delay.is_zero()),
            ("telemetry.export_timeout", self.export_timeout.is_zero()),
            (
                "telemetry.metrics_interval",
                self.metrics_interval.is_zero(),
            ),
        ];
        match positive.into_iter().find(|(_, zero)| *zero) {
            Some((key, _)) => Err(invalid(key, "must be greater than 0")),
            None => Ok(()),
        }
    }

    /// The URL spans are sent to.
    pub fn traces_endpoint(&self) -> String {
        signal_endpoint(self.protocol, &self.endpoint, "/v1/traces")
    }

    /// The metrics' protocol.
    pub fn metrics_protocol(&self) -> Protocol {
        self.metrics_protocol.unwrap_or(self.protocol)
    }

    /// The URL metrics are sent to: `metrics_endpoint`, or else, when both signals take the
    /// same protocol, the collector of `endpoint`.
    pub fn metrics_endpoint(&self) -> String {
        let protocol = self.metrics_protocol();
        let same_collector = || match protocol {
            Protocol::Grpc => self.endpoint.clone(),
            Protocol::HttpProtobuf => self
                .endpoint
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| Some(format!("http://{}", u.authority()?)))
                .unwrap_or_default(),
        };
        let given = if self.metrics_endpoint.is_empty() && protocol == self.protocol {
            same_collector()
        } else {
            self.metrics_endpoint.clone()
        };
        signal_endpoint(protocol, &given, "/v1/metrics")
    }
}

#[cfg(test)]
mod tests;
