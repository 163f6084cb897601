//! Errors the gateway answers itself (before or instead of a backend), as OpenAI-shaped JSON,
//! each with the `weir_errors_total{kind}` it counts as.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::metrics::ErrorKind;

/// Why the gateway answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    ClientBody(String),
    #[error("no backend is available for this request")]
    NoBackend,
    #[error("the gateway is at its limit of requests in flight; retry shortly")]
    Overloaded,
    #[error("The model `{0}` does not exist.")]
    UnknownModel(String),
    #[error("backend {backend} did not answer in time ({kind} timeout)")]
    Timeout { backend: String, kind: &'static str },
    #[error("backend {backend} is unavailable: {reason}")]
    Connect { backend: String, reason: String },
    #[error("backend {backend} failed before answering: {reason}")]
    Upstream { backend: String, reason: String },
    #[error("connecting to backend {backend} timed out")]
    ConnectTimeout { backend: String },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidJson(_) | GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::ClientBody(_) => StatusCode::BAD_REQUEST,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::NoBackend | GatewayError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UnknownModel(_) => StatusCode::NOT_FOUND,
            GatewayError::Connect { .. } | GatewayError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::ConnectTimeout { .. } | GatewayError::Timeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// The `weir_errors_total{kind}` label; None for timeouts (`weir_timeouts_total`).
    pub fn kind(&self) -> Option<ErrorKind> {
        Some(match self {
            GatewayError::InvalidJson(_)
            | GatewayError::BadRequest(_)
            | GatewayError::ClientBody(_) => ErrorKind::BadRequest,
            GatewayError::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            GatewayError::NoBackend => ErrorKind::NoBackend,
            GatewayError::UnknownModel(_) => ErrorKind::BadRequest,
            GatewayError::Upstream { .. } => ErrorKind::Protocol,
            GatewayError::Connect { .. } => ErrorKind::Connect,
            GatewayError::ConnectTimeout { .. } | GatewayError::Timeout { .. } => return None,
            // Counted in weir_rejected_total{reason="in_flight"}.
            GatewayError::Overloaded => return None,
        })
    }

    /// OpenAI's error `type` for this status.
    fn openai_type(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "BadRequestError",
            StatusCode::NOT_FOUND => "NotFoundError",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeError",
            StatusCode::GATEWAY_TIMEOUT => "TimeoutError",
            _ => "ServiceUnavailableError",
        }
    }

    /// The JSON body the client receives.
    pub fn body(&self) -> Bytes {
        openai_error_body(&self.to_string(), self.openai_type(), self.status())
    }

    /// A complete response, with `content-type: application/json`.
    pub fn response<B: From<Bytes>>(&self) -> Response<B> {
        let mut res = Response::new(B::from(self.body()));
        *res.status_mut() = self.status();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(self, GatewayError::NoBackend | GatewayError::Overloaded) {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

/// `{"error":{"message":…,"type":…,"param":null,"code":…}}`, the shape vLLM and OpenAI use.
pub fn openai_error_body(message: &str, kind: &str, status: StatusCode) -> Bytes {
    let v = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}
    });
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = GatewayError::Connect {
            backend: "b1".into(),
            reason: "connection refused".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], 502);
        assert_eq!(v["error"]["type"], "ServiceUnavailableError");
        assert!(v["error"]["message"].as_str().unwrap().contains("b1"));
        assert_eq!(e.kind(), Some(ErrorKind::Connect));
    }
}
