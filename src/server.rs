//! The server: accepts connections on an already-bound listener and serves HTTP/1.1 and h2c,
//! with graceful shutdown bounded by a deadline.
//!
//! Which of the two a connection speaks is told by looking at its first bytes without
//! reading them (`MSG_PEEK`). hyper-util's auto builder reads them instead and gives HTTP/1
//! the first 24 bytes apart from the rest, and hyper then doubles the connection's read
//! buffer to 16 KiB to read the rest of the head, for the life of the connection: 8 KiB of
//! resident memory per client connection. The auto builder still serves the rare client
//! whose first packet holds only part of the h2c preface.
//!
//! With TLS (`Options::tls`) the handshake comes first, bounded by the header read timeout,
//! and ALPN decides instead: `h2` is HTTP/2, anything else (or no ALPN) HTTP/1.1.

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::server::TlsStream;
use tower::{Service, ServiceExt};

use crate::forward::ClientAddr;
use crate::tls::{HandshakeError, ServerTls};

/// Marks a request that came on a connection over the connection limit.
#[derive(Debug, Clone, Copy)]
pub struct OverConnectionLimit;

/// How a listener treats its clients.
#[derive(Clone, Default)]
pub struct Options {
    /// After shutdown is asked, open requests may run on this long.
    pub grace: Duration,
    /// A new connection's first bytes, and each HTTP/1 request head, must arrive within this
    /// long.
    pub header_read_timeout: Option<Duration>,
    /// Open connections at most: a permit each, shared by every accept loop of the listener
    /// ([`Options::max_connections`]). The requests of a connection over it carry
    /// [`OverConnectionLimit`], for the service to refuse (the gateway answers 503), and the
    /// connection is closed after at most 5 s.
    pub connection_slots: Option<Arc<Semaphore>>,
    /// The request head size the service accepts: hyper's own buffers are made larger, so
    /// that a head up to twice this reaches the service and is refused (and recorded) there.
    pub max_head_bytes: Option<usize>,
    /// Counts connections refused by `max_connections`.
    pub rejected: Option<prometheus::IntCounter>,
    /// TLS on this listener (None: plain TCP).
    pub tls: Option<Arc<ServerTls>>,
}

impl Options {
    /// At most `n` open connections (None: no limit).
    pub fn max_connections(self, n: Option<usize>) -> Options {
        Options {
            connection_slots: n.map(|n| Arc::new(Semaphore::new(n))),
            ..self
        }
    }
}

/// What a listener serves: a service of the requests hyper parses that never fails (errors
/// are answers), cloned into each connection's task.
pub trait Served<B>:
    Service<Request<Incoming>, Response = Response<B>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> Served<B> for S
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
}

/// A response body hyper writes from a connection's task.
pub trait ServedBody:
    http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> ServedBody for B
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
    S: Served<B>,
    B: ServedBody,
{
    let builders = Arc::new(Builders::new(&opts));
    let header_read_timeout = opts.header_read_timeout;
    let slots = opts.connection_slots.clone();
    let graceful = GracefulShutdown::new();
    // Connections not yet handed to hyper (their first bytes not seen) end on shutdown.
    let (stopping, stop) = watch::channel(false);
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
                    tokio::spawn(refuse(
                        builders.clone(),
                        opts.tls.clone(),
                        stream,
                        service.clone(),
                        peer,
                    ));
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
        let conn = Conn {
            builders: builders.clone(),
            header_read_timeout,
            stop: stop.clone(),
            watcher: graceful.watcher(),
        };
        match &opts.tls {
            None => tokio::spawn(conn.serve(stream, peer, svc, permit)),
            Some(tls) => tokio::spawn(conn.serve_tls(tls.clone(), stream, peer, svc, permit)),
        };
    }
    drop(listener);
    let _ = stopping.send(true);
    if tokio::time::timeout(opts.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?opts.grace, "shutdown deadline passed with requests still open");
    }
    Ok(())
}

/// One builder per way a connection can start.
struct Builders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(opts: &Options) -> Builders {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        if let Some(t) = opts.header_read_timeout {
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(t);
        }
        if let Some(n) = opts.max_head_bytes {
            builder.http1().max_buf_size((2 * n).max(16 * 1024));
            builder
                .http2()
                .max_header_list_size(u32::try_from(2 * n).unwrap_or(u32::MAX));
        }
        Builders {
            h1: builder.clone().http1_only(),
            h2: builder.clone().http2_only(),
            auto: builder,
        }
    }
}

/// What serving one accepted connection needs.
struct Conn {
    builders: Arc<Builders>,
    header_read_timeout: Option<Duration>,
    /// Turns true on shutdown: a connection not yet handed to hyper ends.
    stop: watch::Receiver<bool>,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Conn {
    /// Tells HTTP/1 from h2c by the first bytes, then serves the connection to its end.
    async fn serve<S, B>(
        mut self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        svc: S,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) where
        S: Served<B>,
        B: ServedBody,
    {
        let sniffed = async {
            match self.header_read_timeout {
                Some(t) => tokio::time::timeout(t, sniff(&stream)).await.ok(),
                None => Some(sniff(&stream).await),
            }
        };
        let proto = tokio::select! {
            p = sniffed => p,
            _ = self.stop.wait_for(|&s| s) => None,
        };
        // Nothing sent in time, or shutting down: close.
        let Some(proto) = proto else { return };
        let builder = match proto {
            Proto::Http1 => &self.builders.h1,
            Proto::H2c => &self.builders.h2,
            Proto::Unsure => &self.builders.auto,
        };
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        if let Err(e) = self.watcher.watch(conn.into_owned()).await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
        drop(permit);
    }

    /// Completes the TLS handshake, takes HTTP/2 or HTTP/1.1 as ALPN says, and serves the
    /// connection to its end. A future of its own: the plaintext connection's task is not
    /// made the size of the TLS state.
    async fn serve_tls<S, B>(
        mut self,
        tls: Arc<ServerTls>,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        svc: S,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) where
        S: Served<B>,
        B: ServedBody,
    {
        let accepted = tokio::select! {
            s = handshake(&tls, stream, peer, self.header_read_timeout) => s,
            _ = self.stop.wait_for(|&s| s) => None,
        };
        let Some(stream) = accepted else { return };
        let builder = self.builders.for_alpn(&stream);
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        if let Err(e) = self.watcher.watch(conn.into_owned()).await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
        drop(permit);
    }
}

impl Builders {
    /// HTTP/2 when the client and the server agreed on `h2`, else HTTP/1.1.
    fn for_alpn(&self, stream: &TlsStream<TcpStream>) -> &auto::Builder<TokioExecutor> {
        match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => &self.h2,
            _ => &self.h1,
        }
    }
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What a plaintext HTTP request to a TLS port is answered, before the connection closes.
const NOT_TLS_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 120\r\n\r\n\
{\"error\":{\"message\":\"this port speaks HTTPS: plain HTTP was sent\",\
\"type\":\"invalid_request_error\",\"code\":\"tls_required\"}}";

/// The server side of a TLS handshake, within `timeout`: the stream, or None after the
/// failure was counted by its reason.
async fn handshake(
    tls: &ServerTls,
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    timeout: Option<Duration>,
) -> Option<TlsStream<TcpStream>> {
    let attempt = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) => {
                let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                return Err((HandshakeError::Eof, e));
            }
            Ok(_) if first[0] != TLS_HANDSHAKE => {
                // An HTTP client that meant https: it gets an answer it can show. What it
                // sent is read first (one read, what has arrived), so that closing does not
                // reset the connection before the answer is read.
                if first[0].is_ascii_uppercase() {
                    let mut head = vec![0u8; 4096];
                    let _ = stream.read(&mut head).await;
                    let _ = stream.write_all(NOT_TLS_ANSWER).await;
                    let _ = stream.shutdown().await;
                }
                let e = std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the first bytes are not a TLS handshake",
                );
                return Err((HandshakeError::NotTls, e));
            }
            Ok(_) => {}
            Err(e) => return Err((HandshakeError::of(&e), e)),
        }
        tls.acceptor()
            .accept(stream)
            .await
            .map_err(|e| (HandshakeError::of(&e), e))
    };
    let done = match timeout {
        Some(t) => tokio::time::timeout(t, attempt).await.unwrap_or_else(|_| {
            let e = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no complete handshake within limits.header_read_timeout",
            );
            Err((HandshakeError::Timeout, e))
        }),
        None => attempt.await,
    };
    match done {
        Ok(s) => Some(s),
        Err((reason, e)) => {
            tls.failed(reason, peer, &e);
            None
        }
    }
}

#[derive(Debug, PartialEq)]
enum Proto {
    Http1,
    H2c,
    /// End of stream, an error, or the start of the h2c preface only: the auto builder reads
    /// the connection's first bytes and decides.
    Unsure,
}

const H2C_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells HTTP/1 from h2c by the first bytes the client sent, leaving them in the socket.
async fn sniff(stream: &TcpStream) -> Proto {
    let mut buf = [0u8; H2C_PREFACE.len()];
    match stream.peek(&mut buf).await {
        Ok(n) if n == buf.len() && buf == *H2C_PREFACE => Proto::H2c,
        Ok(n) if n > 0 && buf[..n] != H2C_PREFACE[..n] => Proto::Http1,
        _ => Proto::Unsure,
    }
}

/// Serves an over-limit connection for at most 5 s (its TLS handshake included), its
/// requests marked for the service to refuse.
async fn refuse<S, B>(
    builders: Arc<Builders>,
    tls: Option<Arc<ServerTls>>,
    stream: TcpStream,
    service: S,
    peer: std::net::SocketAddr,
) where
    S: Served<B>,
    B: ServedBody,
{
    let svc = service.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ClientAddr(peer));
        req.extensions_mut().insert(OverConnectionLimit);
        req
    });
    let svc = TowerToHyperService::new(svc);
    let serving = async {
        match tls {
            None => {
                let conn = builders.auto.serve_connection(TokioIo::new(stream), svc);
                let _ = conn.await;
            }
            Some(tls) => {
                if let Some(stream) = handshake(&tls, stream, peer, None).await {
                    let builder = builders.for_alpn(&stream);
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's view of a connection after the client wrote `first` (and closed, if asked).
    async fn sniffed(first: &[u8], close: bool) -> Proto {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(first).await.unwrap();
        if close {
            client.shutdown().await.unwrap();
        }
        let proto = sniff(&server).await;
        // Nothing was read: the bytes are all still there for hyper.
        let mut buf = vec![0u8; first.len() + 1];
        let n = server.peek(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], first);
        proto
    }

    #[tokio::test]
    async fn tells_http1_from_h2c_without_reading() {
        let get = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(sniffed(get, false).await, Proto::Http1);
        // Shorter than the preface, and differs from it.
        assert_eq!(
            sniffed(b"GET / HTTP/1.1\r\n\r\n", false).await,
            Proto::Http1
        );
        let mut h2 = H2C_PREFACE.to_vec();
        h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(sniffed(&h2, false).await, Proto::H2c);
        // Part of the preface only, or nothing at all: hyper-util's auto builder decides.
        assert_eq!(sniffed(&H2C_PREFACE[..10], false).await, Proto::Unsure);
        assert_eq!(sniffed(b"", true).await, Proto::Unsure);
    }
}
