//! Observation, on the way back: what the body observer must know of a request (`Watch`),
//! what the body showed as it passed (`Measurement`, bounded whatever the backend sends), and
//! the `Recorder` it reports to. The recorder is the recording code (`record.rs`: metrics,
//! SLO, access log, spans); this module knows none of them.

pub mod body;
mod cut;
mod gaps;
mod observer;
mod strip;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use weir_sse::{EventInfo, Usage};

use crate::budget::Budget;
use crate::config::Timeouts;
use crate::labels::{Api, Outcome};

pub use body::ObservedBody;
pub use cut::{Close, Closer};
pub use gaps::Gaps;

/// Most choices (`n`) a request's record keeps a finish reason for.
pub const MAX_CHOICES: u32 = 128;
/// Longest finish reason or response model name kept, in bytes (longer ones are cut).
pub const MAX_NAME: usize = 256;
/// A token count above this is not a count (2^40: a thousand times any context window);
/// the usage it came in is ignored and counted as a protocol error.
pub const MAX_TOKENS: u64 = 1 << 40;

/// What the body observer needs to know of a request: when it started, what it asked for,
/// how long it may take and how its response began.
#[derive(Debug, Clone)]
pub struct Watch {
    /// When the gateway had the request head.
    pub t0: Instant,
    /// When the request's body had arrived (the head's time when the body is streamed
    /// through): what the gateway did before that was waiting for the client.
    pub body_done: Instant,
    /// When the request was handed to the upstream client.
    pub sent: Instant,
    /// The API the request speaks (its operation follows from it).
    pub api: Api,
    pub stream: bool,
    /// Choices asked for (`n`), 1 to [`MAX_CHOICES`].
    pub n: u32,
    /// The gateway asked for usage the client did not: the usage-only chunk is removed.
    pub strip_usage: bool,
    /// The response's status.
    pub status: StatusCode,
    /// The backend's timeouts (first token, idle, total).
    pub timeouts: Timeouts,
    /// Longest SSE line (and event) the observer holds.
    pub max_sse_line: usize,
    /// The gateway answered itself, and this is how the request ended, whatever its body.
    pub answered: Option<Outcome>,
    /// The gateway's budget for bodies held whole (a JSON response kept to read its usage).
    pub budget: Option<Arc<Budget>>,
}

impl Watch {
    pub fn new(t0: Instant, api: Api, timeouts: Timeouts, max_sse_line: usize) -> Watch {
        Watch {
            t0,
            body_done: t0,
            sent: t0,
            api,
            stream: false,
            n: 1,
            strip_usage: false,
            status: StatusCode::OK,
            timeouts,
            max_sse_line,
            answered: None,
            budget: None,
        }
    }
}

/// Where the observer's findings go: called once per inter-token gap and once at the end.
pub trait Recorder: Send + 'static {
    /// What the observer needs to know of the request.
    fn watch(&self) -> &Watch;
    /// One gap between two content-bearing events (an ITL sample).
    fn gap(&self, gap: Duration);
    /// The request ended (exactly once), with `outcome`, at `end`.
    fn finish(self, m: &Measurement, outcome: Outcome, end: Instant);
}

/// A boxed recorder records as the recorder does (the response body carries a pointer).
impl<R: Recorder> Recorder for Box<R> {
    fn watch(&self) -> &Watch {
        (**self).watch()
    }

    fn gap(&self, gap: Duration) {
        (**self).gap(gap)
    }

    fn finish(self, m: &Measurement, outcome: Outcome, end: Instant) {
        (*self).finish(m, outcome, end)
    }
}

/// What the response body showed, filled in as it passes. Its size does not depend on what
/// the backend sends: one finish reason per choice, a fixed-size summary of the gaps.
#[derive(Debug, Default)]
pub struct Measurement {
    pub first_token: Option<Instant>,
    /// The first content-bearing event that is not reasoning: what a person reading the
    /// answer waits for.
    pub first_answer: Option<Instant>,
    pub last_token: Option<Instant>,
    pub content_events: u64,
    /// Inter-token gaps: median and maximum for the log and the span.
    pub gaps: Gaps,
    pub usage: Option<Usage>,
    /// `(choice, finish reason)`, one per choice index below [`MAX_CHOICES`].
    pub finish_reasons: Vec<(u32, String)>,
    pub response_model: Option<String>,
    pub done: bool,
    pub stream_error: bool,
    pub invalid_events: u32,
    /// The backend sent something the record had to leave out: an over-long event, or a
    /// token count that is not one.
    pub degraded: bool,
    /// The body came compressed: passed on, timed, not read.
    pub unmeasured: bool,
}

impl Measurement {
    /// Takes in one event seen at `now`; returns the gap since the previous content-bearing
    /// event, if this is one and not the first.
    pub fn on_event(&mut self, info: &EventInfo<'_>, now: Instant) -> Option<Duration> {
        // The API's last event (`[DONE]`, `response.completed`, `message_stop`) may carry the
        // usage: it is taken in like any other.
        self.done |= info.end || info.done;
        self.invalid_events = self.invalid_events.saturating_add(u32::from(info.invalid));
        self.stream_error |= info.error;
        if let Some(u) = info.usage {
            self.take_usage(u);
        }
        for (index, reason) in &info.finished {
            self.finished(*index, reason);
        }
        if self.response_model.is_none() {
            self.response_model = info.model.as_deref().map(|m| bounded(m).to_string());
        }
        if !info.content {
            return None;
        }
        if info.answer && self.first_answer.is_none() {
            self.first_answer = Some(now);
        }
        self.content_events += 1;
        let gap = self
            .last_token
            .map(|last| now.saturating_duration_since(last));
        match gap {
            Some(g) => self.gaps.add(g),
            None => self.first_token = Some(now),
        }
        self.last_token = Some(now);
        gap
    }

    /// Takes a whole non-streamed body's usage, model and finish reasons.
    pub fn on_body(&mut self, info: &EventInfo<'_>) {
        if let Some(u) = info.usage {
            self.take_usage(u);
        }
        self.response_model = info.model.as_deref().map(|m| bounded(m).to_string());
        for (index, reason) in &info.finished {
            self.finished(*index, reason);
        }
    }

    /// Takes in what an event says of the usage, field by field (a Messages stream tells
    /// the input in its first event and the output in its last).
    fn take_usage(&mut self, u: Usage) {
        let absurd = |v: Option<u64>| v.is_some_and(|n| n > MAX_TOKENS);
        if u.prompt_tokens > MAX_TOKENS
            || u.completion_tokens > MAX_TOKENS
            || absurd(u.cached_tokens)
            || absurd(u.reasoning_tokens)
        {
            self.degraded = true;
            return;
        }
        match &mut self.usage {
            Some(known) => known.merge(&u),
            None => self.usage = Some(u),
        }
    }

    /// Notes that choice `index` finished: the first reason of each choice is kept.
    fn finished(&mut self, index: u32, reason: &str) {
        if index >= MAX_CHOICES || self.finish_reasons.iter().any(|(i, _)| *i == index) {
            return;
        }
        self.finish_reasons
            .push((index, bounded(reason).to_string()));
    }

    /// The finish reasons in choice order.
    pub fn reasons_in_order(&self) -> Vec<&str> {
        let mut v: Vec<&(u32, String)> = self.finish_reasons.iter().collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, r)| r.as_str()).collect()
    }
}

/// At most [`MAX_NAME`] bytes of `s`, cut on a character boundary.
pub fn bounded(s: &str) -> &str {
    if s.len() <= MAX_NAME {
        return s;
    }
    let mut end = MAX_NAME;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn finishing(index: u32, reason: &str) -> EventInfo<'static> {
        EventInfo {
            finished: vec![(index, Cow::Owned(reason.to_string()))],
            ..EventInfo::default()
        }
    }

    #[test]
    fn one_finish_reason_per_choice_however_many_events_say_so() {
        let mut m = Measurement::default();
        let now = Instant::now();
        for _ in 0..10_000 {
            m.on_event(&finishing(0, "stop"), now);
        }
        m.on_event(&finishing(1, "length"), now);
        m.on_event(&finishing(u32::MAX, "stop"), now);
        assert_eq!(m.finish_reasons.len(), 2);
        assert_eq!(m.reasons_in_order(), ["stop", "length"]);
        m.on_event(&finishing(2, &"x".repeat(10_000)), now);
        assert_eq!(m.finish_reasons[2].1.len(), MAX_NAME);
    }

    #[test]
    fn absurd_token_counts_are_left_out() {
        let mut m = Measurement::default();
        let absurd = EventInfo {
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: u64::MAX,
                ..Default::default()
            }),
            ..EventInfo::default()
        };
        m.on_event(&absurd, Instant::now());
        assert!(m.usage.is_none() && m.degraded);
    }

    #[test]
    fn gaps_are_reported_after_the_first_content_event() {
        let mut m = Measurement::default();
        let t = Instant::now();
        let content = EventInfo {
            content: true,
            ..EventInfo::default()
        };
        assert_eq!(m.on_event(&content, t), None);
        let gap = m.on_event(&content, t + Duration::from_millis(7));
        assert_eq!(gap, Some(Duration::from_millis(7)));
        assert_eq!(m.content_events, 2);
        assert_eq!(m.first_token, Some(t));
    }
}
