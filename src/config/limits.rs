//! `[limits]`: what clients and backends may make the gateway hold.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::error::positive;

/// Limits on what clients and backends may make the gateway hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted on the measured endpoints (bytes); larger gets 413,
    /// from its `Content-Length` when it has one.
    pub max_request_body: usize,
    /// Largest request head (request line and headers, bytes); larger gets 431.
    pub max_head_bytes: usize,
    /// A client must send its request head within this long, and a new connection its
    /// first bytes (slow-loris).
    #[serde(deserialize_with = "super::de::duration")]
    pub header_read_timeout: Duration,
    /// A measured endpoint's request body must have arrived within this long after its
    /// head; a slower one gets 408.
    #[serde(deserialize_with = "super::de::duration")]
    pub body_read_timeout: Duration,
    /// Open client connections; more get a 503 and are closed (0: no limit).
    pub max_connections: usize,
    /// Requests in flight to the backends (counted once their body is in); more get a 503
    /// with Retry-After (0: no limit).
    pub max_in_flight: usize,
    /// Bytes of bodies held whole in memory, all requests together: request bodies read for
    /// inspection, response bodies kept to read their usage. A request body that would go
    /// past it gets a 503 with Retry-After; a response body passes unmeasured.
    pub max_buffered_bytes: usize,
    /// Longest SSE line the observer holds across chunks; a longer one is passed on
    /// unparsed and the request's measurement marked degraded.
    pub max_sse_line: usize,
    /// `[limits.redis]`: the tenants' limits held in Redis, shared by every replica (None:
    /// each process holds its own).
    pub redis: Option<super::tenants::RedisConfig>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: 32 * 1024 * 1024,
            max_head_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_in_flight: 4096,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_sse_line: 1 << 20,
            redis: None,
        }
    }
}

impl Limits {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(r) = &self.redis {
            r.validate()?;
        }
        let at_least = |name: &str, v: usize, min: usize, example: &str| {
            if v < min {
                return Err(ConfigError::invalid(
                    format!("limits.{name}"),
                    format!("must be at least {min}"),
                )
                .value(v.to_string())
                .example(example));
            }
            Ok(())
        };
        at_least(
            "max_sse_line",
            self.max_sse_line,
            1024,
            "max_sse_line = 1048576",
        )?;
        at_least(
            "max_head_bytes",
            self.max_head_bytes,
            1024,
            "max_head_bytes = 65536",
        )?;
        at_least(
            "max_request_body",
            self.max_request_body,
            1,
            "max_request_body = 33554432",
        )?;
        positive(
            "limits.header_read_timeout",
            self.header_read_timeout,
            "header_read_timeout = \"10s\"",
        )?;
        positive(
            "limits.body_read_timeout",
            self.body_read_timeout,
            "body_read_timeout = \"30s\"",
        )?;
        if self.max_buffered_bytes < self.max_request_body {
            return Err(ConfigError::invalid(
                "limits.max_buffered_bytes",
                format!(
                    "must be at least limits.max_request_body ({}): one whole request body must fit",
                    self.max_request_body
                ),
            )
            .value(self.max_buffered_bytes.to_string())
            .example("max_buffered_bytes = 268435456"));
        }
        Ok(())
    }
}
