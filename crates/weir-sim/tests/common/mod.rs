//! What the simulator's API tests share: a simulator on 127.0.0.1:0, an HTTP client, the
//! vLLM 0.32 captures, and comparisons of JSON and SSE by shape (key order, framing, event
//! names) with the values that differ between two servers normalised.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weir_sim::{SimConfig, serve};

pub const BOUND: Duration = Duration::from_secs(10);

pub fn fixture(name: &str) -> String {
    let dir = std::env::var_os("WEIR_VLLM_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vllm-0.32.0"),
        PathBuf::from,
    );
    let path = dir.join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response: status, headers and the whole body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Server {
    pub async fn start(config: SimConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            stop: Some(tx),
            task,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(BOUND, &mut self.task).await;
        result.expect("serve did not stop").unwrap().unwrap();
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let resp = tokio::time::timeout(BOUND, self.client.request(req))
            .await
            .expect("request timed out")
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = tokio::time::timeout(BOUND, body.collect())
            .await
            .expect("body timed out")
            .unwrap()
            .to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        self.call(Method::POST, path, headers, body).await
    }

    pub async fn metrics(&self) -> String {
        self.call(Method::GET, "/metrics", &[], "").await.body
    }
}

/// Replaces the values that legitimately differ between two servers.
pub fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match k.as_str() {
                    "id" | "item_id" | "call_id" if v.is_string() => *v = Value::from("ID"),
                    "created" | "created_at" => *v = Value::from(0),
                    "content" | "text" | "delta" | "thinking" | "partial_json" | "arguments"
                        if v.is_string() =>
                    {
                        *v = Value::from("")
                    }
                    "prompt_tokens" | "total_tokens" | "completion_tokens" | "input_tokens"
                    | "output_tokens" => *v = Value::from(0),
                    "system_fingerprint" => *v = Value::from("FP"),
                    _ => normalize(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// A JSON document normalised; for ours, checks first that it is compact JSON in key order.
pub fn shape(json: &str, ours: bool) -> String {
    let mut v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    if ours {
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            json,
            "not compact JSON in key order"
        );
    }
    normalize(&mut v);
    serde_json::to_string(&v).unwrap()
}

/// The events of an SSE body: (`event:` name if any, data), after checking the framing.
pub fn events(body: &str) -> Vec<(Option<String>, String)> {
    assert!(
        body.ends_with("\n\n"),
        "not ended by a blank line: {body:?}"
    );
    body.strip_suffix("\n\n")
        .unwrap()
        .split("\n\n")
        .map(|e| {
            let (name, data) = match e.strip_prefix("event: ") {
                Some(rest) => {
                    let (name, data) = rest.split_once('\n').expect("event without data");
                    (Some(name.to_owned()), data)
                }
                None => (None, e),
            };
            let data = data
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {e:?}"));
            assert!(!data.contains('\n'), "one data line per event: {e:?}");
            (name, data.to_owned())
        })
        .collect()
}

/// The events of an SSE body normalised; every named event's data carries its name as
/// `type`.
pub fn sse_shape(body: &str, ours: bool) -> Vec<String> {
    events(body)
        .into_iter()
        .map(|(name, data)| {
            if data == "[DONE]" {
                return data;
            }
            let shaped = shape(&data, ours);
            if let Some(name) = &name {
                let v: Value = serde_json::from_str(&data).unwrap();
                assert_eq!(v["type"].as_str(), Some(name.as_str()), "{data}");
            }
            format!("{}|{shaped}", name.unwrap_or_default())
        })
        .collect()
}

/// As [`sse_shape`], with the sequence numbers left out and runs of equal events (the
/// deltas) taken once: the captures' tiny model made tokens with no text, which the
/// Responses and Messages APIs send no event for, and the simulator's vocabulary has none.
pub fn sse_shape_runs(body: &str, ours: bool) -> Vec<String> {
    let mut out: Vec<String> = sse_shape(body, ours)
        .into_iter()
        .map(|e| {
            let Some(at) = e.find("\"sequence_number\":") else {
                return e;
            };
            let end = e[at..].find(',').map_or(e.len(), |i| at + i);
            format!("{}{}", &e[..at], &e[end + 1..])
        })
        .collect();
    out.dedup();
    out
}

/// The data of the events named `name`, parsed.
pub fn named(body: &str, name: &str) -> Vec<Value> {
    events(body)
        .into_iter()
        .filter(|(n, _)| n.as_deref() == Some(name))
        .map(|(_, d)| serde_json::from_str(&d).unwrap())
        .collect()
}

/// The data of every event, parsed (`[DONE]` left out).
pub fn datas(body: &str) -> Vec<Value> {
    events(body)
        .into_iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| serde_json::from_str(&d).unwrap())
        .collect()
}

/// The value of a simulator metric line starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

pub const RESPONSES: &str = "/v1/responses";
pub const MESSAGES: &str = "/v1/messages";
pub const CHAT: &str = "/v1/chat/completions";

/// A Responses request of `max` tokens; `extra` goes at the end of the object.
pub fn responses_body(input: &str, max: u32, extra: &str) -> String {
    format!(
        r#"{{"model":"tiny-llama","input":"{input}","max_output_tokens":{max},"ignore_eos":true{extra}}}"#
    )
}

/// A Messages request of `max` tokens; `extra` goes at the end of the object.
pub fn messages_body(content: &str, max: u32, extra: &str) -> String {
    format!(
        r#"{{"model":"tiny-llama","messages":[{{"role":"user","content":"{content}"}}],"max_tokens":{max},"ignore_eos":true{extra}}}"#
    )
}

/// A chat request of `max` tokens; `extra` goes at the end of the object.
pub fn chat_body(content: &str, max: u32, extra: &str) -> String {
    format!(
        r#"{{"model":"tiny-llama","messages":[{{"role":"user","content":"{content}"}}],"max_tokens":{max},"ignore_eos":true{extra}}}"#
    )
}
