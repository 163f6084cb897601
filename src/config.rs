//! Configuration as plain data: the TOML file, CLI overrides, defaults and `validate()`, read
//! at start-up and again on SIGHUP. It imports nothing of the gateway but the label rules
//! (`labels`): every part of weir may read it.

mod auth;
mod backend;
mod limits;
mod proxy;
mod slo;
mod telemetry;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use auth::{AuthConfig, KeyConfig, parse_hash};
pub use backend::{BackendConfig, Health, Retries, Strategy, TimeoutOverrides, Timeouts};
pub use limits::Limits;
pub use proxy::{API_PATHS, ProxyConfig};
pub use slo::{SloConfig, SloOverride, Targets};
pub use telemetry::{Protocol, SamplerKind, TelemetryConfig};

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
    /// Per-model TTFT / ITL thresholds and goodput (`[slo]`, judged in `slo.rs`).
    pub slo: SloConfig,
    pub health: Health,
    pub retries: Retries,
    pub limits: Limits,
    /// Which paths the proxy listener passes on (`[proxy]`).
    pub proxy: ProxyConfig,
    /// API keys on the proxy listener.
    pub auth: AuthConfig,
    pub admin: Admin,
    /// How long in-flight requests may run on after SIGTERM / Ctrl-C before they are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// OTLP traces (`[telemetry]`, see `telemetry.rs`).
    pub telemetry: TelemetryConfig,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Hex SHA-256 of a bearer token required for `/metrics` and `/backends` (empty: none;
    /// `/healthz` and `/readyz` stay open for probes).
    pub token_sha256: String,
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
            slo: SloConfig::default(),
            health: Health::default(),
            retries: Retries::default(),
            limits: Limits::default(),
            proxy: ProxyConfig::default(),
            auth: Default::default(),
            admin: Admin::default(),
            shutdown_grace: Duration::from_secs(30),
            telemetry: TelemetryConfig::default(),
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

impl ConfigError {
    /// The field at `field` is wrong for `reason`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
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
        if self.backends.is_empty() {
            return Err(ConfigError::invalid(
                "backends",
                "at least one backend is required (a [[backends]] table or --backend URL)",
            ));
        }
        backend::validate(&self.backends, &self.timeouts)?;
        for (j, m) in self.models.iter().enumerate() {
            check_label(m).map_err(|r| ConfigError::invalid(format!("models[{j}]"), r))?;
        }
        self.timeouts.validate("timeouts")?;
        self.auth
            .validate()
            .map_err(|(field, reason)| ConfigError::invalid(field, reason))?;
        if !self.admin.token_sha256.is_empty() && parse_hash(&self.admin.token_sha256).is_none() {
            return Err(ConfigError::invalid(
                "admin.token_sha256",
                "must be 64 hex digits",
            ));
        }
        self.limits.validate()?;
        self.proxy.validate()?;
        self.health.validate()?;
        self.slo.validate()?;
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(ConfigError::invalid(
                "admin_listen",
                "must differ from `listen`",
            ));
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

fn check_label(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("must not be empty");
    }
    if v.len() > 256 {
        return Err("longer than 256 bytes");
    }
    if v == crate::labels::OTHER {
        return Err("`other` is reserved for models not in the config");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
