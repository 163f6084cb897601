//! `[[backends]]` and what applies to each backend: balancing, timeouts, health, retries.

use std::time::Duration;

use serde::Deserialize;

use super::check_label;
use super::discovery::DiscoveryKind;
use super::error::{ConfigError, duration, positive, quoted};

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
    /// For an `https://` URL: the CA, client certificate and name to verify (None: the
    /// system's roots, no client certificate, the URL's host).
    #[serde(default)]
    pub tls: Option<super::BackendTls>,
    /// `static` (the URL's host as it is) or `dns`: the host is resolved every
    /// `[discovery] interval` and each address is an endpoint of this backend.
    #[serde(default)]
    pub discovery: DiscoveryKind,
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
            tls: None,
            discovery: DiscoveryKind::Static,
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
    #[serde(default, deserialize_with = "super::de::opt_duration")]
    pub connect: Option<Duration>,
    #[serde(default, deserialize_with = "super::de::opt_duration")]
    pub first_token: Option<Duration>,
    #[serde(default, deserialize_with = "super::de::opt_duration")]
    pub idle: Option<Duration>,
    #[serde(default, deserialize_with = "super::de::opt_duration")]
    pub total: Option<Duration>,
}

/// Active and passive health checking.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// How often each backend's `/health` is fetched (and its `/metrics` for queue-aware).
    #[serde(deserialize_with = "super::de::duration")]
    pub interval: Duration,
    /// A check slower than this fails.
    #[serde(deserialize_with = "super::de::duration")]
    pub timeout: Duration,
    /// Consecutive failed checks that take a backend down.
    pub unhealthy_threshold: u32,
    /// Consecutive good checks that bring it back.
    pub healthy_threshold: u32,
    /// Consecutive connect failures or 5xx answers that eject a backend (0: never).
    pub passive_failures: u32,
    /// First ejection; each further one doubles, up to `ejection_max`.
    #[serde(deserialize_with = "super::de::duration")]
    pub ejection_base: Duration,
    #[serde(deserialize_with = "super::de::duration")]
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
    #[serde(deserialize_with = "super::de::duration")]
    pub connect: Duration,
    /// Request sent → first content-bearing event (or the response head when not streamed).
    #[serde(deserialize_with = "super::de::duration")]
    pub first_token: Duration,
    /// Longest gap between two chunks of a response.
    #[serde(deserialize_with = "super::de::duration")]
    pub idle: Duration,
    /// Request head → end of the response.
    #[serde(deserialize_with = "super::de::duration")]
    pub total: Duration,
    /// Idle pooled connections to backends are closed after this long. Shorter than vLLM's
    /// own keep-alive (uvicorn, `VLLM_HTTP_TIMEOUT_KEEP_ALIVE`, 5 s by default), so that weir
    /// never sends a request on a connection the backend is closing, and the memory of a
    /// burst's connections goes back soon after the burst.
    #[serde(deserialize_with = "super::de::duration")]
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
        for (name, d, example) in [
            ("connect", self.connect, "connect = \"3s\""),
            ("first_token", self.first_token, "first_token = \"120s\""),
            ("idle", self.idle, "idle = \"60s\""),
            ("total", self.total, "total = \"10m\""),
        ] {
            positive(format!("{at}.{name}"), d, example)?;
        }
        Ok(())
    }
}

impl Health {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, d, example) in [
            ("interval", self.interval, "interval = \"5s\""),
            ("timeout", self.timeout, "timeout = \"2s\""),
            (
                "ejection_base",
                self.ejection_base,
                "ejection_base = \"5s\"",
            ),
        ] {
            positive(format!("health.{name}"), d, example)?;
        }
        if self.ejection_max < self.ejection_base {
            return Err(ConfigError::invalid(
                "health.ejection_max",
                format!(
                    "must not be less than ejection_base ({})",
                    duration(self.ejection_base)
                ),
            )
            .value(duration(self.ejection_max))
            .example("ejection_max = \"2m\""));
        }
        for (name, n) in [
            ("unhealthy_threshold", self.unhealthy_threshold),
            ("healthy_threshold", self.healthy_threshold),
        ] {
            if n == 0 {
                return Err(
                    ConfigError::invalid(format!("health.{name}"), "must be at least 1")
                        .value("0")
                        .example(format!("{name} = 2")),
                );
            }
        }
        Ok(())
    }
}

/// Checks each backend (URL, unique name, models, weight, timeouts with `global` applied).
pub(super) fn validate(backends: &[BackendConfig], global: &Timeouts) -> Result<(), ConfigError> {
    let mut names = std::collections::HashMap::new();
    for (i, b) in backends.iter().enumerate() {
        let field = |f: &str| format!("backends[{i}].{f}");
        check_url(&b.url).map_err(|(reason, example)| {
            ConfigError::invalid(field("url"), reason)
                .value(quoted(&b.url))
                .example(format!("url = {}", quoted(&example)))
        })?;
        check_tls(b, i)?;
        if b.discovery == DiscoveryKind::Dns {
            let host = b
                .url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()))
                .unwrap_or_default();
            if host.parse::<std::net::IpAddr>().is_ok() {
                return Err(ConfigError::invalid(
                    field("discovery"),
                    "\"dns\" resolves the URL's host name, and this URL has an IP address: leave discovery out (\"static\")",
                )
                .value(quoted("dns"))
                .example("url = \"http://vllm.default.svc.cluster.local:8000\""));
            }
        }
        if let Some(first) = names.insert(b.name.as_str(), i) {
            return Err(duplicate(backends, first, i));
        }
        for (j, m) in b.models.iter().enumerate() {
            check_label(m).map_err(|r| {
                ConfigError::invalid(field(&format!("models[{j}]")), r)
                    .value(quoted(m))
                    .example("models = [\"meta-llama/Llama-3.1-8B-Instruct\"]")
            })?;
        }
        check_label(&b.name).map_err(|r| {
            ConfigError::invalid(field("name"), r)
                .value(quoted(&b.name))
                .example("name = \"gpu-a\"")
        })?;
        if b.weight == 0 {
            return Err(ConfigError::invalid(field("weight"), "must be at least 1")
                .value("0")
                .example("weight = 1"));
        }
        global
            .with(&b.timeouts)
            .validate(&format!("backends[{i}].timeouts"))?;
    }
    Ok(())
}

/// An `https://` backend's TLS settings can be used (its files read); an `http://` one has
/// none.
fn check_tls(b: &BackendConfig, i: usize) -> Result<(), ConfigError> {
    let at = format!("backends[{i}].tls");
    let Ok(uri) = b.url.parse::<http::Uri>() else {
        return Ok(());
    };
    if uri.scheme_str() != Some("https") {
        if b.tls.is_some() {
            let rest = b.url.split_once("://").map_or(b.url.as_str(), |(_, r)| r);
            return Err(ConfigError::invalid(
                at,
                "applies to https:// backends only: this one is http://",
            )
            .example(format!("url = \"https://{rest}\"")));
        }
        return Ok(());
    }
    let tls = b.tls.clone().unwrap_or_default();
    tls.client_config(&at)?;
    tls.server_name(&at, uri.host().unwrap_or_default())?;
    Ok(())
}

/// Why a backend URL cannot be used, and a URL that would do.
fn check_url(url: &str) -> Result<(), (&'static str, String)> {
    let plain = |rest: &str| format!("http://{}", rest.trim_start_matches('/'));
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Err(("not a URL", "http://127.0.0.1:8000".to_owned()));
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        None => return Err(("must start with http://", plain(url))),
        Some(_) => {
            return Err((
                "must start with http:// or https://",
                "http://127.0.0.1:8000".to_owned(),
            ));
        }
    }
    if uri.authority().is_none() {
        return Err(("has no host", "http://127.0.0.1:8000".to_owned()));
    }
    if uri.query().is_some() {
        let base = url.split('?').next().unwrap_or(url);
        return Err(("must not have a query", base.to_owned()));
    }
    Ok(())
}

/// Two backends with one name: say whether the user named them, or whether the name is the
/// URL's `host:port` that both were given.
fn duplicate(backends: &[BackendConfig], first: usize, i: usize) -> ConfigError {
    let b = &backends[i];
    let reason = if backends[first].url == b.url {
        format!(
            "backends[{first}] has the same URL: list each backend once, or name them apart if they are meant to be two"
        )
    } else {
        format!(
            "backends[{first}] has this name too: each backend's name must be its own (unnamed backends are named after their URL's host:port)"
        )
    };
    ConfigError::invalid(format!("backends[{i}].name"), reason)
        .value(quoted(&b.name))
        .example(format!("name = \"{}-2\"", b.name))
}
