//! The gateway's state, below the service stack: what lives as long as the process (metrics,
//! the trace pipeline) and what a reload replaces (`Shared`: the config, the backend pool and
//! the API keys), swapped whole in one atomic step. A request takes one `Shared` at the edge
//! and works with it to the end, so it never sees the pool of one config and the limits of
//! another; the health checker and the admin listener read the current one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::balance::Pool;
use crate::config::Config;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;

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
    current: ArcSwap<Shared>,
}

impl AppState {
    /// Starts the trace pipeline (on the current runtime) and builds the backend pool.
    pub fn new(config: Config, metrics: Metrics) -> AppState {
        let telemetry = Telemetry::start(&config.telemetry, &metrics);
        let shared = Shared::new(config, None, &metrics);
        AppState {
            metrics,
            telemetry,
            current: ArcSwap::from_pointee(shared),
        }
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
        self.metrics.add_models(&config.known_models());
        let shared = Shared::new(config, Some(&old.pool), &self.metrics);
        for b in &old.pool.backends {
            if shared.pool.find(&b.name).is_none() {
                self.metrics.remove_backend(&b.name);
            }
        }
        self.current.store(Arc::new(shared));
    }
}
