//! Response bodies: the SSE generation state machine (no task or channel per stream) and the
//! request tracker that keeps vLLM's running/waiting/finished metrics.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};

use super::Fault;
use super::handlers::Sim;
use super::metrics::Reason;
use super::render::{self, Chunks, Finish};

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

enum State {
    Waiting,
    Running {
        _permit: OwnedSemaphorePermit,
        last_token: Option<Instant>,
    },
    Done,
}

/// Follows one generation through waiting, running and finished, keeping the gauges and
/// counters right; dropping it unfinished counts an abort.
pub(crate) struct Tracker {
    sim: Arc<Sim>,
    arrival: Instant,
    state: State,
}

impl Tracker {
    pub fn new(sim: Arc<Sim>) -> Self {
        sim.metrics.waiting.inc();
        Self {
            sim,
            arrival: Instant::now(),
            state: State::Waiting,
        }
    }

    pub fn admit(&mut self, permit: OwnedSemaphorePermit, prompt_tokens: u32, now: Instant) {
        if let State::Waiting = self.state {
            let m = &self.sim.metrics;
            m.waiting.dec();
            m.running.inc();
            m.prompt_tokens.inc_by(u64::from(prompt_tokens));
            m.queue
                .observe(now.duration_since(self.arrival).as_secs_f64());
            self.state = State::Running {
                _permit: permit,
                last_token: None,
            };
        }
    }

    /// Records one output token produced at `now`.
    pub fn token(&mut self, now: Instant) {
        if let State::Running { last_token, .. } = &mut self.state {
            let m = &self.sim.metrics;
            m.generation_tokens.inc();
            match last_token {
                None => m
                    .ttft
                    .observe(now.duration_since(self.arrival).as_secs_f64()),
                Some(last) => m.itl.observe(now.duration_since(*last).as_secs_f64()),
            }
            *last_token = Some(now);
        }
    }

    /// Records `count` tokens of a non-streamed generation whose first token came at `first`.
    pub fn tokens(&mut self, count: u32, first: Instant, itl: Duration) {
        if let State::Running { last_token, .. } = &mut self.state {
            let m = &self.sim.metrics;
            m.generation_tokens.inc_by(u64::from(count));
            if count > 0 {
                m.ttft
                    .observe(first.duration_since(self.arrival).as_secs_f64());
                *last_token = Some(first);
            }
            for _ in 1..count.min(10_000) {
                m.itl.observe(itl.as_secs_f64());
            }
        }
    }

    pub fn finish(&mut self, reason: Reason) {
        let m = &self.sim.metrics;
        match self.state {
            State::Waiting => m.waiting.dec(),
            State::Running { .. } => m.running.dec(),
            State::Done => return,
        }
        m.finished(reason);
        m.e2e.observe(self.arrival.elapsed().as_secs_f64());
        // Releases the permit.
        self.state = State::Done;
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.finish(Reason::Abort);
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

enum Phase {
    Queued(Acquire),
    Role,
    Tokens,
    Stalled(Pin<Box<OwnedNotified>>),
    Done,
    End,
}

/// What a streamed generation produces.
pub(crate) struct Generation {
    pub chunks: Chunks,
    pub tokens: u32,
    pub finish: Finish,
    pub include_usage: bool,
    pub fault: Option<Fault>,
    pub timing: Timing,
    pub prompt_tokens: u32,
    pub seed: u64,
    pub chat: bool,
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
    deadline: Instant,
    sent: u32,
    phase: Phase,
}

impl Stream {
    pub fn new(job: Generation, mut tracker: Tracker) -> Self {
        let sim = tracker.sim.clone();
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
        self.phase = if self.job.chat {
            Phase::Role
        } else {
            Phase::Tokens
        };
    }

    /// Whether the current deadline has passed; registers the timer otherwise.
    fn due(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline <= Instant::now() {
            return true;
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).is_ready()
    }

    fn fault_due(&self) -> Option<Fault> {
        let fault = self.job.fault?;
        let after = match fault {
            Fault::Http(_) => return None,
            Fault::ErrorEvent { after } | Fault::Close { after } | Fault::Stall { after } => after,
        };
        (self.sent == after.min(self.job.tokens)).then_some(fault)
    }

    fn next_token(&mut self, now: Instant) -> Bytes {
        let index = self.sent;
        let text = render::token(&mut self.words, index, self.job.tokens, self.job.finish);
        self.sent += 1;
        self.tracker.token(now);
        let last = self.sent == self.job.tokens;
        let finish = last.then_some(self.job.finish);
        let fingerprint =
            (last && !self.job.include_usage).then_some(self.tracker.sim.fingerprint.as_str());
        let t = &self.job.timing;
        let gap = t.itl.saturating_add(jitter(&mut self.jitter, t.itl_jitter));
        self.deadline = later(self.deadline, gap);
        self.job.chunks.token(text, self.sent, finish, fingerprint)
    }

    fn reason(&self) -> Reason {
        match self.job.finish {
            Finish::Stop => Reason::Stop,
            Finish::Length => Reason::Length,
        }
    }
}

fn data(bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
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
                    return data(this.job.chunks.role());
                }
                Phase::Tokens => {
                    if let Some(fault) = this.fault_due() {
                        this.job.fault = None;
                        match fault {
                            Fault::ErrorEvent { .. } => {
                                this.tracker.finish(Reason::Error);
                                this.phase = Phase::Done;
                                return data(Bytes::from_static(render::ERROR_EVENT));
                            }
                            Fault::Close { .. } => {
                                this.tracker.finish(Reason::Error);
                                this.phase = Phase::End;
                                let err = io::Error::new(
                                    io::ErrorKind::ConnectionAborted,
                                    "sim: close fault",
                                );
                                return Poll::Ready(Some(Err(err)));
                            }
                            Fault::Stall { .. } | Fault::Http(_) => {
                                let sim = &this.tracker.sim;
                                this.phase =
                                    Phase::Stalled(Box::pin(sim.shutdown.clone().notified_owned()));
                                continue;
                            }
                        }
                    }
                    if this.sent >= this.job.tokens {
                        let reason = this.reason();
                        this.tracker.finish(reason);
                        this.phase = Phase::Done;
                        if this.job.include_usage {
                            let fp = &this.tracker.sim.fingerprint;
                            return data(this.job.chunks.usage_chunk(this.sent, fp));
                        }
                        continue;
                    }
                    if !this.due(cx) {
                        return Poll::Pending;
                    }
                    let chunk = this.next_token(Instant::now());
                    return data(chunk);
                }
                Phase::Stalled(notified) => {
                    notified.as_mut().enable();
                    if this.tracker.sim.stopping.load(Ordering::Acquire)
                        || notified.as_mut().poll(cx).is_ready()
                    {
                        // Shutting down: cut the stalled stream so the server can stop.
                        this.phase = Phase::End;
                        let err = io::Error::new(io::ErrorKind::ConnectionAborted, "sim: shutdown");
                        return Poll::Ready(Some(Err(err)));
                    }
                    return Poll::Pending;
                }
                Phase::Done => {
                    this.phase = Phase::End;
                    return data(Bytes::from_static(render::DONE));
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
    /// A body that fails at once (the `close` fault on a non-streamed request).
    Broken(bool),
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
            SimBody::Broken(done) => {
                if std::mem::replace(done, true) {
                    Poll::Ready(None)
                } else {
                    let err = io::Error::new(io::ErrorKind::ConnectionAborted, "sim: close fault");
                    Poll::Ready(Some(Err(err)))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(bytes) => bytes.is_none(),
            SimBody::Stream(stream) => stream.is_end_stream(),
            SimBody::Broken(done) => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            SimBody::Full(None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
