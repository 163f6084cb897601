//! `[discovery]`: how backends with `discovery = "dns"` are resolved into endpoints.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::error::{ConfigError, positive, quoted};

/// How a backend's URL becomes the addresses it is reached at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryKind {
    /// The URL's host is connected to as it is (resolved by the system at each connect).
    #[default]
    Static,
    /// The URL's host is resolved every `[discovery] interval`; each address is an endpoint.
    Dns,
}

/// `[discovery]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Discovery {
    /// How often a DNS backend's name is resolved again (an answer's TTL, when shorter, is
    /// honoured).
    #[serde(deserialize_with = "super::de::duration")]
    pub interval: Duration,
    /// DNS servers to ask, `ip:port` or `ip` (port 53). Empty: the system's
    /// `/etc/resolv.conf` (its search domains and `ndots` too).
    pub nameservers: Vec<String>,
    /// Most endpoints one backend may have: the rest of a larger answer is left out.
    pub max_endpoints: usize,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            interval: Duration::from_secs(10),
            nameservers: Vec::new(),
            max_endpoints: 256,
        }
    }
}

impl Discovery {
    /// The nameservers' addresses (validated: every entry parses).
    pub fn nameserver_addrs(&self) -> Vec<SocketAddr> {
        self.nameservers
            .iter()
            .filter_map(|n| parse_nameserver(n))
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("discovery.interval", self.interval, "interval = \"10s\"")?;
        if self.max_endpoints == 0 {
            return Err(
                ConfigError::invalid("discovery.max_endpoints", "must be at least 1")
                    .value("0")
                    .example("max_endpoints = 256"),
            );
        }
        for (i, n) in self.nameservers.iter().enumerate() {
            if parse_nameserver(n).is_none() {
                return Err(ConfigError::invalid(
                    format!("discovery.nameservers[{i}]"),
                    "must be an IP address with an optional port (a name server cannot be a name)",
                )
                .value(quoted(n))
                .example("nameservers = [\"10.96.0.10:53\"]"));
            }
        }
        Ok(())
    }
}

/// `10.0.0.1:53`, `[::1]:5353` or a bare IP address (port 53).
fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_take_an_optional_port() {
        let d = Discovery {
            nameservers: vec!["127.0.0.1:5353".into(), "::1".into(), "10.0.0.1".into()],
            ..Discovery::default()
        };
        d.validate().unwrap();
        assert_eq!(
            d.nameserver_addrs(),
            [
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap()
            ]
        );
        let bad = Discovery {
            nameservers: vec!["kube-dns".into()],
            ..Discovery::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field(), Some("discovery.nameservers[0]"));
    }
}
