//! The closed sets every part of the gateway speaks in: what a request does (`Operation`),
//! how it ended (`Outcome`) and what went wrong (`ErrorKind`), each with the label value it
//! has in the metrics, the access log and the spans. A leaf: it imports nothing of weir.

use http::StatusCode;

/// The label value for models not named in the config.
pub const OTHER: &str = "other";

/// The operation a request performs (`gen_ai_operation_name`): the GenAI conventions' names
/// where they have one (`chat`, `text_completion`, `embeddings`), vLLM's endpoint names for
/// the other pooling APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Chat,
    TextCompletion,
    Embeddings,
    Pooling,
    Classify,
    Score,
    Rerank,
    Other,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
            Operation::Pooling => "pooling",
            Operation::Classify => "classify",
            Operation::Score => "score",
            Operation::Rerank => "rerank",
            Operation::Other => "other",
        }
    }
}

/// The API a request speaks, from its path: what its body and its response look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `/v1/chat/completions`
    ChatCompletions,
    /// `/v1/completions`
    Completions,
    /// `/v1/responses` (OpenAI Responses)
    Responses,
    /// `/v1/messages` (Anthropic Messages)
    Messages,
    /// `/v1/embeddings`
    Embeddings,
    /// `/pooling`
    Pooling,
    /// `/classify`
    Classify,
    /// `/score`, `/v1/score`
    Score,
    /// `/rerank`, `/v1/rerank`, `/v2/rerank`
    Rerank,
    /// Anything else: proxied, timed, not read.
    Other,
}

impl Api {
    pub fn from_path(path: &str) -> Api {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Api::ChatCompletions,
            "/v1/completions" => Api::Completions,
            "/v1/responses" => Api::Responses,
            "/v1/messages" => Api::Messages,
            "/v1/embeddings" => Api::Embeddings,
            "/pooling" => Api::Pooling,
            "/classify" => Api::Classify,
            "/score" | "/v1/score" => Api::Score,
            "/rerank" | "/v1/rerank" | "/v2/rerank" => Api::Rerank,
            _ => Api::Other,
        }
    }

    /// The access log's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Completions => "completions",
            Api::Responses => "responses",
            Api::Messages => "messages",
            Api::Embeddings => "embeddings",
            Api::Pooling => "pooling",
            Api::Classify => "classify",
            Api::Score => "score",
            Api::Rerank => "rerank",
            Api::Other => "other",
        }
    }

    pub fn operation(self) -> Operation {
        match self {
            Api::ChatCompletions | Api::Responses | Api::Messages => Operation::Chat,
            Api::Completions => Operation::TextCompletion,
            Api::Embeddings => Operation::Embeddings,
            Api::Pooling => Operation::Pooling,
            Api::Classify => Operation::Classify,
            Api::Score => Operation::Score,
            Api::Rerank => Operation::Rerank,
            Api::Other => Operation::Other,
        }
    }

    /// Generations: tokens come out, streamed or not, and their bodies are parsed for them.
    pub fn is_generation(self) -> bool {
        matches!(
            self,
            Api::ChatCompletions | Api::Completions | Api::Responses | Api::Messages
        )
    }

    /// How its answers are read: the streams and bodies of chat and completions, Responses
    /// or Messages (a pooling answer's usage reads as chat's).
    pub fn sse(self) -> weir_sse::Api {
        match self {
            Api::Completions => weir_sse::Api::Completions,
            Api::Responses => weir_sse::Api::Responses,
            Api::Messages => weir_sse::Api::Messages,
            _ => weir_sse::Api::Chat,
        }
    }

    /// Its JSON request body is read (model, stream, max tokens) and its answer measured.
    pub fn is_measured(self) -> bool {
        self != Api::Other
    }

    /// Usage is asked for with `stream_options.include_usage` (the OpenAI chat and
    /// completions streams; the others always send it).
    pub fn asks_for_usage(self) -> bool {
        matches!(self, Api::ChatCompletions | Api::Completions)
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
    /// Its place in [`OUTCOMES`].
    pub fn index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::UpstreamError => 1,
            Outcome::ClientError => 2,
            Outcome::Timeout(_) => 3,
            Outcome::Cancelled => 4,
            Outcome::Unavailable => 5,
            Outcome::InternalError => 6,
        }
    }

    pub fn as_str(self) -> &'static str {
        OUTCOMES[self.index()]
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

/// Every outcome's label value.
pub const OUTCOMES: [&str; 7] = [
    "ok",
    "upstream_error",
    "client_error",
    "timeout",
    "cancelled",
    "unavailable",
    "internal_error",
];

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

/// Closed set of `weir_requests_total{code}` values.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `weir_requests_total{code}`: the status class, as its place in [`STATUS_CLASSES`].
pub fn status_class(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}
