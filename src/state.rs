//! The gateway's state, below the service stack: what lives as long as the process (metrics,
//! the trace pipeline) and what a reload replaces (`Shared`: the config, the backend pool and
//! the API keys), swapped whole in one atomic step. A request takes one `Shared` at the edge
//! and works with it to the end, so it never sees the pool of one config and the limits of
//! another; the health checker and the admin listener read the current one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::backend::Backend;
use crate::balance::Pool;
use crate::budget::Budget;
use crate::config::Config;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;
use crate::tenants::Limiter;

/// What a reload replaces, together.
pub struct Shared {
    pub config: Config,
    pub pool: Pool,
    /// The proxy listener's API keys (None: no auth).
    pub keys: Option<Keys>,
}

impl Shared {
    /// The same config and keys with another pool.
    fn with_pool(&self, pool: Pool) -> Shared {
        Shared {
            config: self.config.clone(),
            pool,
            keys: self.keys.clone(),
        }
    }
}

impl Shared {
    fn new(config: Config, previous: Option<&Pool>, metrics: &Metrics) -> Shared {
        let pool = Pool::new(&config, previous, metrics);
        let keys = (!config.auth.keys.is_empty()).then(|| Keys::new(&config.auth));
        Shared { config, pool, keys }
    }
}

/// State for the life of the process.
pub struct AppState {
    pub metrics: Metrics,
    pub telemetry: Telemetry,
    /// Bytes of bodies held whole, all requests together.
    pub buffered: Arc<Budget>,
    /// The tenants' limits: their counts outlive a reload (`[limits.redis]` is read once).
    pub limiter: Arc<Limiter>,
    /// Requests sent (or about to be) to the backends.
    upstream: Arc<AtomicUsize>,
    current: ArcSwap<Shared>,
    /// Held by whoever replaces `current` (a reload, DNS discovery), so that neither loses
    /// the other's change.
    writer: Mutex<()>,
    /// Wakes DNS discovery when a reload changed the config.
    pub(crate) reloaded: Notify,
    /// Set when shutdown begins (`shutdown_delay`): not ready, and no more keep-alive.
    draining: AtomicBool,
}

/// A request counted in flight to the backends until dropped.
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AppState {
    /// Starts the trace pipeline (on the current runtime) and builds the backend pool.
    pub fn new(config: Config, metrics: Metrics) -> AppState {
        let telemetry = Telemetry::start(&config.telemetry, &config.slo, &metrics);
        let buffered = Budget::new(config.limits.max_buffered_bytes);
        let tenants = metrics.tenants().clone();
        tenants.publish(&config.auth, &config.costs);
        let limiter = Arc::new(Limiter::new(config.limits.redis.as_ref(), tenants));
        let shared = Shared::new(config, None, &metrics);
        AppState {
            metrics,
            telemetry,
            buffered,
            limiter,
            upstream: Arc::new(AtomicUsize::new(0)),
            current: ArcSwap::from_pointee(shared),
            writer: Mutex::new(()),
            reloaded: Notify::new(),
            draining: AtomicBool::new(false),
        }
    }

    /// Marks the gateway as stopping: `/readyz` answers 503 and HTTP/1 responses close their
    /// connection, while requests are still served.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown has begun.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Counts a request in flight to the backends, unless `max` (0: no limit) are already.
    pub fn admit(&self, max: usize) -> Option<Admitted> {
        let n = self.upstream.fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted(self.upstream.clone());
        (max == 0 || n < max).then_some(admitted)
    }

    /// The config, pool and keys in force now.
    pub fn current(&self) -> Arc<Shared> {
        self.current.load_full()
    }

    /// Takes a new (validated) config: backends, balancing, health, timeouts, limits and
    /// keys change for new requests together; open requests go on with what they started
    /// with. Backends whose settings are unchanged keep their connections, load and health.
    pub fn reload(&self, config: Config) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current();
        self.buffered.set_limit(config.limits.max_buffered_bytes);
        self.metrics.add_models(&config.known_models());
        self.metrics.tenants().publish(&config.auth, &config.costs);
        let shared = Shared::new(config, Some(&old.pool), &self.metrics);
        for b in &old.pool.backends {
            match shared.pool.find(&b.name) {
                None if shared.config.backends.iter().all(|c| *c.name != *b.name) => {
                    self.metrics.remove_backend(&b.name)
                }
                // Found by DNS before, static now: its endpoints' series go.
                Some(now) if b.endpoint.is_some() && now.endpoint.is_none() => {
                    self.metrics.forget_endpoints(&b.name);
                    now.publish_up(&self.metrics);
                }
                _ => {}
            }
        }
        self.current.store(Arc::new(shared));
        drop(_writer);
        self.reloaded.notify_one();
    }

    /// Sets the endpoints of DNS backend `name` at `url` to `addresses` (a new pool, for new
    /// requests; open ones keep the endpoint they have until they end). Returns the new
    /// endpoints, to be checked at once; None when nothing changed or the backend is no
    /// longer configured for DNS.
    pub fn set_endpoints(
        &self,
        name: &str,
        url: &str,
        addresses: &[SocketAddr],
    ) -> Option<Vec<Arc<Backend>>> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current();
        let (pool, added) =
            current
                .pool
                .with_endpoints(&current.config, name, url, addresses, &self.metrics)?;
        self.current.store(Arc::new(current.with_pool(pool)));
        Some(added)
    }
}
