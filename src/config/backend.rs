//! `[[backends]]` and what applies to each backend: balancing, timeouts, health, retries.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, check_label};

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

impl Timeouts {
    /// Every timeout must be set; `at` names the table (`timeouts`, `backends[0].timeouts`).
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for (name, d) in [
            ("connect", self.connect),
            ("first_token", self.first_token),
            ("idle", self.idle),
            ("total", self.total),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(
                    format!("{at}.{name}"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }
}

impl Health {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, d) in [
            ("interval", self.interval),
            ("timeout", self.timeout),
            ("ejection_base", self.ejection_base),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(
                    format!("health.{name}"),
                    "must be greater than 0",
                ));
            }
        }
        if self.ejection_max < self.ejection_base {
            return Err(ConfigError::invalid(
                "health.ejection_max",
                "must not be less than ejection_base",
            ));
        }
        if self.unhealthy_threshold == 0 || self.healthy_threshold == 0 {
            return Err(ConfigError::invalid(
                "health.unhealthy_threshold",
                "thresholds must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Checks each backend (URL, unique name, models, weight, timeouts with `global` applied).
pub(super) fn validate(backends: &[BackendConfig], global: &Timeouts) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, b) in backends.iter().enumerate() {
        let field = |f: &str| format!("backends[{i}].{f}");
        let invalid = |f: &str, reason: &str| ConfigError::invalid(field(f), reason);
        let uri: http::Uri = b.url.parse().map_err(|_| invalid("url", "not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("url", "must start with http://"));
        }
        if uri.authority().is_none() {
            return Err(invalid("url", "has no host"));
        }
        if uri.query().is_some() {
            return Err(invalid("url", "must not have a query"));
        }
        if !names.insert(b.name.as_str()) {
            return Err(invalid("name", "duplicate backend name"));
        }
        for (j, m) in b.models.iter().enumerate() {
            check_label(m).map_err(|r| invalid(&format!("models[{j}]"), r))?;
        }
        check_label(&b.name).map_err(|r| invalid("name", r))?;
        if b.weight == 0 {
            return Err(invalid("weight", "must be at least 1"));
        }
        global
            .with(&b.timeouts)
            .validate(&format!("backends[{i}].timeouts"))?;
    }
    Ok(())
}
