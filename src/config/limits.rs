//! `[limits]`: what clients and backends may make the gateway hold.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

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
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A measured endpoint's request body must have arrived within this long after its
    /// head; a slower one gets 408.
    #[serde(with = "humantime_serde")]
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
        }
    }
}

impl Limits {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_sse_line < 1024 {
            return Err(ConfigError::invalid(
                "limits.max_sse_line",
                "must be at least 1024",
            ));
        }
        if self.header_read_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "limits.header_read_timeout",
                "must be greater than 0",
            ));
        }
        if self.body_read_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "limits.body_read_timeout",
                "must be greater than 0",
            ));
        }
        if self.max_head_bytes < 1024 {
            return Err(ConfigError::invalid(
                "limits.max_head_bytes",
                "must be at least 1024",
            ));
        }
        if self.max_buffered_bytes < self.max_request_body {
            return Err(ConfigError::invalid(
                "limits.max_buffered_bytes",
                "must be at least limits.max_request_body",
            ));
        }
        if self.max_request_body == 0 {
            return Err(ConfigError::invalid(
                "limits.max_request_body",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}
