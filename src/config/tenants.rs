//! Tenants' limits and prices: `limits` on each `[[auth.keys]]` entry (and
//! `[auth.default_limits]` for every key), the price table `[costs]`, and the shared store
//! `[limits.redis]` that holds the limits across replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::error::{ConfigError, duration, positive, quoted};

/// What one tenant may spend; each limit left out is no limit (a key's own value wins over
/// `[auth.default_limits]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Requests admitted in any minute.
    pub requests_per_minute: Option<u64>,
    /// Input + output tokens in any minute: charged at admission from an estimate (prompt
    /// bytes / 4 + `max_tokens` × `n`), corrected with the real usage when the response ends.
    pub tokens_per_minute: Option<u64>,
    /// Requests of the tenant in flight at once.
    pub max_concurrent: Option<u64>,
    /// Spend per UTC day, in USD (priced with `[costs]`).
    pub budget_usd_per_day: Option<f64>,
    /// Spend per UTC calendar month, in USD.
    pub budget_usd_per_month: Option<f64>,
}

impl TenantLimits {
    /// Each limit this one leaves out taken from `default`.
    pub fn or(&self, default: &TenantLimits) -> TenantLimits {
        TenantLimits {
            requests_per_minute: self.requests_per_minute.or(default.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.or(default.tokens_per_minute),
            max_concurrent: self.max_concurrent.or(default.max_concurrent),
            budget_usd_per_day: self.budget_usd_per_day.or(default.budget_usd_per_day),
            budget_usd_per_month: self.budget_usd_per_month.or(default.budget_usd_per_month),
        }
    }

    /// No limit at all: such a tenant is never checked (and gets no rate-limit headers).
    pub fn is_empty(&self) -> bool {
        *self == TenantLimits::default()
    }

    /// `at` is the table's path (`auth.keys[0].limits`, `auth.default_limits`).
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let counts = [
            ("requests_per_minute", self.requests_per_minute, "100"),
            ("tokens_per_minute", self.tokens_per_minute, "100000"),
            ("max_concurrent", self.max_concurrent, "16"),
        ];
        for (name, v, example) in counts {
            if v == Some(0) {
                return Err(ConfigError::invalid(
                    format!("{at}.{name}"),
                    "must be at least 1 (leave it out for no limit)",
                )
                .value("0")
                .example(format!("{name} = {example}")));
            }
        }
        let budgets = [
            ("budget_usd_per_day", self.budget_usd_per_day),
            ("budget_usd_per_month", self.budget_usd_per_month),
        ];
        for (name, v) in budgets {
            if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(ConfigError::invalid(
                    format!("{at}.{name}"),
                    "must be a number of USD, 0 or more",
                )
                .value(format!("{}", v.unwrap_or_default()))
                .example(format!("{name} = 25.0")));
            }
        }
        Ok(())
    }
}

/// The price of one model, in USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Price {
    pub input: f64,
    /// Input tokens served from the prefix cache (default: the input price).
    pub cached_input: Option<f64>,
    pub output: f64,
}

impl Price {
    /// The cost in USD of a request's tokens; `cached` is the part of `input` read from the
    /// prefix cache.
    pub fn cost(&self, input: u64, cached: u64, output: u64) -> f64 {
        let cached = cached.min(input);
        let per_token = |usd_per_million: f64, n: u64| usd_per_million * n as f64 / 1e6;
        per_token(self.input, input - cached)
            + per_token(self.cached_input.unwrap_or(self.input), cached)
            + per_token(self.output, output)
    }
}

/// `[costs]`: prices per model, and the spend per hour the alert compares with.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Costs {
    /// Keyed by the model name clients ask for; a model without a price costs nothing.
    pub models: BTreeMap<String, Price>,
    /// Exported as `weir_cost_ceiling_usd_per_hour` for the `WeirSpendPerHourHigh` alert
    /// (None: not exported, the alert stays quiet).
    pub hourly_ceiling_usd: Option<f64>,
}

impl Costs {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (model, p) in &self.models {
            let prices = [
                ("input", Some(p.input)),
                ("cached_input", p.cached_input),
                ("output", Some(p.output)),
            ];
            for (name, v) in prices {
                let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) else {
                    continue;
                };
                return Err(ConfigError::invalid(
                    format!("costs.models.{}.{name}", quoted(model)),
                    "must be USD per million tokens, 0 or more",
                )
                .value(format!("{v}"))
                .example(format!("{name} = 0.15")));
            }
        }
        if let Some(v) = self
            .hourly_ceiling_usd
            .filter(|v| !(v.is_finite() && *v > 0.0))
        {
            return Err(ConfigError::invalid(
                "costs.hourly_ceiling_usd",
                "must be a number of USD greater than 0",
            )
            .value(format!("{v}"))
            .example("hourly_ceiling_usd = 50.0"));
        }
        Ok(())
    }
}

/// What a replica does when the shared store does not answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Serve the request unchecked, count `weir_limit_store_errors_total`, log once per
    /// interval: a Redis outage does not become an outage of the API.
    #[default]
    Open,
    /// Answer 503: no request goes unchecked.
    Closed,
}

/// `[limits.redis]`: the store every replica checks its tenants' limits in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:6379/0` (or `rediss://` … for TLS is not built in: use a local proxy).
    pub url: String,
    /// The longest a request waits for its check; past it the store counts as failed.
    #[serde(deserialize_with = "super::de::duration")]
    pub timeout: Duration,
    /// `open` (default) or `closed`.
    pub on_error: OnStoreError,
    /// Prefix of every key weir writes.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            timeout: Duration::from_millis(50),
            on_error: OnStoreError::Open,
            key_prefix: "weir".into(),
        }
    }
}

impl RedisConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.starts_with("redis://") {
            return Err(
                ConfigError::invalid("limits.redis.url", "must start with redis://")
                    .value(quoted(&self.url))
                    .example("url = \"redis://127.0.0.1:6379/0\""),
            );
        }
        positive("limits.redis.timeout", self.timeout, "timeout = \"50ms\"")?;
        if self.timeout > Duration::from_secs(5) {
            return Err(ConfigError::invalid(
                "limits.redis.timeout",
                "must be at most 5s: every request of a limited tenant may wait this long",
            )
            .value(duration(self.timeout))
            .example("timeout = \"50ms\""));
        }
        if self.key_prefix.is_empty() || self.key_prefix.len() > 64 {
            return Err(
                ConfigError::invalid("limits.redis.key_prefix", "must be 1 to 64 bytes")
                    .value(quoted(&self.key_prefix))
                    .example("key_prefix = \"weir\""),
            );
        }
        Ok(())
    }
}
