//! The `[telemetry]` config table and the standard `OTEL_*` variables that override it.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// `[telemetry]`: OTLP trace export. Off by default.
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
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
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
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

impl TelemetryConfig {
    /// Applies the standard OpenTelemetry variables over the config: each one that is set
    /// wins over its key. An OTLP endpoint variable or `OTEL_TRACES_EXPORTER=otlp` turns traces
    /// on; `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true` turns them off.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let parse_ms = |k: &str| -> Result<Option<Duration>, ConfigError> {
            get(k)
                .map(|v| {
                    v.parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| invalid(k, "expected milliseconds"))
                })
                .transpose()
        };
        let parse_n = |k: &str| -> Result<Option<usize>, ConfigError> {
            get(k)
                .map(|v| v.parse().map_err(|_| invalid(k, "expected a number")))
                .transpose()
        };
        for k in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            if let Some(v) = get(k) {
                self.protocol = Protocol::parse(&v)
                    .ok_or_else(|| invalid(k, "supported: grpc, http/protobuf"))?;
            }
        }
        if let Some(v) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            self.endpoint = v;
            self.enabled = true;
        } else if let Some(v) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            // A base URL: the HTTP traces path goes under it.
            self.endpoint = match self.protocol {
                Protocol::Grpc => v,
                Protocol::HttpProtobuf => format!("{}/v1/traces", v.trim_end_matches('/')),
            };
            self.enabled = true;
        }
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
        if let Some(n) = parse_n("OTEL_BSP_MAX_QUEUE_SIZE")? {
            self.max_queue_size = n;
        }
        if let Some(n) = parse_n("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? {
            self.max_export_batch_size = n;
        }
        if let Some(d) = parse_ms("OTEL_BSP_SCHEDULE_DELAY")? {
            self.scheduled_delay = d;
        }
        if let Some(d) = parse_ms("OTEL_BSP_EXPORT_TIMEOUT")? {
            self.export_timeout = d;
        }
        match get("OTEL_TRACES_EXPORTER").as_deref() {
            None => {}
            Some("otlp") => self.enabled = true,
            Some("none") => self.enabled = false,
            Some(_) => return Err(invalid("OTEL_TRACES_EXPORTER", "supported: otlp, none")),
        }
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            self.enabled = false;
        }
        Ok(())
    }

    /// Checks the table; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.endpoint.is_empty() {
            let uri: http::Uri = self
                .endpoint
                .parse()
                .map_err(|_| invalid("telemetry.endpoint", "not a URL"))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(invalid(
                    "telemetry.endpoint",
                    "must be http://host:port (TLS to the collector is not built in: use a \
                     local collector or agent)",
                ));
            }
        }
        if self.service_name.is_empty() {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid("telemetry.sample_ratio", "must be between 0 and 1"));
        }
        if self.max_queue_size == 0 {
            return Err(invalid(
                "telemetry.max_queue_size",
                "must be greater than 0",
            ));
        }
        if self.max_export_batch_size == 0 {
            return Err(invalid(
                "telemetry.max_export_batch_size",
                "must be greater than 0",
            ));
        }
        if self.scheduled_delay.is_zero() {
            return Err(invalid(
                "telemetry.scheduled_delay",
                "must be greater than 0",
            ));
        }
        if self.export_timeout.is_zero() {
            return Err(invalid(
                "telemetry.export_timeout",
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    /// The URL spans are sent to.
    pub fn traces_endpoint(&self) -> String {
        match self.protocol {
            Protocol::Grpc if self.endpoint.is_empty() => "http://localhost:4317".into(),
            Protocol::Grpc => self.endpoint.clone(),
            Protocol::HttpProtobuf if self.endpoint.is_empty() => {
                "http://localhost:4318/v1/traces".into()
            }
            Protocol::HttpProtobuf => {
                let bare = self
                    .endpoint
                    .parse::<http::Uri>()
                    .is_ok_and(|u| matches!(u.path(), "" | "/"));
                if bare {
                    format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
                } else {
                    self.endpoint.clone()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn env_overrides_the_table() {
        let mut c = TelemetryConfig {
            endpoint: "http://collector:4317".into(),
            service_name: "from-config".into(),
            ..TelemetryConfig::default()
        };
        c.apply_env(env(&[])).unwrap();
        assert_eq!(
            c,
            TelemetryConfig {
                endpoint: "http://collector:4317".into(),
                service_name: "from-config".into(),
                ..TelemetryConfig::default()
            }
        );
        c.apply_env(env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318/"),
            ("OTEL_SERVICE_NAME", "gw-eu"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ]))
        .unwrap();
        assert!(c.enabled, "an endpoint variable turns traces on");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.traces_endpoint(), "http://jaeger:4318/v1/traces");
        assert_eq!(c.service_name, "gw-eu");
        assert_eq!(c.sample_ratio, 0.25);
        assert_eq!(c.max_queue_size, 64);
        assert_eq!(c.scheduled_delay, Duration::from_millis(250));
        c.validate().unwrap();

        // The signal-specific variables win over the general ones and are used as given.
        c.apply_env(env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
        ]))
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.traces_endpoint(), "http://b:4317");

        c.apply_env(env(&[("OTEL_TRACES_EXPORTER", "none")]))
            .unwrap();
        assert!(!c.enabled);
        c.apply_env(env(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]))
        .unwrap();
        assert!(!c.enabled);
    }

    #[test]
    fn bad_values_name_the_variable_or_key() {
        for (k, v) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "half"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "10s"),
            ("OTEL_TRACES_EXPORTER", "jaeger"),
        ] {
            let err = TelemetryConfig::default()
                .apply_env(env(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(k), "{err}");
        }
        for (c, key) in [
            (
                TelemetryConfig {
                    endpoint: "https://x:4317".into(),
                    ..Default::default()
                },
                "telemetry.endpoint",
            ),
            (
                TelemetryConfig {
                    sample_ratio: 1.5,
                    ..Default::default()
                },
                "telemetry.sample_ratio",
            ),
            (
                TelemetryConfig {
                    max_queue_size: 0,
                    ..Default::default()
                },
                "telemetry.max_queue_size",
            ),
        ] {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn default_endpoints() {
        let mut c = TelemetryConfig::default();
        assert_eq!(c.traces_endpoint(), "http://localhost:4317");
        c.protocol = Protocol::HttpProtobuf;
        assert_eq!(c.traces_endpoint(), "http://localhost:4318/v1/traces");
        c.endpoint = "http://otel:4318".into();
        assert_eq!(c.traces_endpoint(), "http://otel:4318/v1/traces");
        c.endpoint = "http://otel:4318/custom/traces".into();
        assert_eq!(c.traces_endpoint(), "http://otel:4318/custom/traces");
    }
}
