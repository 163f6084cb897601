//! Response helpers: JSON and error answers, header overrides and body reading.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::pydantic::ApiError;
use super::stream::SimBody;

pub(crate) const JSON: &str = "application/json";
pub(crate) const SSE: &str = "text/event-stream; charset=utf-8";
/// vLLM's message for an engine failure.
pub(crate) const ENGINE_ERROR: &str =
    "EngineCore encountered an issue. See stack trace (above) for the root cause.";
/// Largest request body read.
const MAX_BODY: usize = 32 * 1024 * 1024;

pub(crate) fn respond(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: SimBody,
) -> Response<SimBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    resp
}

pub(crate) fn error(e: ApiError) -> Response<SimBody> {
    respond(e.status, Some(JSON), SimBody::full(e.body))
}

pub(crate) fn detail(status: StatusCode) -> Response<SimBody> {
    let body: &'static str = if status == StatusCode::NOT_FOUND {
        r#"{"detail":"Not Found"}"#
    } else {
        r#"{"detail":"Method Not Allowed"}"#
    };
    respond(status, Some(JSON), SimBody::full(body))
}

/// The OpenAI-shaped error of an injected failure with this status.
pub(crate) fn injected_error(code: u16, message: &str) -> ApiError {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut kind: String = status
        .canonical_reason()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    if !kind.ends_with("Error") {
        kind.push_str("Error");
    }
    ApiError::openai(status, &kind, message, None)
}

pub(crate) fn header_ms(headers: &HeaderMap, name: &str) -> Result<Option<Duration>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|ms| *ms >= 0.0)
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
        .map(Some)
        .ok_or_else(|| {
            let message = format!("invalid {name} header: expected a number of milliseconds");
            ApiError::openai(StatusCode::BAD_REQUEST, "BadRequestError", &message, None)
        })
}

pub(crate) async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::openai(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            "Request body too large",
            None,
        )),
        Err(_) => Err(ApiError::openai(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "There was an error parsing the body",
            None,
        )),
    }
}
