//! The one place the proxy listener's tower stack is assembled. Layers, outermost first:
//!
//! 1. `CloseWhenDrainingLayer` — while shutdown drains (`shutdown_delay`), HTTP/1
//!    responses carry `Connection: close`;
//! 2. `RecordLayer` (`edge.rs`) — keeps the client's `x-request-id` or makes one, and
//!    returns it on the response; every request's record starts here, with the config it
//!    works with to the end, and is recorded exactly once however the request ends;
//! 3. `CatchPanic` — a panic below becomes an OpenAI-shaped 500 that the edge records as
//!    `internal_error`, not a dropped connection;
//! 4. `GateLayer<Admission>` (`gate.rs`) — connection, head-size, in-flight and body-size
//!    limits;
//! 5. `GateLayer<ApiKeys>` — API keys (when configured): 401, or the request's tenant;
//! 6. `Proxy` (`proxy.rs`) — inspect, route, balance, forward.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::{Service, ServiceBuilder};

use crate::edge::{EdgeBody, Record, RecordLayer};
use crate::error::GatewayError;
use crate::gate::{Admission, ApiKeys, Gate, GateLayer};
use crate::observe::ObservedBody;
use crate::proxy::{Proxy, ResponseBody};
use crate::record::Exchange;
use crate::state::AppState;

/// The body the client receives: every response observed.
pub type ProxyBody = ObservedBody<EdgeBody, Box<Exchange>>;

/// The whole stack around an innermost service `S`, served as it is: no box around it or
/// around its futures, and no allocation when a connection's copy is made for a request.
pub type Stack<S> = CloseWhenDraining<Record<CatchPanic<Gate<Gate<S, ApiKeys>, Admission>>>>;

/// The proxy listener's stack.
pub type AppService = Stack<Proxy>;

/// Builds the proxy listener's service stack.
pub fn service(state: Arc<AppState>) -> AppService {
    service_with(state.clone(), Proxy::new(state))
}

/// The same stack around another innermost service (the tests put one in front of the
/// proxy that panics on a path of their choosing).
pub fn service_with<S>(state: Arc<AppState>, inner: S) -> Stack<S>
where
    S: Service<Request<Incoming>, Response = Response<ResponseBody>, Error = Infallible>,
{
    ServiceBuilder::new()
        .layer(CloseWhenDrainingLayer(state.clone()))
        .layer(RecordLayer::new(state.clone()))
        .layer_fn(|inner| CatchPanic { inner })
        .layer(GateLayer::new(Admission {
            metrics: state.metrics.clone(),
        }))
        .layer(GateLayer::new(ApiKeys))
        .service(inner)
}

/// While the gateway drains (`shutdown_delay`), the response to an HTTP/1 request carries
/// `Connection: close`: hyper closes the connection after it, and the client (or load
/// balancer) opens its next one elsewhere instead of reusing one whose listener is about to
/// close. A request already in flight when draining began keeps its connection for one more
/// request, whose response closes it.
#[derive(Clone)]
struct CloseWhenDrainingLayer(Arc<AppState>);

impl<S> tower::Layer<S> for CloseWhenDrainingLayer {
    type Service = CloseWhenDraining<S>;
    fn layer(&self, inner: S) -> CloseWhenDraining<S> {
        CloseWhenDraining {
            inner,
            state: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CloseWhenDraining<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S, B> Service<Request<Incoming>> for CloseWhenDraining<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = CloseWhenDrainingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        // Told when the request arrives: one load of a flag, no reference to the state held
        // by every request's future.
        let close = req.version() < http::Version::HTTP_2 && self.state.draining();
        CloseWhenDrainingFuture {
            inner: self.inner.call(req),
            close,
        }
    }
}

pin_project! {
    /// The inner service's future, and whether its response closes the connection.
    pub struct CloseWhenDrainingFuture<F> {
        #[pin]
        inner: F,
        close: bool,
    }
}

impl<F, B> Future for CloseWhenDrainingFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut res) = ready!(this.inner.poll(cx));
        if *this.close {
            res.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(res))
    }
}

/// Catches a panic of the service below, in its `call` or while its future is polled, and
/// answers it with [`panic_response`]. The response's body stays the service's own type (a
/// panic's answer is its `Full` side), so nothing is boxed per request.
#[derive(Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, B, A> Service<Request<B>> for CatchPanic<S>
where
    S: Service<Request<B>, Response = Response<Either<A, Full<Bytes>>>, Error = Infallible>,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = CatchPanicFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(inner) => CatchPanicFuture::Inner { inner },
            Err(payload) => CatchPanicFuture::Panicked {
                payload: Some(payload),
            },
        }
    }
}

pin_project! {
    /// The inner future, or a panic of the inner service's `call` to answer.
    #[project = CatchPanicProj]
    pub enum CatchPanicFuture<F> {
        Inner { #[pin] inner: F },
        Panicked { payload: Option<Box<dyn Any + Send + 'static>> },
    }
}

impl<F, A> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<Response<Either<A, Full<Bytes>>>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let payload = match self.project() {
            CatchPanicProj::Inner { inner } => {
                match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                    Ok(polled) => return polled,
                    Err(payload) => payload,
                }
            }
            CatchPanicProj::Panicked { payload } => payload
                .take()
                .unwrap_or_else(|| Box::new("polled again after a panic")),
        };
        Poll::Ready(Ok(panic_response(payload).map(Either::Right)))
    }
}

/// A caught panic's answer: a 500 whose record says what panicked.
fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response<Full<Bytes>> {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    let what: String = what.chars().take(256).collect();
    tracing::error!(panic = %what, "request handler panicked");
    let err = GatewayError::Internal;
    let mut res: Response<Full<Bytes>> = err.response();
    res.extensions_mut()
        .insert(err.answer(Some(format!("panic: {what}"))));
    res
}
