//! The hostile faults over real sockets: each one's first bytes, a huge body's shape and
//! usage, and floods that end when the client goes away or the simulator stops.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BOUND, Server};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use weir_sim::{Fault, SimConfig};

const CHAT: &str = "/v1/chat/completions";
const STREAM: &str = r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
const WHOLE: &str = r#"{"messages":[{"role":"user","content":"hi"}]}"#;

/// What the faults need beside the shared client, whose pooled connections would hide a
/// connection's end.
trait OwnConnection {
    async fn call_alone(&self, method: &str, path: &str, fault: Option<&str>, body: &str) -> Call;
}

impl OwnConnection for Server {
    /// One request on a connection of its own; dropping the `Call` closes the connection.
    async fn call_alone(&self, method: &str, path: &str, fault: Option<&str>, body: &str) -> Call {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "sim")
            .header("content-type", "application/json");
        if let Some(fault) = fault {
            req = req.header("x-sim-fault", fault);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let response = tokio::time::timeout(BOUND, sender.send_request(req))
            .await
            .expect("no response head")
            .unwrap();
        Call { response, conn }
    }
}

struct Call {
    response: Response<Incoming>,
    conn: JoinHandle<()>,
}

impl Call {
    fn header(&self, name: &str) -> &str {
        self.response.headers()[name].to_str().unwrap()
    }

    /// The body until it ends (or breaks) or at least `at_least` bytes came.
    async fn read(&mut self, at_least: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + BOUND;
        while out.len() < at_least {
            let frame = tokio::time::timeout_at(deadline, self.response.body_mut().frame());
            match frame.await.expect("body too slow") {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        out.extend_from_slice(&data);
                    }
                }
                // The end, or the body was cut (a flood when the simulator stops).
                Some(Err(_)) | None => break,
            }
        }
        out
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The value of a simulator metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(prefix));
    let line = line.unwrap_or_else(|| panic!("no {prefix} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

const RUNNING: &str = "vllm:num_requests_running{";
const ABORTS: &str = r#"vllm:request_success_total{engine="0",finished_reason="abort""#;

/// Splits `after` the role chunk into complete SSE events (the last, partial one is left out).
fn events(body: &[u8]) -> Vec<&str> {
    let text = std::str::from_utf8(body).unwrap();
    let mut events: Vec<&str> = text.split("\n\n").collect();
    events.pop();
    events
}

#[test]
fn fault_syntax() {
    for (text, fault) in [
        ("endless-event", Fault::EndlessEvent),
        ("finish-flood", Fault::FinishFlood),
        ("token-flood", Fault::TokenFlood),
        (" junk-flood ", Fault::JunkFlood),
        ("huge-json=15", Fault::HugeJson { mib: 15 }),
        ("huge-json=0", Fault::HugeJson { mib: 0 }),
    ] {
        assert_eq!(text.parse(), Ok(fault), "{text}");
        assert_eq!(fault.to_string().parse(), Ok(fault));
    }
    for bad in [
        "huge-json",
        "huge-json=",
        "huge-json=4097",
        "huge-json=-1",
        "token-flood=3",
        "flood",
        "endless",
    ] {
        assert!(bad.parse::<Fault>().is_err(), "{bad}");
    }
}

#[tokio::test]
async fn each_flood_starts_with_the_role_chunk_and_then_floods() {
    let s = Server::start(SimConfig::fast()).await;
    for fault in ["endless-event", "finish-flood", "token-flood", "junk-flood"] {
        let mut call = s.call_alone("POST", CHAT, Some(fault), STREAM).await;
        assert_eq!(call.response.status(), StatusCode::OK, "{fault}");
        assert!(call.header("content-type").starts_with("text/event-stream"));
        // Much more than any normal answer: floods go on.
        let body = call.read(1 << 20).await;
        assert!(body.len() >= 1 << 20, "{fault}: {} bytes", body.len());
        let (role, rest) = body.split_at(body.windows(2).position(|w| w == b"\n\n").unwrap() + 2);
        let role = std::str::from_utf8(role).unwrap();
        assert!(
            role.starts_with("data: {\"id\":\"chatcmpl-"),
            "{fault}: {role}"
        );
        assert!(role.contains(r#""delta":{"role":"assistant","content":""}"#));
        let text = std::str::from_utf8(rest).unwrap();
        assert!(!text.contains("[DONE]"), "{fault}");
        match fault {
            "endless-event" => {
                assert!(!text.contains("\n\n"), "an endless event has no blank line");
                let lines: Vec<&str> = text.lines().collect();
                assert!(lines.len() > 1000);
                for line in &lines[..lines.len() - 1] {
                    assert!(line.starts_with("data: {"), "{line}");
                }
            }
            "junk-flood" => {
                assert!(text.starts_with(": x\n"));
                let lines: Vec<&str> = text.split('\n').collect();
                assert!(lines[..lines.len() - 1].iter().all(|l| *l == ": x"));
            }
            _ => {
                let events = events(rest);
                assert!(events.len() > 1000, "{fault}: {} events", events.len());
                for event in events {
                    let v: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap())
                        .unwrap_or_else(|e| panic!("{fault}: {e}: {event}"));
                    let choice = &v["choices"][0];
                    assert_eq!(v["model"], "tiny-llama");
                    if fault == "finish-flood" {
                        assert_eq!(choice["finish_reason"], "stop", "{event}");
                    } else {
                        assert_eq!(choice["delta"]["content"], "a", "{event}");
                        assert_eq!(choice["finish_reason"], Value::Null);
                    }
                }
            }
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn completions_floods_have_no_role_chunk_and_config_faults_apply() {
    let s = Server::start(SimConfig {
        fault: Some(Fault::TokenFlood),
        ..SimConfig::fast()
    })
    .await;
    let body = r#"{"prompt":"Once upon a time","stream":true}"#;
    let mut call = s.call_alone("POST", "/v1/completions", None, body).await;
    let body = call.read(256 << 10).await;
    let events = events(&body);
    assert!(events.len() > 100);
    for event in events {
        let v: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "a", "{event}");
    }
    drop(call);
    s.shutdown().await;
}

#[tokio::test]
async fn a_non_streamed_flood_is_a_json_body_that_never_ends() {
    let s = Server::start(SimConfig::fast()).await;
    let mut call = s
        .call_alone("POST", CHAT, Some("finish-flood"), WHOLE)
        .await;
    assert_eq!(call.response.status(), StatusCode::OK);
    assert_eq!(call.header("content-type"), "application/json");
    assert!(call.response.headers().get("content-length").is_none());
    let body = call.read(2 << 20).await;
    assert!(body.len() >= 2 << 20);
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.starts_with(r#"{"id":"chatcmpl-"#), "{}", &text[..200]);
    let content = r#""message":{"role":"assistant","content":" dam dam dam"#;
    assert!(text.contains(content));
    drop(call);
    s.shutdown().await;
}

#[tokio::test]
async fn huge_json_is_valid_json_with_its_usage_last() {
    let s = Server::start(SimConfig::fast()).await;
    let mut call = s.call_alone("POST", CHAT, Some("huge-json=3"), WHOLE).await;
    assert_eq!(call.response.status(), StatusCode::OK);
    let length: usize = call.header("content-length").parse().unwrap();
    let body = call.read(usize::MAX).await;
    assert_eq!(body.len(), length);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.len(), 3 << 20);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], 3 * 262_144);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + 3 * 262_144)
    );
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .ends_with(r#""metrics":null}"#)
    );
    // Sent whole: a finished request, not an abort.
    let m = s.metrics().await;
    assert_eq!(metric(&m, RUNNING), 0.0);
    assert_eq!(metric(&m, ABORTS), 0.0);

    // Streamed: the content in one event, then the usage chunk and [DONE].
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let mut call = s.call_alone("POST", CHAT, Some("huge-json=2"), body).await;
    let body = call.read(usize::MAX).await;
    let text = std::str::from_utf8(&body).unwrap();
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 4, "role, content, usage, [DONE]");
    assert_eq!(events[3], "data: [DONE]");
    let json =
        |e: &str| -> Value { serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap() };
    let content = json(events[1]);
    assert_eq!(
        content["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap()
            .len(),
        2 << 20
    );
    assert_eq!(content["choices"][0]["finish_reason"], "length");
    assert_eq!(json(events[2])["usage"]["completion_tokens"], 2 * 262_144);
    s.shutdown().await;
}

/// Polls the simulator's metrics until `check` holds (or panics after `BOUND`).
async fn until_metrics(s: &Server, what: &str, check: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let m = s.metrics().await;
        if check(&m) {
            return;
        }
        assert!(start.elapsed() < BOUND, "{what}:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_flood_ends_when_the_client_goes_away() {
    let s = Server::start(SimConfig::fast()).await;
    for (round, fault) in ["endless-event", "finish-flood", "token-flood", "junk-flood"]
        .into_iter()
        .enumerate()
    {
        let mut call = s.call_alone("POST", CHAT, Some(fault), STREAM).await;
        call.read(512 << 10).await;
        let m = s.metrics().await;
        assert_eq!(metric(&m, RUNNING), 1.0, "{fault} counts as running");
        // Goes away without reading what is on its way.
        drop(call);
        let aborts = (round + 1) as f64;
        until_metrics(&s, fault, |m| {
            metric(m, RUNNING) == 0.0 && metric(m, ABORTS) == aborts
        })
        .await;
    }
    // One that never reads at all (the server blocked on a full socket) ends too.
    let call = s
        .call_alone("POST", CHAT, Some("token-flood"), STREAM)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(call);
    until_metrics(&s, "unread", |m| metric(m, RUNNING) == 0.0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_flood_ends_when_the_simulator_stops() {
    let s = Server::start(SimConfig::fast()).await;
    let mut call = s.call_alone("POST", CHAT, Some("junk-flood"), STREAM).await;
    call.read(64 << 10).await;
    let reader = tokio::spawn(async move { call.read(usize::MAX).await.len() });
    // serve() returns within BOUND: the flood was cut.
    s.shutdown().await;
    tokio::time::timeout(BOUND, reader).await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_flood_leaves_room_for_other_requests() {
    let s = Server::start(SimConfig::fast()).await;
    let mut call = s
        .call_alone("POST", CHAT, Some("token-flood"), STREAM)
        .await;
    let reader = tokio::spawn(async move { call.read(256 << 20).await.len() });
    let start = Instant::now();
    let mut normal = s.call_alone("POST", CHAT, None, WHOLE).await;
    assert_eq!(normal.response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&normal.read(usize::MAX).await).unwrap();
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    reader.abort();
    let _ = reader.await;
    s.shutdown().await;
}
