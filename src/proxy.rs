//! The proxy, the innermost service: reads a measured request's body once (`inspect`),
//! picks a backend serving its model (`balance`), sends the request there, once more on
//! another backend when that is safe (`forward`, `upstream`), and hands the response head
//! back for the edge to observe. What it learns goes on the request's record; a failure is
//! answered with an OpenAI-shaped error that says how the request ended.

use std::convert::Infallible;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::Service;

mod quota;
mod upstream_call;

use crate::budget::Reservation;
use crate::config::Config;
use crate::edge::Edge;
use crate::error::GatewayError;
use crate::forward::{self, ClientAddr};
use crate::inspect::{Inspected, inspect};
use crate::observe::MAX_CHOICES;
use crate::record::{Exchange, Ledger};
use crate::state::{AppState, Shared};
use crate::upstream::UpstreamIncoming;
use upstream_call::call_upstream;

/// What the proxy answers: a backend's response, or the gateway's own.
pub type ResponseBody = Either<UpstreamIncoming, Full<Bytes>>;

/// The innermost service: one call per request.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<AppState>,
}

impl Proxy {
    pub fn new(state: Arc<AppState>) -> Proxy {
        Proxy { state }
    }
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(proxy(state, req).await) })
    }
}

/// The request's record, taken out of its ledger while the proxy works on it, and given
/// back when the proxy returns or is dropped (the client left).
struct Held {
    ledger: Ledger,
    ex: Option<Box<Exchange>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(ex) = self.ex.take() {
            self.ledger.put(ex);
        }
    }
}

impl Deref for Held {
    type Target = Exchange;
    fn deref(&self) -> &Exchange {
        self.ex.as_deref().expect("held until dropped")
    }
}

impl DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Exchange {
        self.ex.as_deref_mut().expect("held until dropped")
    }
}

async fn proxy(state: Arc<AppState>, mut req: Request<Incoming>) -> Response<ResponseBody> {
    // Nothing below the proxy reads it: taken, not copied.
    let Some(Edge { ledger, shared }) = req.extensions_mut().remove::<Edge>() else {
        // Only the edge puts it in: a stack assembled without it is a bug.
        return answer(&GatewayError::Internal);
    };
    let Some(ex) = ledger.take() else {
        return answer(&GatewayError::Internal);
    };
    let mut ex = Held {
        ledger,
        ex: Some(ex),
    };
    let mut res = match forward_request(&state, &shared, req, &mut ex).await {
        Ok(res) => res,
        Err(err) => {
            match &err {
                GatewayError::Connect { .. } | GatewayError::ConnectTimeout { .. } => {
                    tracing::warn!(request_id = %ex.request_id, error = %err, "upstream call failed")
                }
                _ => tracing::debug!(request_id = %ex.request_id, error = %err, "request refused"),
            }
            answer(&err)
        }
    };
    if let Some(h) = ex.billing.headers {
        h.apply(res.headers_mut());
    }
    res
}

fn answer(err: &GatewayError) -> Response<ResponseBody> {
    err.response::<Full<Bytes>>().map(Either::Right)
}

async fn forward_request(
    state: &AppState,
    shared: &Shared,
    req: Request<Incoming>,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    let (body, reservation) = read_body(state, &shared.config, &parts, body, ex).await?;
    quota::check(state, shared, &body, ex).await?;
    // In flight once the body is in: clients slow to send theirs hold no slot.
    let Some(admitted) = state.admit(shared.config.limits.max_in_flight) else {
        state.metrics.rejected("in_flight").inc();
        return Err(GatewayError::Overloaded);
    };
    ex.admitted = Some(admitted);
    parts.version = http::Version::HTTP_11;
    let client_addr = parts.extensions.get::<ClientAddr>().map(|a| a.0);
    let body_len = match &body {
        UpBody::Bytes(b) if !b.is_empty() || parts.method == Method::POST => Some(b.len()),
        _ => None,
    };
    forward::upstream_headers(&mut parts.headers, client_addr, body_len);
    if ex.watch.api.is_measured() {
        // A measured body must come as it is, to be read: no compression.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    let res = call_upstream(state, shared, parts, body, ex).await?;
    // The body is sent (and no other attempt will send it again).
    drop(reservation);
    let status = res.status();
    if status == StatusCode::SWITCHING_PROTOCOLS || status.as_u16() >= 600 {
        // Not an answer a client can be given: the connection is dropped with the response.
        return Err(GatewayError::Upstream {
            backend: ex.backend.to_string(),
            reason: format!("the backend answered with status {}", status.as_u16()),
        });
    }
    let (mut head, body) = res.into_parts();
    forward::strip_hop_by_hop(&mut head.headers);
    if ex.watch.strip_usage {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    Ok(Response::from_parts(head, Either::Left(body)))
}

/// Reads a measured endpoint's JSON body whole, within the body deadline and the memory
/// budget, and inspects it (model, stream, max_tokens, n; usage asked for). Other bodies
/// stream through. The reservation holds the body's bytes against the budget until sent.
async fn read_body(
    state: &AppState,
    config: &Config,
    parts: &http::request::Parts,
    body: Incoming,
    ex: &mut Exchange,
) -> Result<(UpBody, Option<Reservation>), GatewayError> {
    let api = ex.watch.api;
    if !api.is_measured() || parts.method != Method::POST {
        let body = if body.is_end_stream() {
            UpBody::Bytes(Bytes::new())
        } else {
            UpBody::Stream(body)
        };
        return Ok((body, None));
    }
    let limits = &config.limits;
    let deadline = ex.watch.t0 + limits.body_read_timeout;
    let mut reservation = state.buffered.reserve();
    let read = read_whole(body, limits.max_request_body, &mut reservation);
    let bytes = match tokio::time::timeout_at(deadline, read).await {
        Err(_) => return Err(GatewayError::BodyTimeout(limits.body_read_timeout)),
        Ok(Err(GatewayError::MemoryFull)) => {
            state.metrics.rejected("memory").inc();
            return Err(GatewayError::MemoryFull);
        }
        Ok(result) => result?,
    };
    let Inspected {
        model,
        stream,
        max_tokens,
        n,
        strip_usage,
        body,
    } = inspect(bytes, api.asks_for_usage())?;
    (ex.model, ex.max_tokens) = (model, max_tokens);
    let w = &mut ex.watch;
    (w.stream, w.n, w.strip_usage) = (stream, n.min(MAX_CHOICES), strip_usage);
    w.body_done = Instant::now();
    Ok((UpBody::Bytes(body), Some(reservation)))
}

/// The whole body, at most `max` bytes, each reserved before it is kept.
async fn read_whole(
    mut body: Incoming,
    max: usize,
    reservation: &mut Reservation,
) -> Result<Bytes, GatewayError> {
    let declared = body
        .size_hint()
        .exact()
        .and_then(|n| usize::try_from(n).ok());
    let mut all = BytesMut::with_capacity(declared.unwrap_or(0).min(max));
    if !reservation.grow(all.capacity()) {
        return Err(GatewayError::MemoryFull);
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| GatewayError::ClientBody(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if all.len() + data.len() > max {
            return Err(GatewayError::BodyTooLarge { limit: max });
        }
        let more = (all.len() + data.len()).saturating_sub(reservation.held());
        if !reservation.grow(more) {
            return Err(GatewayError::MemoryFull);
        }
        all.extend_from_slice(&data);
    }
    Ok(all.freeze())
}

/// The request body on its way upstream: bytes can be sent again, a stream only once.
pub(crate) enum UpBody {
    Bytes(Bytes),
    Stream(Incoming),
}
