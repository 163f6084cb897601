//! `scheduler = "per-core"`: the proxy listener served by worker threads, each with an event
//! loop and an accept loop of its own — a connection stays on the thread that accepted it,
//! the connection limit is one for all of them, every request is counted once, and their
//! log lines reach stdout whole.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::common::ops::TempDir;
use crate::common::prom::{sum, value};
use crate::common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use weir::config::{Config, Scheduler};
use weir::forward::ClientAddr;
use weir::gateway;
use weir::proxy::{Proxy, ResponseBody};
use weir_sim::SimConfig;

/// `n` per-core workers.
fn per_core(sim: std::net::SocketAddr, n: usize) -> Config {
    let mut c = gateway_config(&[sim]);
    c.scheduler = Scheduler::PerCore;
    c.workers = n;
    c
}

/// Which thread served each request, by the client's port.
type Seen = Arc<Mutex<Vec<(u16, String)>>>;

/// The proxy, noting the thread each request runs on.
#[derive(Clone)]
struct NoteThread(Proxy, Seen);

impl tower::Service<Request<Incoming>> for NoteThread {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let port = req
            .extensions()
            .get::<ClientAddr>()
            .map_or(0, |c| c.0.port());
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.1.lock().unwrap().push((port, thread));
        self.0.call(req)
    }
}

/// A gateway of `n` per-core workers in front of a simulator, noting each request's thread.
async fn noting_threads(n: usize) -> (gateway::Gateway, Seen) {
    let sim = start_sim(SimConfig::fast()).await;
    let seen = Seen::default();
    let noted = seen.clone();
    let gw = gateway::start_with(per_core(sim, n), move |state| {
        weir::app::service_with(state.clone(), NoteThread(Proxy::new(state), noted))
    })
    .await
    .unwrap();
    (gw, seen)
}

#[tokio::test]
async fn each_connection_is_served_whole_by_one_worker_thread() {
    let (gw, seen) = noting_threads(3).await;
    // 12 clients of kept-alive connections, 5 requests apiece, all at once.
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let addr = gw.addr;
        clients.spawn(async move {
            let c = client();
            for i in 0..5 {
                let (status, _, _) =
                    send(&c, post(addr, "/v1/chat/completions", &chat(i % 2 == 0, 3))).await;
                assert_eq!(status, StatusCode::OK);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 60);
    let mut by_connection: HashMap<u16, Vec<&str>> = HashMap::new();
    for (port, thread) in &seen {
        assert!(
            ["weir-worker-1", "weir-worker-2", "weir-worker-3"].contains(&thread.as_str()),
            "served on {thread:?}, not on a worker"
        );
        by_connection.entry(*port).or_default().push(thread);
    }
    // At least one connection per client (the client may open another while the last
    // response's connection is on its way back to its pool).
    assert!(by_connection.len() >= 12, "{by_connection:?}");
    for (port, threads) in &by_connection {
        assert!(
            threads.iter().all(|t| *t == threads[0]),
            "the connection from port {port} moved between workers: {threads:?}"
        );
    }
    let chat = [("gen_ai_operation_name", "chat"), ("outcome", "ok")];
    wait_for_metrics(gw.admin_addr, "60 requests counted", |m| {
        sum(m, "weir_requests_total", &chat) == Some(60.0)
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn the_connection_limit_is_one_for_all_workers() {
    let sim = start_sim(SimConfig {
        itl: Duration::from_millis(50),
        ..SimConfig::fast()
    })
    .await;
    let mut c = per_core(sim, 4);
    c.limits.max_connections = 2;
    let gw = gateway::start(c).await.unwrap();
    // Two long streams hold the two slots, whichever workers took them.
    let (a, b) = (client(), client());
    let s1 = open(&a, post(gw.addr, "/v1/chat/completions", &chat(true, 100))).await;
    let s2 = open(&b, post(gw.addr, "/v1/chat/completions", &chat(true, 100))).await;
    // Six more connections, each over the limit on any worker it lands on (a limit of two
    // per worker would let some through).
    for _ in 0..6 {
        let (status, headers, _) = send(
            &client(),
            post(gw.addr, "/v1/chat/completions", &chat(false, 2)),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["connection"], "close");
    }
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_rejected_total", &[("reason", "connections")]),
        6.0
    );
    drop((s1, s2));
}

#[tokio::test]
async fn the_binary_writes_every_workers_lines_whole() {
    let sim = start_sim(SimConfig::fast()).await;
    let dir = TempDir::new("workers");
    let path = dir.path("weir.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 4\n\
             [[backends]]\nurl = \"http://{sim}\"\n"
        ),
    )
    .unwrap();
    let (_child, mut rx, serving) = weir_with_config(&path, &[]).await;
    assert_eq!(serving["runtime"], "per_core", "{serving}");
    assert_eq!(serving["workers"], 4, "{serving}");
    let addr: std::net::SocketAddr = serving["addr"].as_str().unwrap().parse().unwrap();
    // 16 clients, 25 requests each, with ids to find their lines by.
    let mut clients = tokio::task::JoinSet::new();
    for k in 0..16 {
        clients.spawn(async move {
            let c = client();
            for i in 0..25 {
                let mut req = post(addr, "/v1/chat/completions", &chat(false, 2));
                req.headers_mut()
                    .insert("x-request-id", format!("w-{k}-{i}").parse().unwrap());
                let (status, _, _) = send(&c, req).await;
                assert_eq!(status, StatusCode::OK);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    // Every line is JSON (`json_lines` fails the test otherwise), and each request has one.
    let mut ids = std::collections::HashSet::new();
    let wait = async {
        while ids.len() < 400 {
            let line = rx.recv().await.expect("weir still writing");
            if line["target"] == "weir::access" {
                let id = line["request_id"].as_str().unwrap_or("").to_string();
                assert!(ids.insert(id.clone()), "two lines for {id}");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("400 access lines within 30 s");
    assert!((0..16).all(|k| (0..25).all(|i| ids.contains(&format!("w-{k}-{i}")))));
    // A second weir on the same port is refused, not let into the workers' SO_REUSEPORT
    // group to take a share of the connections.
    // (Under coreutils' `timeout`: one that joined would serve on, and exit 124.)
    let second = std::process::Command::new("timeout")
        .args(["20", env!("CARGO_BIN_EXE_weir")])
        .args([
            "--listen",
            &addr.to_string(),
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--backend", &format!("http://{sim}")])
        .env("TOKIO_WORKER_THREADS", "2")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on {addr} (listen): Address already in use"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_burst_of_new_connections_is_spread_over_the_workers() {
    let (gw, seen) = noting_threads(3).await;
    // 24 connections opened at once, before any request: they wait in the listener's
    // backlog for the workers to accept them.
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..24 {
        connects.spawn(tokio::net::TcpStream::connect(gw.addr));
    }
    let streams = connects.join_all().await;
    let mut requests = tokio::task::JoinSet::new();
    for stream in streams {
        let io = hyper_util::rt::TokioIo::new(stream.unwrap());
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = post(gw.addr, "/v1/chat/completions", &chat(false, 2));
        requests.spawn(async move { send.send_request(req).await.unwrap().status() });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for (_, thread) in seen.lock().unwrap().iter() {
        *per_worker.entry(thread.clone()).or_default() += 1;
    }
    // One worker accepting the whole backlog in one go would serve all 24.
    let most = per_worker.values().copied().max().unwrap_or(0);
    assert!(per_worker.len() >= 2 && most <= 16, "{per_worker:?}");
}
