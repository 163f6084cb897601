//! Helpers shared by the integration tests: a simulator and a gateway on 127.0.0.1:0, an
//! HTTP/1.1 and an h2c client, and `/metrics` scraping.
#![allow(dead_code)]

pub mod hostile;
pub mod ops;
pub mod otlp;
pub mod prom;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use weir::config::{BackendConfig, Config, KeyConfig, Scheduler, TenantLimits};
use weir::gateway::{self, Gateway};
use weir_sim::{self as sim, SimConfig};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A simulator serving on 127.0.0.1:0 until the test's runtime ends.
pub async fn start_sim(config: SimConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sim::serve(listener, config, std::future::pending()));
    addr
}

/// A simulator that can be stopped (a backend that dies) and started again on its address.
pub struct StoppableSim {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl StoppableSim {
    pub async fn start(config: SimConfig, addr: SocketAddr) -> StoppableSim {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(sim::serve(listener, config, async move {
            let _ = rx.await;
        }));
        StoppableSim {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// On a free port of 127.0.0.1.
    pub async fn any_port(config: SimConfig) -> StoppableSim {
        StoppableSim::start(config, "127.0.0.1:0".parse().unwrap()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops serving: the port refuses connections once this returns, and serving ended
    /// without an error within 10 s.
    pub async fn kill(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let ended = tokio::time::timeout(Duration::from_secs(10), t).await;
            ended.expect("serve did not stop").unwrap().unwrap();
        }
    }

    /// [`kill`](Self::kill), for a simulator the test is done with.
    pub async fn shutdown(mut self) {
        self.kill().await;
    }
}

/// The gateway's config for the given backends, both listeners on 127.0.0.1:0.
pub fn gateway_config(backends: &[SocketAddr]) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        models: vec!["tiny-llama".into()],
        backends: backends
            .iter()
            .map(|a| BackendConfig::new(format!("http://{a}")))
            .collect(),
        shutdown_grace: Duration::from_secs(5),
        // Served on the test's own runtime, so that `AccessLog` catches the lines on the
        // test's thread; the per-core workers are tested in `workers.rs` and by every test of
        // the binary.
        scheduler: Scheduler::Shared,
        ..Config::default()
    };
    c.normalise();
    // Both listeners on port 0 compare equal; validate what else there is.
    c
}

pub async fn start_gateway(backends: &[SocketAddr]) -> Gateway {
    gateway::start(gateway_config(backends)).await.unwrap()
}

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A JSON POST request.
pub fn post(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A streamed chat request body.
pub fn chat(stream: bool, max_tokens: u32) -> serde_json::Value {
    serde_json::json!({
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "How high is the weir?"}],
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "stream": stream,
    })
}

/// Sends a request and reads the whole response.
pub async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let res = client
        .request(req)
        .await
        .expect("request reaches the gateway");
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .expect("body read to the end")
        .to_bytes();
    (parts.status, parts.headers, body)
}

/// Starts a request and returns the response with its body unread.
pub async fn open(client: &HttpClient, req: Request<Full<Bytes>>) -> Response<Incoming> {
    client
        .request(req)
        .await
        .expect("request reaches the gateway")
}

/// Reads data frames until `pred` holds for what has arrived so far.
pub async fn read_until(body: &mut Incoming, mut pred: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    let mut seen = Vec::new();
    while !pred(&seen) {
        let frame = body
            .frame()
            .await
            .expect("stream still open")
            .expect("frame");
        if let Ok(d) = frame.into_data() {
            seen.extend_from_slice(&d);
        }
    }
    seen
}

/// GET `http://addr{path}` as text.
pub async fn get_text(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Scrapes `/metrics`.
pub async fn scrape(addr: SocketAddr) -> String {
    let (status, text) = get_text(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    text
}

/// Scrapes `/metrics` until `cond` holds (an event the test waits for), at most 10 s.
pub async fn wait_for_metrics(
    addr: SocketAddr,
    what: &str,
    cond: impl FnMut(&str) -> bool,
) -> String {
    wait_for_metrics_within(addr, what, Duration::from_secs(10), cond).await
}

/// As [`wait_for_metrics`], for at most `limit` (for what waits on another program's start).
pub async fn wait_for_metrics_within(
    addr: SocketAddr,
    what: &str,
    limit: Duration,
    mut cond: impl FnMut(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let text = scrape(addr).await;
        if cond(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_string))
        .collect()
}

pub const CHAT: [(&str, &str); 2] = [
    ("gen_ai_request_model", "tiny-llama"),
    ("gen_ai_operation_name", "chat"),
];

/// A child process, killed when the test ends, however it ends.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `weir --config path` with `RUST_LOG=info` and `envs`: the process, the JSON lines it
/// writes, and its "weir is serving" line (its addresses, runtime and workers).
pub async fn weir_with_config(
    path: &std::path::Path,
    envs: &[(&str, &str)],
) -> (
    Child,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    serde_json::Value,
) {
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("--config")
            .arg(path)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("weir starts"),
    );
    let mut rx = json_lines(child.0.stdout.take().unwrap());
    let serving = line_where(&mut rx, "message", "weir is serving").await;
    (child, rx, serving)
}

/// The JSON lines a child process writes on stdout (the access log, weir's other logs), read
/// on a thread; every line must be JSON.
pub fn json_lines(
    stdout: std::process::ChildStdout,
) -> tokio::sync::mpsc::UnboundedReceiver<serde_json::Value> {
    use std::io::BufRead;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line whose `field` equals `value`, waiting at most 20 s.
pub async fn line_where(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    field: &str,
    value: &str,
) -> serde_json::Value {
    let wait = async {
        while let Some(v) = rx.recv().await {
            if v[field] == value {
                return v;
            }
        }
        panic!("the process ended before a line with {field} = {value}");
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no line with {field} = {value} within 20 s"))
}

/// The access-log lines written on this thread while the guard lives, as the `weir` binary
/// writes them (same format). With `#[tokio::test]`'s one-thread runtime, the gateway's tasks
/// run on the test's thread, so their lines are caught too.
///
/// One process-wide subscriber sends each line to the capture of the thread that wrote it:
/// tracing caches per call site whether it is wanted, and a subscriber set for one thread
/// only is not always asked when another thread recomputes that.
pub struct AccessLog {
    lines: Arc<Mutex<Vec<u8>>>,
}

type Captures = Mutex<HashMap<std::thread::ThreadId, Arc<Mutex<Vec<u8>>>>>;

fn captures() -> &'static Captures {
    static CAPTURES: OnceLock<Captures> = OnceLock::new();
    CAPTURES.get_or_init(|| {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .event_format(weir::telemetry::access::LogFormat::new())
            .with_writer(|| Sink)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(weir::telemetry::access::TARGET, tracing::Level::INFO),
            );
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        Mutex::new(HashMap::new())
    })
}

impl AccessLog {
    pub fn capture() -> AccessLog {
        let lines = Arc::new(Mutex::new(Vec::new()));
        captures()
            .lock()
            .unwrap()
            .insert(std::thread::current().id(), lines.clone());
        AccessLog { lines }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.lines.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The lines of the request with this `x-request-id`.
    pub fn of(&self, request_id: &str) -> Vec<serde_json::Value> {
        let mut lines = self.lines();
        lines.retain(|l| l["request_id"] == request_id);
        lines
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if let Ok(mut c) = captures().lock() {
            c.remove(&std::thread::current().id());
        }
    }
}

/// Writes to the capture of the current thread, if it has one.
struct Sink;

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let sink = captures()
            .lock()
            .unwrap()
            .get(&std::thread::current().id())
            .cloned();
        if let Some(sink) = sink {
            sink.lock().unwrap().extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether the tests run in CI (`CI` set, and not to `false` or `0`): there, a real program a
/// test needs and cannot find fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// An API key's SHA-256 as the config holds it (lower-case hex).
pub fn sha256(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// The gateway's config for `sim` with one API key, `key`, of the tenant `name`, held to
/// `limits`.
pub fn tenant_config(sim: SocketAddr, name: &str, key: &str, limits: TenantLimits) -> Config {
    let mut c = gateway_config(&[sim]);
    c.auth.keys = vec![KeyConfig {
        name: name.into(),
        sha256: sha256(key),
        limits,
    }];
    c
}
