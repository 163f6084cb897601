//! One backend: its address, connection pool, the load the gateway puts on it and what the
//! health checks know of it. `balance.rs` picks among them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use tokio::time::Instant;

use crate::config::{BackendConfig, Timeouts};
use crate::metrics::Metrics;
use crate::upstream::{Upstream, UpstreamTls};

/// One backend: its address, connection pool, load and health. A backend found by DNS is
/// one of these per address (an endpoint), all with the configured name.
pub struct Backend {
    pub name: Arc<str>,
    pub url: String,
    /// The address connected to, for an endpoint of a DNS backend (the URL's host stays the
    /// `Host`); None: the URL's host, as it is.
    pub endpoint: Option<SocketAddr>,
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
        Backend::build(cfg, global, None)
    }

    /// One endpoint of a DNS backend: connections go to `address`. It is not up until an
    /// active check passes (one is enough, whatever `healthy_threshold` says), so that an
    /// address that is not ready yet takes no traffic.
    pub fn endpoint(
        cfg: &BackendConfig,
        global: &Timeouts,
        address: SocketAddr,
        healthy_threshold: u32,
    ) -> Option<Backend> {
        let b = Backend::build(cfg, global, Some(address))?;
        b.checked_up.store(false, Ordering::Relaxed);
        if let Ok(mut h) = b.health.lock() {
            h.check_successes = healthy_threshold.saturating_sub(1);
        }
        Some(b)
    }

    fn build(
        cfg: &BackendConfig,
        global: &Timeouts,
        endpoint: Option<SocketAddr>,
    ) -> Option<Backend> {
        let uri: Uri = cfg.url.parse().ok()?;
        let parts = uri.into_parts();
        let prefix = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        let timeouts = global.with(&cfg.timeouts);
        let models = (!cfg.models.is_empty()).then(|| Arc::from(cfg.models.clone()));
        // Checked by the config's validation: an error here is a file changed since.
        let tls = UpstreamTls::for_backend(cfg, &format!("backends[{}].tls", cfg.name))
            .map_err(|e| tracing::error!(backend = %cfg.name, error = %e, "backend left out"))
            .ok()?;
        Some(Backend {
            name: cfg.name.as_str().into(),
            url: cfg.url.clone(),
            endpoint,
            scheme: parts.scheme?,
            upstream: Upstream::with_address(
                parts.authority.as_ref()?,
                endpoint,
                timeouts.connect,
                timeouts.pool_idle,
            )
            .with_tls(tls),
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

    /// The request target on this backend for a request's path and query, in origin form
    /// (the pool's connection is to the backend already, and sets `Host` to its authority):
    /// the request's own path and query, shared, when the backend's URL has no path prefix;
    /// no absolute URI is built only to be taken apart again.
    pub fn target(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        match path_and_query {
            Some(pq) if self.prefix.is_empty() => Ok(Uri::from(pq.clone())),
            _ => {
                let pq = path_and_query.map_or("/", PathAndQuery::as_str);
                Ok(Uri::try_from(format!("{}{pq}", self.prefix))?)
            }
        }
    }

    /// The upstream URI for a request's path and query.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{}", self.prefix, path_and_query))
            .build()
    }

    /// Says in the metrics whether it is up: `weir_backend_up`, or for an endpoint its
    /// `weir_backend_endpoint_up` (and the backend's, up when any endpoint is).
    pub fn publish_up(&self, metrics: &Metrics) {
        match self.endpoint {
            Some(a) => metrics.set_endpoint_up(&self.name, &a.to_string(), self.is_up()),
            None => metrics.set_backend_up(&self.name, self.is_up()),
        }
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
    pub(crate) fn is_available(&self) -> bool {
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
    pub(crate) fn serves(&self, model: Option<&str>) -> Serves {
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
    pub(crate) fn queue_score(&self) -> Option<(u64, u32, usize)> {
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
pub(crate) enum Serves {
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

/// The same backend after a reload: name, URL and settings unchanged.
pub(crate) fn same(old: &Backend, new: &Backend, cfg: &BackendConfig) -> bool {
    old.name == new.name
        && old.url == new.url
        && old.endpoint == new.endpoint
        && old.weight == new.weight
        && old.max_concurrency == new.max_concurrency
        && old.timeouts == new.timeouts
        && old.upstream.tls_fingerprint() == new.upstream.tls_fingerprint()
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
