//! Balancing: picks the backend for a request. Round-robin over the configured backends,
//! each with its passive up/down state (a failed connect marks it down until one succeeds).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::Uri;
use http::uri::{Authority, Scheme};

use crate::config::BackendConfig;
use crate::metrics::Metrics;

/// One backend and what the gateway knows of it.
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix to put before the request's path ("" for none).
    pub prefix: String,
    up: AtomicBool,
}

impl Backend {
    /// Builds from a validated config entry.
    pub fn new(cfg: &BackendConfig) -> Option<Backend> {
        let uri: Uri = cfg.url.parse().ok()?;
        let parts = uri.into_parts();
        let prefix = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        Some(Backend {
            name: cfg.name.as_str().into(),
            scheme: parts.scheme?,
            authority: parts.authority?,
            prefix,
            up: AtomicBool::new(true),
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

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// The backends, picked round-robin.
#[derive(Debug)]
pub struct Backends {
    list: Vec<Arc<Backend>>,
    next: AtomicUsize,
    metrics: Metrics,
}

impl Backends {
    pub fn new(configs: &[BackendConfig], metrics: Metrics) -> Backends {
        let list: Vec<Arc<Backend>> = configs
            .iter()
            .filter_map(Backend::new)
            .map(Arc::new)
            .collect();
        for b in &list {
            metrics.set_backend_up(&b.name, true);
        }
        Backends {
            list,
            next: AtomicUsize::new(0),
            metrics,
        }
    }

    /// The next backend, preferring those that are up; None when there is none at all.
    pub fn pick(&self) -> Option<Arc<Backend>> {
        let n = self.list.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.list[(start + i) % n])
            .find(|b| b.is_up())
            .or_else(|| self.list.get(start % n))
            .cloned()
    }

    /// Records the result of a connection attempt (passive health).
    pub fn report(&self, backend: &Backend, connected: bool) {
        if backend.up.swap(connected, Ordering::Relaxed) != connected {
            self.metrics.set_backend_up(&backend.name, connected);
            if connected {
                tracing::info!(backend = %backend.name, "backend is up again");
            } else {
                tracing::warn!(backend = %backend.name, "backend marked down: connect failed");
            }
        }
    }

    pub fn all(&self) -> &[Arc<Backend>] {
        &self.list
    }

    /// At least one backend is up.
    pub fn any_up(&self) -> bool {
        self.list.iter().any(|b| b.is_up())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, url: &str) -> BackendConfig {
        BackendConfig {
            name: name.into(),
            url: url.into(),
            models: vec![],
        }
    }

    #[test]
    fn round_robin_skips_down_backends() {
        let m = Metrics::new(vec![]);
        let b = Backends::new(
            &[
                cfg("a", "http://127.0.0.1:1"),
                cfg("b", "http://127.0.0.1:2/vllm/"),
            ],
            m,
        );
        let names: Vec<_> = (0..4).map(|_| b.pick().unwrap().name.to_string()).collect();
        assert_eq!(names, ["a", "b", "a", "b"]);
        b.report(&b.all()[0], false);
        assert!((0..4).all(|_| &*b.pick().unwrap().name == "b"));
        b.report(&b.all()[1], false);
        assert!(!b.any_up());
        assert!(b.pick().is_some(), "all down: still try one");
        assert_eq!(
            b.all()[1].uri("/v1/models?x=1").unwrap().to_string(),
            "http://127.0.0.1:2/vllm/v1/models?x=1"
        );
    }
}
