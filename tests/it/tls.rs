//! TLS on the listeners and to the backends, against certificates made here with `rcgen`:
//! curl (HTTP/1.1 and HTTP/2 by ALPN), Python's `ssl`, OpenAI's Python SDK, handshakes that
//! fail counted by reason, a certificate swapped by SIGHUP while a connection made before
//! goes on, the admin listener over TLS, and `https://` backends (a CA file, a name to
//! verify, a client certificate) behind a TLS front that this file puts before the simulator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weir::config::{BackendTls, Config, ListenerTls};
use weir::gateway::{self, Gateway};
use weir_sim::SimConfig;

use crate::common::ops::tool_from;
use crate::common::prom::{sum, value};
use crate::common::*;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A folder of certificates for one test, removed when it ends.
struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    /// The CA's certificate, PEM.
    ca_pem: String,
}

/// A certificate and its key, written as PEM files.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("weir-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, ca_pem) = Pki::authority(&format!("weir test CA {name}"));
        let pki = Pki { dir, ca, ca_pem };
        std::fs::write(pki.path("ca.pem"), &pki.ca_pem).unwrap();
        pki
    }

    fn authority(cn: &str) -> (Issuer<'static, KeyPair>, String) {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (Issuer::new(params, key), cert.pem())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A certificate signed by this CA for `names` (DNS names or IP addresses), with the
    /// given serial and common name, written to `{file}.pem` and `{file}-key.pem`.
    fn issue(&self, file: &str, names: &[&str], serial: u64, cn: &str) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let issued = Issued {
            cert: self.path(&format!("{file}.pem")),
            key: self.path(&format!("{file}-key.pem")),
            der: cert.der().clone(),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    /// A server certificate for 127.0.0.1 and localhost.
    fn server(&self, file: &str, serial: u64) -> Issued {
        self.issue(
            file,
            &["localhost", "127.0.0.1"],
            serial,
            &format!("weir {serial}"),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn listener_tls(issued: &Issued) -> ListenerTls {
    ListenerTls {
        cert: issued.cert.clone(),
        key: issued.key.clone(),
    }
}

/// A gateway in front of `sim` whose proxy listener speaks TLS with `issued`.
async fn tls_gateway(sim: SocketAddr, issued: &Issued) -> Gateway {
    let mut c = gateway_config(&[sim]);
    c.tls = Some(listener_tls(issued));
    c.validate().unwrap();
    gateway::start(c).await.unwrap()
}

/// Waits until `n` chat requests to `sim` have been recorded as served, each with its TTFT;
/// the metrics then.
async fn measured(gw: &Gateway, sim: SocketAddr, n: f64) -> String {
    let ok = [
        CHAT[0],
        CHAT[1],
        ("backend", &*sim.to_string()),
        ("outcome", "ok"),
    ];
    let ttft = "gen_ai_server_time_to_first_token_seconds_count";
    let m = wait_for_metrics(gw.admin_addr, "the requests recorded", |m| {
        sum(m, "weir_requests_total", &ok) == Some(n) && sum(m, ttft, &CHAT) == Some(n)
    })
    .await;
    assert_eq!(value(&m, ttft, &CHAT), n, "{m}");
    m
}

/// The certificates of a PEM file.
fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

/// A rustls client that trusts `ca` (PEM file) and offers `alpn`.
fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(weir::config::tls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed one shows the certificate of the session
    // it resumes.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A TLS connection to `addr` as `localhost`.
async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// An HTTP/1.1 connection over TLS: requests go on it one after another.
async fn h1_over_tls(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn get_models(send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>) -> StatusCode {
    let req = Request::get("/v1/models")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = send.send_request(req).await.expect("the connection serves");
    let status = res.status();
    res.into_body().collect().await.unwrap();
    status
}

fn curl() -> Option<PathBuf> {
    tool_from("curl", "curl")
}

/// curl's output and `-w` line, after checking that it succeeded.
fn run_curl(curl: &Path, args: &[&str]) -> String {
    let out = Command::new(curl)
        .args(["--silent", "--show-error", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

const STREAM_BODY: &str = r#"{"model":"tiny-llama","stream":true,"max_tokens":5,"ignore_eos":true,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn curl_speaks_http1_and_http2_over_tls_and_the_requests_are_measured() {
    let Some(curl) = curl() else { return };
    let pki = Pki::new("curl");
    let sim = start_sim(SimConfig::fast()).await;
    let gw = tls_gateway(sim, &pki.server("server", 1)).await;
    let port = gw.addr.port();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/v1/chat/completions");
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let curl = curl.clone();
        let args: Vec<String> = [
            flag,
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "-H",
            "content-type: application/json",
            "-d",
            STREAM_BODY,
            "-w",
            "\nversion=%{http_version}",
            &url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = tokio::task::spawn_blocking(move || {
            run_curl(&curl, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        assert!(out.ends_with(&format!("version={version}")), "{out}");
        assert!(out.contains("data: [DONE]"), "{out}");
    }
    // Recorded once each body has ended, which may be just after curl has it all.
    let m = measured(&gw, sim, 2.0).await;
    for reason in [
        "not_tls",
        "timeout",
        "eof",
        "protocol",
        "certificate",
        "other",
    ] {
        let l = [("listener", "proxy"), ("reason", reason)];
        assert_eq!(value(&m, "weir_tls_handshake_errors_total", &l), 0.0, "{m}");
    }
    // The admin listener has no TLS: no series of its own.
    assert!(!m.contains("listener=\"admin\""), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn pythons_ssl_negotiates_h2_or_http1_and_sees_the_certificate() {
    let Some(python) = tool_from("python3", "python3") else {
        return;
    };
    let pki = Pki::new("python");
    let sim = start_sim(SimConfig::fast()).await;
    let gw = tls_gateway(sim, &pki.server("server", 4242)).await;
    const SCRIPT: &str = r#"
import json, socket, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
out = {}
for alpn in (["h2", "http/1.1"], ["http/1.1"]):
    ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            out[alpn[0]] = {"alpn": s.selected_alpn_protocol(), "version": s.version(),
                            "serial": s.getpeercert()["serialNumber"]}
            if s.selected_alpn_protocol() == "http/1.1":
                s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                out["status_line"] = data.split(b"\r\n")[0].decode()
                out["has_model"] = b"tiny-llama" in data
print(json.dumps(out))
"#;
    let port = gw.addr.port().to_string();
    let ca = pki.ca();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", SCRIPT, &port])
            .arg(ca)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["h2"]["alpn"], "h2", "{v}");
    assert_eq!(v["http/1.1"]["alpn"], "http/1.1", "{v}");
    assert_eq!(v["h2"]["version"], "TLSv1.3", "{v}");
    // 4242 = 0x1092; Python prints the serial in hex.
    assert_eq!(v["h2"]["serial"], "1092", "{v}");
    assert_eq!(v["status_line"], "HTTP/1.1 200 OK", "{v}");
    assert_eq!(v["has_model"], true, "{v}");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_openai_sdk_streams_a_chat_over_tls() {
    if !crate::openai_sdk::sdk_installed() {
        return;
    }
    let pki = Pki::new("sdk");
    let sim = start_sim(SimConfig::fast()).await;
    let gw = tls_gateway(sim, &pki.server("server", 7)).await;
    const SCRIPT: &str = r#"
import json, sys
import openai
base_url, cafile = sys.argv[1], sys.argv[2]
# The SDK's own HTTP client class (httpx, or httpx2 in later versions), trusting the test CA.
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=20.0,
                       http_client=openai.DefaultHttpxClient(verify=cafile))
chunks, text, usage = 0, "", None
stream = client.chat.completions.create(model="tiny-llama", stream=True, max_tokens=6,
    stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    messages=[{"role": "user", "content": "How high is the weir?"}])
for c in stream:
    chunks += 1
    if c.choices and c.choices[0].delta.content:
        text += c.choices[0].delta.content
    if c.usage:
        usage = c.usage.completion_tokens
print(json.dumps({"chunks": chunks, "text": text, "completion_tokens": usage}))
"#;
    let base = format!("https://localhost:{}/v1", gw.addr.port());
    let ca = pki.ca();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", SCRIPT, &base])
            .arg(ca)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["completion_tokens"], 6, "{v}");
    assert!(!v["text"].as_str().unwrap().is_empty(), "{v}");
    measured(&gw, sim, 1.0).await;
    gw.shutdown().await;
}

/// The count of one reason on the proxy listener.
fn handshake_errors(m: &str, reason: &str) -> f64 {
    value(
        m,
        "weir_tls_handshake_errors_total",
        &[("listener", "proxy"), ("reason", reason)],
    )
}

#[tokio::test]
async fn failed_handshakes_are_counted_by_reason() {
    let pki = Pki::new("failures");
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.tls = Some(listener_tls(&pki.server("server", 1)));
    c.limits.header_read_timeout = Duration::from_millis(300);
    let gw = gateway::start(c).await.unwrap();

    // Plain HTTP to the TLS port: an answer that says so, and `not_tls`.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"]["code"], "tls_required", "{answer}");
    wait_for_metrics(gw.admin_addr, "not_tls", |m| {
        handshake_errors(m, "not_tls") == 1.0
    })
    .await;

    // A client that does not trust the certificate says so with an alert: `certificate`.
    let other = Pki::new("failures-other");
    let refused = connect(gw.addr, client_config(&other.ca(), &[])).await;
    assert!(refused.is_err());
    wait_for_metrics(gw.admin_addr, "certificate", |m| {
        handshake_errors(m, "certificate") == 1.0
    })
    .await;

    // No ALPN protocol in common: `protocol`.
    let refused = connect(gw.addr, client_config(&pki.ca(), &[b"spdy/3"])).await;
    assert!(refused.is_err());
    wait_for_metrics(gw.admin_addr, "protocol", |m| {
        handshake_errors(m, "protocol") == 1.0
    })
    .await;

    // Connected, then closed without a word: `eof`.
    drop(TcpStream::connect(gw.addr).await.unwrap());
    wait_for_metrics(gw.admin_addr, "eof", |m| handshake_errors(m, "eof") == 1.0).await;

    // Half a ClientHello and then silence: `timeout` (the header read timeout bounds the
    // handshake), and the server closes the connection.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let m = wait_for_metrics(gw.admin_addr, "timeout", |m| {
        handshake_errors(m, "timeout") == 1.0
    })
    .await;

    // Each failure counted once, under its own reason; a good client still gets through.
    for (reason, n) in [
        ("not_tls", 1.0),
        ("certificate", 1.0),
        ("protocol", 1.0),
        ("eof", 1.0),
        ("timeout", 1.0),
        ("other", 0.0),
    ] {
        assert_eq!(handshake_errors(&m, reason), n, "{reason}: {m}");
    }
    let good = connect(gw.addr, client_config(&pki.ca(), &[b"http/1.1"]))
        .await
        .unwrap();
    let mut send = h1_over_tls(good).await;
    assert_eq!(get_models(&mut send).await, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_admin_listener_speaks_tls_too() {
    let Some(curl) = curl() else { return };
    let pki = Pki::new("admin");
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.admin.tls = Some(listener_tls(&pki.server("admin", 9)));
    let gw = gateway::start(c).await.unwrap();
    let url = format!("https://127.0.0.1:{}/metrics", gw.admin_addr.port());
    let ca = pki.ca();
    let m = tokio::task::spawn_blocking(move || {
        run_curl(&curl, &["--cacert", ca.to_str().unwrap(), &url])
    })
    .await
    .unwrap();
    let l = [("listener", "admin"), ("reason", "not_tls")];
    assert_eq!(value(&m, "weir_tls_handshake_errors_total", &l), 0.0, "{m}");
    // Plain HTTP to it fails, and is counted.
    let plain = client()
        .request(
            Request::get(format!("http://{}/metrics", gw.admin_addr))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(plain.is_err() || plain.unwrap().status() == StatusCode::BAD_REQUEST);
    let url = format!("https://127.0.0.1:{}/metrics", gw.admin_addr.port());
    let ca = pki.ca();
    let curl = tool_from("curl", "curl").unwrap();
    let m = tokio::task::spawn_blocking(move || {
        run_curl(&curl, &["--cacert", ca.to_str().unwrap(), &url])
    })
    .await
    .unwrap();
    assert_eq!(value(&m, "weir_tls_handshake_errors_total", &l), 1.0, "{m}");
    assert!(!m.contains("listener=\"proxy\""), "{m}");
    // The proxy listener is plain: plain HTTP serves there.
    let (status, _) = get_text(gw.addr, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_or_missing_file_is_a_config_error_naming_the_field_and_the_file() {
    let pki = Pki::new("config");
    let good = pki.server("server", 1);
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = pki.path("missing.pem");
    let mut c = gateway_config(&["127.0.0.1:1".parse().unwrap()]);
    let check = |c: &Config| c.validate().unwrap_err().to_string();

    c.tls = Some(ListenerTls {
        cert: missing.clone(),
        key: good.key.clone(),
    });
    let e = check(&c);
    assert!(e.contains("tls.cert") && e.contains("missing.pem"), "{e}");
    c.tls = Some(ListenerTls {
        cert: garbage.clone(),
        key: good.key.clone(),
    });
    let e = check(&c);
    assert!(e.contains("tls.cert") && e.contains("garbage.pem"), "{e}");
    c.tls = None;
    c.admin.tls = Some(ListenerTls {
        cert: good.cert.clone(),
        key: garbage.clone(),
    });
    let e = check(&c);
    assert!(
        e.contains("admin.tls.key") && e.contains("garbage.pem"),
        "{e}"
    );
    // A key that is not the certificate's.
    let other = pki.server("other", 2);
    c.admin.tls = Some(ListenerTls {
        cert: good.cert.clone(),
        key: other.key.clone(),
    });
    let e = check(&c);
    assert!(
        e.contains("admin.tls.key") && e.contains("not the private key"),
        "{e}"
    );
    // The key's contents never appear in an error.
    let key_text = std::fs::read_to_string(&other.key).unwrap();
    let body = key_text.lines().nth(1).unwrap();
    assert!(!e.contains(body), "{e}");
    c.admin.tls = None;
    c.validate().unwrap();

    // Backends: TLS settings on http://, a client certificate without its key.
    c.backends[0].tls = Some(BackendTls::default());
    let e = check(&c);
    assert!(
        e.contains("backends[0].tls") && e.contains("https://"),
        "{e}"
    );
    c.backends[0].url = "https://127.0.0.1:1".into();
    c.backends[0].tls = Some(BackendTls {
        ca: Some(pki.ca()),
        cert: Some(good.cert.clone()),
        ..BackendTls::default()
    });
    let e = check(&c);
    assert!(e.contains("backends[0].tls.key"), "{e}");
    c.backends[0].tls = Some(BackendTls {
        ca: Some(garbage),
        ..BackendTls::default()
    });
    let e = check(&c);
    assert!(e.contains("backends[0].tls.ca"), "{e}");
    c.backends[0].tls = Some(BackendTls {
        ca: Some(pki.ca()),
        ..BackendTls::default()
    });
    c.validate().unwrap();

    // The same from the file, through `weir check`.
    let file = pki.path("weir.toml");
    std::fs::write(
        &file,
        format!(
            "[[backends]]\nurl = \"http://127.0.0.1:8000\"\n[tls]\ncert = {:?}\nkey = {:?}\n",
            missing.display().to_string(),
            good.key.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(WEIR)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("invalid tls.cert") && e.contains("missing.pem"),
        "{e}"
    );
}

fn hup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_swaps_the_certificate_for_new_connections_and_keeps_open_ones() {
    let pki = Pki::new("hup");
    let sim = start_sim(SimConfig::fast()).await;
    let first = pki.server("first", 1);
    let config = pki.path("weir.toml");
    let cert = pki.path("live.pem");
    let key = pki.path("live-key.pem");
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmodels = [\"tiny-llama\"]\n\
             [[backends]]\nurl = \"http://{sim}\"\n[tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Child(
        Command::new(WEIR)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("TOKIO_WORKER_THREADS", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("weir starts"),
    );
    let mut rx = json_lines(child.0.stdout.take().unwrap());
    let serving = line_where(&mut rx, "message", "weir is serving").await;
    assert_eq!(serving["tls"], true, "{serving}");
    let addr: SocketAddr = serving["addr"].as_str().unwrap().parse().unwrap();
    let admin: SocketAddr = serving["admin_addr"].as_str().unwrap().parse().unwrap();
    let trust = client_config(&pki.ca(), &[b"http/1.1"]);
    let peer = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0].clone()
    };

    let before = connect(addr, trust.clone()).await.unwrap();
    assert_eq!(peer(&before), first.der);
    let mut open = h1_over_tls(before).await;
    assert_eq!(get_models(&mut open).await, StatusCode::OK);

    // A new certificate in the same files, then SIGHUP.
    let second = pki.server("second", 2);
    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    hup(&child);
    line_where(&mut rx, "message", "config reloaded").await;
    let after = connect(addr, trust.clone()).await.unwrap();
    assert_eq!(peer(&after), second.der);
    // The connection opened before goes on, with the certificate it started with.
    assert_eq!(get_models(&mut open).await, StatusCode::OK);

    // A bad file: the reload is refused and the certificate in force stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnonsense\n").unwrap();
    hup(&child);
    let refused = line_where(
        &mut rx,
        "message",
        "reload refused: keeping the running config",
    )
    .await;
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("tls.cert") && error.contains("live.pem"),
        "{refused}"
    );
    let again = connect(addr, trust).await.unwrap();
    assert_eq!(peer(&again), second.der);
    let mut send = h1_over_tls(again).await;
    assert_eq!(get_models(&mut send).await, StatusCode::OK);
    assert_eq!(get_models(&mut open).await, StatusCode::OK);
    let m = scrape(admin).await;
    assert_eq!(handshake_errors(&m, "certificate"), 0.0, "{m}");
}

/// A TLS front for the simulator, as a TLS-terminating proxy in front of vLLM would be: its
/// certificate `issued`; with `client_ca`, it asks for a client certificate signed by it and
/// refuses a connection without one. Counts the handshakes it refused.
struct Front {
    addr: SocketAddr,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

async fn tls_front(sim: SocketAddr, issued: &Issued, client_ca: Option<&Path>) -> Front {
    let provider = weir::config::tls_provider();
    let chain = certs(&issued.cert);
    let key = PrivateKeyDer::from_pem_file(&issued.key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca) {
                roots.add(c).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(_) => {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                };
                let Ok(mut backend) = TcpStream::connect(sim).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
            });
        }
    });
    Front { addr, refused }
}

/// A gateway whose one backend is `url` with `tls`.
async fn https_gateway(url: String, tls: Option<BackendTls>) -> Gateway {
    let mut c = gateway_config(&[]);
    let mut b = weir::config::BackendConfig::new(url);
    b.tls = tls;
    c.backends = vec![b];
    c.normalise();
    c.validate().unwrap();
    gateway::start(c).await.unwrap()
}

async fn chat_status(gw: &Gateway) -> (StatusCode, Bytes) {
    let (status, _, body) = send(
        &client(),
        post(gw.addr, "/v1/chat/completions", &chat(true, 4)),
    )
    .await;
    (status, body)
}

#[tokio::test]
async fn https_backends_are_verified_with_a_ca_file_or_a_server_name() {
    let pki = Pki::new("backend");
    let sim = start_sim(SimConfig::fast()).await;
    let by_ip = tls_front(sim, &pki.issue("ip", &["127.0.0.1"], 1, "vllm ip"), None).await;
    let by_name = tls_front(
        sim,
        &pki.issue("name", &["vllm.internal"], 2, "vllm name"),
        None,
    )
    .await;
    let ca = |server_name: Option<&str>| BackendTls {
        ca: Some(pki.ca()),
        server_name: server_name.map(str::to_owned),
        ..BackendTls::default()
    };

    // The URL's IP address, checked in the certificate. The health checks reach it over TLS
    // too: its models are found from its /v1/models.
    let gw = https_gateway(format!("https://{}", by_ip.addr), Some(ca(None))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = get_text(gw.admin_addr, "/backends").await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["backends"][0]["models"] == serde_json::json!(["tiny-llama"]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "models never found: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(sse_data(&body).iter().any(|d| d == "[DONE]"));
    gw.shutdown().await;

    // A certificate for another name: refused unless `server_name` says which.
    let url = format!("https://{}", by_name.addr);
    let gw = https_gateway(url.clone(), Some(ca(None))).await;
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    gw.shutdown().await;
    let gw = https_gateway(url, Some(ca(Some("vllm.internal")))).await;
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    gw.shutdown().await;

    // Without the CA file the system's roots do not know the test CA.
    let gw = https_gateway(format!("https://{}", by_ip.addr), None).await;
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_requires_a_client_certificate_gets_one() {
    let pki = Pki::new("mtls");
    let sim = start_sim(SimConfig::fast()).await;
    let front = tls_front(
        sim,
        &pki.issue("backend", &["127.0.0.1"], 1, "vllm"),
        Some(&pki.ca()),
    )
    .await;
    let url = format!("https://{}", front.addr);
    let without = BackendTls {
        ca: Some(pki.ca()),
        ..BackendTls::default()
    };
    let gw = https_gateway(url.clone(), Some(without.clone())).await;
    let refused_before = front.refused.load(std::sync::atomic::Ordering::SeqCst);
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert!(front.refused.load(std::sync::atomic::Ordering::SeqCst) > refused_before);
    gw.shutdown().await;

    let client = pki.issue("client", &["weir.client"], 3, "weir");
    let with = BackendTls {
        cert: Some(client.cert.clone()),
        key: Some(client.key.clone()),
        ..without
    };
    let gw = https_gateway(url, Some(with)).await;
    let refused_before = front.refused.load(std::sync::atomic::Ordering::SeqCst);
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(sse_data(&body).iter().any(|d| d == "[DONE]"));
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(
        front.refused.load(std::sync::atomic::Ordering::SeqCst),
        refused_before
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn tls_connections_count_against_the_limit_and_end_with_the_shutdown() {
    let pki = Pki::new("limits");
    let sim = start_sim(SimConfig {
        itl: Duration::from_millis(20),
        ..SimConfig::fast()
    })
    .await;
    let mut c = gateway_config(&[sim]);
    c.tls = Some(listener_tls(&pki.server("server", 1)));
    c.limits.max_connections = 1;
    let gw = gateway::start(c).await.unwrap();
    let trust = client_config(&pki.ca(), &[b"http/1.1"]);

    // One TLS connection holds the only slot with a stream.
    let held = connect(gw.addr, trust.clone()).await.unwrap();
    let mut first = h1_over_tls(held).await;
    let body = serde_json::to_vec(&chat(true, 40)).unwrap();
    let req = Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let stream = first.send_request(req).await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);

    // A second one is over the limit: it still completes its handshake and gets a 503.
    let over = connect(gw.addr, trust.clone()).await.unwrap();
    let mut second = h1_over_tls(over).await;
    let req = Request::get("/v1/models")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = second.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["connection"], "close");
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_rejected_total", &[("reason", "connections")]),
        1.0
    );

    // Shutdown: the open stream over TLS runs to its end within the grace period.
    let addr = gw.addr;
    let shutdown = tokio::spawn(gw.shutdown());
    let body = tokio::time::timeout(Duration::from_secs(30), stream.into_body().collect())
        .await
        .expect("the stream ends within the grace period")
        .expect("the stream ends cleanly")
        .to_bytes();
    assert!(sse_data(&body).iter().any(|d| d == "[DONE]"));
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("the gateway stops")
        .unwrap();
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_reload_takes_a_backends_new_client_certificate_from_the_same_files() {
    let pki = Pki::new("backend-reload");
    let stranger = Pki::new("backend-reload-stranger");
    let sim = start_sim(SimConfig::fast()).await;
    let backend = pki.issue("backend", &["127.0.0.1"], 1, "vllm");
    let front = tls_front(sim, &backend, Some(&pki.ca())).await;
    // A client certificate the backend does not trust, in the files the config names.
    let cert = pki.path("client.pem");
    let key = pki.path("client-key.pem");
    let untrusted = stranger.issue("client", &["weir.client"], 2, "weir");
    std::fs::copy(&untrusted.cert, &cert).unwrap();
    std::fs::copy(&untrusted.key, &key).unwrap();
    let path = pki.path("weir.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmodels = [\"tiny-llama\"]\n\
             [[backends]]\nname = \"vllm\"\nurl = \"https://{}\"\n\
             tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}\n",
            front.addr,
            pki.ca().display().to_string(),
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let gw = gateway::start(Config::load(&path).unwrap()).await.unwrap();
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");

    // The trusted certificate in the same files: the reload gives the backend new connections.
    let trusted = pki.issue("trusted", &["weir.client"], 3, "weir");
    std::fs::copy(&trusted.cert, &cert).unwrap();
    std::fs::copy(&trusted.key, &key).unwrap();
    gw.reload_from(&path, |_| {}).unwrap();
    let (status, body) = chat_status(&gw).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    gw.shutdown().await;
}
