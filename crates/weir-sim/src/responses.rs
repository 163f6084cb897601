//! `POST /v1/responses` (the OpenAI Responses API) as vLLM 0.32 serves it: the request, the
//! response object (in the key order of `responses_nonstream.json`), its output items and
//! usage. The stream's events are in [`events`].
//!
//! Shapes followed: the captures for the message item, the response object and the usage
//! (`input_tokens_details.cached_tokens`, `output_tokens_details.reasoning_tokens`); vLLM's
//! `vllm/entrypoints/openai/responses/simple_streaming_events.py` and openai-python's
//! `ResponseReasoningItem` / `ResponseFunctionToolCall` for the reasoning and function-call
//! items (fields in openai-python's order). Item ids: `msg_`, `rs_`, `fc_` and `call_` with 16
//! hex digits, as the capture's `msg_`.

pub(crate) mod events;

use serde_json::Value;

use super::cache::push_message;
use super::output::{Collected, Shape};
use super::pydantic::{
    ApiError, PyError, bool_field, check_model_type, int_field, json_str, parse_object, validation,
};
use super::render::{self, Finish};
use super::request::{
    Echo, Plan, budget, chat_prompt, check_min_tokens, check_model, tokens_of_text,
};
use crate::output::first_tool_name;

/// Parses and validates a Responses request.
pub(crate) fn parse(raw: &[u8], model: &str, max_model_len: u32) -> Result<Plan, ApiError> {
    let body = parse_object(raw)?;
    let mut errors = Vec::new();
    let input = body.get("input");
    if input.is_none() {
        let whole = Value::Object(body.clone());
        errors.push(PyError::new(
            "missing",
            "body.input",
            "Field required",
            &whole,
        ));
    }
    let requested = check_model_type(&body, &mut errors);
    let max_output_tokens = int_field(&body, "body.max_output_tokens", &mut errors);
    let stream = bool_field(&body, "body.stream", &mut errors).unwrap_or(false);
    // Not a Responses field: the simulator honours it as chat does.
    let ignore_eos = bool_field(&body, "body.ignore_eos", &mut errors).unwrap_or(false);
    let instructions = match body.get("instructions") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            let msg = "Input should be a valid string";
            errors.push(PyError::new("string_type", "body.instructions", msg, other));
            None
        }
    };
    let mut key = Vec::new();
    let mut tokens = 2u64;
    if let Some(text) = instructions {
        push_message(&mut key, "system", text);
        tokens += 4 + tokens_of_text(text.len());
    }
    match input {
        None => {}
        Some(Value::String(text)) => {
            push_message(&mut key, "user", text);
            tokens += 4 + tokens_of_text(text.len());
        }
        Some(Value::Array(items)) => tokens += chat_prompt(items, &mut key) - 2,
        Some(other) => {
            let msg = "Input should be a valid string";
            errors.push(PyError::new("string_type", "body.input", msg, other));
        }
    }
    if !errors.is_empty() {
        return Err(validation(&errors));
    }
    check_model(requested, model)?;
    check_min_tokens(max_output_tokens)?;
    // vLLM caps max_output_tokens to the context left instead of refusing it.
    let (prompt_tokens, max_tokens) = budget(tokens, max_output_tokens, max_model_len, 64, true)?;
    let tools = body.get("tools").filter(|t| t.is_array());
    Ok(Plan {
        stream,
        include_usage: false,
        continuous_usage: false,
        prompt_tokens,
        max_tokens,
        ignore_eos,
        prompt_key: key,
        tool_name: first_tool_name(tools),
        echo: Echo {
            max_output_tokens,
            instructions: instructions.map(json_str),
            tools: tools.map(Value::to_string),
        },
    })
}

/// What every event and body of one answer shares.
pub(crate) struct Head {
    pub id: String,
    pub created: u64,
    pub model_json: String,
    pub echo: Echo,
    pub prompt_tokens: u32,
    pub cached: u32,
    pub shape: Shape,
    pub msg_id: String,
    pub rs_id: String,
    pub fc_id: String,
}

impl Head {
    pub fn new(id: String, created: u64, model_json: &str, plan: &Plan, seed: u64) -> Self {
        Self {
            id,
            created,
            model_json: model_json.to_owned(),
            echo: plan.echo.clone(),
            prompt_tokens: plan.prompt_tokens,
            cached: 0,
            shape: Shape::default(),
            msg_id: format!("msg_{:016x}", render::mix(seed, 8)),
            rs_id: format!("rs_{:016x}", render::mix(seed, 9)),
            fc_id: format!("fc_{:016x}", render::mix(seed, 10)),
        }
    }

    /// The response object: `status` in_progress (no `usage` yet), or the finished one.
    fn object(&self, finish: Option<Finish>, output: &str, usage: Option<&str>) -> String {
        let (status, incomplete) = match finish {
            None => ("in_progress", "null"),
            Some(Finish::Stop) => ("completed", "null"),
            Some(Finish::Length) => ("incomplete", r#"{"reason":"max_output_tokens"}"#),
        };
        let e = &self.echo;
        let instructions = e.instructions.as_deref().unwrap_or("null");
        let (tool_choice, tools) = match &e.tools {
            Some(tools) if tools != "[]" => ("auto", tools.as_str()),
            _ => ("none", "[]"),
        };
        let max_output = e
            .max_output_tokens
            .map_or_else(|| "null".to_owned(), |m| m.to_string());
        let usage = usage.unwrap_or("null");
        let (id, created, model) = (&self.id, self.created, &self.model_json);
        format!(
            r#"{{"id":"{id}","created_at":{created},"incomplete_details":{incomplete},"instructions":{instructions},"metadata":null,"model":{model},"object":"response","output":[{output}],"parallel_tool_calls":true,"temperature":1.0,"tool_choice":"{tool_choice}","tools":{tools},"top_p":1.0,"background":false,"max_output_tokens":{max_output},"max_tool_calls":null,"previous_response_id":null,"prompt":null,"reasoning":null,"service_tier":"auto","status":"{status}","text":null,"top_logprobs":null,"truncation":"disabled","usage":{usage},"user":null,"presence_penalty":0.0,"frequency_penalty":0.0,"kv_transfer_params":null,"ec_transfer_params":null,"input_messages":null,"output_messages":null}}"#
        )
    }

    fn usage(&self, output_tokens: u32) -> String {
        let (input, cached) = (self.prompt_tokens, self.cached);
        let reasoning = self.shape.reasoning_tokens(output_tokens);
        let total = u64::from(input) + u64::from(output_tokens);
        format!(
            r#"{{"input_tokens":{input},"input_tokens_details":{{"cached_tokens":{cached},"cache_write_tokens":0,"input_tokens_per_turn":[],"cached_tokens_per_turn":[]}},"output_tokens":{output_tokens},"output_tokens_details":{{"reasoning_tokens":{reasoning},"tool_output_tokens":0,"output_tokens_per_turn":[],"tool_output_tokens_per_turn":[]}},"total_tokens":{total}}}"#
        )
    }

    /// The reasoning item: in progress (`None`) or done with its text.
    fn reasoning_item(&self, text: Option<&str>) -> String {
        let id = &self.rs_id;
        match text {
            None => format!(
                r#"{{"id":"{id}","summary":[],"type":"reasoning","content":null,"encrypted_content":null,"status":"in_progress"}}"#
            ),
            Some(t) => format!(
                r#"{{"id":"{id}","summary":[],"type":"reasoning","content":[{{"text":"{t}","type":"reasoning_text"}}],"encrypted_content":null,"status":"completed"}}"#
            ),
        }
    }

    /// The message item: in progress (`None`) or done with its text.
    fn message_item(&self, text: Option<&str>) -> String {
        let id = &self.msg_id;
        match text {
            None => format!(
                r#"{{"id":"{id}","content":[],"role":"assistant","status":"in_progress","type":"message","phase":null}}"#
            ),
            Some(t) => format!(
                r#"{{"id":"{id}","content":[{}],"role":"assistant","status":"completed","type":"message","phase":null}}"#,
                text_part(t, "null")
            ),
        }
    }

    /// The function call item with the arguments so far.
    fn call_item(&self, args: &str, done: bool) -> String {
        let (id, name) = (&self.fc_id, self.tool_name());
        let call = self.shape.tool.as_ref().map_or("", |t| t.id.as_str());
        let status = if done { "completed" } else { "in_progress" };
        format!(
            r#"{{"id":"{id}","arguments":"{args}","call_id":"call_{call}","name":{name},"type":"function_call","status":"{status}"}}"#
        )
    }

    fn tool_name(&self) -> &str {
        self.shape
            .tool
            .as_ref()
            .map_or("null", |t| t.name_json.as_str())
    }

    /// The finished output items, comma-separated.
    fn output(&self, out: &Collected) -> String {
        let mut items = Vec::new();
        if !out.reasoning.is_empty() {
            items.push(self.reasoning_item(Some(&out.reasoning)));
        }
        if out.called {
            items.push(self.call_item(&out.args, true));
        } else if !out.text.is_empty() {
            items.push(self.message_item(Some(&out.text)));
        }
        items.join(",")
    }
}

/// An `output_text` content part; `logprobs` is `[]` while streaming and `null` when done.
fn text_part(text: &str, logprobs: &str) -> String {
    format!(r#"{{"annotations":[],"text":"{text}","type":"output_text","logprobs":{logprobs}}}"#)
}

/// The non-streamed body.
pub(crate) fn body(head: &Head, out: &Collected, tokens: u32, finish: Finish) -> String {
    let output = head.output(out);
    head.object(Some(finish), &output, Some(&head.usage(tokens)))
}
