//! `POST /v1/messages` (the Anthropic Messages API) as vLLM 0.32 serves it: the request, the
//! streamed events of `messages_stream.sse` and the body of `messages_nonstream.json`, errors
//! Anthropic-shaped (`{"type":"error","error":{"type","message"}}`).
//!
//! Shapes followed: the captures; vLLM's `vllm/entrypoints/anthropic/serving.py`
//! (`message_stream_converter`, `messages_full_converter`) for what the captures do not show:
//! a block starts with its first non-empty delta (so EOS, an empty delta, sends nothing), a
//! thinking block ends with a `signature_delta`, a tool call is a `tool_use` block of
//! `input_json_delta`s, and `stop_reason` is `end_turn`, `max_tokens` or `tool_use`.
//! `input_tokens` is the prompt less its cached tokens (reported as
//! `cache_read_input_tokens`), except in `message_start`, which has the whole prompt.

use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::Value;

use super::cache::push_message;
use super::output::{Collected, Piece, Shape, first_tool_name};
use super::pydantic::{
    ApiError, PyError, bool_field, check_model_type, int_field, json_str, parse_object, validation,
};
use super::render::{self, Finish};
use super::reply::ENGINE_ERROR;
use super::request::{
    Echo, Plan, budget, chat_prompt, check_min_tokens, check_model, content_text, messages_field,
    tokens_of_text,
};

/// Parses and validates a Messages request (`model`, `messages` and `max_tokens` required).
pub(crate) fn parse(raw: &[u8], model: &str, max_model_len: u32) -> Result<Plan, ApiError> {
    let body = parse_object(raw)?;
    let whole = Value::Object(body.clone());
    let mut errors = Vec::new();
    if !body.contains_key("model") {
        errors.push(PyError::new(
            "missing",
            "body.model",
            "Field required",
            &whole,
        ));
    }
    let requested = check_model_type(&body, &mut errors);
    let messages = messages_field(&body, &mut errors);
    if !body.contains_key("max_tokens") {
        errors.push(PyError::new(
            "missing",
            "body.max_tokens",
            "Field required",
            &whole,
        ));
    }
    let max_tokens = int_field(&body, "body.max_tokens", &mut errors);
    let stream = bool_field(&body, "body.stream", &mut errors).unwrap_or(false);
    // Not a Messages field: the simulator honours it as chat does.
    let ignore_eos = bool_field(&body, "body.ignore_eos", &mut errors).unwrap_or(false);
    if !errors.is_empty() {
        return Err(validation(&errors));
    }
    check_model(requested, model)?;
    check_min_tokens(max_tokens)?;
    let mut key = Vec::new();
    let mut tokens = 0u64;
    let system = content_text(body.get("system"));
    if !system.is_empty() {
        push_message(&mut key, "system", &system);
        tokens += 4 + tokens_of_text(system.len());
    }
    tokens += chat_prompt(messages.unwrap_or_default(), &mut key);
    let (prompt_tokens, max_tokens) = budget(tokens, max_tokens, max_model_len, 64, false)?;
    Ok(Plan {
        stream,
        include_usage: false,
        continuous_usage: false,
        prompt_tokens,
        max_tokens,
        ignore_eos,
        prompt_key: key,
        tool_name: first_tool_name(body.get("tools")),
        echo: Echo::default(),
    })
}

/// An error re-shaped as the Messages API answers them: `{"type":"error","error":{...}}`
/// with the OpenAI error's type and message.
pub(crate) fn anthropic(e: ApiError) -> ApiError {
    let v: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
    let field = |k: &str| v["error"][k].as_str().unwrap_or("").to_owned();
    let body = format!(
        r#"{{"type":"error","error":{{"type":{},"message":{}}}}}"#,
        json_str(&field("type")),
        json_str(&field("message"))
    );
    ApiError {
        status: e.status,
        body,
    }
}

/// The block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    Tool,
}

/// What every event and body of one answer shares.
pub(crate) struct Head {
    pub id: String,
    pub model_json: String,
    pub prompt_tokens: u32,
    pub cached: u32,
    pub shape: Shape,
    /// The thinking block's signature.
    signature: String,
}

impl Head {
    pub fn new(id: String, model_json: &str, plan: &Plan, cached: u32, shape: Shape) -> Self {
        let seed = render::hash(id.as_bytes());
        Self {
            model_json: model_json.to_owned(),
            prompt_tokens: plan.prompt_tokens,
            cached,
            shape,
            signature: format!("{:016x}{:016x}", render::mix(seed, 1), render::mix(seed, 2)),
            id,
        }
    }

    fn usage(&self, output_tokens: u32) -> String {
        let (input, cached) = (self.prompt_tokens - self.cached, self.cached);
        format!(
            r#"{{"input_tokens":{input},"output_tokens":{output_tokens},"cache_creation_input_tokens":0,"cache_read_input_tokens":{cached}}}"#
        )
    }

    fn stop_reason(&self, out_called: bool, finish: Finish) -> &'static str {
        match finish {
            _ if out_called => "tool_use",
            Finish::Stop => "end_turn",
            Finish::Length => "max_tokens",
        }
    }

    fn tool(&self) -> (&str, &str) {
        self.shape
            .tool
            .as_ref()
            .map_or(("", "null"), |t| (t.id.as_str(), t.name_json.as_str()))
    }
}

/// The non-streamed body.
pub(crate) fn body(head: &Head, out: &Collected, tokens: u32, finish: Finish) -> String {
    let mut blocks = Vec::new();
    if !out.reasoning.is_empty() {
        blocks.push(format!(
            r#"{{"type":"thinking","thinking":"{}","signature":"{}"}}"#,
            out.reasoning, head.signature
        ));
    }
    if !out.text.is_empty() {
        blocks.push(format!(r#"{{"type":"text","text":"{}"}}"#, out.text));
    }
    if out.called {
        let (id, name) = head.tool();
        blocks.push(format!(
            r#"{{"type":"tool_use","id":"chatcmpl-tool-{id}","name":{name},"input":{{"input":"{}"}}}}"#,
            out.args_words
        ));
    }
    format!(
        r#"{{"id":"{}","type":"message","role":"assistant","content":[{}],"model":{},"stop_reason":"{}","usage":{}}}"#,
        head.id,
        blocks.join(","),
        head.model_json,
        head.stop_reason(out.called, finish),
        head.usage(tokens)
    )
}

/// The state of one streamed answer.
pub(crate) struct Frames {
    head: Head,
    /// The open block and its index.
    open: Option<(Block, u32)>,
    next_index: u32,
    called: bool,
}

fn emit(buf: &mut String, name: &str, data: std::fmt::Arguments<'_>) {
    let _ = write!(buf, "event: {name}\ndata: ");
    let _ = buf.write_fmt(data);
    buf.push_str("\n\n");
}

impl Frames {
    pub fn new(head: Head) -> Self {
        Self {
            head,
            open: None,
            next_index: 0,
            called: false,
        }
    }

    /// `message_start`, with the whole prompt as `input_tokens`.
    pub fn start(&mut self) -> Bytes {
        let mut buf = String::with_capacity(300);
        let h = &self.head;
        emit(
            &mut buf,
            "message_start",
            format_args!(
                r#"{{"type":"message_start","message":{{"id":"{}","type":"message","role":"assistant","content":[],"model":{},"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{},"output_tokens":0}}}}}}"#,
                h.id, h.model_json, h.prompt_tokens
            ),
        );
        Bytes::from(buf)
    }

    /// The events of one token: none for an empty one.
    pub fn token(&mut self, piece: Piece) -> Bytes {
        let (block, text) = match piece {
            Piece::Reasoning(w) => (Block::Thinking, w.into()),
            Piece::Text(w) => (Block::Text, w.into()),
            Piece::Args { .. } => (Block::Tool, piece.json()),
        };
        if text.is_empty() {
            return Bytes::new();
        }
        let mut buf = String::with_capacity(300);
        let index = match self.open {
            Some((open, index)) if open == block => index,
            _ => {
                self.close(&mut buf);
                self.begin(&mut buf, block)
            }
        };
        let (kind, field) = match block {
            Block::Thinking => ("thinking_delta", "thinking"),
            Block::Text => ("text_delta", "text"),
            Block::Tool => ("input_json_delta", "partial_json"),
        };
        emit(
            &mut buf,
            "content_block_delta",
            format_args!(
                r#"{{"type":"content_block_delta","delta":{{"type":"{kind}","{field}":"{text}"}},"index":{index}}}"#
            ),
        );
        Bytes::from(buf)
    }

    fn begin(&mut self, buf: &mut String, block: Block) -> u32 {
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((block, index));
        let content = match block {
            Block::Thinking => r#"{"type":"thinking","thinking":""}"#.to_owned(),
            Block::Text => r#"{"type":"text","text":""}"#.to_owned(),
            Block::Tool => {
                self.called = true;
                let (id, name) = self.head.tool();
                format!(
                    r#"{{"type":"tool_use","id":"chatcmpl-tool-{id}","name":{name},"input":{{}}}}"#
                )
            }
        };
        emit(
            buf,
            "content_block_start",
            format_args!(
                r#"{{"type":"content_block_start","content_block":{content},"index":{index}}}"#
            ),
        );
        index
    }

    fn close(&mut self, buf: &mut String) {
        let Some((block, index)) = self.open.take() else {
            return;
        };
        if block == Block::Thinking {
            emit(
                buf,
                "content_block_delta",
                format_args!(
                    r#"{{"type":"content_block_delta","delta":{{"type":"signature_delta","signature":"{}"}},"index":{index}}}"#,
                    self.head.signature
                ),
            );
        }
        emit(
            buf,
            "content_block_stop",
            format_args!(r#"{{"type":"content_block_stop","index":{index}}}"#),
        );
    }

    /// The events that end the answer: the open block's stop, `message_delta` with the
    /// stop reason and the final usage, `message_stop`.
    pub fn finish(&mut self, tokens: u32, finish: Finish) -> Bytes {
        let mut buf = String::with_capacity(500);
        self.close(&mut buf);
        emit(
            &mut buf,
            "message_delta",
            format_args!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":"{}","stop_sequence":null}},"usage":{}}}"#,
                self.head.stop_reason(self.called, finish),
                self.head.usage(tokens)
            ),
        );
        emit(
            &mut buf,
            "message_stop",
            format_args!(r#"{{"type":"message_stop"}}"#),
        );
        Bytes::from(buf)
    }

    /// The `error` event of a generation that failed (the error-event fault).
    pub fn error_event(&mut self) -> Bytes {
        let mut buf = String::new();
        emit(
            &mut buf,
            "error",
            format_args!(
                r#"{{"type":"error","error":{{"type":"internal_error","message":"{ENGINE_ERROR}"}}}}"#
            ),
        );
        Bytes::from(buf)
    }
}
