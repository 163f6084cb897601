//! The model to load when `--model` is not given: the first one the endpoint's `/v1/models`
//! lists (for vLLM, the served model; its LoRA adapters follow it).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};

use super::HttpClient;
use super::cause::{Failure, error_message};

/// How long the model list may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest model list read.
const LIMIT: usize = 4 << 20;

/// The first model id `GET {url}/v1/models` lists, or why there is none.
pub(crate) async fn first_model(
    client: &HttpClient,
    url: &str,
    headers: &http::HeaderMap,
) -> Result<String, String> {
    let uri: http::Uri = format!("{}/v1/models", url.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("bad --url: {e}"))?;
    let authority = uri.authority().map_or("", |a| a.as_str()).to_owned();
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    req.headers_mut().extend(headers.clone());
    let res = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(TIMEOUT)))?
        .map_err(|e| Failure::client(&e, &authority).cause)?;
    let status = res.status();
    let body = tokio::time::timeout(TIMEOUT, Limited::new(res.into_body(), LIMIT).collect())
        .await
        .map_err(|_| "the model list did not arrive in time".to_owned())?
        .map_err(|e| format!("reading the model list: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(Failure::status(status, &body).cause);
    }
    model_of(&body)
}

/// The longest model id taken from a list, in characters.
const MAX_ID: usize = 256;

/// The first id of an OpenAI model list (`{"object":"list","data":[{"id":..},..]}`). An id
/// that is no name (too long, or with control characters) is refused: it goes into every
/// request and onto the terminal.
fn model_of(body: &[u8]) -> Result<String, String> {
    let list: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a model list: {e}"))?;
    let Some(models) = list["data"].as_array() else {
        return Err(match error_message(body) {
            Some(m) => format!("not a model list: {m}"),
            None => "not a model list (no `data` array)".to_owned(),
        });
    };
    let id = models
        .iter()
        .find_map(|m| m["id"].as_str().filter(|id| !id.is_empty()))
        .ok_or_else(|| "the endpoint lists no model".to_owned())?;
    if id.chars().count() > MAX_ID || id.chars().any(char::is_control) {
        return Err(format!(
            "the first model id is not a name (control characters, or over {MAX_ID} \
             characters); give --model"
        ));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_listed_model() {
        let vllm = include_bytes!("../../../tests/fixtures/vllm-0.32.0/models.json");
        assert_eq!(model_of(vllm).as_deref(), Ok("tiny-llama"));
        let two = br#"{"object":"list","data":[{"id":"base"},{"id":"lora-1"}]}"#;
        assert_eq!(model_of(two).as_deref(), Ok("base"));
        assert_eq!(
            model_of(br#"{"object":"list","data":[]}"#),
            Err("the endpoint lists no model".to_owned())
        );
        assert_eq!(
            model_of(br#"{"error":"Unauthorized"}"#),
            Err("not a model list: Unauthorized".to_owned())
        );
        assert!(
            model_of(b"<html>")
                .unwrap_err()
                .starts_with("not a model list: ")
        );
        for id in ["x".repeat(MAX_ID + 1), "evil\x1b[2J".to_owned()] {
            let list = serde_json::json!({"data": [{"id": id}]}).to_string();
            let e = model_of(list.as_bytes()).unwrap_err();
            assert!(e.starts_with("the first model id is not a name"), "{e}");
        }
    }
}
