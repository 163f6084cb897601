//! Balancing: the backends and what the gateway knows of each (load, health, queue), and the
//! strategies that pick one for a request among those that serve its model.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, Scheme};
use tokio::time::Instant;

use crate::config::{BackendConfig, Config, Strategy, Timeouts};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// One backend: its address, connection pool, load and health.
pub struct Backend {
    pub name: Arc<str>,
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix to put before the request's path ("" for none).
    pub prefix: String,
    pub weight: u32,
    pub max_concurrency: usize,
    pub timeouts: Timeouts,
    /// This backend's own connection pool.
    pub upstream: Upstream,
    /// `Authorization` for this backend, from its `api_key_env`.
    pub api_key: Option<http::HeaderValue>,
    /// Models served: configured, or discovered from `/v1/models` (None: not known yet).
    models: RwLock<Option<Arc<[String]>>>,
    pub(crate) models_configured: bool,
    /// Requests sent and whose response body has not ended yet.
    outstanding: AtomicUsize,
    pub(crate) health: Mutex<HealthState>,
    /// Active checks say it is up.
    pub(crate) checked_up: AtomicBool,
    /// Passive ejection: not to be picked before this (ms since `epoch`; 0: not ejected).
    pub(crate) ejected_until_ms: AtomicU64,
    pub(crate) queue: QueueStats,
    epoch: Instant,
}

/// What the active and passive checks have seen.
#[derive(Debug, Default)]
pub struct HealthState {
    pub check_failures: u32,
    pub check_successes: u32,
    pub request_failures: u32,
    pub ejections: u32,
    pub last_error: Option<&'static str>,
}

/// The backend's own view of its load, scraped from its vLLM `/metrics`.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub has_metrics: AtomicBool,
    pub waiting: AtomicU32,
    pub running: AtomicU32,
    /// KV-cache use in parts per million.
    pub kv_ppm: AtomicU32,
    /// `outstanding` when the scrape was taken: requests sent since then are not in it yet.
    pub outstanding_at_scrape: AtomicUsize,
}

impl Backend {
    /// Builds from a validated config entry with the global timeouts.
    pub fn new(cfg: &BackendConfig, global: &Timeouts) -> Option<Backend> {
        let uri: Uri = cfg.url.parse().ok()?;
        let parts = uri.into_parts();
        let prefix = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        let timeouts = global.with(&cfg.timeouts);
        let models = (!cfg.models.is_empty()).then(|| Arc::from(cfg.models.clone()));
        Some(Backend {
            name: cfg.name.as_str().into(),
            url: cfg.url.clone(),
            scheme: parts.scheme?,
            upstream: Upstream::new(
                parts.authority.as_ref()?,
                timeouts.connect,
                timeouts.pool_idle,
            ),
            authority: parts.authority?,
            prefix,
            weight: cfg.weight.max(1),
            max_concurrency: cfg.max_concurrency,
            api_key: cfg.api_key_env.as_deref().and_then(api_key),
            timeouts,
            models_configured: models.is_some(),
            models: RwLock::new(models),
            outstanding: AtomicUsize::new(0),
            health: Mutex::new(HealthState::default()),
            checked_up: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            queue: QueueStats::default(),
            epoch: Instant::now(),
        })
    }

    /// The upstream URI for a request's path and query.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{}", self.prefix, path_and_query))
            .build()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Healthy: the active checks pass and it is not ejected.
    pub fn is_up(&self) -> bool {
        self.checked_up.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// Up, and below its concurrency cap.
    fn is_available(&self) -> bool {
        self.is_up() && (self.max_concurrency == 0 || self.outstanding() < self.max_concurrency)
    }

    pub fn models(&self) -> Option<Arc<[String]>> {
        self.models.read().ok().and_then(|m| m.clone())
    }

    pub(crate) fn set_models(&self, models: Vec<String>) {
        if let Ok(mut m) = self.models.write() {
            *m = Some(models.into());
        }
    }

    /// Serves `model`: listed, or not known yet (the backend will say).
    fn serves(&self, model: Option<&str>) -> Serves {
        match (model, self.models()) {
            (None, _) => Serves::Yes,
            (Some(_), None) => Serves::Unknown,
            (Some(m), Some(list)) if list.iter().any(|x| x == m) => Serves::Yes,
            _ => Serves::No,
        }
    }

    /// Counts a request as load on this backend until the guard is dropped (when the
    /// response body ends).
    pub fn load(self: &Arc<Self>) -> Load {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Load(self.clone())
    }

    /// A score for queue-aware balancing: the scraped queue plus what was sent since.
    fn queue_score(&self) -> Option<(u64, u32, usize)> {
        let q = &self.queue;
        if !q.has_metrics.load(Ordering::Relaxed) {
            return None;
        }
        let out = self.outstanding();
        let since = out.saturating_sub(q.outstanding_at_scrape.load(Ordering::Relaxed));
        let waiting = u64::from(q.waiting.load(Ordering::Relaxed)) + since as u64;
        Some((waiting, q.kv_ppm.load(Ordering::Relaxed), out))
    }
}

#[derive(PartialEq, Eq)]
enum Serves {
    Yes,
    Unknown,
    No,
}

/// A request's load on a backend; dropping it ends the count.
pub struct Load(Arc<Backend>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Load({})", self.0.name)
    }
}

/// Why no backend was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// No backend serves this model (and every backend's list is known).
    UnknownModel,
    /// Backends serve it, but none is up or below its concurrency cap.
    Unavailable,
}

/// The current set of backends and the strategy; replaced whole on reload.
pub struct Pool {
    pub backends: Vec<Arc<Backend>>,
    pub strategy: Strategy,
    /// Smooth weighted round-robin state (current weights).
    rr: Mutex<Vec<i64>>,
}

impl Pool {
    /// Builds the pool for `config`, keeping the backends of `previous` whose name and
    /// settings are unchanged (their pools, load counts and health carry over).
    pub fn new(config: &Config, previous: Option<&Pool>, metrics: &Metrics) -> Pool {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .filter_map(|cfg| {
                let fresh = Backend::new(cfg, &config.timeouts)?;
                let kept = previous
                    .and_then(|p| p.backends.iter().find(|b| same(b, &fresh, cfg)).cloned());
                Some(kept.unwrap_or_else(|| Arc::new(fresh)))
            })
            .collect();
        for b in &backends {
            metrics.set_backend_up(&b.name, b.is_up());
            if let Some(models) = b.models() {
                metrics.add_models(&models);
            }
        }
        let n = backends.len();
        Pool {
            backends,
            strategy: config.balance,
            rr: Mutex::new(vec![0; n]),
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
            return Err(if serving {
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

/// The same backend after a reload: name, URL and settings unchanged.
fn same(old: &Backend, new: &Backend, cfg: &BackendConfig) -> bool {
    old.name == new.name
        && old.url == new.url
        && old.weight == new.weight
        && old.max_concurrency == new.max_concurrency
        && old.timeouts == new.timeouts
        && old.models_configured != cfg.models.is_empty()
        && (!old.models_configured || old.models().as_deref() == Some(&cfg.models[..]))
}

/// `Bearer <key>` from an environment variable (marked sensitive: never printed).
fn api_key(var: &str) -> Option<http::HeaderValue> {
    let key = std::env::var(var).ok().filter(|k| !k.is_empty());
    if key.is_none() {
        tracing::warn!(
            var,
            "backend api_key_env is not set: the client's Authorization is passed on"
        );
    }
    let mut v = http::HeaderValue::from_str(&format!("Bearer {}", key?)).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Back-off for the `n`-th consecutive ejection (n ≥ 1).
pub fn ejection(n: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ejection_backs_off_and_caps() {
        let (b, m) = (Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(ejection(1, b, m), Duration::from_secs(5));
        assert_eq!(ejection(3, b, m), Duration::from_secs(20));
        assert_eq!(ejection(40, b, m), Duration::from_secs(60));
    }
}
