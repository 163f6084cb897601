//! The application: shared state, the proxy service, and the one place the tower stack is
//! assembled. Layer order, outermost first:
//!
//! 1. `CatchPanicLayer` — a panic in a handler becomes an OpenAI-shaped 500, not a dropped
//!    connection;
//! 2. `SetRequestIdLayer` — keeps the client's `x-request-id` or makes one;
//! 3. `PropagateRequestIdLayer` — returns it on the response;
//! 4. `Proxy` — inspect, balance, forward, observe (this file and `forward`, `observe`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::balance::Backends;
use crate::config::Config;
use crate::error::{GatewayError, openai_error_body};
use crate::forward::{self, ClientAddr, UpstreamClient};
use crate::inspect::{Inspected, inspect};
use crate::metrics::{ErrorKind, Metrics, Operation};
use crate::observe::{Exchange, Measurement, ObservedBody, Outcome, record};
use crate::telemetry::Telemetry;

/// What the client receives: an observed upstream body, or the gateway's own answer.
pub type ResponseBody = Either<ObservedBody<Incoming>, Full<Bytes>>;

/// The whole stack, type-erased once.
pub type AppService =
    BoxCloneService<Request<Incoming>, Response<ProxyBody>, std::convert::Infallible>;

/// The body type after the panic layer (boxed once per response).
pub type ProxyBody = tower_http::body::UnsyncBoxBody<Bytes, tower_http::BoxError>;

/// State shared by every request.
pub struct AppState {
    pub config: Config,
    pub metrics: Metrics,
    pub backends: Backends,
    pub client: UpstreamClient,
    pub telemetry: Telemetry,
}

impl AppState {
    pub fn new(config: Config, metrics: Metrics) -> AppState {
        let backends = Backends::new(&config.backends, metrics.clone());
        let client = forward::client(config.timeouts.connect, config.timeouts.pool_idle);
        let telemetry = Telemetry::start(&config.telemetry, &metrics);
        AppState {
            telemetry,
            config,
            metrics,
            backends,
            client,
        }
    }
}

/// Builds the proxy listener's service stack.
pub fn service(state: Arc<AppState>) -> AppService {
    let stack = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
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
        let ex = self.ex.take().expect("exchange present until finished");
        let mut ex = ex;
        ex.status = err.status();
        ex.metrics.error(err.kind());
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
    let (mut parts, body) = req.into_parts();
    let operation = Operation::from_path(parts.uri.path());
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
            series: metrics.series(metrics.model_index(None), operation, &none),
            metrics: metrics.clone(),
        }),
    };

    // Inspect: read a JSON body once (measured and model-bearing endpoints only).
    let (upstream_body, body_len) = if operation != Operation::Other && parts.method == Method::POST
    {
        let limit = state.config.limits.max_request_body;
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
        ex.series = metrics.series(metrics.model_index(model.as_deref()), operation, &none);
        (ex.model, ex.stream, ex.max_tokens, ex.n, ex.strip_usage) =
            (model, stream, max_tokens, n, strip_usage);
        let len = body.len();
        (Either::Left(Full::new(body)), Some(len))
    } else {
        (Either::Right(body), None)
    };

    // Balance.
    let Some(backend) = state.backends.pick() else {
        return pending.fail(GatewayError::NoBackend, Outcome::Unavailable);
    };
    {
        let ex = pending.ex();
        ex.series = metrics.series(
            metrics.model_index(ex.model.as_deref()),
            operation,
            &backend.name,
        );
        ex.backend = backend.name.clone();
    }

    // Forward.
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match backend.uri(path) {
        Ok(u) => u,
        Err(e) => {
            return pending.fail(
                GatewayError::BadRequest(format!("bad request path: {e}")),
                Outcome::ClientError,
            );
        }
    };
    parts.version = http::Version::HTTP_11;
    let client_addr = parts.extensions.get::<ClientAddr>().map(|a| a.0);
    let ex = pending.ex();
    ex.sent = Instant::now();
    let upstream_cx =
        ex.trace
            .start_client(operation, ex.model.as_deref(), &backend.authority, ex.sent);
    forward::upstream_headers(&mut parts.headers, client_addr, &upstream_cx, body_len);
    let upstream_req = Request::from_parts(parts, upstream_body);
    let res = match state.client.request(upstream_req).await {
        Ok(res) => {
            state.backends.report(&backend, true);
            res
        }
        Err(e) => {
            let timed_out = is_timeout(&e);
            if e.is_connect() {
                state.backends.report(&backend, false);
            }
            let backend_name = backend.name.to_string();
            let (err, outcome) = if timed_out {
                (
                    GatewayError::ConnectTimeout {
                        backend: backend_name,
                    },
                    Outcome::Timeout("connect"),
                )
            } else if e.is_connect() {
                (
                    GatewayError::Connect {
                        backend: backend_name,
                        reason: error_chain(&e),
                    },
                    Outcome::Unavailable,
                )
            } else {
                // Connected, but the exchange broke before a response head.
                (
                    GatewayError::Upstream {
                        backend: backend_name,
                        reason: error_chain(&e),
                    },
                    Outcome::UpstreamError,
                )
            };
            return pending.fail(err, outcome);
        }
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

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = s.source();
    }
    false
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
