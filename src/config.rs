//! Configuration: the TOML file, CLI overrides, defaults and `validate()`; read at start-up
//! and again on SIGHUP (backends, balancing, health and timeouts).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::telemetry::TelemetryConfig;

/// The whole configuration of a gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Proxy listener (clients connect here).
    pub listen: SocketAddr,
    /// Admin listener: `/metrics`, `/healthz`, `/readyz`, `/backends`.
    pub admin_listen: SocketAddr,
    /// Models used as the `gen_ai_request_model` label; any other model is `other`.
    pub models: Vec<String>,
    /// The vLLM / OpenAI-compatible backends.
    pub backends: Vec<BackendConfig>,
    /// How a backend is picked among those serving the model.
    pub balance: Strategy,
    pub timeouts: Timeouts,
    /// Per-model TTFT / ITL thresholds and goodput (`[slo]`, see `slo.rs`).
    pub slo: crate::slo::SloConfig,
    pub health: Health,
    pub retries: Retries,
    pub limits: Limits,
    /// API keys on the proxy listener.
    pub auth: crate::auth::AuthConfig,
    pub admin: Admin,
    /// How long in-flight requests may run on after SIGTERM / Ctrl-C before they are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// OTLP traces (`[telemetry]`, see `telemetry.rs`).
    pub telemetry: TelemetryConfig,
}

/// One backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Name used as the `backend` label; defaults to the URL's `host:port`.
    #[serde(default)]
    pub name: String,
    /// Base URL, `http://host:port` (a path prefix is allowed: `http://host/vllm`).
    pub url: String,
    /// Models this backend serves (added to the label set). Empty: discovered from the
    /// backend's `/v1/models`.
    #[serde(default)]
    pub models: Vec<String>,
    /// Relative share of traffic.
    #[serde(default = "one")]
    pub weight: u32,
    /// Most requests in flight to this backend at once (0: no cap).
    #[serde(default)]
    pub max_concurrency: usize,
    /// Overrides of the global timeouts for this backend.
    #[serde(default)]
    pub timeouts: TimeoutOverrides,
    /// Environment variable holding this backend's own API key: it replaces whatever
    /// `Authorization` the client sent.
    #[serde(default)]
    pub api_key_env: Option<String>,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Hex SHA-256 of a bearer token required for `/metrics` and `/backends` (empty: none;
    /// `/healthz` and `/readyz` stay open for probes).
    pub token_sha256: String,
}

fn one() -> u32 {
    1
}

impl BackendConfig {
    /// A backend at `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> BackendConfig {
        BackendConfig {
            name: String::new(),
            url: url.into(),
            models: Vec::new(),
            weight: 1,
            max_concurrency: 0,
            timeouts: TimeoutOverrides::default(),
            api_key_env: None,
        }
    }
}

/// Balancing strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Power of two choices on outstanding requests, candidates drawn by weight.
    #[default]
    P2c,
    /// Shortest vLLM queue (`vllm:num_requests_waiting`), scraped from each backend.
    QueueAware,
    /// Weighted round-robin.
    RoundRobin,
}

/// Per-backend timeout overrides; unset fields use `[timeouts]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutOverrides {
    #[serde(default, with = "humantime_serde")]
    pub connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub first_token: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub total: Option<Duration>,
}

/// Active and passive health checking.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// How often each backend's `/health` is fetched (and its `/metrics` for queue-aware).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A check slower than this fails.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed checks that take a backend down.
    pub unhealthy_threshold: u32,
    /// Consecutive good checks that bring it back.
    pub healthy_threshold: u32,
    /// Consecutive connect failures or 5xx answers that eject a backend (0: never).
    pub passive_failures: u32,
    /// First ejection; each further one doubles, up to `ejection_max`.
    #[serde(with = "humantime_serde")]
    pub ejection_base: Duration,
    #[serde(with = "humantime_serde")]
    pub ejection_max: Duration,
}

/// Retrying on another backend before any byte reached the client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Retry once when the connect was refused or the backend answered 503.
    pub enabled: bool,
}

/// Timeouts on the upstream call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to a backend.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Request sent → first content-bearing event (or the response head when not streamed).
    #[serde(with = "humantime_serde")]
    pub first_token: Duration,
    /// Longest gap between two chunks of a response.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Request head → end of the response.
    #[serde(with = "humantime_serde")]
    pub total: Duration,
    /// Idle pooled connections to backends are closed after this long. Shorter than vLLM's
    /// own keep-alive (uvicorn, `VLLM_HTTP_TIMEOUT_KEEP_ALIVE`, 5 s by default), so that weir
    /// never sends a request on a connection the backend is closing, and the memory of a
    /// burst's connections goes back soon after the burst.
    #[serde(with = "humantime_serde")]
    pub pool_idle: Duration,
}

impl Timeouts {
    /// These timeouts with a backend's overrides applied.
    pub fn with(&self, o: &TimeoutOverrides) -> Timeouts {
        Timeouts {
            connect: o.connect.unwrap_or(self.connect),
            first_token: o.first_token.unwrap_or(self.first_token),
            idle: o.idle.unwrap_or(self.idle),
            total: o.total.unwrap_or(self.total),
            pool_idle: self.pool_idle,
        }
    }
}

/// Limits on what clients and backends may make the gateway hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted on the measured endpoints (bytes); larger gets 413.
    pub max_request_body: usize,
    /// A client must send its request head within this long, and a new connection its
    /// first bytes (slow-loris).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Open client connections; more get a 503 and are closed (0: no limit).
    pub max_connections: usize,
    /// Requests in flight; more get a 503 with Retry-After (0: no limit).
    pub max_in_flight: usize,
    /// Longest SSE line the observer holds across chunks; a longer one is passed on
    /// unparsed and the request's measurement marked degraded.
    pub max_sse_line: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            models: Vec::new(),
            backends: Vec::new(),
            balance: Strategy::default(),
            timeouts: Timeouts::default(),
            slo: crate::slo::SloConfig::default(),
            health: Health::default(),
            retries: Retries::default(),
            limits: Limits::default(),
            auth: Default::default(),
            admin: Admin::default(),
            shutdown_grace: Duration::from_secs(30),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            first_token: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
            pool_idle: Duration::from_secs(4),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            passive_failures: 3,
            ejection_base: Duration::from_secs(5),
            ejection_max: Duration::from_secs(120),
        }
    }
}

impl Default for Retries {
    fn default() -> Self {
        Retries { enabled: true }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: 32 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_in_flight: 4096,
            max_sse_line: 1 << 20,
        }
    }
}

/// A configuration that cannot be used, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })?;
        config.normalise();
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without validating it.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Fills derived defaults: backend names from their URLs.
    pub fn normalise(&mut self) {
        for b in &mut self.backends {
            if b.name.is_empty() {
                b.name = b
                    .url
                    .parse::<http::Uri>()
                    .ok()
                    .and_then(|u| u.authority().map(|a| a.to_string()))
                    .unwrap_or_else(|| b.url.clone());
            }
        }
    }

    /// Checks everything a running gateway relies on; the error names the bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_string(),
        };
        if self.backends.is_empty() {
            return Err(invalid(
                "backends".into(),
                "at least one backend is required (a [[backends]] table or --backend URL)",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let field = |f: &str| format!("backends[{i}].{f}");
            let uri: http::Uri = b
                .url
                .parse()
                .map_err(|_| invalid(field("url"), "not a URL"))?;
            if uri.scheme_str() != Some("http") {
                return Err(invalid(field("url"), "must start with http://"));
            }
            if uri.authority().is_none() {
                return Err(invalid(field("url"), "has no host"));
            }
            if uri.query().is_some() {
                return Err(invalid(field("url"), "must not have a query"));
            }
            if !names.insert(b.name.as_str()) {
                return Err(invalid(field("name"), "duplicate backend name"));
            }
            for (j, m) in b.models.iter().enumerate() {
                check_label(m).map_err(|r| invalid(field(&format!("models[{j}]")), r))?;
            }
            check_label(&b.name).map_err(|r| invalid(field("name"), r))?;
            if b.weight == 0 {
                return Err(invalid(field("weight"), "must be at least 1"));
            }
            let t = self.timeouts.with(&b.timeouts);
            check_timeouts(&t, &format!("backends[{i}].timeouts"))?;
        }
        for (j, m) in self.models.iter().enumerate() {
            check_label(m).map_err(|r| invalid(format!("models[{j}]"), r))?;
        }
        check_timeouts(&self.timeouts, "timeouts")?;
        self.auth
            .validate()
            .map_err(|(field, reason)| invalid(field, reason))?;
        if !self.admin.token_sha256.is_empty()
            && crate::auth::parse_hash(&self.admin.token_sha256).is_none()
        {
            return Err(invalid(
                "admin.token_sha256".into(),
                "must be 64 hex digits",
            ));
        }
        if self.limits.max_sse_line < 1024 {
            return Err(invalid(
                "limits.max_sse_line".into(),
                "must be at least 1024",
            ));
        }
        if self.limits.header_read_timeout.is_zero() {
            return Err(invalid(
                "limits.header_read_timeout".into(),
                "must be greater than 0",
            ));
        }
        let h = &self.health;
        for (name, d) in [
            ("interval", h.interval),
            ("timeout", h.timeout),
            ("ejection_base", h.ejection_base),
        ] {
            if d.is_zero() {
                return Err(invalid(format!("health.{name}"), "must be greater than 0"));
            }
        }
        if h.ejection_max < h.ejection_base {
            return Err(invalid(
                "health.ejection_max".into(),
                "must not be less than ejection_base",
            ));
        }
        if h.unhealthy_threshold == 0 || h.healthy_threshold == 0 {
            return Err(invalid(
                "health.unhealthy_threshold".into(),
                "thresholds must be at least 1",
            ));
        }
        if self.limits.max_request_body == 0 {
            return Err(invalid(
                "limits.max_request_body".into(),
                "must be greater than 0",
            ));
        }
        self.slo.validate()?;
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(invalid("admin_listen".into(), "must differ from `listen`"));
        }
        self.telemetry.validate()
    }

    /// Every model name that gets its own label value, in config order, without duplicates.
    pub fn known_models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self
            .models
            .iter()
            .chain(self.backends.iter().flat_map(|b| b.models.iter()));
        for m in all {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }
}

fn check_timeouts(t: &Timeouts, at: &str) -> Result<(), ConfigError> {
    for (name, d) in [
        ("connect", t.connect),
        ("first_token", t.first_token),
        ("idle", t.idle),
        ("total", t.total),
    ] {
        if d.is_zero() {
            return Err(ConfigError::Invalid {
                field: format!("{at}.{name}"),
                reason: "must be greater than 0".into(),
            });
        }
    }
    Ok(())
}

fn check_label(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("must not be empty");
    }
    if v.len() > 256 {
        return Err("longer than 256 bytes");
    }
    if v == crate::metrics::OTHER {
        return Err("`other` is reserved for models not in the config");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/weir.toml");
        let c = Config::load(&path).expect("config/weir.toml must validate");
        let d = Config::default();
        // The shipped file documents every option at its default.
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.admin_listen, d.admin_listen);
        assert_eq!(c.timeouts.connect, d.timeouts.connect);
        assert_eq!(c.timeouts.pool_idle, d.timeouts.pool_idle);
        assert_eq!(c.timeouts.first_token, d.timeouts.first_token);
        assert_eq!(c.timeouts.idle, d.timeouts.idle);
        assert_eq!(c.timeouts.total, d.timeouts.total);
        assert_eq!(c.balance, d.balance);
        assert_eq!(c.slo, d.slo);
        assert_eq!(c.health.interval, d.health.interval);
        assert_eq!(c.health.timeout, d.health.timeout);
        assert_eq!(c.health.unhealthy_threshold, d.health.unhealthy_threshold);
        assert_eq!(c.health.healthy_threshold, d.health.healthy_threshold);
        assert_eq!(c.health.passive_failures, d.health.passive_failures);
        assert_eq!(c.health.ejection_base, d.health.ejection_base);
        assert_eq!(c.health.ejection_max, d.health.ejection_max);
        assert_eq!(c.retries.enabled, d.retries.enabled);
        assert_eq!(c.limits.max_request_body, d.limits.max_request_body);
        assert_eq!(c.limits.header_read_timeout, d.limits.header_read_timeout);
        assert_eq!(c.limits.max_connections, d.limits.max_connections);
        assert_eq!(c.limits.max_in_flight, d.limits.max_in_flight);
        assert_eq!(c.limits.max_sse_line, d.limits.max_sse_line);
        assert!(c.auth.keys.is_empty() && c.admin.token_sha256.is_empty());
        assert_eq!(c.shutdown_grace, d.shutdown_grace);
        assert_eq!(c.telemetry, d.telemetry);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = r#"
            [[backends]]
            url = "http://127.0.0.1:8000"
            [[backends]]
            url = "ftp://x"
        "#;
        let mut c = Config::parse(bad).unwrap();
        c.normalise();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("backends[1].url"), "{err}");

        let err = Config::parse("listen = \"127.0.0.1:1\"\nlisten_typo = 1").unwrap_err();
        assert!(err.contains("listen_typo"), "{err}");

        let err = Config::parse("[timeouts]\nconnect = \"three seconds\"").unwrap_err();
        assert!(err.contains("connect"), "{err}");
    }

    #[test]
    fn per_backend_overrides_and_strategy() {
        let text = r#"
            balance = "queue-aware"
            [timeouts]
            idle = "5s"
            [[backends]]
            url = "http://127.0.0.1:8000"
            weight = 3
            timeouts = { first_token = "250ms" }
        "#;
        let mut c = Config::parse(text).unwrap();
        c.normalise();
        c.validate().unwrap();
        assert_eq!(c.balance, Strategy::QueueAware);
        let t = c.timeouts.with(&c.backends[0].timeouts);
        assert_eq!(t.first_token, Duration::from_millis(250));
        assert_eq!(t.idle, Duration::from_secs(5));
        assert_eq!(c.backends[0].weight, 3);
        c.backends[0].timeouts.total = Some(Duration::ZERO);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("backends[0].timeouts.total"), "{err}");
    }

    #[test]
    fn backend_name_defaults_to_authority() {
        let mut c = Config::parse("[[backends]]\nurl = \"http://10.0.0.1:8000/\"").unwrap();
        c.normalise();
        assert_eq!(c.backends[0].name, "10.0.0.1:8000");
    }
}
