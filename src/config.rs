//! Configuration: the TOML file, CLI overrides, defaults and `validate()`; read once at start-up.

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
    /// The vLLM / OpenAI-compatible backends, used round-robin.
    pub backends: Vec<BackendConfig>,
    pub timeouts: Timeouts,
    pub limits: Limits,
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
    /// Models this backend serves; added to the label set.
    #[serde(default)]
    pub models: Vec<String>,
}

/// Timeouts on the upstream call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to a backend.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Idle pooled connections to backends are closed after this long.
    #[serde(with = "humantime_serde")]
    pub pool_idle: Duration,
}

/// Limits on what a client may send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted on the measured endpoints (bytes); larger gets 413.
    pub max_request_body: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            models: Vec::new(),
            backends: Vec::new(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            shutdown_grace: Duration::from_secs(30),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            pool_idle: Duration::from_secs(90),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: 32 * 1024 * 1024,
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
        }
        for (j, m) in self.models.iter().enumerate() {
            check_label(m).map_err(|r| invalid(format!("models[{j}]"), r))?;
        }
        if self.timeouts.connect.is_zero() {
            return Err(invalid("timeouts.connect".into(), "must be greater than 0"));
        }
        if self.limits.max_request_body == 0 {
            return Err(invalid(
                "limits.max_request_body".into(),
                "must be greater than 0",
            ));
        }
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
        assert_eq!(c.limits.max_request_body, d.limits.max_request_body);
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
    fn backend_name_defaults_to_authority() {
        let mut c = Config::parse("[[backends]]\nurl = \"http://10.0.0.1:8000/\"").unwrap();
        c.normalise();
        assert_eq!(c.backends[0].name, "10.0.0.1:8000");
    }
}
