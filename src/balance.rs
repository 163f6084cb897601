//! Balancing: the pool of backends a config names (rebuilt on reload, keeping the backends
//! whose settings did not change) and the strategies that pick one for a request among those
//! that serve its model.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Config, DiscoveryKind, Strategy};
use crate::metrics::Metrics;

use crate::backend::{Backend, Serves, same};

/// Why no backend was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// No backend serves this model (and every backend's list is known).
    UnknownModel,
    /// Backends serve it, but none is up or below its concurrency cap.
    Unavailable,
}

/// The current set of backends and the strategy; replaced whole on reload (and when a DNS
/// backend's addresses change). A DNS backend is one entry per endpoint, in the config's order.
pub struct Pool {
    pub backends: Vec<Arc<Backend>>,
    pub strategy: Strategy,
    /// A DNS backend of the config has no endpoint (yet): a model no endpoint serves may be
    /// its, so the request is refused as unavailable, not as an unknown model.
    unresolved: bool,
    /// Smooth weighted round-robin state (current weights).
    rr: Mutex<Vec<i64>>,
}

impl Pool {
    /// Builds the pool for `config`, keeping the backends of `previous` whose name and
    /// settings are unchanged (their pools, load counts and health carry over). A DNS
    /// backend keeps the addresses it had when its URL is unchanged.
    pub fn new(config: &Config, previous: Option<&Pool>, metrics: &Metrics) -> Pool {
        let mut backends: Vec<Arc<Backend>> = Vec::with_capacity(config.backends.len());
        for cfg in &config.backends {
            let keep = |fresh: Backend| {
                let kept = previous
                    .and_then(|p| p.backends.iter().find(|b| same(b, &fresh, cfg)).cloned());
                kept.unwrap_or_else(|| Arc::new(fresh))
            };
            match cfg.discovery {
                DiscoveryKind::Static => {
                    backends.extend(Backend::new(cfg, &config.timeouts).map(keep));
                }
                DiscoveryKind::Dns => {
                    let known = previous.into_iter().flat_map(|p| {
                        p.backends
                            .iter()
                            .filter(|b| *b.name == *cfg.name && b.url == cfg.url)
                    });
                    for old in known {
                        let threshold = config.health.healthy_threshold;
                        let Some(a) = old.endpoint else { continue };
                        let Some(fresh) = Backend::endpoint(cfg, &config.timeouts, a, threshold)
                        else {
                            continue;
                        };
                        if same(old, &fresh, cfg) {
                            backends.push(old.clone());
                        } else {
                            // New settings at a known address: its health stands.
                            let up = old.checked_up.load(Ordering::Relaxed);
                            fresh.checked_up.store(up, Ordering::Relaxed);
                            backends.push(Arc::new(fresh));
                        }
                    }
                }
            }
        }
        let pool = Pool::of(config, backends);
        pool.publish(config, metrics);
        pool
    }

    /// This pool with the endpoints of DNS backend `name` (whose URL is `url`) at `addresses`: the endpoints at
    /// addresses still listed are kept (their connections, load and health), new addresses
    /// get new endpoints, not up until a check passes. None when nothing changed. The new
    /// endpoints come back too, to be checked at once.
    pub fn with_endpoints(
        &self,
        config: &Config,
        name: &str,
        url: &str,
        addresses: &[SocketAddr],
        metrics: &Metrics,
    ) -> Option<(Pool, Vec<Arc<Backend>>)> {
        let cfg = config
            .backends
            .iter()
            .find(|b| b.name == name && b.url == url && b.discovery == DiscoveryKind::Dns)?;
        let old: Vec<&Arc<Backend>> = self.backends.iter().filter(|b| &*b.name == name).collect();
        let unchanged = old.len() == addresses.len()
            && addresses
                .iter()
                .all(|a| old.iter().any(|b| b.endpoint == Some(*a)));
        if unchanged {
            return None;
        }
        let mut added = Vec::new();
        let mut backends = Vec::with_capacity(self.backends.len() + addresses.len());
        for c in &config.backends {
            if c.name != name {
                let same_name = self.backends.iter().filter(|b| *b.name == *c.name);
                backends.extend(same_name.cloned());
                continue;
            }
            for &a in addresses {
                if let Some(b) = old.iter().find(|b| b.endpoint == Some(a)) {
                    backends.push((*b).clone());
                    continue;
                }
                let threshold = config.health.healthy_threshold;
                if let Some(b) = Backend::endpoint(cfg, &config.timeouts, a, threshold) {
                    let b = Arc::new(b);
                    added.push(b.clone());
                    backends.push(b);
                }
            }
        }
        let pool = Pool::of(config, backends);
        pool.publish(config, metrics);
        Some((pool, added))
    }

    fn of(config: &Config, backends: Vec<Arc<Backend>>) -> Pool {
        let unresolved = config.backends.iter().any(|c| {
            c.discovery == DiscoveryKind::Dns && !backends.iter().any(|b| *b.name == *c.name)
        });
        let n = backends.len();
        Pool {
            backends,
            strategy: config.balance,
            unresolved,
            rr: Mutex::new(vec![0; n]),
        }
    }

    /// Puts each backend's state in the metrics (a DNS backend's endpoints first: those it
    /// no longer has lose their series).
    fn publish(&self, config: &Config, metrics: &Metrics) {
        for c in config
            .backends
            .iter()
            .filter(|c| c.discovery == DiscoveryKind::Dns)
        {
            let endpoints: Vec<String> = self
                .backends
                .iter()
                .filter(|b| *b.name == *c.name)
                .filter_map(|b| b.endpoint.map(|a| a.to_string()))
                .collect();
            metrics.set_endpoints(&c.name, &endpoints);
        }
        for b in &self.backends {
            b.publish_up(metrics);
            if let Some(models) = b.models() {
                metrics.add_models(&models);
            }
        }
    }

    /// Picks a backend for `model`, never one in `exclude`.
    pub fn pick(
        &self,
        model: Option<&str>,
        exclude: Option<&Backend>,
    ) -> Result<Arc<Backend>, NoPick> {
        let mut serving = false;
        let mut candidates: Vec<usize> = Vec::with_capacity(self.backends.len());
        let mut unknown: Vec<usize> = Vec::new();
        for (i, b) in self.backends.iter().enumerate() {
            let s = b.serves(model);
            if s == Serves::No {
                continue;
            }
            serving = true;
            if exclude.is_some_and(|x| std::ptr::eq(x, &**b)) || !b.is_available() {
                continue;
            }
            if s == Serves::Yes {
                candidates.push(i)
            } else {
                unknown.push(i)
            }
        }
        if candidates.is_empty() {
            candidates = unknown;
        }
        if candidates.is_empty() {
            return Err(if serving || self.unresolved {
                NoPick::Unavailable
            } else {
                NoPick::UnknownModel
            });
        }
        let i = match self.strategy {
            Strategy::P2c => self.p2c(&candidates),
            Strategy::RoundRobin => self.round_robin(&candidates),
            Strategy::QueueAware => self.queue_aware(&candidates),
        };
        Ok(self.backends[i].clone())
    }

    /// A candidate drawn with probability proportional to its weight.
    fn weighted(&self, candidates: &[usize]) -> usize {
        let total: u64 = candidates
            .iter()
            .map(|&i| u64::from(self.backends[i].weight))
            .sum();
        let mut r = fastrand::u64(0..total.max(1));
        for &i in candidates {
            let w = u64::from(self.backends[i].weight);
            if r < w {
                return i;
            }
            r -= w;
        }
        candidates[0]
    }

    /// Two candidates drawn by weight; the one with fewer outstanding requests wins (ties:
    /// the first drawn, so idle traffic follows the weights).
    fn p2c(&self, candidates: &[usize]) -> usize {
        if candidates.len() == 1 {
            return candidates[0];
        }
        let a = self.weighted(candidates);
        let rest: Vec<usize> = candidates.iter().copied().filter(|&i| i != a).collect();
        let b = self.weighted(&rest);
        if self.backends[b].outstanding() < self.backends[a].outstanding() {
            b
        } else {
            a
        }
    }

    /// Smooth weighted round-robin (nginx's): evenly interleaved, proportional to weight.
    fn round_robin(&self, candidates: &[usize]) -> usize {
        let Ok(mut current) = self.rr.lock() else {
            return candidates[0];
        };
        let total: i64 = candidates
            .iter()
            .map(|&i| i64::from(self.backends[i].weight))
            .sum();
        let mut best = candidates[0];
        for &i in candidates {
            current[i] += i64::from(self.backends[i].weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        best
    }

    /// Shortest scraped queue (plus requests sent since the scrape), then KV-cache use,
    /// then outstanding; backends without metrics are compared on outstanding alone.
    fn queue_aware(&self, candidates: &[usize]) -> usize {
        let scored: Vec<(usize, (u64, u32, usize))> = candidates
            .iter()
            .filter_map(|&i| self.backends[i].queue_score().map(|s| (i, s)))
            .collect();
        if scored.len() < candidates.len() {
            // Some have no metrics: least outstanding over all.
            return *candidates
                .iter()
                .min_by_key(|&&i| self.backends[i].outstanding())
                .unwrap_or(&candidates[0]);
        }
        let best = scored.iter().map(|s| s.1).min().unwrap_or_default();
        let ties: Vec<usize> = scored.iter().filter(|s| s.1 == best).map(|s| s.0).collect();
        self.weighted(&ties)
    }

    /// At least one backend is up.
    pub fn any_up(&self) -> bool {
        self.backends.iter().any(|b| b.is_up())
    }

    pub fn find(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| &*b.name == name)
    }
}

/// Back-off for the `n`-th consecutive ejection (n ≥ 1).
pub fn ejection(n: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Load;
    use crate::config::BackendConfig;

    fn config(backends: &[(&str, u32)], strategy: Strategy) -> Config {
        let mut c = Config {
            balance: strategy,
            ..Config::default()
        };
        for (i, (name, w)) in backends.iter().enumerate() {
            let mut b = BackendConfig::new(format!("http://127.0.0.1:{}", 1000 + i));
            b.name = name.to_string();
            b.weight = *w;
            c.backends.push(b);
        }
        c
    }

    fn share(pool: &Pool, n: usize) -> Vec<usize> {
        let mut counts = vec![0; pool.backends.len()];
        for _ in 0..n {
            let b = pool.pick(None, None).unwrap();
            counts[pool
                .backends
                .iter()
                .position(|x| Arc::ptr_eq(x, &b))
                .unwrap()] += 1;
        }
        counts
    }

    #[tokio::test]
    async fn round_robin_follows_weights_exactly() {
        let m = Metrics::new(vec![]);
        let pool = Pool::new(
            &config(&[("a", 3), ("b", 1)], Strategy::RoundRobin),
            None,
            &m,
        );
        assert_eq!(share(&pool, 400), [300, 100]);
    }

    #[tokio::test]
    async fn p2c_prefers_the_less_loaded_and_follows_weights_when_idle() {
        let m = Metrics::new(vec![]);
        let pool = Pool::new(&config(&[("a", 3), ("b", 1)], Strategy::P2c), None, &m);
        let idle = share(&pool, 4000);
        assert!((2700..3300).contains(&idle[0]), "{idle:?}");
        let _held: Vec<Load> = (0..3).map(|_| pool.backends[0].load()).collect();
        assert_eq!(share(&pool, 50), [0, 50]);
    }

    #[tokio::test]
    async fn ejected_and_capped_backends_are_skipped() {
        let m = Metrics::new(vec![]);
        let mut c = config(&[("a", 1), ("b", 1)], Strategy::P2c);
        c.backends[1].max_concurrency = 1;
        let pool = Pool::new(&c, None, &m);
        let b = &pool.backends[1];
        let held = b.load();
        assert_eq!(share(&pool, 20), [20, 0]);
        drop(held);
        pool.backends[0]
            .ejected_until_ms
            .store(u64::MAX, Ordering::Relaxed);
        assert_eq!(share(&pool, 20), [0, 20]);
        pool.backends[1].checked_up.store(false, Ordering::Relaxed);
        assert_eq!(pool.pick(None, None).err(), Some(NoPick::Unavailable));
    }

    #[tokio::test]
    async fn models_route_and_unknown_models_are_refused() {
        let m = Metrics::new(vec![]);
        let mut c = config(&[("a", 1), ("b", 1)], Strategy::P2c);
        c.backends[0].models = vec!["llama".into()];
        c.backends[1].models = vec!["qwen".into()];
        let pool = Pool::new(&c, None, &m);
        for _ in 0..10 {
            assert_eq!(&*pool.pick(Some("qwen"), None).unwrap().name, "b");
        }
        assert_eq!(
            pool.pick(Some("mistral"), None).err(),
            Some(NoPick::UnknownModel)
        );
        let a = pool.backends[0].clone();
        assert_eq!(
            pool.pick(Some("llama"), Some(&a)).err(),
            Some(NoPick::Unavailable)
        );
        // Reload keeps unchanged backends (and their load).
        let _l = a.load();
        let again = Pool::new(&c, Some(&pool), &m);
        assert!(Arc::ptr_eq(&again.backends[0], &a));
        assert_eq!(again.backends[0].outstanding(), 1);
    }

    #[tokio::test]
    async fn queue_aware_prefers_the_shortest_queue() {
        let m = Metrics::new(vec![]);
        let pool = Pool::new(
            &config(&[("a", 1), ("b", 1)], Strategy::QueueAware),
            None,
            &m,
        );
        for (b, waiting) in pool.backends.iter().zip([5, 1]) {
            b.queue.waiting.store(waiting, Ordering::Relaxed);
            b.queue.has_metrics.store(true, Ordering::Relaxed);
        }
        // b gets requests until what was sent since the scrape makes up the difference.
        let loads: Vec<Load> = (0..4)
            .map(|_| {
                let b = pool.pick(None, None).unwrap();
                assert_eq!(&*b.name, "b");
                b.load()
            })
            .collect();
        assert_eq!(loads.len(), 4);
        let next: Vec<String> = (0..20)
            .map(|_| pool.pick(None, None).unwrap().name.to_string())
            .collect();
        assert!(next.iter().any(|n| n == "a"), "tied queues share");
    }

    #[tokio::test]
    async fn dns_endpoints_are_kept_added_not_up_and_removed() {
        let m = Metrics::new(vec![]);
        let mut c = config(&[("static", 1)], Strategy::P2c);
        let mut dns = BackendConfig::new("http://vllm.test:8000");
        dns.name = "vllm".into();
        dns.discovery = DiscoveryKind::Dns;
        c.backends.push(dns);
        let pool = Pool::new(&c, None, &m);
        assert_eq!(
            pool.backends.len(),
            1,
            "no endpoint before the first lookup"
        );
        assert_eq!(
            pool.pick(Some("some-model"), Some(&pool.backends[0])).err(),
            Some(NoPick::Unavailable),
            "a model may be the unresolved backend's"
        );
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:8000".parse().unwrap(),
            "10.0.0.2:8000".parse().unwrap(),
        );
        let (pool, added) = pool
            .with_endpoints(&c, "vllm", "http://vllm.test:8000", &[a], &m)
            .unwrap();
        assert_eq!(added.len(), 1);
        assert!(
            pool.with_endpoints(&c, "vllm", "http://vllm.test:8000", &[a], &m)
                .is_none(),
            "unchanged"
        );
        let first = pool.backends[1].clone();
        assert_eq!((first.endpoint, &*first.name), (Some(a), "vllm"));
        assert!(!first.is_up(), "not up before a check passes");
        first.checked_up.store(true, Ordering::Relaxed);
        let _load = first.load();
        let (pool, added) = pool
            .with_endpoints(&c, "vllm", "http://vllm.test:8000", &[a, b], &m)
            .unwrap();
        assert_eq!(added.len(), 1);
        assert!(Arc::ptr_eq(&pool.backends[1], &first), "kept with its load");
        assert_eq!(pool.backends[1].outstanding(), 1);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                "weir_backend_endpoint_up{backend=\"vllm\",endpoint=\"10.0.0.2:8000\"} 0"
            ),
            "{text}"
        );
        let (pool, added) = pool
            .with_endpoints(&c, "vllm", "http://vllm.test:8000", &[b], &m)
            .unwrap();
        assert!(added.is_empty());
        assert_eq!(pool.backends.len(), 2);
        assert_eq!(pool.backends[1].endpoint, Some(b));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            !text.contains("10.0.0.1:8000"),
            "the removed endpoint's gauge goes: {text}"
        );
        // A reload with the backend unchanged keeps its endpoints.
        let again = Pool::new(&c, Some(&pool), &m);
        assert!(Arc::ptr_eq(&again.backends[1], &pool.backends[1]));
    }

    #[test]
    fn ejection_backs_off_and_caps() {
        let (b, m) = (Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(ejection(1, b, m), Duration::from_secs(5));
        assert_eq!(ejection(3, b, m), Duration::from_secs(20));
        assert_eq!(ejection(40, b, m), Duration::from_secs(60));
    }
}
