//! The `[telemetry]` table and its variables: overrides, errors that name the key, endpoints.

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

#[test]
fn metrics_take_their_own_variables_and_fall_back_to_the_general_ones() {
    let mut c = TelemetryConfig::default();
    c.apply_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317")]))
        .unwrap();
    assert!(
        c.enabled && !c.metrics,
        "the general endpoint turns traces on, not metrics"
    );
    assert_eq!(c.metrics_endpoint(), "http://otel:4317");
    assert_eq!(c.metrics_interval, Duration::from_secs(60));

    let mut c = TelemetryConfig::default();
    c.apply_env(env(&[
        ("OTEL_METRICS_EXPORTER", "otlp,prometheus"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318/"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
    ]))
    .unwrap();
    assert!(c.metrics);
    // The traces' protocol is theirs alone; the base URL gets the metrics' path.
    assert_eq!(c.protocol, Protocol::Grpc);
    assert_eq!(c.metrics_protocol(), Protocol::HttpProtobuf);
    assert_eq!(c.metrics_endpoint(), "http://otel:4318/v1/metrics");
    assert_eq!(c.metrics_interval, Duration::from_millis(250));
    c.validate().unwrap();

    let mut c = TelemetryConfig::default();
    c.apply_env(env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "http://b:4318/custom",
        ),
    ]))
    .unwrap();
    assert!(c.metrics, "the metrics endpoint turns metrics on");
    assert_eq!(c.metrics_endpoint(), "http://b:4318/custom");
    assert_eq!(c.traces_endpoint(), "http://a:4318");

    c.apply_env(env(&[("OTEL_METRICS_EXPORTER", "none")]))
        .unwrap();
    assert!(!c.metrics);
    c.apply_env(env(&[
        ("OTEL_METRICS_EXPORTER", "otlp"),
        ("OTEL_SDK_DISABLED", "true"),
    ]))
    .unwrap();
    assert!(!c.metrics && !c.enabled);
}

#[test]
fn metrics_go_to_the_traces_collector_unless_told() {
    let mut c = TelemetryConfig::default();
    assert_eq!(c.metrics_endpoint(), "http://localhost:4317");
    c.endpoint = "http://otel:4317".into();
    assert_eq!(c.metrics_endpoint(), "http://otel:4317");
    c.protocol = Protocol::HttpProtobuf;
    assert_eq!(c.metrics_endpoint(), "http://otel:4317/v1/metrics");
    c.endpoint = "http://otel:4318/v1/traces".into();
    assert_eq!(c.metrics_endpoint(), "http://otel:4318/v1/metrics");
    // Another protocol: another port, so its default.
    c.metrics_protocol = Some(Protocol::Grpc);
    assert_eq!(c.metrics_endpoint(), "http://localhost:4317");
    c.metrics_endpoint = "http://m:4317".into();
    assert_eq!(c.metrics_endpoint(), "http://m:4317");
    c.metrics_protocol = Some(Protocol::HttpProtobuf);
    assert_eq!(c.metrics_endpoint(), "http://m:4317/v1/metrics");

    let toml = "metrics = true\nmetrics_protocol = \"http/protobuf\"\nmetrics_interval = \"15s\"";
    let c: TelemetryConfig = toml::from_str(toml).unwrap();
    assert!(c.metrics);
    assert_eq!(c.metrics_protocol, Some(Protocol::HttpProtobuf));
    assert_eq!(c.metrics_interval, Duration::from_secs(15));
}

#[test]
fn bad_metrics_settings_name_the_variable_or_key() {
    for (k, v) in [
        ("OTEL_METRICS_EXPORTER", "console"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1m"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
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
                metrics_endpoint: "https://x:4317".into(),
                ..Default::default()
            },
            "telemetry.metrics_endpoint",
        ),
        (
            TelemetryConfig {
                metrics_interval: Duration::ZERO,
                ..Default::default()
            },
            "telemetry.metrics_interval",
        ),
    ] {
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}
