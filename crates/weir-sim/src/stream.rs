//! Response bodies: the SSE generation state machine, with no task or channel per stream.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};

use super::Fault;
use super::clock;
use super::flood::Flood;
use super::frames::Frames;
use super::metrics::{Reason, Tracker};
use super::output::Shape;
use super::render::{self, Finish};

/// Delays of one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub ttft: Duration,
    pub ttft_jitter: Duration,
    pub itl: Duration,
    pub itl_jitter: Duration,
}

/// `t + d`, saturating at a far-away instant instead of panicking.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(86_400 * 365 * 30))
}

/// A uniform random duration in `0..=max`.
pub(crate) fn jitter(rng: &mut fastrand::Rng, max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.u64(0..=nanos))
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

enum Phase {
    Queued(Acquire),
    Role,
    Tokens,
    Stalled(Pin<Box<OwnedNotified>>),
    /// The close fault: yielded once so that what was sent gets flushed, then fail.
    Closing,
    Done,
    End,
}

/// What a streamed generation produces.
pub(crate) struct Generation {
    pub frames: Frames,
    pub shape: Shape,
    pub tokens: u32,
    pub finish: Finish,
    pub include_usage: bool,
    pub fault: Option<Fault>,
    pub timing: Timing,
    pub prompt_tokens: u32,
    pub seed: u64,
}

/// A streamed generation: an `http_body::Body` that produces one SSE event per poll, sleeping
/// on a single re-armed timer whose deadlines are computed from admission, so timer lateness
/// never accumulates.
pub(crate) struct Stream {
    job: Generation,
    tracker: Tracker,
    words: fastrand::Rng,
    jitter: fastrand::Rng,
    sleep: Option<Pin<Box<Sleep>>>,
    first: Option<clock::Sleep>,
    deadline: Instant,
    sent: u32,
    phase: Phase,
}

impl Stream {
    pub fn new(job: Generation, mut tracker: Tracker) -> Self {
        let sim = tracker.sim().clone();
        let now = Instant::now();
        let queued: Option<Acquire> = match sim.semaphore.clone().try_acquire_owned() {
            Ok(permit) => {
                tracker.admit(permit, job.prompt_tokens, now);
                None
            }
            Err(_) => Some(Box::pin(sim.semaphore.clone().acquire_owned())),
        };
        let mut stream = Self {
            words: fastrand::Rng::with_seed(render::mix(job.seed, 3)),
            jitter: fastrand::Rng::with_seed(render::mix(job.seed, 5)),
            job,
            tracker,
            sleep: None,
            first: None,
            deadline: now,
            sent: 0,
            phase: Phase::End,
        };
        match queued {
            None => stream.started(now),
            Some(acquire) => stream.phase = Phase::Queued(acquire),
        }
        stream
    }

    fn started(&mut self, now: Instant) {
        let t = &self.job.timing;
        self.deadline = later(
            now,
            t.ttft
                .saturating_add(jitter(&mut self.jitter, t.ttft_jitter)),
        );
        self.phase = Phase::Role;
    }

    /// The current time if the deadline has passed; registers the timer otherwise (the
    /// first token's on the precise clock, later ones on tokio's).
    fn due(&mut self, cx: &mut Context<'_>) -> Option<Instant> {
        let now = Instant::now();
        if self.deadline <= now {
            return Some(now);
        }
        let deadline = self.deadline;
        if self.sent == 0 {
            // Fixed from admission until the first token.
            let first = self
                .first
                .get_or_insert_with(|| clock::Sleep::until(deadline));
            return Pin::new(first).poll(cx).is_ready().then(Instant::now);
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).is_ready().then(Instant::now)
    }

    fn fault_due(&self) -> Option<Fault> {
        let fault = self.job.fault?;
        let after = match fault {
            Fault::ErrorEvent { after } | Fault::Close { after } | Fault::Stall { after } => after,
            // Answered before a generation starts.
            _ => return None,
        };
        (self.sent == after.min(self.job.tokens)).then_some(fault)
    }

    fn next_token(&mut self, now: Instant) -> Bytes {
        let index = self.sent;
        let word = render::token(&mut self.words, index, self.job.tokens, self.job.finish);
        let piece = self.job.shape.piece(index, self.job.tokens, word);
        self.sent += 1;
        self.tracker.token(now);
        let last = self.sent == self.job.tokens;
        let finish = last.then_some(self.job.finish);
        let fingerprint =
            (last && !self.job.include_usage).then_some(self.tracker.sim().fingerprint.as_str());
        let t = &self.job.timing;
        let gap = t.itl.saturating_add(jitter(&mut self.jitter, t.itl_jitter));
        self.deadline = later(self.deadline, gap);
        self.job.frames.token(piece, self.sent, finish, fingerprint)
    }

    /// Applies a mid-stream fault: what the poll answers, or `None` to go on (a stall).
    fn apply(&mut self, fault: Fault, cx: &mut Context<'_>) -> Option<Polled> {
        match fault {
            Fault::ErrorEvent { .. } => {
                self.tracker.finish(Reason::Error);
                self.phase = Phase::Done;
                Some(data(self.job.frames.error_event()))
            }
            Fault::Close { .. } => {
                self.tracker.finish(Reason::Error);
                self.phase = Phase::Closing;
                cx.waker().wake_by_ref();
                Some(Poll::Pending)
            }
            _ => {
                let notified = self.tracker.sim().shutdown.clone().notified_owned();
                self.phase = Phase::Stalled(Box::pin(notified));
                None
            }
        }
    }

    /// The end of a generation that ran its course: what the API ends it with, if anything.
    fn ended(&mut self) -> Option<Bytes> {
        let reason = self.reason();
        self.tracker.finish(reason);
        self.phase = Phase::Done;
        let fp = &self.tracker.sim().fingerprint;
        let (sent, finish, usage) = (self.sent, self.job.finish, self.job.include_usage);
        self.job.frames.finish(sent, finish, usage, fp)
    }

    fn reason(&self) -> Reason {
        match self.job.finish {
            Finish::Stop => Reason::Stop,
            Finish::Length => Reason::Length,
        }
    }
}

fn close_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "sim: close fault")
}

type Polled = Poll<Option<Result<Frame<Bytes>, io::Error>>>;

fn data(bytes: Bytes) -> Polled {
    Poll::Ready(Some(Ok(Frame::data(bytes))))
}

impl Body for Stream {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Queued(acquire) => match acquire.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(permit)) => {
                        let now = Instant::now();
                        this.tracker.admit(permit, this.job.prompt_tokens, now);
                        this.started(now);
                    }
                    Poll::Ready(Err(_)) => {
                        this.tracker.finish(Reason::Error);
                        this.phase = Phase::End;
                        return Poll::Ready(Some(Err(io::Error::other("sim: queue closed"))));
                    }
                },
                Phase::Role => {
                    this.phase = Phase::Tokens;
                    if let Some(start) = this.job.frames.start() {
                        return data(start);
                    }
                }
                Phase::Tokens => {
                    if let Some(fault) = this.fault_due() {
                        this.job.fault = None;
                        match this.apply(fault, cx) {
                            Some(polled) => return polled,
                            None => continue,
                        }
                    }
                    if this.sent >= this.job.tokens {
                        match this.ended() {
                            Some(end) => return data(end),
                            None => continue,
                        }
                    }
                    let Some(now) = this.due(cx) else {
                        return Poll::Pending;
                    };
                    let bytes = this.next_token(now);
                    if bytes.is_empty() {
                        // A token the API sends nothing for (a Messages EOS).
                        continue;
                    }
                    return data(bytes);
                }
                Phase::Stalled(notified) => {
                    notified.as_mut().enable();
                    if this.tracker.sim().stopping.load(Ordering::Acquire)
                        || notified.as_mut().poll(cx).is_ready()
                    {
                        // Shutting down: cut the stalled stream so the server can stop.
                        this.phase = Phase::End;
                        let err = io::Error::new(io::ErrorKind::ConnectionAborted, "sim: shutdown");
                        return Poll::Ready(Some(Err(err)));
                    }
                    return Poll::Pending;
                }
                Phase::Closing => {
                    this.phase = Phase::End;
                    return Poll::Ready(Some(Err(close_error())));
                }
                Phase::Done => {
                    this.phase = Phase::End;
                    if let Some(done) = this.job.frames.done() {
                        return data(done);
                    }
                }
                Phase::End => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.phase, Phase::End)
    }
}

/// The body of every simulator response.
pub(crate) enum SimBody {
    /// A complete body, sent as one frame.
    Full(Option<Bytes>),
    /// A streamed generation.
    Stream(Box<Stream>),
    /// A hostile fault's flood or huge body.
    Flood(Box<Flood>),
    /// The close fault on a non-streamed request: some bytes, a flush, then a failure.
    Broken {
        /// Sent before failing.
        head: Option<Bytes>,
        /// Whether the flush before failing was requested.
        yielded: bool,
    },
}

impl SimBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        SimBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            SimBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Stream(stream) => Pin::new(stream.as_mut()).poll_frame(cx),
            SimBody::Flood(flood) => Pin::new(flood.as_mut()).poll_frame(cx),
            SimBody::Broken { head, yielded } => {
                if let Some(head) = head.take() {
                    Poll::Ready(Some(Ok(Frame::data(head))))
                } else if !std::mem::replace(yielded, true) {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                } else {
                    Poll::Ready(Some(Err(close_error())))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(bytes) => bytes.is_none(),
            SimBody::Stream(stream) => stream.is_end_stream(),
            SimBody::Flood(flood) => flood.is_end_stream(),
            SimBody::Broken { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            SimBody::Full(None) => SizeHint::with_exact(0),
            SimBody::Flood(flood) => flood.size_hint(),
            _ => SizeHint::default(),
        }
    }
}
