//! Health: active checks of each backend's `/health` on an interval (with thresholds to go
//! down and come back), its vLLM `/metrics` for queue-aware balancing, model discovery from
//! `/v1/models`, and passive ejection on consecutive connect failures or 5xx answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use tokio::sync::watch;
use tracing::Instrument;

use crate::backend::Backend;
use crate::balance::ejection;
use crate::config::{Health, Strategy};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Largest answer read from a backend's `/metrics` or `/v1/models`.
const MAX_BODY: usize = 4 << 20;

/// Runs the checks every `health.interval` until `stop` turns true.
pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        let current = state.current();
        let checks = current.pool.backends.iter().map(|b| {
            let (b, current, metrics) = (b.clone(), current.clone(), state.metrics.clone());
            let span = tracing::info_span!("health_check", otel.kind = "client", backend = %b.name, endpoint = b.endpoint.map(tracing::field::display));
            tokio::spawn(
                async move {
                    let config = &current.config;
                    check(&b, &config.health, config.balance, &metrics).await
                }
                .instrument(span),
            )
        });
        for c in checks.collect::<Vec<_>>() {
            let _ = c.await;
        }
        tokio::select! {
            _ = tokio::time::sleep(current.config.health.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// GET `path` on a backend within `timeout`: the status and (bounded) body.
async fn get(
    b: &Backend,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), &'static str> {
    let uri = b.uri(path).map_err(|_| "protocol")?;
    let mut req = Request::get(uri)
        .body(Either::Left(Full::new(Bytes::new())))
        .map_err(|_| "protocol")?;
    // A vLLM started with `--api-key` wants it on `/v1/models` as on any request.
    if let Some(key) = &b.api_key {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, key.clone());
    }
    let fetch = async {
        let res = b.upstream.request(req).await.map_err(|e| {
            if e.is_connect() {
                "connect"
            } else {
                "protocol"
            }
        })?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| "protocol")?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or(Err("timeout"))
}

/// One round of checks on one backend.
pub async fn check(b: &Backend, cfg: &Health, strategy: Strategy, metrics: &Metrics) {
    let result = match get(b, "/health", cfg.timeout).await {
        Ok((s, _)) if s.is_success() => Ok(()),
        Ok(_) => Err("health_status"),
        Err(e) => Err(e),
    };
    active(b, cfg, result, metrics);
    if result.is_ok() {
        if strategy == Strategy::QueueAware {
            scrape_queue(b, cfg.timeout).await;
        }
        if !b.models_configured {
            discover_models(b, cfg.timeout, metrics).await;
        }
    }
    b.publish_up(metrics);
}

/// Applies an active check's result with the thresholds.
fn active(b: &Backend, cfg: &Health, result: Result<(), &'static str>, metrics: &Metrics) {
    let Ok(mut h) = b.health.lock() else { return };
    let was_up = b.checked_up.load(Ordering::Relaxed);
    match result {
        Ok(()) => {
            h.check_failures = 0;
            h.check_successes += 1;
            if !was_up && h.check_successes >= cfg.healthy_threshold {
                b.checked_up.store(true, Ordering::Relaxed);
                // A fresh start: earlier ejections no longer count.
                h.ejections = 0;
                h.request_failures = 0;
                b.ejected_until_ms.store(0, Ordering::Relaxed);
                tracing::info!(backend = %b.name, endpoint = b.endpoint.map(tracing::field::display), "backend is up");
            }
        }
        Err(kind) => {
            h.check_successes = 0;
            h.check_failures += 1;
            h.last_error = Some(kind);
            if was_up && h.check_failures >= cfg.unhealthy_threshold {
                b.checked_up.store(false, Ordering::Relaxed);
                tracing::warn!(backend = %b.name, endpoint = b.endpoint.map(tracing::field::display), error = kind, "backend is down: health checks fail");
            }
        }
    }
    drop(h);
    b.publish_up(metrics);
}

/// Passive health: the result of a real request (`None`: it went well; `Some(kind)`: a
/// connect failure or a 5xx). Enough consecutive failures eject the backend for a back-off
/// that doubles with each ejection until a request succeeds.
pub fn passive(b: &Backend, cfg: &Health, failure: Option<&'static str>, metrics: &Metrics) {
    let Ok(mut h) = b.health.lock() else { return };
    let Some(kind) = failure else {
        if h.request_failures > 0 || h.ejections > 0 {
            h.request_failures = 0;
            h.ejections = 0;
        }
        return;
    };
    h.last_error = Some(kind);
    h.request_failures += 1;
    if cfg.passive_failures == 0 || h.request_failures < cfg.passive_failures {
        return;
    }
    h.request_failures = 0;
    h.ejections += 1;
    let back_off = ejection(h.ejections, cfg.ejection_base, cfg.ejection_max);
    let until = b
        .now_ms()
        .saturating_add(u64::try_from(back_off.as_millis()).unwrap_or(u64::MAX));
    b.ejected_until_ms.store(until, Ordering::Relaxed);
    drop(h);
    b.publish_up(metrics);
    tracing::warn!(backend = %b.name, endpoint = b.endpoint.map(tracing::field::display), error = kind, ?back_off, "backend ejected after consecutive failures");
}

/// Reads `vllm:num_requests_waiting`, `vllm:num_requests_running` and
/// `vllm:kv_cache_usage_perc` from the backend's `/metrics`.
async fn scrape_queue(b: &Backend, timeout: Duration) {
    let q = &b.queue;
    let at = b.outstanding();
    let Ok((StatusCode::OK, body)) = get(b, "/metrics", timeout).await else {
        q.has_metrics.store(false, Ordering::Relaxed);
        return;
    };
    let text = String::from_utf8_lossy(&body);
    let waiting = sum(&text, "vllm:num_requests_waiting");
    let running = sum(&text, "vllm:num_requests_running");
    let Some(waiting) = waiting else {
        q.has_metrics.store(false, Ordering::Relaxed);
        return;
    };
    let kv = max(&text, "vllm:kv_cache_usage_perc").unwrap_or(0.0);
    q.waiting.store(waiting as u32, Ordering::Relaxed);
    q.running
        .store(running.unwrap_or(0.0) as u32, Ordering::Relaxed);
    q.kv_ppm
        .store((kv.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
    q.outstanding_at_scrape.store(at, Ordering::Relaxed);
    q.has_metrics.store(true, Ordering::Relaxed);
}

/// Values of one metric family's samples (any labels) in Prometheus text.
fn values<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    text.lines().filter_map(move |l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        let value = rest
            .rsplit_once('}')
            .map_or(rest, |(_, v)| v)
            .split_whitespace()
            .next()?;
        value
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    })
}

fn sum(text: &str, name: &str) -> Option<f64> {
    values(text, name).fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
}

fn max(text: &str, name: &str) -> Option<f64> {
    values(text, name).fold(None, |acc, v| Some(acc.map_or(v, |a: f64| a.max(v))))
}

/// Learns the backend's models from its `/v1/models`.
async fn discover_models(b: &Backend, timeout: Duration, metrics: &Metrics) {
    let Ok((StatusCode::OK, body)) = get(b, "/v1/models", timeout).await else {
        return;
    };
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<Model>,
    }
    #[derive(serde::Deserialize)]
    struct Model {
        id: String,
    }
    let Ok(list) = serde_json::from_slice::<List>(&body) else {
        tracing::debug!(backend = %b.name, "unreadable /v1/models");
        return;
    };
    let ids: Vec<String> = list.data.into_iter().map(|m| m.id).collect();
    if b.models().as_deref() != Some(&ids[..]) {
        tracing::info!(backend = %b.name, models = %crate::telemetry::Json(&ids), "models discovered");
        metrics.add_models(&ids);
        b.set_models(ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllm_queue_metrics() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/vllm-0.32.0/metrics_under_load.txt"
        ))
        .unwrap();
        assert_eq!(sum(&text, "vllm:num_requests_running"), Some(64.0));
        assert_eq!(sum(&text, "vllm:num_requests_waiting"), Some(0.0));
        let kv = max(&text, "vllm:kv_cache_usage_perc").unwrap();
        assert!(kv > 0.01 && kv < 0.02, "{kv}");
        assert_eq!(sum(&text, "vllm:no_such_metric"), None);
        // `_by_reason` is another family, not a sample of this one.
        assert_eq!(
            sum(
                "vllm:num_requests_waiting_by_reason{r=\"x\"} 5\n",
                "vllm:num_requests_waiting"
            ),
            None
        );
    }
}
