//! A client streaming a chat completion through weir, printing each token with the time it
//! arrived (the first after its TTFT, the others after their gap, the ITL) and the end-to-end
//! time: the client-side view of what weir measures. Compare with the request's access-log
//! line (same request id) or with `weir top`.
//!
//! ```sh
//! cargo run --release -- demo --keep-serving      # in one terminal
//! cargo run --example stream_client -- http://127.0.0.1:8080 tiny-llama
//! ```

use std::io::Write;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use weir_sse::{SseParser, classify};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let model = args.next().unwrap_or_else(|| "tiny-llama".into());
    let body = serde_json::json!({
        "model": model,
        "stream": true,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "Describe a weir in one sentence."}],
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let t0 = Instant::now();
    let res = client.request(req).await?;
    let request_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    println!("status {}, request id {request_id}", res.status());
    let mut body = res.into_body();
    let mut parser = SseParser::default();
    let mut last = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = Instant::now();
        parser.feed(&data, |event| {
            let info = classify(event.data);
            if info.content {
                let since = last.map_or(now - t0, |l| now - l);
                let label = if last.is_none() { "TTFT" } else { "ITL " };
                let text = token_text(event.data);
                println!("{label} {:>8.2} ms  {text:?}", since.as_secs_f64() * 1e3);
                last = Some(now);
            }
        });
    }
    println!("e2e  {:>8.2} ms", t0.elapsed().as_secs_f64() * 1e3);
    std::io::stdout().flush()?;
    Ok(())
}

/// The text a chat (or completions) chunk carries.
fn token_text(data: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
    let choice = &v["choices"][0];
    let text = choice["delta"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str());
    text.unwrap_or_default().to_owned()
}
