//! Request parsing and validation with vLLM's (FastAPI/pydantic) error statuses and bodies.

use http::StatusCode;
use serde_json::{Map, Value};

use super::cache::push_message;
use super::output::first_tool_name;
use super::pydantic::{
    ApiError, PyError, bool_field, check_model_type, int_field, parse_object, validation,
};

/// Which OpenAI chunk format a stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Completion,
}

/// Which generation endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Completion,
    Responses,
    Messages,
}

impl Api {
    /// The OpenAI chunk format, for the two APIs that stream chunks.
    pub fn kind(self) -> Option<Kind> {
        match self {
            Api::Chat => Some(Kind::Chat),
            Api::Completion => Some(Kind::Completion),
            Api::Responses | Api::Messages => None,
        }
    }
}

/// Request fields a Responses answer repeats, as JSON.
#[derive(Debug, Clone, Default)]
pub(crate) struct Echo {
    pub max_output_tokens: Option<i64>,
    /// `instructions` as a JSON string literal.
    pub instructions: Option<String>,
    /// `tools` as given (compact JSON).
    pub tools: Option<String>,
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage: bool,
    pub prompt_tokens: u32,
    /// Output budget after capping to the context left.
    pub max_tokens: u32,
    pub ignore_eos: bool,
    /// The canonical prompt the prefix cache looks up.
    pub prompt_key: Vec<u8>,
    /// The first tool the request offers (the function a simulated tool call calls).
    pub tool_name: Option<String>,
    pub echo: Echo,
}

pub(crate) fn tokens_of_text(len: usize) -> u64 {
    (len as u64).div_ceil(4)
}

/// A message's text: its `content` string, or the `text` of its content parts.
pub(crate) fn content_text(content: Option<&Value>) -> std::borrow::Cow<'_, str> {
    match content {
        Some(Value::String(s)) => s.as_str().into(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<String>()
            .into(),
        _ => "".into(),
    }
}

/// Prompt tokens of chat-like messages (a chat-template overhead plus bytes/4 per message);
/// appends their canonical text to `key`.
pub(crate) fn chat_prompt(messages: &[Value], key: &mut Vec<u8>) -> u64 {
    messages.iter().fold(2u64, |acc, m| {
        let text = content_text(m.get("content"));
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        push_message(key, role, &text);
        acc.saturating_add(4 + tokens_of_text(text.len()))
    })
}

/// Prompt tokens of a completions prompt; `Err` for a missing, empty, batched or mistyped one.
fn completion_prompt_tokens(prompt: Option<&Value>, key: &mut Vec<u8>) -> Result<u64, ApiError> {
    let text = match prompt {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => Some(s.as_str()),
            _ => None,
        },
        _ => None,
    };
    match text {
        Some(text) => push_message(key, "prompt", text),
        None => push_message(
            key,
            "prompt",
            &prompt.map(Value::to_string).unwrap_or_default(),
        ),
    }
    let missing = || {
        ApiError::bad_request(
            "Either prompt or prompt_embeds must be provided and non-empty.",
            "prompt",
        )
    };
    let batch = || {
        ApiError::bad_request(
            "weir sim supports a single prompt per request, got a batch.",
            "prompt",
        )
    };
    match prompt {
        None | Some(Value::Null) => Err(missing()),
        Some(Value::String(s)) => Ok(1 + tokens_of_text(s.len())),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                Err(missing())
            } else if items.iter().all(Value::is_number) {
                Ok(items.len() as u64)
            } else if let [single] = items.as_slice() {
                match single {
                    Value::String(s) => Ok(1 + tokens_of_text(s.len())),
                    Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_number) => {
                        Ok(ids.len() as u64)
                    }
                    other => Err(validation(&[PyError::new(
                        "string_type",
                        "body.prompt",
                        "Input should be a valid string",
                        other,
                    )])),
                }
            } else {
                Err(batch())
            }
        }
        Some(other) => Err(validation(&[PyError::new(
            "string_type",
            "body.prompt",
            "Input should be a valid string",
            other,
        )])),
    }
}

/// Parses and validates a generation request as vLLM does, in vLLM's order of checks.
pub(crate) fn parse(
    kind: Kind,
    raw: &[u8],
    model: &str,
    max_model_len: u32,
) -> Result<Plan, ApiError> {
    let body = parse_object(raw)?;
    let mut errors = Vec::new();
    let messages = if kind == Kind::Chat {
        messages_field(&body, &mut errors)
    } else {
        None
    };
    let requested_model = check_model_type(&body, &mut errors);
    let max_tokens = int_field(&body, "body.max_tokens", &mut errors);
    let max_completion_tokens = if kind == Kind::Chat {
        int_field(&body, "body.max_completion_tokens", &mut errors)
    } else {
        None
    };
    let n = int_field(&body, "body.n", &mut errors);
    let stream = bool_field(&body, "body.stream", &mut errors).unwrap_or(false);
    let (include_usage, continuous_usage) = stream_options(&body, &mut errors);
    let ignore_eos = bool_field(&body, "body.ignore_eos", &mut errors).unwrap_or(false);
    if !errors.is_empty() {
        return Err(validation(&errors));
    }
    check_model(requested_model, model)?;
    match n {
        Some(n) if n < 1 => {
            let message = format!("n must be at least 1, got {n}. (parameter=n, value={n})");
            return Err(ApiError::bad_request(&message, "n"));
        }
        Some(n) if n > 1 => {
            let message =
                format!("weir sim supports only n=1, got n={n}. (parameter=n, value={n})");
            return Err(ApiError::bad_request(&message, "n"));
        }
        _ => {}
    }
    let max_tokens = max_completion_tokens.or(max_tokens);
    check_min_tokens(max_tokens)?;
    let mut prompt_key = Vec::new();
    let prompt_tokens = match kind {
        Kind::Chat => chat_prompt(messages.unwrap_or_default(), &mut prompt_key),
        Kind::Completion => completion_prompt_tokens(body.get("prompt"), &mut prompt_key)?,
    };
    let default = match kind {
        Kind::Chat => 64,
        Kind::Completion => 16,
    };
    let (prompt_tokens, max_tokens) =
        budget(prompt_tokens, max_tokens, max_model_len, default, false)?;
    Ok(Plan {
        stream,
        include_usage: stream && include_usage,
        continuous_usage: stream && include_usage && continuous_usage,
        prompt_tokens,
        max_tokens,
        ignore_eos,
        prompt_key,
        tool_name: first_tool_name(body.get("tools")),
        echo: Echo::default(),
    })
}

/// The required `messages` list; records the error of a missing or mistyped one.
pub(crate) fn messages_field<'a>(
    body: &'a Map<String, Value>,
    errors: &mut Vec<PyError>,
) -> Option<&'a [Value]> {
    match body.get("messages") {
        None => {
            let whole = Value::Object(body.clone());
            errors.push(PyError::new(
                "missing",
                "body.messages",
                "Field required",
                &whole,
            ));
            None
        }
        Some(Value::Array(m)) => Some(m.as_slice()),
        Some(other) => {
            let msg = "Input should be a valid list";
            errors.push(PyError::new("list_type", "body.messages", msg, other));
            None
        }
    }
}

/// vLLM's 400 for `max_tokens` below 1.
pub(crate) fn check_min_tokens(max_tokens: Option<i64>) -> Result<(), ApiError> {
    match max_tokens {
        Some(m) if m < 1 => {
            let message = format!(
                "max_tokens must be at least 1, got {m}. (parameter=max_tokens, value={m})"
            );
            Err(ApiError::bad_request(&message, "max_tokens"))
        }
        _ => Ok(()),
    }
}

/// The prompt's and the output's token budgets in the context (vLLM's 400s for a prompt
/// that fills it and, unless `cap`, for a `max_tokens` above it); the output is capped to
/// the room the prompt leaves, `default` when not asked.
pub(crate) fn budget(
    prompt_tokens: u64,
    max_tokens: Option<i64>,
    max_model_len: u32,
    default: u32,
    cap: bool,
) -> Result<(u32, u32), ApiError> {
    let limit = u64::from(max_model_len);
    if prompt_tokens >= limit {
        let message = format!(
            "This model's maximum context length is {max_model_len} tokens. However, your prompt \
             contains at least {prompt_tokens} input tokens, which exceeds this limit even without \
             any output tokens. Please reduce the length of the input prompt. \
             (parameter=input_tokens, value={prompt_tokens})"
        );
        return Err(ApiError::bad_request(&message, "input_tokens"));
    }
    if let Some(m) = max_tokens
        && m > i64::from(max_model_len)
        && !cap
    {
        let message = format!(
            "max_tokens={m} cannot be greater than max_model_len={max_model_len}. Please request \
             fewer output tokens. (parameter=max_tokens, value={m})"
        );
        return Err(ApiError::bad_request(&message, "max_tokens"));
    }
    // prompt_tokens < max_model_len fits in u32.
    let prompt_tokens = prompt_tokens as u32;
    let room = max_model_len - prompt_tokens;
    let max_tokens = max_tokens.map_or(default, |m| m.clamp(1, i64::from(u32::MAX)) as u32);
    Ok((prompt_tokens, max_tokens.min(room)))
}

fn stream_options(body: &Map<String, Value>, errors: &mut Vec<PyError>) -> (bool, bool) {
    match body.get("stream_options") {
        None | Some(Value::Null) => (false, false),
        Some(Value::Object(opts)) => (
            bool_field(opts, "body.stream_options.include_usage", errors).unwrap_or(false),
            bool_field(opts, "body.stream_options.continuous_usage_stats", errors).unwrap_or(false),
        ),
        Some(other) => {
            errors.push(PyError::new(
                "model_type",
                "body.stream_options",
                "Input should be a valid dictionary or instance of StreamOptions",
                other,
            ));
            (false, false)
        }
    }
}

/// Validates an embeddings request; returns its prompt token count.
pub(crate) fn parse_embeddings(
    raw: &[u8],
    model: &str,
    max_model_len: u32,
) -> Result<(u32, usize), ApiError> {
    parse_inputs(&parse_object(raw)?, model, max_model_len)
}

/// Validates the `input` of a pooling request (embeddings, pooling, classify); returns its
/// prompt token count and number of inputs.
pub(crate) fn parse_inputs(
    body: &Map<String, Value>,
    model: &str,
    max_model_len: u32,
) -> Result<(u32, usize), ApiError> {
    let mut errors = Vec::new();
    let requested = check_model_type(body, &mut errors);
    let inputs: Vec<u64> = match body.get("input") {
        None => {
            errors.push(PyError::new(
                "missing",
                "body.input",
                "Field required",
                &Value::Object(body.clone()),
            ));
            Vec::new()
        }
        Some(Value::String(s)) => vec![1 + tokens_of_text(s.len())],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![items.len() as u64]
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => 1 + tokens_of_text(s.len()),
                Value::Array(ids) => ids.len() as u64,
                _ => 1,
            })
            .collect(),
        Some(other) => {
            errors.push(PyError::new(
                "string_type",
                "body.input",
                "Input should be a valid string",
                other,
            ));
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(validation(&errors));
    }
    check_model(requested, model)?;
    let limit = u64::from(max_model_len);
    if let Some(&too_long) = inputs.iter().find(|&&t| t > limit) {
        let message = format!(
            "This model's maximum context length is {max_model_len} tokens. However, you requested \
             {too_long} tokens in the input for embedding generation. Please reduce the length of \
             the input. (parameter=input_tokens, value={too_long})"
        );
        return Err(ApiError::bad_request(&message, "input_tokens"));
    }
    let total: u64 = inputs.iter().sum();
    Ok((u32::try_from(total).unwrap_or(u32::MAX), inputs.len()))
}

/// vLLM's 404 for a model it does not serve.
pub(crate) fn check_model(requested: Option<&str>, model: &str) -> Result<(), ApiError> {
    match requested {
        Some(requested) if requested != model => {
            let message =
                format!("The model `{requested}` does not exist. Valid aliases: {model}.");
            Err(ApiError::openai(
                StatusCode::NOT_FOUND,
                "NotFoundError",
                &message,
                Some("model"),
            ))
        }
        _ => Ok(()),
    }
}
