//! What a generation's tokens are: answer text, reasoning (`x-sim-reasoning: N`: the first N
//! tokens) or a function call's arguments (`x-sim-tool-call: 1`), and what they add up to.

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::pydantic::{ApiError, json_str};
use super::render;

/// The arguments of a simulated function call are `{"input": "<the words>"}`; these are
/// their first and last pieces, raw and as they appear inside a JSON string.
#[cfg(test)]
const ARGS_OPEN: &str = r#"{"input": ""#;
pub(crate) const ARGS_OPEN_JSON: &str = r#"{\"input\": \""#;
#[cfg(test)]
const ARGS_CLOSE: &str = r#""}"#;
pub(crate) const ARGS_CLOSE_JSON: &str = r#"\"}"#;
/// The function called when the request names no tool.
const DEFAULT_TOOL: &str = "sim_tool";

/// The function call a generation makes.
#[derive(Debug, Clone)]
pub(crate) struct Tool {
    /// The function's name as a JSON string literal.
    pub name_json: String,
    /// 16 hex digits that make the call's ids (`chatcmpl-tool-…`, `call_…`, `fc_…`).
    pub id: String,
}

/// How a generation's tokens are split: reasoning first, then an answer or a function call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shape {
    /// Tokens of reasoning before the answer.
    pub reasoning: u32,
    pub tool: Option<Tool>,
}

/// The per-request headers that shape the output: `x-sim-reasoning: N` (u32) and
/// `x-sim-tool-call: 1|0|true|false`. Returns (reasoning tokens, tool call wanted).
pub(crate) fn headers(headers: &HeaderMap) -> Result<(u32, bool), ApiError> {
    let bad = |name: &str, expected: &str| {
        let message = format!("invalid {name} header: expected {expected}");
        ApiError::openai(StatusCode::BAD_REQUEST, "BadRequestError", &message, None)
    };
    let value = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{0}").trim())
    };
    let reasoning = match value("x-sim-reasoning") {
        None => 0,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| bad("x-sim-reasoning", "a number of tokens"))?,
    };
    let tool = match value("x-sim-tool-call") {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(_) => return Err(bad("x-sim-tool-call", "1 or 0")),
    };
    Ok((reasoning, tool))
}

/// The name of the first tool of a request: `tools[0].function.name` (chat) or
/// `tools[0].name` (Responses, Messages).
pub(crate) fn first_tool_name(tools: Option<&Value>) -> Option<String> {
    let first = tools?.as_array()?.first()?;
    first
        .get("function")
        .and_then(|f| f.get("name"))
        .or_else(|| first.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl Shape {
    /// The shape of one request's output; the tool's ids come from the request seed.
    pub fn new(reasoning: u32, tool: bool, tool_name: Option<&str>, seed: u64) -> Self {
        let tool = tool.then(|| Tool {
            name_json: json_str(tool_name.unwrap_or(DEFAULT_TOOL)),
            id: format!("{:016x}", render::mix(seed, 6)),
        });
        Self { reasoning, tool }
    }

    /// Token `index` of `tokens`, whose text is `word` (EOS: empty).
    pub fn piece(&self, index: u32, tokens: u32, word: &'static str) -> Piece {
        if index < self.reasoning {
            Piece::Reasoning(word)
        } else if self.tool.is_some() {
            Piece::Args {
                first: index == self.reasoning,
                last: index + 1 == tokens,
                word,
            }
        } else {
            Piece::Text(word)
        }
    }

    /// Reasoning tokens of a generation of `tokens` tokens.
    pub fn reasoning_tokens(&self, tokens: u32) -> u32 {
        self.reasoning.min(tokens)
    }
}

/// One token's text, by what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(&'static str),
    Reasoning(&'static str),
    /// A piece of the function call's arguments: `word`, after [`ARGS_OPEN`] on the first
    /// and before [`ARGS_CLOSE`] on the last.
    Args {
        first: bool,
        last: bool,
        word: &'static str,
    },
}

impl Piece {
    /// Appends the piece as it appears inside a JSON string.
    pub fn push_json(self, out: &mut String) {
        match self {
            Piece::Text(w) | Piece::Reasoning(w) => out.push_str(w),
            Piece::Args { first, last, word } => {
                if first {
                    out.push_str(ARGS_OPEN_JSON);
                }
                out.push_str(word);
                if last {
                    out.push_str(ARGS_CLOSE_JSON);
                }
            }
        }
    }

    /// The piece inside a JSON string, as one string (allocates only for arguments).
    pub fn json(self) -> std::borrow::Cow<'static, str> {
        match self {
            Piece::Text(w) | Piece::Reasoning(w) => w.into(),
            args => {
                let mut s = String::new();
                args.push_json(&mut s);
                s.into()
            }
        }
    }
}

/// A whole generation's output, as JSON string contents (the vocabulary needs no escaping;
/// the arguments' quotes are escaped).
#[derive(Debug, Default, Clone)]
pub(crate) struct Collected {
    pub reasoning: String,
    pub text: String,
    /// The arguments string, escaped for a JSON string.
    pub args: String,
    /// The arguments' words alone: `{"input":"<words>"}` is the arguments as an object.
    pub args_words: String,
    /// Whether any piece was arguments (a function call was made).
    pub called: bool,
}

impl Collected {
    pub fn push(&mut self, piece: Piece) {
        match piece {
            Piece::Text(w) => self.text.push_str(w),
            Piece::Reasoning(w) => self.reasoning.push_str(w),
            Piece::Args { word, .. } => {
                self.called = true;
                piece.push_json(&mut self.args);
                self.args_words.push_str(word);
            }
        }
    }

    /// Every token of a generation, from the same word sequence as its stream.
    pub fn generate(shape: &Shape, seed: u64, tokens: u32, finish: render::Finish) -> Self {
        let mut words = fastrand::Rng::with_seed(render::mix(seed, 3));
        let mut out = Collected::default();
        for index in 0..tokens {
            let word = render::token(&mut words, index, tokens, finish);
            out.push(shape.piece(index, tokens, word));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_reasoning_then_arguments() {
        let shape = Shape::new(2, true, Some("f"), 1);
        assert_eq!(shape.tool.as_ref().unwrap().name_json, "\"f\"");
        let pieces: Vec<Piece> = (0..4).map(|i| shape.piece(i, 4, "w")).collect();
        assert_eq!(pieces[0], Piece::Reasoning("w"));
        assert_eq!(
            pieces[2],
            Piece::Args {
                first: true,
                last: false,
                word: "w"
            }
        );
        let mut c = Collected::default();
        pieces.into_iter().for_each(|p| c.push(p));
        assert_eq!(c.reasoning, "ww");
        let args: String = serde_json::from_str(&format!("\"{}\"", c.args)).unwrap();
        assert_eq!(args, format!("{ARGS_OPEN}ww{ARGS_CLOSE}"));
        let v: Value = serde_json::from_str(&args).unwrap();
        assert_eq!(v["input"], "ww");
        assert_eq!(shape.reasoning_tokens(1), 1);
    }
}
