//! The edge: the recording layer around the whole proxy stack. Every request the proxy
//! listener parses gets its record here, at its head (`t0`, request id, trace context, the
//! config it will work with), and is recorded exactly once however it ends. The request id
//! is the client's `x-request-id` or a new one (set on the request before anything else
//! reads it), and goes back on the response unless the response has one:
//!
//! - answered by a backend: the response body is observed, and the record finished when
//!   the body ends, breaks, times out or is dropped;
//! - answered by the gateway (a gate's refusal, a failed upstream call, a caught panic): the
//!   response's [`Answer`] says how it ended; its body is observed like any other;
//! - the client leaves before the response head: recorded `cancelled` with status 499
//!   (nothing was sent), with whatever the stack had learnt by then.
//!
//! The record travels in the request's extensions as a [`Ledger`], in one [`Edge`] with the
//! config the request works with; a layer that takes the exchange out puts it back before it
//! returns or when it is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{Entry, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::error::Answer;
use crate::forward::RandomRequestId;
use crate::labels::Api;
use crate::observe::{Closer, ObservedBody};
use crate::proxy::ResponseBody;
use crate::record::{Exchange, Ledger};
use crate::state::{AppState, Shared};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the edge puts on a request for the layers below: its record and the config it
/// works with to the end (one extension: one allocation and one lookup for both).
#[derive(Clone)]
pub struct Edge {
    pub ledger: Ledger,
    pub shared: Arc<Shared>,
}

/// Adds [`Record`] around a service.
#[derive(Clone)]
pub struct RecordLayer {
    state: Arc<AppState>,
}

impl RecordLayer {
    pub fn new(state: Arc<AppState>) -> Self {
        RecordLayer { state }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;
    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            state: self.state.clone(),
        }
    }
}

/// What the edge hands on, of the same type as what the stack below it answers: a backend's
/// body, or the gateway's own answer (its error re-shaped here for the request's API).
pub type EdgeBody = ResponseBody;

/// Records every request that passes through it.
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S, B> Service<Request<B>> for Record<S>
where
    S: Service<Request<B>, Response = Response<EdgeBody>, Error = Infallible>,
{
    type Response = Response<ObservedBody<EdgeBody, Box<Exchange>>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let t0 = Instant::now();
        // What tower-http's SetRequestId and PropagateRequestId layers did, without their
        // extensions and futures around every request.
        // One hash of the name: an entry, not a look-up and then an insert.
        let request_id = match req.headers_mut().entry(X_REQUEST_ID) {
            Entry::Occupied(id) => id.get().clone(),
            Entry::Vacant(slot) => slot.insert(RandomRequestId::header_value()).clone(),
        };
        let shared = self.state.current();
        let ledger = Ledger::new(Exchange::start(&self.state, &shared, &req, &request_id, t0));
        let head = req.method() == Method::HEAD;
        req.extensions_mut().insert(Edge {
            ledger: ledger.clone(),
            shared,
        });
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            ledger: Some(ledger),
            head,
            request_id: Some(request_id),
        }
    }
}

pin_project! {
    /// The inner service's future; the record of its request until the response head.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        ledger: Option<Ledger>,
        head: bool,
        // Goes back on the response.
        request_id: Option<HeaderValue>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // The inner future first: a layer holding the exchange gives it back.
            this.inner.set(None);
            if let Some(ex) = this.ledger.take().and_then(|l| l.take()) {
                ex.cancelled();
            }
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<EdgeBody>, Infallible>>,
{
    type Output = Result<Response<ObservedBody<EdgeBody, Box<Exchange>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        let Ok(mut res) = ready!(inner.poll(cx));
        this.inner.set(None);
        if let Some(id) = this.request_id.take() {
            res.headers_mut().entry(X_REQUEST_ID).or_insert(id);
        }
        let ex = this.ledger.take().and_then(|l| l.take());
        let Some(mut ex) = ex else {
            // Taken and never given back: a bug in a layer. The response still goes out.
            tracing::error!("a request's record was lost before its response");
            return Poll::Ready(Ok(res.map(ObservedBody::unobserved)));
        };
        if let Some(answer) = res.extensions_mut().remove::<Answer>() {
            if ex.watch.api == Api::Messages {
                // The gateway's own errors in the shape this API's clients read.
                let body = answer.body(ex.watch.api, res.status());
                res.headers_mut().remove(http::header::CONTENT_LENGTH);
                *res.body_mut() = Either::Right(Full::new(body));
            }
            ex.answered(answer);
        }
        // How to close the backend's connection, for the total deadline, and the timer to
        // keep that deadline on.
        let closer = match res.body_mut() {
            Either::Left(upstream) => upstream.closer().map(|c| Closer {
                close: Arc::new(c),
                timer: upstream.take_timer(),
            }),
            Either::Right(_) => None,
        };
        let status = res.status();
        ex.watch.status = status;
        let nothing_to_send = *this.head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let (parts, body) = res.into_parts();
        let body = ObservedBody::new(body, ex, &parts.headers, nothing_to_send, closer);
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}
