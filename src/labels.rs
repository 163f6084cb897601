//! The closed sets every part of the gateway speaks in: what a request does (`Operation`),
//! how it ended (`Outcome`) and what went wrong (`ErrorKind`), each with the label value it
//! has in the metrics, the access log and the spans. A leaf: it imports nothing of weir.

use http::StatusCode;

/// The label value for models not named in the config.
pub const OTHER: &str = "other";

/// The operation a request performs, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Chat,
    TextCompletion,
    Embeddings,
    Other,
}

impl Operation {
    pub fn from_path(path: &str) -> Operation {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Operation::Chat,
            "/v1/completions" => Operation::TextCompletion,
            "/v1/embeddings" => Operation::Embeddings,
            _ => Operation::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
            Operation::Other => "other",
        }
    }

    /// Chat and completions are generations: their bodies are parsed for tokens.
    pub fn is_generation(self) -> bool {
        matches!(self, Operation::Chat | Operation::TextCompletion)
    }
}

/// How a request ended: exactly one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    UpstreamError,
    ClientError,
    Timeout(&'static str),
    Cancelled,
    Unavailable,
    /// The gateway itself failed (a caught panic), answered 500.
    InternalError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientError => "client_error",
            Outcome::Timeout(_) => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Unavailable => "unavailable",
            Outcome::InternalError => "internal_error",
        }
    }

    /// The outcome a backend's status alone implies.
    pub fn from_status(status: StatusCode) -> Outcome {
        if status.is_server_error() {
            Outcome::UpstreamError
        } else if status.is_client_error() {
            Outcome::ClientError
        } else {
            Outcome::Ok
        }
    }
}

/// Closed set of `weir_errors_total{kind}` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Upstream5xx,
    StreamError,
    Protocol,
    BodyTooLarge,
    BadRequest,
    Unauthorized,
    NoBackend,
    /// A panic caught while handling a request.
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Connect,
        ErrorKind::Upstream5xx,
        ErrorKind::StreamError,
        ErrorKind::Protocol,
        ErrorKind::BodyTooLarge,
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::NoBackend,
        ErrorKind::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Upstream5xx => "upstream_5xx",
            ErrorKind::StreamError => "stream_error",
            ErrorKind::Protocol => "protocol",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NoBackend => "no_backend",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Closed set of `weir_retries_total{reason}` values.
pub const RETRY_REASONS: [&str; 2] = ["connect", "unavailable"];

/// Closed set of `weir_rejected_total{reason}` values.
pub const REJECT_REASONS: [&str; 3] = ["connections", "in_flight", "memory"];

/// Closed set of `weir_timeouts_total{kind}` values.
pub const TIMEOUT_KINDS: [&str; 4] = ["connect", "first_token", "idle", "total"];

/// `weir_requests_total{code}`: the status class.
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
