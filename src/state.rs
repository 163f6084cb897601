//! The gateway's state, below the service stack: what lives as long as the process (metrics,
//! the trace pipeline) and what a reload replaces (`Shared`: the config, the backend pool and
//! the API keys), swapped whole in one atomic step. A request takes one `Shared` at the edge
//! and works with it to the end, so it never sees the pool of one config and the limits of
//! another; the health checker and the admin listener read the current one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;

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
        let old = self.current();
        self.buffered.set_limit(config.limits.max_buffered_bytes);
        self.metrics.add_models(&config.known_models());
        self.metrics.tenants().publish(&config.auth, &config.costs);
        let shared = Shared::new(config, Some(&old.pool), &self.metrics);
        for b in &old.pool.backends {
            if shared.pool.find(&b.name).is_none() {
                self.metrics.remove_backend(&b.name);
            }
        }
        self.current.store(Arc::new(shared));
    }
}
