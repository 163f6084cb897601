//! The rate-limit headers OpenAI's API sends and its SDKs read, on every response of a
//! tenant with a requests- or tokens-per-minute limit: `x-ratelimit-limit-requests`,
//! `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the same for tokens.
//! The reset is written as OpenAI writes it (`1s`, `6m0s`, `20ms`).

use std::fmt::Write;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::window::Room;

/// The windows of a limited tenant after its request was decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<Room>,
    pub tokens: Option<Room>,
}

impl RateHeaders {
    /// Writes the headers of each window the tenant is limited by.
    pub fn apply(&self, h: &mut HeaderMap) {
        for (what, room) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(room) = room else { continue };
            let mut set = |name: &str, v: String| {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::try_from(format!("x-ratelimit-{name}-{what}")),
                    HeaderValue::try_from(v),
                ) {
                    h.insert(n, v);
                }
            };
            set("limit", room.limit.to_string());
            set("remaining", room.remaining.to_string());
            set("reset", openai_duration(room.reset));
        }
    }
}

/// A duration as OpenAI's headers write it: `20ms`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, (ms / 60_000) % 60);
    let s = (ms % 60_000) as f64 / 1000.0;
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let _ = write!(out, "{s}s");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_openai_writes_them() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
    }

    #[test]
    fn only_the_windows_a_tenant_has() {
        let mut h = HeaderMap::new();
        RateHeaders {
            requests: Some(Room {
                limit: 100,
                remaining: 99,
                reset: Duration::from_secs(59),
            }),
            tokens: None,
        }
        .apply(&mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "100");
        assert_eq!(h["x-ratelimit-remaining-requests"], "99");
        assert_eq!(h["x-ratelimit-reset-requests"], "59s");
        assert!(h.get("x-ratelimit-limit-tokens").is_none());
    }
}
