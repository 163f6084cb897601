//! The observer inside a response body: what it keeps while the body passes (the parser,
//! usage stripping, the measurement, the deadlines) and how it ends, exactly once.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, header};
use http_body::Frame;
use tokio::time::{Instant, Sleep};
use weir_sse::{self as sse, SseParser};

use super::body::BoxError;
use super::cut::{Closer, Cut};
use super::strip::Strip;
use super::{Measurement, Recorder};
use crate::budget::Reservation;
use crate::labels::Outcome;

/// Largest non-streamed body kept (by reference) to read its usage; larger bodies pass
/// unmeasured.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// How the body is read.
pub(super) enum Mode {
    /// An event stream: parsed event by event.
    Sse {
        parser: SseParser,
        strip: Option<Strip>,
    },
    /// A JSON body: frames kept by reference, parsed once at the end.
    Json {
        frames: Vec<Bytes>,
        len: usize,
        /// The kept frames' bytes against the gateway's budget (None: not counted).
        held: Option<Reservation>,
    },
    /// Anything else: only timed.
    Plain,
}

/// The observer's state, finished exactly once.
pub(super) struct Observer<R> {
    pub(super) rec: R,
    pub(super) meas: Measurement,
    pub(super) mode: Mode,
    /// When the last frame arrived (the response head at first): the idle timeout's start.
    pub(super) last_frame: Instant,
    pub(super) timer: Option<Pin<Box<Sleep>>>,
    /// Closes the upstream at the total deadline even if the body is never polled again.
    pub(super) cut: Option<Cut>,
}

impl<R: Recorder> Observer<R> {
    /// Observes a response with these headers: an event stream is parsed event by event, a
    /// JSON body once at its end, anything else (or anything compressed) only timed.
    pub(super) fn new(rec: R, headers: &HeaderMap, closer: Option<Closer>) -> Box<Self> {
        let w = rec.watch();
        let cut = closer.and_then(|c| Cut::arm(w.t0 + w.timeouts.total, c));
        let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
        let is = |p: &[u8]| {
            content_type.is_some_and(|c| c.len() >= p.len() && c[..p.len()].eq_ignore_ascii_case(p))
        };
        let encoded = headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        let mut meas = Measurement::default();
        let mode = if w.answered.is_some() {
            Mode::Plain
        } else if encoded {
            // weir decodes nothing: the body passes, timed but not read.
            meas.unmeasured = true;
            Mode::Plain
        } else if w.api.is_generation() && is(b"text/event-stream") {
            let strip = w.strip_usage.then(|| Strip::new(w.n));
            Mode::Sse {
                parser: SseParser::new(w.max_sse_line),
                strip,
            }
        } else if w.api.is_measured() && is(b"application/json") {
            Mode::Json {
                frames: Vec::new(),
                len: 0,
                held: w.budget.as_ref().map(|b| b.reserve()),
            }
        } else {
            Mode::Plain
        };
        Box::new(Observer {
            last_frame: Instant::now(),
            timer: None,
            cut,
            rec,
            meas,
            mode,
        })
    }

    /// Takes in one data frame; returns what goes to the client (None: nothing yet).
    pub(super) fn on_data(&mut self, chunk: Bytes) -> Option<Bytes> {
        let Observer {
            rec,
            meas,
            mode,
            last_frame,
            ..
        } = self;
        let now = Instant::now();
        *last_frame = now;
        match mode {
            Mode::Plain => Some(chunk),
            Mode::Json { frames, len, held } => {
                *len += chunk.len();
                let keep = !meas.unmeasured
                    && *len <= MAX_JSON_BODY
                    && held.as_mut().is_none_or(|r| r.grow(chunk.len()));
                if keep {
                    frames.push(chunk.clone());
                } else if !meas.unmeasured {
                    // Too large, or no room in the budget: passed on, not read.
                    *frames = Vec::new();
                    if let Some(r) = held {
                        r.release();
                    }
                    meas.unmeasured = true;
                }
                Some(chunk)
            }
            Mode::Sse { parser, strip } => {
                let base = parser.offset();
                let mut actions = Vec::new();
                let holding = strip.as_ref().is_some_and(|s| s.held.is_some());
                let api = rec.watch().api.sse();
                parser.feed(&chunk, |e| {
                    let info = sse::classify_event(api, e.name, e.data);
                    if let Some(gap) = meas.on_event(&info, now) {
                        rec.gap(gap);
                    }
                    if let Some(s) = strip.as_mut() {
                        s.decide(&e, &info, holding, &mut actions);
                    }
                });
                meas.degraded |= parser.degraded;
                let Some(s) = strip.as_mut() else {
                    return Some(chunk);
                };
                let out = s.apply(chunk, base, parser.release_limit(), actions);
                if s.pending.len() > 2 * rec.watch().max_sse_line {
                    // An event too long to hold: give up stripping, lose nothing.
                    meas.degraded = true;
                    let rest = s.flush();
                    *strip = None;
                    return join(out, rest);
                }
                out
            }
        }
    }

    /// The body ended: bytes still held back, if any.
    fn flush(&mut self) -> Option<Bytes> {
        match &mut self.mode {
            Mode::Sse { strip: Some(s), .. } => s.flush(),
            _ => None,
        }
    }

    /// How a body that the client stopped taking ended: by the total deadline if that closed
    /// the upstream, else the client went away.
    pub(super) fn abandoned(&self) -> Outcome {
        if self.cut.as_ref().is_some_and(Cut::fired) {
            Outcome::Timeout("total")
        } else if self.meas.done {
            self.final_outcome()
        } else {
            Outcome::Cancelled
        }
    }

    /// The outcome of a body that ended cleanly.
    /// An error event, events that are not JSON, a stream without `[DONE]`, or a streamed
    /// generation answered with something other than an event stream: the backend failed
    /// even though its status said 2xx.
    pub(super) fn final_outcome(&self) -> Outcome {
        let w = self.rec.watch();
        if let Some(answered) = w.answered {
            return answered;
        }
        let base = Outcome::from_status(w.status);
        if base != Outcome::Ok {
            return base;
        }
        let m = &self.meas;
        let failed = match &self.mode {
            Mode::Sse { .. } => m.stream_error || !m.done || m.invalid_events > 0,
            _ => w.stream && w.api.is_generation() && !m.unmeasured,
        };
        if failed { Outcome::UpstreamError } else { base }
    }

    pub(super) fn finish(mut self, outcome: Outcome) {
        if let Some(cut) = &self.cut {
            cut.disarm();
        }
        let end = Instant::now();
        if let Mode::Json { frames, len, .. } = &mut self.mode {
            let body = match frames.len() {
                0 => Bytes::new(),
                1 => frames[0].clone(),
                _ => {
                    let mut all = BytesMut::with_capacity(*len);
                    frames.iter().for_each(|f| all.extend_from_slice(f));
                    all.freeze()
                }
            };
            if !body.is_empty() {
                let api = self.rec.watch().api.sse();
                self.meas.on_body(&sse::classify_body(api, &body));
            }
        }
        let Observer { rec, meas, .. } = self;
        rec.finish(&meas, outcome, end);
    }
}

pub(super) fn join(a: Option<Bytes>, b: Option<Bytes>) -> Option<Bytes> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let mut m = BytesMut::with_capacity(a.len() + b.len());
            m.extend_from_slice(&a);
            m.extend_from_slice(&b);
            Some(m.freeze())
        }
        (a, b) => a.or(b),
    }
}

/// How the upstream body ended.
pub(super) enum End {
    /// It ended (last frame, or end of stream).
    Clean,
    /// It broke with this error.
    Broken(BoxError),
    /// The deadline of this kind passed.
    Timeout(&'static str),
}

/// The upstream stream ended badly and the client's cannot be ended with an error event.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamAborted(String);

impl<R: Recorder> Observer<R> {
    /// The next deadline: first token (streams, until it came), idle since the last frame,
    /// and the total.
    fn deadline(&self) -> (Instant, &'static str) {
        let w = self.rec.watch();
        let t = &w.timeouts;
        let mut d = (self.last_frame + t.idle, "idle");
        let total = w.t0 + t.total;
        if total <= d.0 {
            d = (total, "total");
        }
        if self.meas.first_token.is_none() && matches!(self.mode, Mode::Sse { .. }) {
            let first = w.sent + t.first_token;
            if first <= d.0 {
                d = (first, "first_token");
            }
        }
        d
    }

    /// Ready with the kind of timeout once the deadline passes. The timer is re-armed only
    /// when it fires or the deadline moves earlier, not on every frame.
    pub(super) fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<&'static str> {
        loop {
            let (at, kind) = self.deadline();
            let sleep = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if at < sleep.deadline() {
                sleep.as_mut().reset(at);
            }
            ready!(sleep.as_mut().poll(cx));
            if Instant::now() >= at {
                return Poll::Ready(kind);
            }
            sleep.as_mut().reset(at);
        }
    }

    /// Bytes held for this response: the parser's buffers, bytes held back by usage
    /// stripping, JSON frames kept to read the usage.
    pub(super) fn held(&self) -> usize {
        match &self.mode {
            Mode::Sse { parser, strip } => {
                parser.held() + strip.as_ref().map_or(0, |s| s.pending.len())
            }
            Mode::Json { frames, .. } => frames.iter().map(Bytes::len).sum(),
            Mode::Plain => 0,
        }
    }

    /// A first-token or total deadline that passed while frames were still coming.
    pub(super) fn overdue(&self) -> Option<&'static str> {
        if self.rec.watch().answered.is_some() {
            // The gateway's own answer: the backend's deadlines are over.
            return None;
        }
        let (at, kind) = self.deadline();
        (self.last_frame >= at).then_some(kind)
    }

    /// Finishes the record; returns what the client gets last (held bytes, an error event
    /// and `[DONE]` for an event stream that did not end well, or an error that cuts any
    /// other body).
    pub(super) fn end(mut self, end: End) -> Option<Result<Frame<Bytes>, BoxError>> {
        match end {
            End::Clean if self.cut_mid_event() => {
                self.meas.stream_error = true;
                let message = "the backend's stream ended in the middle of an event";
                self.end_with_error(Outcome::UpstreamError, message, StatusCode::BAD_GATEWAY)
            }
            End::Clean => {
                let rest = self.flush();
                let outcome = self.final_outcome();
                self.finish(outcome);
                rest.map(|b| Ok(Frame::data(b)))
            }
            End::Broken(_) if self.cut.as_ref().is_some_and(Cut::fired) => {
                self.end(End::Timeout("total"))
            }
            End::Broken(e) => {
                self.meas.stream_error = true;
                let message = format!("the backend's stream broke: {e}");
                self.end_with_error(Outcome::UpstreamError, &message, StatusCode::BAD_GATEWAY)
            }
            End::Timeout(kind) => {
                let message = format!("the backend sent nothing in time ({kind} timeout)");
                self.end_with_error(
                    Outcome::Timeout(kind),
                    &message,
                    StatusCode::GATEWAY_TIMEOUT,
                )
            }
        }
    }

    /// An event stream that stopped inside an event.
    fn cut_mid_event(&self) -> bool {
        matches!(&self.mode, Mode::Sse { parser, .. } if !parser.at_boundary())
    }

    /// Ends the response early: an event stream gets what was held back, an error event
    /// and `[DONE]`, and ends cleanly; any other body is cut with an error.
    fn end_with_error(
        mut self,
        outcome: Outcome,
        message: &str,
        status: StatusCode,
    ) -> Option<Result<Frame<Bytes>, BoxError>> {
        let tail = match &mut self.mode {
            Mode::Sse { parser, strip } => {
                let mut out = BytesMut::new();
                if let Some(held) = strip.as_mut().and_then(Strip::flush) {
                    out.extend_from_slice(&held);
                }
                if !parser.at_boundary() {
                    out.extend_from_slice(b"\n\n");
                }
                let kind = if status == StatusCode::GATEWAY_TIMEOUT {
                    "TimeoutError"
                } else {
                    "UpstreamError"
                };
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&crate::error::openai_error_body(message, kind, status));
                out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
                Some(out.freeze())
            }
            _ => None,
        };
        tracing::debug!(message, "response ended early");
        self.finish(outcome);
        match tail {
            Some(b) => Some(Ok(Frame::data(b))),
            None => Some(Err(Box::new(StreamAborted(message.to_string())))),
        }
    }

    pub(super) fn holds_bytes(&self) -> bool {
        matches!(&self.mode, Mode::Sse { strip: Some(s), .. } if !s.pending.is_empty())
    }
}
