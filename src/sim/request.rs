//! Request parsing and validation with vLLM's (FastAPI/pydantic) error statuses and bodies.

use http::StatusCode;
use serde_json::{Map, Value};

/// Which generation endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Completion,
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
}

/// An error answer: status and JSON body.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub body: String,
}

impl ApiError {
    /// vLLM's OpenAI-shaped error: `{"error":{"message","type","param","code"}}`.
    pub fn openai(status: StatusCode, kind: &str, message: &str, param: Option<&str>) -> Self {
        let param = param.map_or_else(|| "null".to_owned(), json_str);
        let body = format!(
            r#"{{"error":{{"message":{},"type":{},"param":{param},"code":{}}}}}"#,
            json_str(message),
            json_str(kind),
            status.as_u16()
        );
        Self { status, body }
    }

    fn bad_request(message: &str, param: &str) -> Self {
        Self::openai(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            message,
            Some(param),
        )
    }
}

/// A string as a JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// One pydantic error, printed as vLLM prints it (a Python dict repr).
struct PyError {
    kind: &'static str,
    loc: String,
    msg: String,
    input: String,
    ctx: Option<String>,
}

impl PyError {
    fn new(kind: &'static str, loc: &str, msg: &str, input: &Value) -> Self {
        Self {
            kind,
            loc: loc.to_owned(),
            msg: msg.to_owned(),
            input: py_input(input),
            ctx: None,
        }
    }
}

fn validation(errors: &[PyError]) -> ApiError {
    let mut message = format!(
        "{} validation error{}:",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        message.push_str(&format!(
            "\n  {{'type': '{}', 'loc': {}, 'msg': {}, 'input': {}",
            e.kind,
            py_str(&e.loc),
            py_str(&e.msg),
            e.input
        ));
        if let Some(ctx) = &e.ctx {
            message.push_str(&format!(", 'ctx': {{'error': {}}}", py_str(ctx)));
        }
        message.push('}');
    }
    let param = errors.first().map_or("body", |e| e.loc.as_str());
    ApiError::openai(
        StatusCode::BAD_REQUEST,
        "Bad Request",
        &message,
        Some(param),
    )
}

/// Python's `repr` of a string.
fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// How vLLM shows a pydantic error's input: containers summarised, scalars as Python reprs.
fn py_input(v: &Value) -> String {
    match v {
        Value::Object(m) => py_str(&format!("<dict of {} items>", m.len())),
        Value::Array(a) => py_str(&format!("<list of {} items>", a.len())),
        Value::String(s) => py_str(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Null => "None".to_owned(),
    }
}

/// The FastAPI error for a body that is not valid JSON, with Python's message and position.
fn json_invalid(text: &str, err: &serde_json::Error) -> ApiError {
    let bytes = text.as_bytes();
    // Byte offset of serde's (1-based line, byte column) position.
    let line_start = if err.line() <= 1 {
        0
    } else {
        memchr::memchr_iter(b'\n', bytes)
            .nth(err.line() - 2)
            .map_or(bytes.len(), |i| i + 1)
    };
    let at = (line_start + err.column()).min(bytes.len());
    let shown = err.to_string();
    let last_significant = bytes[..at]
        .iter()
        .rev()
        .find(|b| !b" \t\r\n".contains(b))
        .copied();
    let (msg, pos) = if err.is_eof() {
        let msg = if shown.starts_with("EOF while parsing a string") {
            let quote = bytes.iter().rposition(|&b| b == b'"').unwrap_or(0);
            return finish_json_invalid(text, "Unterminated string starting at", quote);
        } else if shown.starts_with("EOF while parsing an object") {
            match last_significant {
                Some(b'{' | b',') => "Expecting property name enclosed in double quotes",
                Some(b':') => "Expecting value",
                _ => "Expecting ',' delimiter",
            }
        } else if shown.starts_with("EOF while parsing a list") {
            match last_significant {
                Some(b'[' | b',') => "Expecting value",
                _ => "Expecting ',' delimiter",
            }
        } else {
            "Expecting value"
        };
        (msg, bytes.len())
    } else {
        let at = at.saturating_sub(1);
        let back = |accept: fn(u8) -> bool| {
            let mut i = at;
            while i > 0 && accept(bytes[i - 1]) {
                i -= 1;
            }
            i
        };
        if shown.starts_with("key must be a string") {
            ("Expecting property name enclosed in double quotes", at)
        } else if shown.starts_with("expected `:`") {
            ("Expecting ':' delimiter", at)
        } else if shown.starts_with("expected `,`") {
            ("Expecting ',' delimiter", at)
        } else if shown.starts_with("trailing characters") {
            ("Extra data", at)
        } else if shown.starts_with("trailing comma") {
            match bytes.get(at) {
                Some(b'}') => ("Expecting property name enclosed in double quotes", at),
                _ => ("Expecting value", at),
            }
        } else if shown.starts_with("control character") {
            ("Invalid control character at", at)
        } else if shown.starts_with("invalid escape") {
            ("Invalid \\escape", at.saturating_sub(1))
        } else if shown.starts_with("expected ident") {
            ("Expecting value", back(|b| b.is_ascii_alphabetic()))
        } else if shown.starts_with("invalid number") || shown.starts_with("number out of") {
            let pos = back(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
            ("Expecting value", pos)
        } else {
            ("Expecting value", at)
        }
    };
    finish_json_invalid(text, msg, pos)
}

fn finish_json_invalid(text: &str, msg: &str, byte_pos: usize) -> ApiError {
    // Python counts characters, not bytes.
    let pos = text
        .get(..byte_pos)
        .map_or(byte_pos, |prefix| prefix.chars().count());
    let mut e = PyError::new(
        "json_invalid",
        &format!("body.{pos}"),
        "JSON decode error",
        &Value::Object(Map::new()),
    );
    e.ctx = Some(msg.to_owned());
    validation(&[e])
}

/// Reads an optional integer field (pydantic lax mode: integral floats and numeric strings).
fn int_field(body: &Map<String, Value>, loc: &str, errors: &mut Vec<PyError>) -> Option<i64> {
    let key = loc.rsplit('.').next().unwrap_or(loc);
    match body.get(key)? {
        Value::Null => None,
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i)
            } else if n.is_u64() {
                Some(i64::MAX)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.is_finite() && f.fract() == 0.0 {
                    // Saturating conversion.
                    Some(f as i64)
                } else {
                    errors.push(PyError::new(
                        "int_from_float",
                        loc,
                        "Input should be a valid integer, got a number with a fractional part",
                        &body[key],
                    ));
                    None
                }
            }
        }
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(i) => Some(i),
            Err(_) => {
                errors.push(PyError::new(
                    "int_parsing",
                    loc,
                    "Input should be a valid integer, unable to parse string as an integer",
                    &body[key],
                ));
                None
            }
        },
        other => {
            errors.push(PyError::new(
                "int_type",
                loc,
                "Input should be a valid integer",
                other,
            ));
            None
        }
    }
}

/// Reads an optional boolean field.
fn bool_field(body: &Map<String, Value>, loc: &str, errors: &mut Vec<PyError>) -> Option<bool> {
    let key = loc.rsplit('.').next().unwrap_or(loc);
    match body.get(key)? {
        Value::Null => None,
        Value::Bool(b) => Some(*b),
        other => {
            errors.push(PyError::new(
                "bool_type",
                loc,
                "Input should be a valid boolean",
                other,
            ));
            None
        }
    }
}

fn tokens_of_text(len: usize) -> u64 {
    (len as u64).div_ceil(4)
}

/// Prompt tokens of a chat request: a chat-template overhead plus bytes/4 per message.
fn chat_prompt_tokens(messages: &[Value]) -> u64 {
    let content_len = |m: &Value| match m.get("content") {
        Some(Value::String(s)) => s.len(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(str::len)
            .sum(),
        _ => 0,
    };
    messages.iter().fold(2u64, |acc, m| {
        acc.saturating_add(4 + tokens_of_text(content_len(m)))
    })
}

/// Prompt tokens of a completions prompt; `Err` for a missing, empty, batched or mistyped one.
fn completion_prompt_tokens(prompt: Option<&Value>) -> Result<u64, ApiError> {
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
        match body.get("messages") {
            None => {
                errors.push(PyError::new(
                    "missing",
                    "body.messages",
                    "Field required",
                    &Value::Object(body.clone()),
                ));
                None
            }
            Some(Value::Array(m)) => Some(m.as_slice()),
            Some(other) => {
                errors.push(PyError::new(
                    "list_type",
                    "body.messages",
                    "Input should be a valid list",
                    other,
                ));
                None
            }
        }
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
    if let Some(requested) = requested_model
        && requested != model
    {
        let message = format!("The model `{requested}` does not exist. Valid aliases: {model}.");
        return Err(ApiError::openai(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &message,
            Some("model"),
        ));
    }
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
    if let Some(m) = max_tokens
        && m < 1
    {
        let message =
            format!("max_tokens must be at least 1, got {m}. (parameter=max_tokens, value={m})");
        return Err(ApiError::bad_request(&message, "max_tokens"));
    }
    let prompt_tokens = match kind {
        Kind::Chat => chat_prompt_tokens(messages.unwrap_or_default()),
        Kind::Completion => completion_prompt_tokens(body.get("prompt"))?,
    };
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
    {
        let message = format!(
            "max_tokens={m} cannot be greater than max_model_len={max_model_len}. Please request \
             fewer output tokens. (parameter=max_tokens, value={m})"
        );
        return Err(ApiError::bad_request(&message, "max_tokens"));
    }
    // Both fit in u32 now: prompt_tokens < max_model_len and 1 <= max_tokens <= max_model_len.
    let prompt_tokens = prompt_tokens as u32;
    let room = max_model_len - prompt_tokens;
    let default = match kind {
        Kind::Chat => 64,
        Kind::Completion => 16,
    };
    let max_tokens = max_tokens.map_or(default, |m| m as u32).min(room);
    Ok(Plan {
        stream,
        include_usage: stream && include_usage,
        continuous_usage: stream && include_usage && continuous_usage,
        prompt_tokens,
        max_tokens,
        ignore_eos,
    })
}

/// Parses the body into a JSON object, or the FastAPI error for it.
pub(crate) fn parse_object(raw: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(ApiError::openai(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "There was an error parsing the body",
            None,
        ));
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(other) => Err(validation(&[PyError::new(
            "model_attributes_type",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
            &other,
        )])),
        Err(err) => Err(json_invalid(text, &err)),
    }
}

/// The optional `model` field; records a type error if it is not a string.
fn check_model_type<'a>(
    body: &'a Map<String, Value>,
    errors: &mut Vec<PyError>,
) -> Option<&'a str> {
    match body.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(PyError::new(
                "string_type",
                "body.model",
                "Input should be a valid string",
                other,
            ));
            None
        }
    }
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
    let body = parse_object(raw)?;
    let mut errors = Vec::new();
    let requested = check_model_type(&body, &mut errors);
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
    if let Some(requested) = requested
        && requested != model
    {
        let message = format!("The model `{requested}` does not exist. Valid aliases: {model}.");
        return Err(ApiError::openai(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &message,
            Some("model"),
        ));
    }
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
