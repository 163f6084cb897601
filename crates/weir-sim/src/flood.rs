//! The hostile faults: streams that never end and bodies of many MiB, as a sick or hostile
//! backend would send them.
//!
//! Every byte after a response's first frame comes from one buffer built once and shared:
//! each frame is a clone of a `Bytes` (a reference count), so a flood allocates nothing per
//! event however long it runs. A flood ends when the client goes away (hyper drops the body)
//! or the simulator stops.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::Fault;
use super::handlers::Sim;
use super::metrics::{Reason, Tracker};
use super::output::{Collected, Piece};
use super::render::{self, Chunks, Details, Finish, Full};
use super::reply::{JSON, SSE, respond};
use super::request::{Kind, Plan};
use super::stream::SimBody;

/// Size a flood frame is built up to (whole events or lines only).
const FRAME: usize = 32 * 1024;
/// Bytes of content per frame of a huge body: 1 MiB is 16 frames.
const FILLER: usize = 64 * 1024;
/// Frames sent in a row before giving the runtime back to other tasks.
const BURST: u32 = 16;
/// Largest `huge-json` body, in MiB (its token count must fit the usage's `u32`).
pub(crate) const MAX_HUGE_MIB: u32 = 4096;
/// A token of a huge body: 4 bytes, so 1 MiB of content is 262,144 tokens.
const TOKEN: &[u8] = b" dam";
/// Stands for the content while a response is rendered; a raw control character appears
/// nowhere else in a rendered response (JSON escapes it).
const MARK: &str = "\u{1}";

/// `unit` repeated up to `size` bytes (at least once).
fn repeated(unit: &[u8], size: usize) -> Bytes {
    Bytes::from(unit.repeat((size / unit.len()).max(1)))
}

/// `data:` lines of JSON-ish text, never the blank line that would end the event.
static ENDLESS: LazyLock<Bytes> = LazyLock::new(|| {
    repeated(
        br#"data: {"id":"endless","choices":[{"index":0,"delta":{"content":"and on"}}]}
"#,
        FRAME,
    )
});

/// SSE comment lines: bytes that are never a token.
static JUNK: LazyLock<Bytes> = LazyLock::new(|| repeated(b": x\n", FRAME));

/// Content of a huge or endless body: JSON-safe text.
static CONTENT: LazyLock<Bytes> = LazyLock::new(|| repeated(TOKEN, FILLER));

/// The frames of the floods whose events carry the served model, built on first use.
#[derive(Default)]
pub(crate) struct Patterns {
    /// finish-flood and token-flood, for chat and for completions.
    cells: [OnceLock<Bytes>; 4],
}

impl Patterns {
    fn frame(&self, sim: &Sim, fault: Fault, kind: Kind) -> Bytes {
        let finish = matches!(fault, Fault::FinishFlood);
        let index = usize::from(finish) * 2 + usize::from(kind == Kind::Chat);
        let cell = &self.cells[index];
        cell.get_or_init(|| {
            let id = match kind {
                Kind::Chat => "chatcmpl-flood",
                Kind::Completion => "cmpl-flood",
            };
            let chunks = Chunks::new(kind, id, sim.created(), &sim.model_json, 0, false);
            let event = if finish {
                chunks.token(Piece::Text(""), 1, Some(Finish::Stop), None)
            } else {
                chunks.token(Piece::Text("a"), 1, None, None)
            };
            repeated(&event, FRAME)
        })
        .clone()
    }
}

/// Whether a fault is one of those answered here.
pub(crate) fn hostile(fault: Fault) -> bool {
    matches!(
        fault,
        Fault::EndlessEvent
            | Fault::FinishFlood
            | Fault::TokenFlood
            | Fault::JunkFlood
            | Fault::HugeJson { .. }
    )
}

/// What the answer to a generation request is made of.
pub(crate) struct Ask<'a> {
    pub kind: Kind,
    pub plan: &'a Plan,
    pub id: &'a str,
    pub created: u64,
}

/// The answer to a generation request with a hostile fault (one that [`hostile`] accepts).
pub(crate) fn answer(sim: &Arc<Sim>, fault: Fault, ask: &Ask<'_>) -> Response<SimBody> {
    let mut tracker = Tracker::new(sim.clone());
    tracker.admit_unslotted(ask.plan.prompt_tokens, Instant::now());
    let mut flood = Flood {
        tracker,
        head: None,
        frame: CONTENT.clone(),
        left: None,
        tail: None,
        sized: !ask.plan.stream,
        burst: 0,
    };
    let tokens = match fault {
        Fault::HugeJson { mib } => mib.min(MAX_HUGE_MIB) * ((1 << 20) / TOKEN.len() as u32),
        _ => 0,
    };
    let (head, tail) = if ask.plan.stream {
        streamed_ends(sim, ask, tokens)
    } else {
        whole_ends(sim, ask, tokens)
    };
    if let Fault::HugeJson { mib } = fault {
        let frames = u64::from(mib.min(MAX_HUGE_MIB)) * (1 << 20) / FILLER as u64;
        (flood.head, flood.left, flood.tail) = (Some(head), Some(frames), Some(tail));
    } else if ask.plan.stream {
        flood.frame = match fault {
            Fault::EndlessEvent => ENDLESS.clone(),
            Fault::JunkFlood => JUNK.clone(),
            _ => sim.patterns.frame(sim, fault, ask.kind),
        };
        // The chat role chunk ends where the content would start.
        flood.head = (ask.kind == Kind::Chat).then(|| head.slice(..role_len(&head)));
    } else {
        // A non-streamed flood: a JSON body whose content string never ends.
        flood.head = Some(head);
    }
    let content_type = if ask.plan.stream { SSE } else { JSON };
    respond(
        StatusCode::OK,
        Some(content_type),
        SimBody::Flood(Box::new(flood)),
    )
}

/// Length of the role chunk at the start of a streamed chat head.
fn role_len(head: &[u8]) -> usize {
    memchr::memmem::find(head, b"\n\n").map_or(0, |at| at + 2)
}

/// Splits a rendered response at the content's mark.
fn split(rendered: &[u8]) -> (&[u8], &[u8]) {
    let at = memchr::memmem::find(rendered, MARK.as_bytes()).unwrap_or(rendered.len());
    let rest = rendered.get(at + MARK.len()..).unwrap_or_default();
    (&rendered[..at], rest)
}

/// What comes before and after the content of a streamed answer: the role chunk (chat) and
/// the start of one content event; the end of that event (finish "length"), the usage chunk
/// when asked for, and `[DONE]`.
fn streamed_ends(sim: &Sim, ask: &Ask<'_>, tokens: u32) -> (Bytes, Bytes) {
    let plan = ask.plan;
    let chunks = Chunks::new(
        ask.kind,
        ask.id,
        ask.created,
        &sim.model_json,
        plan.prompt_tokens,
        plan.continuous_usage,
    );
    let fingerprint = (!plan.include_usage).then_some(sim.fingerprint.as_str());
    let event = chunks.token(Piece::Text(MARK), tokens, Some(Finish::Length), fingerprint);
    let (before, after) = split(&event);
    let mut head = BytesMut::new();
    if ask.kind == Kind::Chat {
        head.put(chunks.role());
    }
    head.put_slice(before);
    let mut tail = BytesMut::from(after);
    if plan.include_usage {
        tail.put(chunks.usage_chunk(tokens, &sim.fingerprint));
    }
    tail.put_slice(render::DONE);
    (head.freeze(), tail.freeze())
}

/// What comes before and after the content of a non-streamed answer.
fn whole_ends(sim: &Sim, ask: &Ask<'_>, tokens: u32) -> (Bytes, Bytes) {
    let out = Collected {
        text: MARK.to_owned(),
        ..Collected::default()
    };
    let rendered = render::full(&Full {
        kind: ask.kind,
        id: ask.id,
        created: ask.created,
        model_json: &sim.model_json,
        out: &out,
        tool: None,
        finish: Finish::Length,
        fingerprint: &sim.fingerprint,
        prompt_tokens: ask.plan.prompt_tokens,
        completion_tokens: tokens,
        details: Details::default(),
    });
    let (before, after) = split(rendered.as_bytes());
    (
        Bytes::copy_from_slice(before),
        Bytes::copy_from_slice(after),
    )
}

/// A body of a first frame, then one shared frame over and over (for ever, or a number of
/// times), then a last frame. Counts as running in the simulator's metrics until it ends:
/// `length` when sent whole, `abort` when the client left or the simulator stopped.
pub(crate) struct Flood {
    tracker: Tracker,
    head: Option<Bytes>,
    frame: Bytes,
    /// Frames still to send; `None`: for ever.
    left: Option<u64>,
    tail: Option<Bytes>,
    /// Whether the size is announced (`content-length`).
    sized: bool,
    /// Frames sent since the runtime was last given back.
    burst: u32,
}

type Polled = Poll<Option<Result<Frame<Bytes>, io::Error>>>;

fn data(bytes: Bytes) -> Polled {
    Poll::Ready(Some(Ok(Frame::data(bytes))))
}

impl Body for Flood {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        if this.tracker.sim().stopping.load(Ordering::Acquire) {
            // Cut, so that the server can stop; the tracker counts an abort when dropped.
            this.left = Some(0);
            this.tail = None;
            let err = io::Error::new(io::ErrorKind::ConnectionAborted, "sim: shutdown");
            return Poll::Ready(Some(Err(err)));
        }
        if let Some(head) = this.head.take() {
            return data(head);
        }
        if this.left == Some(0) {
            let tail = this.tail.take();
            if tail.is_some() {
                this.tracker.finish(Reason::Length);
            }
            return Poll::Ready(tail.map(|t| Ok(Frame::data(t))));
        }
        this.burst += 1;
        if this.burst > BURST {
            // An always-ready body would keep its connection's task busy for as long as the
            // socket takes bytes: let the other tasks run now and then.
            this.burst = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(n) = &mut this.left {
            *n -= 1;
        }
        data(this.frame.clone())
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.left == Some(0) && self.tail.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(left) if self.sized => {
                let len = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| b.len() as u64);
                let frames = left.saturating_mul(self.frame.len() as u64);
                SizeHint::with_exact(len(&self.head) + frames + len(&self.tail))
            }
            _ => SizeHint::default(),
        }
    }
}
