//! Sending a request upstream: pick a backend serving its model, send it, and once more on
//! another backend when nothing has reached the client yet (a refused connect, a 503).

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use http::{Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tokio::time::Instant;

use super::UpBody;
use crate::backend::Backend;
use crate::balance::{NoPick, Pool};
use crate::config::Config;
use crate::error::GatewayError;
use crate::forward;
use crate::health;
use crate::labels::ErrorKind;
use crate::record::Exchange;
use crate::state::{AppState, Shared};
use crate::upstream::UpstreamIncoming;

/// Why an attempt got no response to hand on.
enum Failure {
    /// Another backend may be tried, for this reason (`weir_retries_total{reason}`).
    Retry(&'static str),
    Failed(GatewayError),
}

/// Picks a backend and sends the request, once more on another backend when the connect
/// was refused or the answer was 503 (nothing has reached the client yet).
pub(super) async fn call_upstream(
    state: &AppState,
    shared: &Shared,
    mut parts: http::request::Parts,
    body: UpBody,
    ex: &mut Exchange,
) -> Result<Response<UpstreamIncoming>, GatewayError> {
    let pool = &shared.pool;
    let may_retry = shared.config.retries.enabled
        && matches!(body, UpBody::Bytes(_))
        && pool.backends.len() > 1;
    let mut body = Some(body);
    let mut failed: Option<Arc<Backend>> = None;
    loop {
        let last_try = !may_retry || failed.is_some();
        let backend = pick(pool, ex, failed.as_deref())?;
        let up_body = match body.take() {
            Some(UpBody::Bytes(b)) => {
                if !last_try {
                    body = Some(UpBody::Bytes(b.clone()));
                }
                Either::Left(Full::new(b))
            }
            Some(UpBody::Stream(s)) => Either::Right(s),
            None => return Err(GatewayError::NoBackend),
        };
        let uri = backend
            .target(parts.uri.path_and_query())
            .map_err(|e| GatewayError::BadRequest(format!("bad request path: {e}")))?;
        let mut req = Request::new(up_body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = parts.version;
        // The headers are copied only when another attempt may need them.
        *req.headers_mut() = if last_try {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        match attempt(state, &shared.config, &backend, req, ex, last_try).await {
            Ok(res) => return Ok(res),
            Err(Failure::Failed(err)) => return Err(err),
            Err(Failure::Retry(reason)) => {
                state.metrics.retry(reason);
                failed = Some(backend);
            }
        }
    }
}

/// A backend for the request's model, never `exclude`; the record learns which.
fn pick(
    pool: &Pool,
    ex: &mut Exchange,
    exclude: Option<&Backend>,
) -> Result<Arc<Backend>, GatewayError> {
    let backend = match pool.pick(ex.model.as_deref(), exclude) {
        Ok(b) => b,
        Err(NoPick::UnknownModel) => {
            return Err(GatewayError::UnknownModel(
                ex.model.clone().unwrap_or_default(),
            ));
        }
        Err(NoPick::Unavailable) => return Err(GatewayError::NoBackend),
    };
    let metrics = &ex.metrics;
    let model = metrics.model_label(ex.model.as_deref());
    ex.series = Some(metrics.series(&model, ex.watch.api.operation(), &backend.name));
    ex.backend = backend.name.clone();
    ex.watch.timeouts = backend.timeouts.clone();
    Ok(backend)
}

/// Sends the request to `backend` and waits for the response head, within the first-token
/// (streamed) or total deadline.
async fn attempt(
    state: &AppState,
    config: &Config,
    backend: &Arc<Backend>,
    mut req: Request<forward::UpstreamBody>,
    ex: &mut Exchange,
    last_try: bool,
) -> Result<Response<UpstreamIncoming>, Failure> {
    if let Some(key) = &backend.api_key {
        req.headers_mut().insert(header::AUTHORIZATION, key.clone());
    }
    ex.load = Some(backend.load());
    let sent = Instant::now();
    ex.watch.sent = sent;
    let op = ex.watch.api.operation();
    let upstream_cx = ex
        .trace
        .start_client(op, ex.model.as_deref(), &backend.authority, sent);
    crate::trace::inject(&upstream_cx, req.headers_mut());
    let t = &backend.timeouts;
    let total_at = ex.watch.t0 + t.total;
    let first_at = sent + t.first_token;
    let (deadline, kind) = if ex.watch.stream && first_at < total_at {
        (first_at, "first_token")
    } else {
        (total_at, "total")
    };
    // The deadline's timer, boxed: when the head comes in time it goes on with the body, to
    // be set for the total deadline (one timer a request, not one here and one there).
    let mut timer = Box::pin(tokio::time::sleep_until(deadline));
    let mut request = std::pin::pin!(backend.upstream.request(req));
    let result = std::future::poll_fn(|cx| match request.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Ok(r)),
        Poll::Pending => timer.as_mut().poll(cx).map(Err),
    })
    .await;
    let (health, metrics) = (&config.health, &state.metrics);
    // The backend's name as an error carries it: made only when there is one.
    let name = || backend.name.to_string();
    let err = match result {
        Err(_) => {
            return Err(Failure::Failed(GatewayError::Timeout {
                backend: name(),
                kind,
            }));
        }
        Ok(Ok(res)) if res.status() == StatusCode::SERVICE_UNAVAILABLE && !last_try => {
            metrics.error(ErrorKind::Upstream5xx);
            health::passive(backend, health, Some("upstream_5xx"), metrics);
            tracing::debug!(backend = %backend.name, "503 before the first byte: retrying elsewhere");
            return Err(Failure::Retry("unavailable"));
        }
        Ok(Ok(mut res)) => {
            let failure = res.status().is_server_error().then_some("upstream_5xx");
            health::passive(backend, health, failure, metrics);
            res.body_mut().keep_timer(timer);
            return Ok(res);
        }
        Ok(Err(e)) => e,
    };
    let reason = error_chain(&err);
    if !err.is_connect() {
        // Connected, but the exchange broke before a response head.
        health::passive(backend, health, Some("protocol"), metrics);
        return Err(Failure::Failed(GatewayError::Upstream {
            backend: name(),
            reason,
        }));
    }
    health::passive(backend, health, Some("connect"), metrics);
    if !last_try {
        metrics.error(ErrorKind::Connect);
        tracing::debug!(backend = %backend.name, error = %reason, "connect failed: retrying elsewhere");
        return Err(Failure::Retry("connect"));
    }
    Err(Failure::Failed(if err.is_timeout() {
        GatewayError::ConnectTimeout { backend: name() }
    } else {
        GatewayError::Connect {
            backend: name(),
            reason,
        }
    }))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
