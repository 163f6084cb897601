//! FastAPI/pydantic-style errors as vLLM returns them: OpenAI error bodies, validation errors
//! (with Python's JSON decode messages and positions) and lax typed field readers.

use http::StatusCode;
use serde_json::{Map, Value};

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

    pub fn bad_request(message: &str, param: &str) -> Self {
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
pub(crate) struct PyError {
    kind: &'static str,
    loc: String,
    msg: String,
    input: String,
    ctx: Option<String>,
}

impl PyError {
    pub fn new(kind: &'static str, loc: &str, msg: &str, input: &Value) -> Self {
        Self {
            kind,
            loc: loc.to_owned(),
            msg: msg.to_owned(),
            input: py_input(input),
            ctx: None,
        }
    }
}

pub(crate) fn validation(errors: &[PyError]) -> ApiError {
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
pub(crate) fn py_str(s: &str) -> String {
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
pub(crate) fn py_input(v: &Value) -> String {
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
pub(crate) fn json_invalid(text: &str, err: &serde_json::Error) -> ApiError {
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

pub(crate) fn finish_json_invalid(text: &str, msg: &str, byte_pos: usize) -> ApiError {
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
pub(crate) fn int_field(
    body: &Map<String, Value>,
    loc: &str,
    errors: &mut Vec<PyError>,
) -> Option<i64> {
    let key = loc.rsplit('.').next().unwrap_or(loc);
    let value = body.get(key)?;
    match value {
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
                        value,
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
                    value,
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
pub(crate) fn bool_field(
    body: &Map<String, Value>,
    loc: &str,
    errors: &mut Vec<PyError>,
) -> Option<bool> {
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
pub(crate) fn check_model_type<'a>(
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
