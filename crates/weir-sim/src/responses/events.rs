//! The events of a streamed Responses answer, as `responses_stream.sse` frames them: an
//! `event:` line naming each, its data carrying the same `type` and a `sequence_number`
//! counting from 0, no `[DONE]`.
//!
//! Order (vLLM's simple streaming): `response.created` and `response.in_progress` on
//! admission; with the first token of each part `response.output_item.added` (and
//! `response.content_part.added` for text and reasoning), then one delta per token
//! (`response.reasoning_text.delta`, `response.output_text.delta`,
//! `response.function_call_arguments.delta`); a part ends with its `.done` events and
//! `response.output_item.done`; the stream with `response.completed`, whose response has
//! `status: "incomplete"` and `incomplete_details.reason: "max_output_tokens"` when the
//! length limit ended it.

use std::fmt::Write as _;

use bytes::Bytes;

use super::{Head, text_part};
use crate::output::{Collected, Piece};
use crate::render::Finish;
use crate::reply::ENGINE_ERROR;

/// The part being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Reasoning,
    Message,
    Call,
}

/// The state of one streamed answer.
pub(crate) struct Frames {
    head: Head,
    seq: u32,
    output_index: u32,
    open: Open,
    out: Collected,
}

impl Frames {
    pub fn new(head: Head) -> Self {
        Self {
            head,
            seq: 0,
            output_index: 0,
            open: Open::None,
            out: Collected::default(),
        }
    }

    /// One event: `before` are the data's fields before `sequence_number` (each followed by
    /// a comma), `after` those between it and `type`.
    fn emit(&mut self, buf: &mut String, name: &str, before: &str, after: &str) {
        let seq = self.seq;
        self.seq += 1;
        let _ = write!(
            buf,
            "event: {name}\ndata: {{{before}\"sequence_number\":{seq},{after}\"type\":\"{name}\"}}\n\n"
        );
    }

    /// The fields that locate a part: `content_index` and `item_id` (before `output_index`).
    fn item_id(&self) -> &str {
        match self.open {
            Open::Reasoning => &self.head.rs_id,
            Open::Call => &self.head.fc_id,
            _ => &self.head.msg_id,
        }
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Bytes {
        let object = self.head.object(None, "", None);
        let mut buf = String::with_capacity(object.len() * 2 + 200);
        let fields = format!(r#""response":{object},"#);
        self.emit(&mut buf, "response.created", &fields, "");
        self.emit(&mut buf, "response.in_progress", &fields, "");
        Bytes::from(buf)
    }

    /// The events of one token; none for a token without text (EOS, or in vLLM a token
    /// that ends inside a UTF-8 character: `responses_stream.sse` has 15 deltas for 16
    /// tokens).
    pub fn token(&mut self, piece: Piece) -> Bytes {
        if let Piece::Text("") | Piece::Reasoning("") = piece {
            return Bytes::new();
        }
        let mut buf = String::with_capacity(400);
        let wanted = match piece {
            Piece::Reasoning(_) => Open::Reasoning,
            Piece::Text(_) => Open::Message,
            Piece::Args { .. } => Open::Call,
        };
        if self.open != wanted {
            self.close(&mut buf);
            self.open = wanted;
            self.added(&mut buf, piece);
        }
        self.out.push(piece);
        let (delta, index) = (piece.json(), self.output_index);
        let id = self.item_id().to_owned();
        match piece {
            Piece::Reasoning(_) => {
                let before = format!(
                    r#""content_index":0,"delta":"{delta}","item_id":"{id}","output_index":{index},"#
                );
                self.emit(&mut buf, "response.reasoning_text.delta", &before, "");
            }
            Piece::Text(_) => {
                let before = format!(
                    r#""content_index":0,"delta":"{delta}","item_id":"{id}","logprobs":[],"output_index":{index},"#
                );
                self.emit(&mut buf, "response.output_text.delta", &before, "");
            }
            Piece::Args { .. } => {
                let before =
                    format!(r#""delta":"{delta}","item_id":"{id}","output_index":{index},"#);
                self.emit(
                    &mut buf,
                    "response.function_call_arguments.delta",
                    &before,
                    "",
                );
            }
        }
        Bytes::from(buf)
    }

    /// The events that open a part.
    fn added(&mut self, buf: &mut String, piece: Piece) {
        let index = self.output_index;
        let item = match self.open {
            Open::Reasoning => self.head.reasoning_item(None),
            Open::Call => self.head.call_item(&piece.json(), false),
            _ => self.head.message_item(None),
        };
        let before = format!(r#""item":{item},"output_index":{index},"#);
        self.emit(buf, "response.output_item.added", &before, "");
        let part = match self.open {
            Open::Reasoning => r#"{"text":"","type":"reasoning_text"}"#.to_owned(),
            Open::Message => text_part("", "[]"),
            _ => return,
        };
        let id = self.item_id().to_owned();
        let before =
            format!(r#""content_index":0,"item_id":"{id}","output_index":{index},"part":{part},"#);
        self.emit(buf, "response.content_part.added", &before, "");
    }

    /// The events that close the open part.
    fn close(&mut self, buf: &mut String) {
        let (index, id) = (self.output_index, self.item_id().to_owned());
        let item = match self.open {
            Open::None => return,
            Open::Reasoning => {
                let text = self.out.reasoning.clone();
                let at = format!(r#""content_index":0,"item_id":"{id}","output_index":{index},"#);
                self.emit(
                    buf,
                    "response.reasoning_text.done",
                    &at,
                    &format!(r#""text":"{text}","#),
                );
                let part = format!(r#""part":{{"text":"{text}","type":"reasoning_text"}},"#);
                self.emit(
                    buf,
                    "response.content_part.done",
                    &format!("{at}{part}"),
                    "",
                );
                self.head.reasoning_item(Some(&text))
            }
            Open::Message => {
                let text = self.out.text.clone();
                let at = format!(r#""content_index":0,"item_id":"{id}","#);
                let before = format!(r#"{at}"logprobs":[],"output_index":{index},"#);
                let after = format!(r#""text":"{text}","#);
                self.emit(buf, "response.output_text.done", &before, &after);
                let part = text_part(&text, "null");
                let before = format!(r#"{at}"output_index":{index},"part":{part},"#);
                self.emit(buf, "response.content_part.done", &before, "");
                self.head.message_item(Some(&text))
            }
            Open::Call => {
                let (args, name) = (self.out.args.clone(), self.head.tool_name().to_owned());
                let before = format!(
                    r#""arguments":"{args}","item_id":"{id}","name":{name},"output_index":{index},"#
                );
                self.emit(buf, "response.function_call_arguments.done", &before, "");
                self.head.call_item(&args, true)
            }
        };
        let before = format!(r#""item":{item},"output_index":{index},"#);
        self.emit(buf, "response.output_item.done", &before, "");
        self.output_index += 1;
        self.open = Open::None;
    }

    /// The events that end the answer: the open part's and `response.completed`.
    pub fn finish(&mut self, tokens: u32, finish: Finish) -> Bytes {
        let mut buf = String::with_capacity(2048);
        self.close(&mut buf);
        let output = self.head.output(&self.out);
        let usage = self.head.usage(tokens);
        let object = self.head.object(Some(finish), &output, Some(&usage));
        self.emit(
            &mut buf,
            "response.completed",
            &format!(r#""response":{object},"#),
            "",
        );
        Bytes::from(buf)
    }

    /// The `error` event of a generation that failed (the error-event fault).
    pub fn error_event(&mut self) -> Bytes {
        let mut buf = String::new();
        let before = format!(r#""code":null,"message":"{ENGINE_ERROR}","param":null,"#);
        self.emit(&mut buf, "error", &before, "");
        Bytes::from(buf)
    }
}
