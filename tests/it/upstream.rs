//! The backend connection pool, against the simulator and a backend that closes its idle
//! connections (as uvicorn does after its keep-alive timeout).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weir::forward::UpstreamBody;
use weir::upstream::Upstream;
use weir_sim::SimConfig;

use crate::common::start_sim;

fn pool(addr: SocketAddr, idle: Duration) -> Upstream {
    let authority = addr.to_string().parse().unwrap();
    Upstream::new(&authority, Duration::from_secs(2), idle)
}

fn get(addr: SocketAddr, path: &str) -> Request<UpstreamBody> {
    Request::get(format!("http://{addr}{path}"))
        .body(Either::Left(Full::new(Bytes::new())))
        .unwrap()
}

fn chat(addr: SocketAddr, max_tokens: u32) -> Request<UpstreamBody> {
    let body = serde_json::to_vec(&crate::common::chat(true, max_tokens)).unwrap();
    Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Either::Left(Full::new(Bytes::from(body))))
        .unwrap()
}

/// A simulator streaming a token every `itl_ms`, and a pool to it.
async fn streaming_sim(itl_ms: u64) -> (SocketAddr, Upstream) {
    let addr = start_sim(SimConfig {
        itl: Duration::from_millis(itl_ms),
        ..SimConfig::default()
    })
    .await;
    (addr, pool(addr, Duration::from_secs(30)))
}

/// Waits (bounded) until the pool holds `n` idle connections.
async fn idle_becomes(up: &Upstream, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while up.idle() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pool holds {} idle connections, expected {n}",
            up.idle()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_connection_serves_requests_in_turn_and_closes_when_idle() {
    let addr = start_sim(SimConfig::default()).await;
    let up = pool(addr, Duration::from_millis(300));
    for _ in 0..3 {
        let res = up.request(get(addr, "/v1/models")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"{"), "{body:?}");
        // A new connection per request would leave one more idle each time.
        assert_eq!(up.idle(), 1);
    }
    idle_becomes(&up, 0).await;
    // And a request after that opens a new one.
    let res = up.request(get(addr, "/v1/models")).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(up.idle(), 1);
}

#[tokio::test]
async fn concurrent_streams_each_get_a_connection_and_all_return_to_the_pool() {
    let (addr, up) = streaming_sim(2).await;
    let streams = (0..4).map(|_| {
        let up = up.clone();
        tokio::spawn(async move {
            let res = up.request(chat(addr, 8)).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            res.into_body().collect().await.unwrap().to_bytes()
        })
    });
    for s in streams.collect::<Vec<_>>() {
        let body = s.await.unwrap();
        let events = crate::common::sse_data(&body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        // The role, 8 tokens (the last with the finish reason) and [DONE].
        assert_eq!(events.len(), 10, "{events:?}");
    }
    assert_eq!(up.idle(), 4);
}

#[tokio::test]
async fn a_body_dropped_mid_stream_closes_its_connection() {
    let (addr, up) = streaming_sim(20).await;
    let res = up.request(chat(addr, 100)).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    // Half a response is still on that connection: it must not be handed out again.
    assert_eq!(up.idle(), 0);
    let res = up.request(chat(addr, 3)).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        crate::common::sse_data(&body).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(up.idle(), 1);
}

/// When a backend closes a kept-alive connection.
#[derive(Clone, Copy)]
enum Close {
    /// Right after its first response.
    AfterResponse,
    /// When the second request on it has come in, without answering it (the keep-alive
    /// timeout expired as the request arrived).
    OnSecondRequest,
}

/// A backend that answers one request per connection and then closes it without saying so
/// (no `Connection: close`); it reports each close.
async fn closing_backend(close: Close) -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            n += 1;
            read_head(&mut sock).await;
            let body = format!("{{\"connection\":{n}}}");
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            if let Close::OnSecondRequest = close {
                read_head(&mut sock).await;
            }
            let _ = sock.shutdown().await;
            drop(sock);
            let _ = closed.send(n);
        }
    });
    (addr, rx)
}

async fn read_head(sock: &mut tokio::net::TcpStream) {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_not_used() {
    let (addr, mut closed) = closing_backend(Close::AfterResponse).await;
    let up = pool(addr, Duration::from_secs(30));
    for n in 1..=3 {
        let res = up.request(get(addr, "/health")).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("{{\"connection\":{n}}}"));
        assert_eq!(closed.recv().await, Some(n));
    }
}

#[tokio::test]
async fn a_request_the_backend_closed_on_goes_again_on_a_new_connection() {
    let (addr, mut closed) = closing_backend(Close::OnSecondRequest).await;
    let up = pool(addr, Duration::from_secs(30));
    let res = up.request(get(addr, "/health")).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "{\"connection\":1}");
    assert_eq!(up.idle(), 1);
    // Sent on the pooled connection, which the backend closes unanswered: it is sent again.
    let res = up.request(get(addr, "/health")).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "{\"connection\":2}");
    assert_eq!(closed.recv().await, Some(1));
}

#[tokio::test]
async fn a_streamed_request_body_is_not_sent_twice() {
    let (addr, _closed) = closing_backend(Close::OnSecondRequest).await;
    let up = pool(addr, Duration::from_secs(30));
    let res = up.request(get(addr, "/health")).await.unwrap();
    res.into_body().collect().await.unwrap();
    // A body that cannot be replayed: the client's own, streamed through. Made by a
    // one-request server that hands its request body over.
    let body = incoming_body().await;
    let req = Request::post(format!("http://{addr}/v1/completions"))
        .body(Either::Right(body))
        .unwrap();
    let err = up.request(req).await.unwrap_err();
    assert!(!err.is_connect(), "{err:?}");
}

/// A request body as hyper's server hands it over (the type weir streams through).
async fn incoming_body() -> hyper::body::Incoming {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let _ = tx.send(req.into_body());
            async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
            }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(sock), svc)
            .await;
    });
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    // Kept open until the body has been read.
    tokio::spawn(async move {
        let mut buf = [0u8; 256];
        while matches!(client.read(&mut buf).await, Ok(k) if k > 0) {}
    });
    rx.recv().await.unwrap()
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let up = pool(addr, Duration::from_secs(30));
    let err = up.request(get(addr, "/health")).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");
}
