//! The bytes of a streamed generation, per API: OpenAI chunks (chat, completions) ending
//! with `data: [DONE]`, or the named events of the Responses and Messages APIs.

use bytes::Bytes;

use super::output::Piece;
use super::render::{self, Chunks, Finish};
use super::request::Kind;
use super::{messages, responses};

pub(crate) enum Frames {
    OpenAi(Chunks),
    Responses(Box<responses::events::Frames>),
    Messages(Box<messages::Frames>),
}

impl Frames {
    /// What is sent on admission: the chat role chunk, the Responses `response.created` and
    /// `response.in_progress`, the Messages `message_start`; nothing for completions.
    pub fn start(&mut self) -> Option<Bytes> {
        match self {
            Frames::OpenAi(c) => (c.kind() == Kind::Chat).then(|| c.role()),
            Frames::Responses(f) => Some(f.start()),
            Frames::Messages(f) => Some(f.start()),
        }
    }

    /// The bytes of one token (empty when the API sends nothing for it); `finish` and the
    /// `fingerprint` go on the last chunk of an OpenAI stream.
    pub fn token(
        &mut self,
        piece: Piece,
        sent: u32,
        finish: Option<Finish>,
        fingerprint: Option<&str>,
    ) -> Bytes {
        match self {
            Frames::OpenAi(c) => c.token(piece, sent, finish, fingerprint),
            Frames::Responses(f) => f.token(piece),
            Frames::Messages(f) => f.token(piece),
        }
    }

    /// What ends a generation that ran to its end: the usage chunk when asked for (OpenAI),
    /// the closing events (Responses, Messages).
    pub fn finish(
        &mut self,
        sent: u32,
        finish: Finish,
        include_usage: bool,
        fingerprint: &str,
    ) -> Option<Bytes> {
        match self {
            Frames::OpenAi(c) => include_usage.then(|| c.usage_chunk(sent, fingerprint)),
            Frames::Responses(f) => Some(f.finish(sent, finish)),
            Frames::Messages(f) => Some(f.finish(sent, finish)),
        }
    }

    /// The mid-stream error event of the error-event fault.
    pub fn error_event(&mut self) -> Bytes {
        match self {
            Frames::OpenAi(_) => Bytes::from_static(render::ERROR_EVENT),
            Frames::Responses(f) => f.error_event(),
            Frames::Messages(f) => f.error_event(),
        }
    }

    /// The last bytes of every stream: `data: [DONE]` (OpenAI); nothing on the others.
    pub fn done(&self) -> Option<Bytes> {
        match self {
            Frames::OpenAi(_) => Some(Bytes::from_static(render::DONE)),
            _ => None,
        }
    }
}
