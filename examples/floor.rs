//! The floor of weir's HTTP stack: hyper's HTTP/1 server and client connections joined with
//! nothing between them — no routing, inspection, limits, measurement, spans or log line — laid
//! out as weir's per-core scheduler lays out its proxy (a single-threaded tokio runtime and a
//! `SO_REUSEPORT` listener per core, an idle list of backend connections per worker, the same
//! allocator). It is a benchmark baseline, not a product: measured beside weir and nginx in
//! the same rounds, it separates what a request costs weir's own work from what it costs the
//! HTTP stack weir is built on.
//!
//!     cargo build --release --example floor
//!     python3 bench/overhead.py --mode requests --no-build \
//!         --build weir=target/release/weir --build floor=target/release/examples/floor
//!
//! It takes the flags the benchmarks give weir: `--listen`, `--admin-listen` (answers 200 to
//! every request, for readiness), `--backend http://HOST:PORT` and `--model` (ignored).

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

#[cfg(all(feature = "jemalloc", unix, not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

thread_local! {
    /// This worker's idle backend connections.
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

type Reply = Response<Either<Pooled, Empty<Bytes>>>;

/// A backend response's body; its connection goes back to the worker's idle list once the
/// body has been read to its end.
struct Pooled {
    body: Incoming,
    send: Option<SendRequest<Incoming>>,
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            if let Some(send) = self.send.take() {
                IDLE.with(|idle| idle.borrow_mut().push(send));
            }
        }
    }
}

async fn backend_connection(backend: SocketAddr) -> Option<SendRequest<Incoming>> {
    while let Some(mut send) = IDLE.with(|idle| idle.borrow_mut().pop()) {
        if send.ready().await.is_ok() {
            return Some(send);
        }
    }
    let stream = TcpStream::connect(backend).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

async fn proxy(req: Request<Incoming>, backend: SocketAddr) -> Result<Reply, Infallible> {
    let failed = || {
        let mut r = Response::new(Either::Right(Empty::new()));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    };
    let Some(mut send) = backend_connection(backend).await else {
        return Ok(failed());
    };
    match send.send_request(req).await {
        Ok(resp) => Ok(resp.map(|body| {
            Either::Left(Pooled {
                body,
                send: Some(send),
            })
        })),
        Err(_) => Ok(failed()),
    }
}

fn worker(listen: SocketAddr, backend: SocketAddr) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let socket = match listen {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(8192)?;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |req| proxy(req, backend));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn admin(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let ok = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), ok)
                .await;
        });
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut listen, mut admin_listen, mut backend) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse::<SocketAddr>()?),
            "--admin-listen" => admin_listen = Some(value.parse::<SocketAddr>()?),
            "--backend" => {
                let addr = value.strip_prefix("http://").unwrap_or(&value);
                backend = Some(addr.trim_end_matches('/').parse::<SocketAddr>()?);
            }
            "--model" => {}
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    let listen = listen.ok_or("--listen is needed")?;
    let backend = backend.ok_or("--backend http://HOST:PORT is needed")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for i in 1..=cores {
        std::thread::Builder::new()
            .name(format!("floor-worker-{i}"))
            .spawn(move || {
                if let Err(e) = worker(listen, backend) {
                    eprintln!("floor: worker {i}: {e}");
                    std::process::exit(1);
                }
            })?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match admin_listen {
            Some(addr) => admin(TcpListener::bind(addr).await?).await,
            None => std::future::pending().await,
        }
        Ok(())
    })
}
