//! Helpers of tests/ops.rs: the Prometheus tools (required in CI), temporary directories,
//! child processes killed on drop, small HTTP servers (a webhook receiver, a fake
//! dcgm-exporter) and the Prometheus HTTP API.

use super::in_ci;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub mod compose;
pub mod stack;

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An installed program. Missing: a failure in CI (`CI` set), a skip with a note elsewhere.
pub fn tool(name: &str) -> Option<PathBuf> {
    tool_from(name, "prometheus prometheus-alertmanager")
}

/// An installed program, from the Debian `package` named in the note when it is missing.
pub fn tool_from(name: &str, package: &str) -> Option<PathBuf> {
    // The sbin directories too: Debian puts daemons (haproxy) there, off a user's PATH.
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!(
            "`{name}` is not installed; on Debian 12 `apt-get install {package}` provides it \
             (.ci/run does that)"
        );
        assert!(!in_ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// Runs a program to the end; its output, or a panic that shows it.
pub fn run(program: &Path, args: &[&str]) -> String {
    let (ok, text) = output(program, args);
    assert!(ok, "{} {args:?} failed:\n{text}", program.display());
    text
}

/// Runs a program to the end in the repository's root: whether it succeeded, and its output
/// (stdout, then stderr).
pub fn output(program: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("weir-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed when dropped; its output goes to a log file.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(program: &Path, args: &[String], log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc { child, log }
    }

    /// The end of its output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago, for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// GET `http://addr{path_and_query}`: status and body, `None` when it cannot connect.
pub async fn try_get(addr: SocketAddr, path_and_query: &str) -> Option<(StatusCode, String)> {
    let req = Request::get(format!("http://{addr}{path_and_query}"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let fut = async {
        let res = super::client().request(req).await.ok()?;
        let status = res.status();
        let body = res.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .ok()
        .flatten()
}

/// Polls `probe` every 200 ms until it yields a value, at most `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Percent-encodes a query parameter value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Result of an instant query against Prometheus's HTTP API (`data.result`).
pub async fn prom_query(prom: SocketAddr, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let path = format!("/api/v1/query?query={}", urlencode(expr));
    let (status, body) = try_get(prom, &path)
        .await
        .ok_or_else(|| "Prometheus did not answer".to_string())?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != StatusCode::OK || v["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Serves every request on `listener` with `answer(head, body)` until the runtime ends.
fn serve<F>(listener: TcpListener, answer: F)
where
    F: Fn(http::request::Parts, Bytes) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = answer.clone();
                async move {
                    let (head, body) = req.into_parts();
                    let body = match body.collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => Bytes::new(),
                    };
                    Ok::<_, Infallible>(answer(head, body))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
}

/// A webhook receiver: every POST's path and JSON body arrive on `rx`.
pub struct Webhook {
    pub addr: SocketAddr,
    pub rx: mpsc::UnboundedReceiver<(String, serde_json::Value)>,
}

pub async fn webhook() -> Webhook {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    serve(listener, move |head, body| {
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let _ = tx.send((head.uri.path().to_string(), json));
        Response::new(Full::new(Bytes::new()))
    });
    Webhook { addr, rx }
}

/// What NVIDIA's dcgm-exporter serves for one GPU (names, labels and units as it has them).
pub const DCGM_METRICS: &str = r#"# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-5fd4c4d4-0d1c-2a3b-9c55-6f0e0e2a1b11",pci_bus_id="00000000:00:1E.0",device="nvidia0",modelName="NVIDIA L4",Hostname="gpu-node-1",DCGM_FI_DRIVER_VERSION="550.127.05"} 87
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-5fd4c4d4-0d1c-2a3b-9c55-6f0e0e2a1b11",pci_bus_id="00000000:00:1E.0",device="nvidia0",modelName="NVIDIA L4",Hostname="gpu-node-1",DCGM_FI_DRIVER_VERSION="550.127.05"} 2210
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-5fd4c4d4-0d1c-2a3b-9c55-6f0e0e2a1b11",pci_bus_id="00000000:00:1E.0",device="nvidia0",modelName="NVIDIA L4",Hostname="gpu-node-1",DCGM_FI_DRIVER_VERSION="550.127.05"} 20274
"#;

/// A stand-in dcgm-exporter on 127.0.0.1:0 serving [`DCGM_METRICS`] at `/metrics`.
pub async fn fake_dcgm() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, |head, _| {
        if head.uri.path() == "/metrics" {
            Response::new(Full::new(Bytes::from_static(DCGM_METRICS.as_bytes())))
        } else {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    });
    addr
}

/// A backend that answers every request with what reached it: `{"target": the request
/// target, "host": its Host header, "data": [{"id": "tiny-llama"}]}` (the last so that model
/// discovery finds a model).
pub async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, |head, _| {
        let host = head.headers.get(http::header::HOST);
        let echo = serde_json::json!({
            "target": head.uri.to_string(),
            "host": host.and_then(|h| h.to_str().ok()),
            "object": "list",
            "data": [{"id": "tiny-llama", "object": "model"}],
        });
        let mut r = Response::new(Full::new(Bytes::from(echo.to_string())));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    });
    addr
}

/// A YAML file of the repository.
pub fn yaml(rel: &str) -> serde_norway::Value {
    let text = std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The alerting rules of a rules file: (alert name, rule).
pub fn alerts(rules: &serde_norway::Value) -> Vec<(String, serde_norway::Value)> {
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            if let Some(name) = rule["alert"].as_str() {
                out.push((name.to_string(), rule.clone()));
            }
        }
    }
    out
}

/// A Redis server of a test's own: a free port on 127.0.0.1, no persistence, its own
/// directory; killed when dropped. None (the test skips) when `redis-server` is not
/// installed outside CI.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer {
            child: None,
            port,
            dir: TempDir::new("redis"),
        };
        r.restart()?;
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again, on the same port) and waits until it answers PING.
    pub fn restart(&mut self) -> Option<()> {
        let server = tool_from("redis-server", "redis-server")?;
        let child = Command::new(server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.pings() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server never answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(())
    }

    fn pings(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills it (as a crash would: SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
