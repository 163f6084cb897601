//! Configuration as plain data: the TOML file, CLI overrides, defaults and `validate()`, read
//! at start-up and again on SIGHUP. It imports nothing of the gateway but the label rules
//! (`labels`): every part of weir may read it.

mod auth;
mod backend;
pub mod de;
mod discovery;
mod error;
mod limits;
mod metrics;
mod proxy;
mod restart;
mod slo;
mod telemetry;
mod tenants;
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use auth::{AuthConfig, KeyConfig, parse_hash};
pub use backend::{BackendConfig, Health, Retries, Strategy, TimeoutOverrides, Timeouts};
pub use discovery::{Discovery, DiscoveryKind};
pub use error::{ConfigError, Invalid};
pub use limits::Limits;
pub use metrics::MetricsConfig;
pub use proxy::{API_PATHS, ProxyConfig};
pub use slo::{SloConfig, SloOverride, Targets};
pub use telemetry::{Protocol, SamplerKind, TelemetryConfig};
pub use tenants::{Costs, OnStoreError, Price, RedisConfig, TenantLimits};
pub use tls::{BackendTls, ListenerTls, provider as tls_provider};

/// The whole configuration of a gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Proxy listener (clients connect here).
    #[serde(deserialize_with = "de::listen")]
    pub listen: SocketAddr,
    /// `[tls]`: the proxy listener speaks TLS with this certificate (None: plain TCP).
    pub tls: Option<ListenerTls>,
    /// Admin listener: `/metrics`, `/healthz`, `/readyz`, `/backends`.
    #[serde(deserialize_with = "de::listen")]
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
    /// How `discovery = "dns"` backends are resolved (`[discovery]`).
    pub discovery: Discovery,
    pub retries: Retries,
    pub limits: Limits,
    /// Which paths the proxy listener passes on (`[proxy]`).
    pub proxy: ProxyConfig,
    /// API keys on the proxy listener, and what each may spend.
    pub auth: AuthConfig,
    /// Prices per model (`[costs]`): each request's cost, and the tenants' budgets.
    pub costs: Costs,
    pub admin: Admin,
    /// How long in-flight requests may run on after SIGTERM / Ctrl-C before they are cut.
    #[serde(deserialize_with = "de::duration")]
    pub shutdown_grace: Duration,
    /// After SIGTERM / Ctrl-C and before the listener closes: `/readyz` answers 503 and
    /// HTTP/1 responses carry `Connection: close` while requests are still served, so that a
    /// load balancer takes the replica out first (0: close at once).
    #[serde(deserialize_with = "de::duration")]
    pub shutdown_delay: Duration,
    /// How the proxy listener's connections are spread over the CPUs.
    pub scheduler: Scheduler,
    /// Worker threads of `scheduler = "per-core"` (0: one per CPU weir may use, or
    /// `TOKIO_WORKER_THREADS`).
    pub workers: usize,
    /// OTLP traces (`[telemetry]`, see `telemetry.rs`).
    pub telemetry: TelemetryConfig,
    /// The series' labels (`[metrics]`).
    pub metrics: MetricsConfig,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Hex SHA-256 of a bearer token required for `/metrics` and `/backends` (empty: none;
    /// `/healthz` and `/readyz` stay open for probes).
    pub token_sha256: String,
    /// `[admin.tls]`: the admin listener speaks TLS with this certificate (None: plain TCP).
    pub tls: Option<ListenerTls>,
}

/// The most worker threads `workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// How the proxy listener's connections are served when weir may use more than one CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// One thread per CPU, each with an event loop of its own that accepts connections and
    /// keeps backend connections of its own: a request is served on one core from its first
    /// byte to its last, as nginx's workers do.
    #[default]
    PerCore,
    /// One work-stealing runtime for all connections: a connection's work moves to an idle
    /// core, at the price of shared queues and of cache lines that move between cores.
    Shared,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            models: Vec::new(),
            backends: Vec::new(),
            balance: Strategy::default(),
            timeouts: Timeouts::default(),
            slo: SloConfig::default(),
            health: Health::default(),
            discovery: Discovery::default(),
            retries: Retries::default(),
            limits: Limits::default(),
            proxy: ProxyConfig::default(),
            auth: Default::default(),
            costs: Costs::default(),
            admin: Admin::default(),
            shutdown_grace: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            scheduler: Scheduler::default(),
            workers: 0,
            telemetry: TelemetryConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a TOML file; an invalid value's error names the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config
            .validate()
            .map_err(|e| e.origin(path.display().to_string()))?;
        Ok(config)
    }

    /// Reads a TOML file and fills its derived defaults, without validating it: the command
    /// line may still complete it (`--backend`).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })?;
        config.normalise();
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
            )
            .example("[[backends]] url = \"http://127.0.0.1:8000\""));
        }
        // Before the backends, which inherit it: its error names the table the user wrote.
        self.timeouts.validate("timeouts")?;
        backend::validate(&self.backends, &self.timeouts)?;
        for (j, m) in self.models.iter().enumerate() {
            check_label(m).map_err(|r| {
                ConfigError::invalid(format!("models[{j}]"), r)
                    .value(error::quoted(m))
                    .example("models = [\"meta-llama/Llama-3.1-8B-Instruct\"]")
            })?;
        }
        self.auth.validate()?;
        if !self.admin.token_sha256.is_empty() && parse_hash(&self.admin.token_sha256).is_none() {
            return Err(ConfigError::invalid("admin.token_sha256", HASH_REASON)
                .value(error::quoted(&self.admin.token_sha256))
                .example(HASH_EXAMPLE));
        }
        // The files are read here, so that a bad one is named before anything starts.
        if let Some(t) = &self.tls {
            t.load("tls")?;
        }
        if let Some(t) = &self.admin.tls {
            t.load("admin.tls")?;
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::invalid(
                "workers",
                format!("at most {MAX_WORKERS} (0: one per CPU)"),
            )
            .value(self.workers.to_string())
            .example("workers = 0"));
        }
        self.limits.validate()?;
        self.costs.validate()?;
        self.proxy.validate()?;
        self.health.validate()?;
        self.discovery.validate()?;
        self.slo.validate()?;
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(
                ConfigError::invalid("admin_listen", "must differ from `listen`")
                    .value(error::quoted(&self.admin_listen.to_string()))
                    .example(format!(
                        "admin_listen = \"127.0.0.1:{}\"",
                        self.listen.port().wrapping_add(1)
                    )),
            );
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

/// What a SHA-256 field must hold, and how to make one.
const HASH_REASON: &str = "must be 64 hex digits, the SHA-256 of the key";
const HASH_EXAMPLE: &str = "sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" (printf %s \"$KEY\" | sha256sum)";

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
