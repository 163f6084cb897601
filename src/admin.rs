//! The admin listener: `/metrics`, `/healthz`, `/readyz` and `/backends`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::service_fn;
use tower::util::BoxCloneService;

use crate::backend::Backend;
use crate::config::DiscoveryKind;
use crate::state::AppState;

pub type AdminService = BoxCloneService<Request<Incoming>, Response<Full<Bytes>>, Infallible>;

/// The admin service over the gateway's state.
pub fn service(state: Arc<AppState>) -> AdminService {
    BoxCloneService::new(service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok(handle(&state, &req)) }
    }))
}

fn handle(state: &AppState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        );
    }
    let path = req.uri().path();
    if matches!(path, "/metrics" | "/backends") {
        let token = crate::config::parse_hash(&state.current().config.admin.token_sha256);
        if !crate::keys::admin_allowed(token.as_ref(), req.headers()) {
            let mut res = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "a bearer token is required\n".into(),
            );
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
    }
    match path {
        // OpenMetrics, with the exemplars, when the scraper asks for it (Prometheus does when
        // its exemplar storage is on); the classic format, unchanged, otherwise.
        "/metrics" if wants_openmetrics(req.headers()) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.render_openmetrics().into(),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render().into(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if state.current().pool.any_up() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no backend is up\n".into(),
                )
            }
        }
        "/backends" => reply(StatusCode::OK, "application/json", backends(state).into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// The state of each backend, as JSON; a DNS backend's with its endpoints.
fn backends(state: &AppState) -> String {
    let current = state.current();
    let list: Vec<_> = current
        .config
        .backends
        .iter()
        .filter_map(|cfg| {
            let mut of = current
                .pool
                .backends
                .iter()
                .filter(|b| *b.name == *cfg.name);
            if cfg.discovery == DiscoveryKind::Static {
                let mut entry = backend(of.next()?);
                entry["discovery"] = "static".into();
                return Some(entry);
            }
            let endpoints: Vec<&Arc<Backend>> = of.collect();
            let up = endpoints.iter().any(|b| b.is_up());
            let models = endpoints
                .iter()
                .find_map(|b| b.models())
                .map(|m| m.to_vec());
            let list: Vec<_> = endpoints
                .iter()
                .map(|b| {
                    let mut entry = backend(b);
                    if let Some(map) = entry.as_object_mut() {
                        for k in ["name", "url", "weight", "max_concurrency"] {
                            map.remove(k);
                        }
                    }
                    entry["address"] = b.endpoint.map(|a| a.to_string()).into();
                    entry
                })
                .collect();
            Some(serde_json::json!({
                "name": cfg.name,
                "url": cfg.url,
                "discovery": "dns",
                "up": up,
                "state": if up { "up" } else { "down" },
                "weight": cfg.weight.max(1),
                "outstanding": endpoints.iter().map(|b| b.outstanding()).sum::<usize>(),
                "max_concurrency": cfg.max_concurrency,
                "models": models,
                "queue": null,
                "ejections": endpoints.iter().map(|b| health(b).1).sum::<u32>(),
                "last_error": null,
                "endpoints": list,
            }))
        })
        .collect();
    serde_json::json!({ "strategy": current.config.balance, "backends": list }).to_string()
}

/// The last error and the ejections of a backend (or endpoint).
fn health(b: &Backend) -> (Option<&'static str>, u32) {
    b.health
        .lock()
        .map(|h| (h.last_error, h.ejections))
        .unwrap_or_default()
}

/// One backend's (or one endpoint's) state.
fn backend(b: &Backend) -> serde_json::Value {
    let h = health(b);
    let q = &b.queue;
    let queue = q.has_metrics.load(Ordering::Relaxed).then(|| {
        serde_json::json!({
            "waiting": q.waiting.load(Ordering::Relaxed),
            "running": q.running.load(Ordering::Relaxed),
            "kv_cache_usage": f64::from(q.kv_ppm.load(Ordering::Relaxed)) / 1e6,
        })
    });
    serde_json::json!({
        "name": &*b.name,
        "url": b.url,
        "up": b.is_up(),
        "state": if !b.checked_up.load(Ordering::Relaxed) { "down" } else if b.is_up() { "up" } else { "ejected" },
        "weight": b.weight,
        "outstanding": b.outstanding(),
        "max_concurrency": b.max_concurrency,
        "models": b.models().map(|m| m.to_vec()),
        "queue": queue,
        "ejections": h.1,
        "last_error": h.0,
    })
}

/// The `Accept` header names OpenMetrics (with any quality above 0).
fn wants_openmetrics(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let mut parts = t.split(';').map(str::trim);
            let kind = parts.next().unwrap_or_default();
            let q = parts
                .find_map(|p| p.strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            kind.eq_ignore_ascii_case("application/openmetrics-text") && q > 0.0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_when_asked_for() {
        let mut h = http::HeaderMap::new();
        assert!(!wants_openmetrics(&h));
        // What Prometheus 2.x sends with exemplar storage on.
        h.insert(header::ACCEPT, "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1".parse().unwrap());
        assert!(wants_openmetrics(&h));
        h.insert(
            header::ACCEPT,
            "text/plain;version=0.0.4;q=1,*/*;q=0.1".parse().unwrap(),
        );
        assert!(!wants_openmetrics(&h));
        h.insert(
            header::ACCEPT,
            "application/openmetrics-text;q=0".parse().unwrap(),
        );
        assert!(!wants_openmetrics(&h));
    }
}
