//! The application: shared state, the proxy service, and the one place the tower stack is
//! assembled. Layer order, outermost first:
//!
//! 1. `CatchPanicLayer` — a panic in a handler becomes an OpenAI-shaped 500, not a dropped
//!    connection;
//! 2. `SetRequestIdLayer` — keeps the client's `x-request-id` or makes one;
//! 3. `PropagateRequestIdLayer` — returns it on the response;
//! 4. `AuthLayer` — API keys (when configured): 401, or the request's `Tenant`;
//! 5. `Proxy` — limits, inspect, route, balance, forward, observe (this file and
//!    `forward`, `balance`, `observe`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

use crate::auth::{AuthLayer, Tenant};
use crate::balance::{Backend, NoPick, Pool};
use crate::config::Config;
use crate::error::{GatewayError, openai_error_body};
use crate::forward::{self, ClientAddr, RandomRequestId};
use crate::health;
use crate::inspect::{Inspected, inspect};
use crate::metrics::{ErrorKind, Metrics, Operation};
use crate::observe::{Exchange, Measurement, ObservedBody, Outcome, record};
use crate::telemetry::Telemetry;
use crate::upstream::UpstreamIncoming;

/// What the client receives: an observed upstream body, or the gateway's own answer.
pub type ResponseBody = Either<ObservedBody<UpstreamIncoming>, Full<Bytes>>;

/// The whole stack, type-erased once.
pub type AppService =
    BoxCloneService<Request<Incoming>, Response<ProxyBody>, std::convert::Infallible>;

/// The body type after the panic layer (boxed once per response).
pub type ProxyBody = tower_http::body::UnsyncBoxBody<Bytes, tower_http::BoxError>;

/// State shared by every request. The config and the backend pool are replaced whole on
/// reload; a request works with the ones it started with.
pub struct AppState {
    pub metrics: Metrics,
    config: RwLock<Arc<Config>>,
    pool: RwLock<Arc<Pool>>,
    pub telemetry: Telemetry,
}

impl AppState {
    pub fn new(config: Config, metrics: Metrics) -> AppState {
        let telemetry = Telemetry::start(&config.telemetry, &metrics);
        let pool = Pool::new(&config, None, &metrics);
        AppState {
            telemetry,
            metrics,
            config: RwLock::new(Arc::new(config)),
            pool: RwLock::new(Arc::new(pool)),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn pool(&self) -> Arc<Pool> {
        self.pool
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Takes a new (validated) config: backends, balancing, health and timeouts change for
    /// new requests; open streams go on with the backends they have.
    pub fn reload(&self, config: Config) {
        let old = self.pool();
        self.metrics.add_models(&config.known_models());
        let pool = Pool::new(&config, Some(&old), &self.metrics);
        for b in &old.backends {
            if pool.find(&b.name).is_none() {
                self.metrics.remove_backend(&b.name);
            }
        }
        if let Ok(mut p) = self.pool.write() {
            *p = Arc::new(pool);
        }
        if let Ok(mut c) = self.config.write() {
            *c = Arc::new(config);
        }
    }
}

/// Builds the proxy listener's service stack.
pub fn service(state: Arc<AppState>) -> AppService {
    let stack = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(AuthLayer::new(&state.config().auth, state.metrics.clone()))
        .service(Proxy { state });
    BoxCloneService::new(stack)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Full<Bytes>> {
    tracing::error!("request handler panicked");
    let mut res = Response::new(Full::new(openai_error_body(
        "internal error in the gateway",
        "InternalServerError",
        StatusCode::INTERNAL_SERVER_ERROR,
    )));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res
}

/// The innermost service: one call per request.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<AppState>,
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(proxy(state, req).await) })
    }
}

/// Records `cancelled` if the request is dropped (client gone) before its response starts.
struct Pending {
    ex: Option<Exchange>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(ex) = self.ex.take() {
            record(
                &ex,
                &Measurement::default(),
                Outcome::Cancelled,
                Instant::now(),
            );
        }
    }
}

impl Pending {
    fn ex(&mut self) -> &mut Exchange {
        self.ex.as_mut().expect("exchange present until finished")
    }

    /// The gateway answers itself: record and build the error response.
    fn fail(mut self, err: GatewayError, outcome: Outcome) -> Response<ResponseBody> {
        let mut ex = self.ex.take().expect("exchange present until finished");
        ex.status = err.status();
        if let Some(kind) = err.kind() {
            ex.metrics.error(kind);
        }
        match &err {
            GatewayError::Connect { .. } | GatewayError::ConnectTimeout { .. } => {
                tracing::warn!(request_id = %ex.request_id, error = %err, "upstream call failed")
            }
            _ => tracing::debug!(request_id = %ex.request_id, error = %err, "request refused"),
        }
        record(&ex, &Measurement::default(), outcome, Instant::now());
        err.response::<Full<Bytes>>().map(Either::Right)
    }
}

async fn proxy(state: Arc<AppState>, req: Request<Incoming>) -> Response<ResponseBody> {
    let t0 = Instant::now();
    let metrics = &state.metrics;
    metrics.in_flight().inc();
    let config = state.config();
    let (mut parts, body) = req.into_parts();
    let operation = Operation::from_path(parts.uri.path());
    let tenant = parts.extensions.get::<Tenant>().map(|t| t.0.clone());
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let trace = state.telemetry.request(&parts.headers, operation, t0);
    let none: Arc<str> = "none".into();
    let mut pending = Pending {
        ex: Some(Exchange {
            t0,
            sent: t0,
            request_id,
            trace,
            model: None,
            operation,
            stream: false,
            max_tokens: None,
            n: 1,
            strip_usage: false,
            backend: none.clone(),
            status: StatusCode::BAD_GATEWAY,
            series: metrics.series(&metrics.model_label(None), operation, &none),
            metrics: metrics.clone(),
            load: None,
            timeouts: config.timeouts.clone(),
            tenant,
            max_sse_line: config.limits.max_sse_line,
        }),
    };
    let limit = config.limits.max_in_flight;
    if limit > 0 && metrics.in_flight().get() > limit as i64 {
        metrics.rejected("in_flight").inc();
        return pending.fail(GatewayError::Overloaded, Outcome::Unavailable);
    }

    // Inspect: read a JSON body once (measured and model-bearing endpoints only).
    let body = if operation != Operation::Other && parts.method == Method::POST {
        let limit = config.limits.max_request_body;
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let err = if e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    GatewayError::BodyTooLarge { limit }
                } else {
                    GatewayError::ClientBody(e.to_string())
                };
                return pending.fail(err, Outcome::ClientError);
            }
        };
        let Inspected {
            model,
            stream,
            max_tokens,
            n,
            strip_usage,
            body,
        } = match inspect(bytes, operation.is_generation()) {
            Ok(i) => i,
            Err(e) => return pending.fail(e, Outcome::ClientError),
        };
        let ex = pending.ex();
        ex.series = metrics.series(&metrics.model_label(model.as_deref()), operation, &none);
        (ex.model, ex.stream, ex.max_tokens, ex.n, ex.strip_usage) =
            (model, stream, max_tokens, n, strip_usage);
        UpBody::Bytes(body)
    } else if body.is_end_stream() {
        UpBody::Bytes(Bytes::new())
    } else {
        UpBody::Stream(body)
    };

    // Route, balance and forward, retrying once on another backend when allowed.
    parts.version = http::Version::HTTP_11;
    let client_addr = parts.extensions.get::<ClientAddr>().map(|a| a.0);
    let body_len = match &body {
        UpBody::Bytes(b) if !b.is_empty() || parts.method == Method::POST => Some(b.len()),
        _ => None,
    };
    forward::upstream_headers(&mut parts.headers, client_addr, body_len);
    let res = match call_upstream(&state, &config, parts, body, pending.ex()).await {
        Ok(res) => res,
        Err((err, outcome)) => return pending.fail(err, outcome),
    };

    // Observe.
    let (mut head, body) = res.into_parts();
    forward::strip_hop_by_hop(&mut head.headers);
    if head.status.is_server_error() {
        metrics.error(ErrorKind::Upstream5xx);
    }
    let mut ex = pending.ex.take().expect("exchange present until finished");
    ex.status = head.status;
    if ex.strip_usage {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    let content_type = head.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
    let body = ObservedBody::new(body, ex, content_type);
    Response::from_parts(head, Either::Left(body))
}

/// The request body on its way upstream: bytes can be sent again, a stream only once.
enum UpBody {
    Bytes(Bytes),
    Stream(Incoming),
}

type Failure = (GatewayError, Outcome);

/// Picks a backend and sends the request, once more on another backend when the connect
/// was refused or the answer was 503 (nothing has reached the client yet). Waits for the
/// response head within the first-token (streamed) or total deadline.
async fn call_upstream(
    state: &AppState,
    config: &Config,
    mut parts: http::request::Parts,
    body: UpBody,
    ex: &mut Exchange,
) -> Result<Response<UpstreamIncoming>, Failure> {
    let pool = state.pool();
    let metrics = &state.metrics;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let may_retry =
        config.retries.enabled && matches!(body, UpBody::Bytes(_)) && pool.backends.len() > 1;
    let mut body = Some(body);
    let mut failed: Option<Arc<Backend>> = None;
    let model_label = metrics.model_label(ex.model.as_deref());
    loop {
        let last_try = !may_retry || failed.is_some();
        let backend = match pool.pick(ex.model.as_deref(), failed.as_deref()) {
            Ok(b) => b,
            Err(NoPick::UnknownModel) => {
                return Err((
                    GatewayError::UnknownModel(ex.model.clone().unwrap_or_default()),
                    Outcome::ClientError,
                ));
            }
            Err(NoPick::Unavailable) => {
                return Err((GatewayError::NoBackend, Outcome::Unavailable));
            }
        };
        ex.series = metrics.series(&model_label, ex.operation, &backend.name);
        ex.backend = backend.name.clone();
        ex.timeouts = backend.timeouts.clone();
        let uri = backend.uri(&path).map_err(|e| {
            (
                GatewayError::BadRequest(format!("bad request path: {e}")),
                Outcome::ClientError,
            )
        })?;
        let up_body = match body.take() {
            Some(UpBody::Bytes(b)) => {
                if !last_try {
                    body = Some(UpBody::Bytes(b.clone()));
                }
                Either::Left(Full::new(b))
            }
            Some(UpBody::Stream(s)) => Either::Right(s),
            None => return Err((GatewayError::NoBackend, Outcome::Unavailable)),
        };
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
        if let Some(key) = &backend.api_key {
            req.headers_mut().insert(header::AUTHORIZATION, key.clone());
        }
        ex.load = Some(backend.load());
        ex.sent = Instant::now();
        let upstream_cx = ex.trace.start_client(
            ex.operation,
            ex.model.as_deref(),
            &backend.authority,
            ex.sent,
        );
        crate::trace::inject(&upstream_cx, req.headers_mut());
        let t = &backend.timeouts;
        let total_at = ex.t0 + t.total;
        let first_at = ex.sent + t.first_token;
        let (deadline, kind) = if ex.stream && first_at < total_at {
            (first_at, "first_token")
        } else {
            (total_at, "total")
        };
        let result = tokio::time::timeout_at(deadline, backend.upstream.request(req)).await;
        let health = &config.health;
        let err = match result {
            Err(_) => {
                return Err((
                    GatewayError::Timeout {
                        backend: backend.name.to_string(),
                        kind,
                    },
                    Outcome::Timeout(kind),
                ));
            }
            Ok(Ok(res)) if res.status() == StatusCode::SERVICE_UNAVAILABLE && !last_try => {
                metrics.error(ErrorKind::Upstream5xx);
                health::passive(&backend, health, Some("upstream_5xx"), metrics);
                metrics.retry("unavailable");
                tracing::debug!(backend = %backend.name, "503 before the first byte: retrying elsewhere");
                failed = Some(backend);
                continue;
            }
            Ok(Ok(res)) => {
                let failure = res.status().is_server_error().then_some("upstream_5xx");
                health::passive(&backend, health, failure, metrics);
                return Ok(res);
            }
            Ok(Err(e)) => e,
        };
        let name = backend.name.to_string();
        if !err.is_connect() {
            // Connected, but the exchange broke before a response head.
            health::passive(&backend, health, Some("protocol"), metrics);
            return Err((
                GatewayError::Upstream {
                    backend: name,
                    reason: error_chain(&err),
                },
                Outcome::UpstreamError,
            ));
        }
        health::passive(&backend, health, Some("connect"), metrics);
        let timed_out = err.is_timeout();
        if !last_try {
            metrics.error(ErrorKind::Connect);
            metrics.retry("connect");
            tracing::debug!(backend = %name, error = %error_chain(&err), "connect failed: retrying elsewhere");
            failed = Some(backend);
            continue;
        }
        return Err(if timed_out {
            (
                GatewayError::ConnectTimeout { backend: name },
                Outcome::Timeout("connect"),
            )
        } else {
            (
                GatewayError::Connect {
                    backend: name,
                    reason: error_chain(&err),
                },
                Outcome::Unavailable,
            )
        });
    }
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
