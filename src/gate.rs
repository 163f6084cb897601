//! Gates: checks a request must pass before it goes further in, each a tower layer that
//! answers a refusal at once (an OpenAI-shaped error carrying its [`Answer`]) and lets
//! everything else through untouched. The edge records refusals like any other request.
//!
//! - [`Admission`]: the gateway's own limits (connections, the paths passed on, request head
//!   size, a declared body over the limit), cheapest first (requests in flight are counted
//!   once their body is in: `proxy.rs`);
//! - [`ApiKeys`]: the client's API key, when keys are configured: the tenant is noted on the
//!   request's record and the key removed, so it never reaches a backend, a log or a span.
//!
//! Each check reads the config the request started with (the edge's `Shared`).
//!
//! [`Answer`]: crate::error::Answer

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::edge::Edge;
use crate::error::GatewayError;
use crate::labels::Api;
use crate::metrics::Metrics;
use crate::server::OverConnectionLimit;
use crate::state::Shared;

/// A check made on a request before it goes on.
pub trait Check {
    /// Lets the request on (changed if need be) or refuses it. The config it checks against
    /// is the request's own, read in place from the edge's extension ([`edge`]).
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), GatewayError>;
}

/// The request's [`Edge`] extension (its config and its record), borrowed: no count of
/// the `Arc` every worker shares is taken and dropped per gate. Only the edge puts it in: a
/// stack assembled without it is a bug.
fn edge<B>(req: &Request<B>) -> Result<&Edge, GatewayError> {
    req.extensions().get::<Edge>().ok_or(GatewayError::Internal)
}

/// Adds a [`Gate`] with `check` to a service.
#[derive(Clone)]
pub struct GateLayer<C> {
    check: C,
}

impl<C> GateLayer<C> {
    pub fn new(check: C) -> Self {
        GateLayer { check }
    }
}

impl<S, C: Clone> Layer<S> for GateLayer<C> {
    type Service = Gate<S, C>;
    fn layer(&self, inner: S) -> Gate<S, C> {
        Gate {
            inner,
            check: self.check.clone(),
        }
    }
}

/// Refuses what its check refuses; passes the rest to `inner`.
#[derive(Clone)]
pub struct Gate<S, C> {
    inner: S,
    check: C,
}

/// A refusal's body is the inner service's own `Either`'s right side: the gates add no
/// layer of body around what they pass on.
impl<S, C, B, A> Service<Request<B>> for Gate<S, C>
where
    S: Service<Request<B>, Response = Response<Either<A, Full<Bytes>>>>,
    C: Check,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.check.check(&mut req) {
            Ok(()) => ResponseFuture::Inner {
                fut: self.inner.call(req),
            },
            Err(e) => ResponseFuture::Refused {
                response: Some(e.response()),
            },
        }
    }
}

pin_project! {
    /// The inner service's future, or the refusal given without calling it.
    #[project = Proj]
    pub enum ResponseFuture<F> {
        Inner { #[pin] fut: F },
        Refused { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F, A, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Either<A, Full<Bytes>>>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner { fut } => fut.poll(cx),
            Proj::Refused { response } => {
                let res = response
                    .take()
                    .unwrap_or_else(|| GatewayError::Internal.response());
                Poll::Ready(Ok(res.map(Either::Right)))
            }
        }
    }
}

/// The gateway's own limits, before anything is read of the body.
#[derive(Clone)]
pub struct Admission {
    pub metrics: Metrics,
}

impl Check for Admission {
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        let shared: &Shared = &edge(req)?.shared;
        if req.extensions().get::<OverConnectionLimit>().is_some() {
            return Err(GatewayError::TooManyConnections);
        }
        let path = req.uri().path();
        if !shared.config.proxy.allows(path) {
            let shown: String = path.chars().take(128).collect();
            return Err(GatewayError::PathNotFound(shown));
        }
        let limits = &shared.config.limits;
        let head = head_size(req);
        if head > limits.max_head_bytes {
            return Err(GatewayError::HeadTooLarge {
                limit: limits.max_head_bytes,
            });
        }
        // A body that is read whole (the measured endpoints) and says it is too large is
        // refused before a byte of it is read.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let buffered =
            req.method() == Method::POST && Api::from_path(req.uri().path()).is_measured();
        if buffered && declared.is_some_and(|n| n > limits.max_request_body as u64) {
            return Err(GatewayError::BodyTooLarge {
                limit: limits.max_request_body,
            });
        }
        Ok(())
    }
}

/// The request head's size as it came: request line and header lines.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    req.method().as_str().len() + uri + 12 + headers
}

/// The client's API key, when keys are configured.
#[derive(Clone, Copy)]
pub struct ApiKeys;

impl Check for ApiKeys {
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        let edge = edge(req)?;
        let Some(keys) = &edge.shared.keys else {
            return Ok(());
        };
        let tenant = keys
            .check(req.headers())
            .ok_or(GatewayError::Unauthorized)?;
        edge.ledger.with(|ex| ex.tenant = Some(tenant));
        req.headers_mut().remove(header::AUTHORIZATION);
        req.headers_mut().remove("x-api-key");
        Ok(())
    }
}
