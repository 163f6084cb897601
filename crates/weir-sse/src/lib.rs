//! The tee's SSE parser: finds events (`data:` and `event:` fields) in the bytes as they
//! pass, keeping only the unfinished tail of a line (and the data and name of an event that
//! spans chunks, all bounded), and classifies each event's JSON (tokens, usage, finish,
//! error) for each API served: chat and completions, Responses, Messages. [`scan`] is the
//! one-pass JSON reader the chat classifier and the gateway's request inspection read with
//! first.

mod classify;
mod parser;
pub mod scan;

pub use classify::{Api, EventInfo, Reported, Usage, classify, classify_body, classify_event};
pub use parser::{DEFAULT_MAX_LINE, Event, MAX_EVENT_NAME, SseParser};
