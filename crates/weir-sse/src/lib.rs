//! The tee's SSE parser: finds `data:` events in the bytes as they pass, keeping only the
//! unfinished tail of a line (and the data of an event that spans chunks, both bounded),
//! and classifies each event's JSON (tokens, usage, finish, error).

mod classify;
mod parser;

pub use classify::{EventInfo, Usage, classify};
pub use parser::{DEFAULT_MAX_LINE, Event, SseParser};
