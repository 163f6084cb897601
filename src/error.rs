//! Errors the gateway answers itself (before or instead of a backend), as OpenAI-shaped JSON,
//! each with the outcome it records, the `weir_errors_total{kind}` it counts as and the word
//! the access log gives as its reason. Every such response carries an [`Answer`] for the
//! edge to record.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::labels::{Api, ErrorKind, Outcome};

/// Why the gateway answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request head is larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    ClientBody(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.")]
    Unauthorized,
    #[error("no backend is available for this request")]
    NoBackend,
    #[error("the gateway is at its limit of requests in flight; retry shortly")]
    Overloaded,
    #[error("too many connections to the gateway; retry shortly")]
    TooManyConnections,
    #[error("the gateway holds as many request bodies as it may; retry shortly")]
    MemoryFull,
    #[error("The model `{0}` does not exist.")]
    UnknownModel(String),
    #[error("Not Found: weir passes on the API surface only, and not `{0}`")]
    PathNotFound(String),
    #[error("backend {backend} did not answer in time ({kind} timeout)")]
    Timeout { backend: String, kind: &'static str },
    #[error("backend {backend} is unavailable: {reason}")]
    Connect { backend: String, reason: String },
    #[error("backend {backend} failed before answering: {reason}")]
    Upstream { backend: String, reason: String },
    #[error("connecting to backend {backend} timed out")]
    ConnectTimeout { backend: String },
    #[error("internal error in the gateway")]
    Internal,
    #[error("Rate limit reached for {}: please try again in {}.", .limit.describe(), crate::tenants::openai_duration(*.retry_after))]
    RateLimited {
        limit: crate::tenants::Limit,
        retry_after: std::time::Duration,
    },
    #[error("the rate-limit store is unavailable; retry shortly")]
    LimitStore,
}

/// The record of an answer the gateway gave itself: a response extension the edge reads.
#[derive(Debug, Clone)]
pub struct Answer {
    pub outcome: Outcome,
    /// Counted in `weir_errors_total{kind}` (timeouts and load refusals have counters of
    /// their own).
    pub kind: Option<ErrorKind>,
    /// A closed-set word for the access log: `unauthorized`, `body_too_large`, ...
    pub reason: &'static str,
    /// What the client was told.
    pub message: Arc<str>,
    /// For the log, when there is more to say than the client was told (what panicked).
    pub detail: Option<Arc<str>>,
    /// OpenAI's error `type` for it.
    pub openai_type: &'static str,
}

impl Answer {
    /// The body for a client of `api`: Anthropic-shaped on `/v1/messages` (as vLLM's own
    /// errors there are), OpenAI-shaped everywhere else.
    pub fn body(&self, api: Api, status: StatusCode) -> Bytes {
        match api {
            Api::Messages => anthropic_error_body(&self.message, self.openai_type),
            _ => openai_error_body(&self.message, self.openai_type, status),
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            InvalidJson(_) | BadRequest(_) | ClientBody(_) => StatusCode::BAD_REQUEST,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Unauthorized => StatusCode::UNAUTHORIZED,
            NoBackend | Overloaded | TooManyConnections | MemoryFull | LimitStore => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            UnknownModel(_) | PathNotFound(_) => StatusCode::NOT_FOUND,
            Connect { .. } | Upstream { .. } => StatusCode::BAD_GATEWAY,
            ConnectTimeout { .. } | Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How the request ended.
    pub fn outcome(&self) -> Outcome {
        use GatewayError::*;
        match self {
            NoBackend
            | Overloaded
            | TooManyConnections
            | MemoryFull
            | LimitStore
            | Connect { .. } => Outcome::Unavailable,
            Upstream { .. } => Outcome::UpstreamError,
            Timeout { kind, .. } => Outcome::Timeout(kind),
            ConnectTimeout { .. } => Outcome::Timeout("connect"),
            Internal => Outcome::InternalError,
            _ => Outcome::ClientError,
        }
    }

    /// The `weir_errors_total{kind}` label; None for timeouts (`weir_timeouts_total`) and
    /// load refusals (`weir_rejected_total`).
    pub fn kind(&self) -> Option<ErrorKind> {
        use GatewayError::*;
        Some(match self {
            InvalidJson(_) | BadRequest(_) | ClientBody(_) | UnknownModel(_) | PathNotFound(_) => {
                ErrorKind::BadRequest
            }
            HeadTooLarge { .. } | BodyTimeout(_) => ErrorKind::BadRequest,
            BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            Unauthorized => ErrorKind::Unauthorized,
            NoBackend => ErrorKind::NoBackend,
            Upstream { .. } => ErrorKind::Protocol,
            Connect { .. } => ErrorKind::Connect,
            Internal => ErrorKind::Internal,
            ConnectTimeout { .. }
            | Timeout { .. }
            | Overloaded
            | TooManyConnections
            | MemoryFull
            | RateLimited { .. }
            | LimitStore => {
                return None;
            }
        })
    }

    /// The access log's word for it.
    pub fn reason(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidJson(_) => "invalid_json",
            BadRequest(_) => "bad_request",
            BodyTooLarge { .. } => "body_too_large",
            HeadTooLarge { .. } => "head_too_large",
            ClientBody(_) => "client_body",
            BodyTimeout(_) => "body_timeout",
            Unauthorized => "unauthorized",
            NoBackend => "no_backend",
            Overloaded => "in_flight",
            TooManyConnections => "connections",
            MemoryFull => "memory",
            UnknownModel(_) => "unknown_model",
            PathNotFound(_) => "path_not_allowed",
            Timeout { .. } | ConnectTimeout { .. } => "timeout",
            Connect { .. } => "connect",
            Upstream { .. } => "upstream",
            Internal => "panic",
            RateLimited { .. } => "rate_limited",
            LimitStore => "limit_store",
        }
    }

    /// OpenAI's error `type` for this status.
    pub fn openai_type(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "BadRequestError",
            StatusCode::REQUEST_TIMEOUT => "TimeoutError",
            StatusCode::UNAUTHORIZED => "AuthenticationError",
            StatusCode::NOT_FOUND => "NotFoundError",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeError",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "RequestTooLargeError",
            StatusCode::GATEWAY_TIMEOUT => "TimeoutError",
            StatusCode::INTERNAL_SERVER_ERROR => "InternalServerError",
            StatusCode::TOO_MANY_REQUESTS => "RateLimitError",
            _ => "ServiceUnavailableError",
        }
    }

    /// The JSON body the client receives.
    pub fn body(&self) -> Bytes {
        openai_error_body(&self.to_string(), self.openai_type(), self.status())
    }

    /// The record of this answer; `detail` for the log, when there is more to say.
    pub fn answer(&self, detail: Option<String>) -> Answer {
        Answer {
            outcome: self.outcome(),
            kind: self.kind(),
            reason: self.reason(),
            message: self.to_string().into(),
            detail: detail.map(Into::into),
            openai_type: self.openai_type(),
        }
    }

    /// A complete response, with `content-type: application/json` and its [`Answer`].
    pub fn response<B: From<Bytes>>(&self) -> Response<B> {
        let mut res = Response::new(B::from(self.body()));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            GatewayError::RateLimited { retry_after, .. } => retry_headers(h, *retry_after),
            GatewayError::NoBackend
            | GatewayError::Overloaded
            | GatewayError::MemoryFull
            | GatewayError::LimitStore => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::TooManyConnections => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            GatewayError::Unauthorized => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        res.extensions_mut().insert(self.answer(None));
        res
    }
}

/// `Retry-After` in whole seconds (at least 1) and `retry-after-ms`, which OpenAI's SDKs
/// read first.
fn retry_headers(h: &mut http::HeaderMap, wait: std::time::Duration) {
    let secs = wait.as_millis().div_ceil(1000).max(1);
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
    h.insert("retry-after-ms", HeaderValue::from(wait.as_millis() as u64));
}

/// `{"type":"error","error":{"type":…,"message":…}}`, the Anthropic shape vLLM answers
/// `/v1/messages` errors in (with OpenAI's type names, as vLLM does).
pub fn anthropic_error_body(message: &str, kind: &str) -> Bytes {
    let v = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    Bytes::from(v.to_string())
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
        assert_eq!(e.outcome(), Outcome::Unavailable);
    }

    #[test]
    fn responses_carry_their_answer() {
        let res: Response<Bytes> = GatewayError::Unauthorized.response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let a = res.extensions().get::<Answer>().expect("an answer");
        assert_eq!(a.outcome, Outcome::ClientError);
        assert_eq!(a.kind, Some(ErrorKind::Unauthorized));
        assert_eq!(a.reason, "unauthorized");
        let res: Response<Bytes> = GatewayError::Internal.response();
        let a = res.extensions().get::<Answer>().unwrap();
        assert_eq!((a.outcome, a.reason), (Outcome::InternalError, "panic"));
    }
}
