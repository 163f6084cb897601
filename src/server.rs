//! The server: accepts connections on an already-bound listener and serves HTTP/1.1 and h2c
//! (hyper-util's auto builder), with graceful shutdown bounded by a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

use crate::forward::ClientAddr;

/// How a listener treats its clients.
#[derive(Clone, Default)]
pub struct Options {
    /// After shutdown is asked, open requests may run on this long.
    pub grace: Duration,
    /// A request head must arrive within this long (HTTP/1).
    pub header_read_timeout: Option<Duration>,
    /// Open connections at most; a connection over it gets a 503 and is closed.
    pub max_connections: Option<usize>,
    /// Counts connections refused by `max_connections`.
    pub rejected: Option<prometheus::IntCounter>,
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting and lets
/// open requests finish for at most `opts.grace`.
pub async fn run<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    opts: Options,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(t) = opts.header_read_timeout {
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(t);
    }
    let slots = opts.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let permit = match &slots {
            None => None,
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    if let Some(c) = &opts.rejected {
                        c.inc();
                    }
                    tokio::spawn(refuse(builder.clone(), stream));
                    continue;
                }
            },
        };
        let svc = service
            .clone()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req
            });
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(opts.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?opts.grace, "shutdown deadline passed with requests still open");
    }
    Ok(())
}

/// Answers every request on an over-limit connection with a 503, then closes it.
async fn refuse(builder: auto::Builder<TokioExecutor>, stream: tokio::net::TcpStream) {
    let svc = tower::service_fn(|_req: Request<Incoming>| async {
        let body = crate::error::openai_error_body(
            "too many connections to the gateway; retry shortly",
            "ServiceUnavailableError",
            http::StatusCode::SERVICE_UNAVAILABLE,
        );
        let mut res = Response::new(http_body_util::Full::new(body));
        *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        Ok::<_, Infallible>(res)
    });
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}
