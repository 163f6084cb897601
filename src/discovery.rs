//! Backends found by DNS (`discovery = "dns"`): the URL's host name is resolved (A and AAAA)
//! every `[discovery] interval`, sooner when the answer's TTL runs out first, and each address
//! is an endpoint of the backend (`balance::Pool::with_endpoints`). An endpoint whose address
//! leaves the answer leaves the pool: the requests on it hold it and finish; a new address is
//! checked at once and takes traffic once the check passes. A failed lookup or an empty answer
//! keeps the endpoints known (their health checks say whether they still serve), and is
//! counted in `weir_discovery_errors_total`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{BackendConfig, Discovery, DiscoveryKind};
use crate::state::AppState;

/// Soonest a name is resolved again, whatever its TTL (a TTL of 0 would be a busy loop).
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// What one lookup found.
enum Found {
    /// The addresses (sorted, at most `max_endpoints`) and when the answer expires.
    Addresses(Vec<SocketAddr>, Instant),
    /// No address (NXDOMAIN or no A/AAAA record).
    Empty,
    /// The lookup failed (no answer, a server failure, a bad name).
    Error(String),
}

/// Resolves the DNS backends of the current config until `stop` turns true; a reload wakes it
/// to follow the new config.
pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut resolver: Option<(Discovery, TokioResolver)> = None;
    // Per backend name: its URL when last resolved and when it is due again.
    let mut due: HashMap<String, (String, Instant)> = HashMap::new();
    loop {
        let current = state.current();
        let config = &current.config;
        let dns: Vec<&BackendConfig> = config
            .backends
            .iter()
            .filter(|b| b.discovery == DiscoveryKind::Dns)
            .collect();
        due.retain(|name, (url, _)| dns.iter().any(|b| b.name == *name && b.url == *url));
        if !dns.is_empty()
            && resolver
                .as_ref()
                .is_none_or(|(d, _)| *d != config.discovery)
        {
            match build(&config.discovery) {
                Ok(r) => resolver = Some((config.discovery.clone(), r)),
                Err(e) => tracing::error!(error = %e, "cannot set up the DNS resolver"),
            }
            // New servers or bounds: every name is resolved again now.
            due.clear();
        }
        let now = Instant::now();
        let interval = config.discovery.interval;
        if let Some((_, r)) = &resolver {
            let mut lookups = JoinSet::new();
            for b in &dns {
                if due.get(&b.name).is_some_and(|(_, at)| *at > now) {
                    continue;
                }
                let (r, b) = (r.clone(), (*b).clone());
                let max = config.discovery.max_endpoints;
                lookups.spawn(async move {
                    let found = resolve(&r, &b.url, max).await;
                    (b, found)
                });
            }
            let results = async {
                while let Some(done) = lookups.join_next().await {
                    let Ok((b, found)) = done else { continue };
                    let next = apply(&state, &b, found, interval);
                    due.insert(b.name.clone(), (b.url.clone(), next));
                }
            };
            tokio::select! {
                _ = results => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let next = due
            .values()
            .map(|(_, at)| *at)
            .min()
            .unwrap_or_else(|| Instant::now() + interval);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = state.reloaded.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Takes one lookup's result: the new endpoints are published and checked at once. Returns
/// when the name is due again.
fn apply(state: &Arc<AppState>, b: &BackendConfig, found: Found, interval: Duration) -> Instant {
    let now = Instant::now();
    let retry = now + interval;
    let (addresses, expires) = match found {
        Found::Addresses(a, expires) => (a, expires),
        Found::Empty => {
            state.metrics.discovery_error(&b.name, "empty");
            tracing::warn!(backend = %b.name, url = %b.url, "DNS has no address for the backend: its known endpoints are kept");
            return retry;
        }
        Found::Error(e) => {
            state.metrics.discovery_error(&b.name, "error");
            tracing::warn!(backend = %b.name, url = %b.url, error = %e, "DNS lookup failed: the backend's known endpoints are kept");
            return retry;
        }
    };
    let Some(added) = state.set_endpoints(&b.name, &b.url, &addresses) else {
        return expires.clamp(now + MIN_REFRESH.min(interval), retry);
    };
    let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    tracing::info!(backend = %b.name, endpoints = %list.join(","), new = added.len(), "backend endpoints changed");
    let current = state.current();
    for e in added {
        let (current, metrics) = (current.clone(), state.metrics.clone());
        tokio::spawn(async move {
            let config = &current.config;
            crate::health::check(&e, &config.health, config.balance, &metrics).await;
        });
    }
    expires.clamp(now + MIN_REFRESH.min(interval), retry)
}

/// Resolves the host of `url` into endpoint addresses with the URL's port.
async fn resolve(r: &TokioResolver, url: &str, max: usize) -> Found {
    let Some((host, port)) = host_port(url) else {
        return Found::Error(format!("no host in {url}"));
    };
    match r.lookup_ip(host.as_str()).await {
        Ok(lookup) => {
            let mut ips: Vec<IpAddr> = lookup.iter().collect();
            ips.sort();
            ips.dedup();
            if ips.is_empty() {
                return Found::Empty;
            }
            if ips.len() > max {
                tracing::warn!(
                    url,
                    addresses = ips.len(),
                    max_endpoints = max,
                    "DNS answer has more addresses than [discovery] max_endpoints: the first (in address order) are used"
                );
                ips.truncate(max);
            }
            let addresses = ips.into_iter().map(|ip| SocketAddr::new(ip, port));
            let expires = Instant::from_std(lookup.valid_until());
            Found::Addresses(addresses.collect(), expires)
        }
        Err(e) if e.is_no_records_found() => Found::Empty,
        Err(e) => Found::Error(e.to_string()),
    }
}

/// The URL's host (without brackets) and port (80 when not given).
fn host_port(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_matches(['[', ']']).to_owned();
    Some((host, uri.port_u16().unwrap_or(80)))
}

/// A resolver for `[discovery]`: its nameservers (UDP, TCP for long answers), or the system's
/// `/etc/resolv.conf` with its search domains and `ndots`. Answers are cached for their TTL
/// but never longer than the interval.
fn build(d: &Discovery) -> Result<TokioResolver, String> {
    let mut builder = if d.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| e.to_string())?
    } else {
        let servers = d
            .nameserver_addrs()
            .into_iter()
            .map(|a| {
                let mut udp = ConnectionConfig::udp();
                udp.port = a.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = a.port();
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let o = builder.options_mut();
    o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    o.positive_max_ttl = Some(d.interval);
    o.negative_max_ttl = Some(d.interval);
    o.timeout = d
        .interval
        .clamp(Duration::from_secs(1), Duration::from_secs(5));
    builder.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_a_url() {
        assert_eq!(
            host_port("http://vllm.ns.svc.cluster.local:8000/v1"),
            Some(("vllm.ns.svc.cluster.local".into(), 8000))
        );
        assert_eq!(host_port("http://vllm"), Some(("vllm".into(), 80)));
    }
}
