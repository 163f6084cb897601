//! The run's progress on stderr, rewritten in place about twice a second when stderr is a
//! terminal (silent otherwise, so logs and pipes get only the final tables): requests done,
//! errors, and the current request and output-token rates.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::Sample;

/// How often the line is rewritten.
const TICK: Duration = Duration::from_millis(500);
/// The current rates are taken over the last this many ticks (about 2 s).
const WINDOW: usize = 4;

/// Counts of the measured requests finished so far, shared by the run's tasks.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
    tokens: AtomicU64,
}

impl Progress {
    pub fn record(&self, s: &Sample) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if s.ok() {
            self.tokens.fetch_add(s.output_tokens, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counts(&self) -> (u64, u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.tokens.load(Ordering::Relaxed),
        )
    }
}

/// The task that draws the line; dropping it stops the task and clears the line.
pub(crate) struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
        eprint!("\r\x1b[2K");
    }
}

/// Shows `progress` on stderr until the returned ticker is dropped, when stderr is a terminal.
pub(crate) fn show(progress: Arc<Progress>, measured: Instant) -> Option<Ticker> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(Ticker(tokio::spawn(async move {
        let mut window = VecDeque::with_capacity(WINDOW + 1);
        let mut tick = tokio::time::interval(TICK);
        loop {
            let now = tick.tick().await;
            let (done, errors, tokens) = progress.counts();
            window.push_back((now, done, tokens));
            if window.len() > WINDOW + 1 {
                window.pop_front();
            }
            let text = match measured.checked_duration_since(now) {
                Some(left) if !left.is_zero() => {
                    format!("warming up, {:.0} s left", left.as_secs_f64().ceil())
                }
                _ => line(now - measured, done, errors, rates(&window)),
            };
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{text}");
            let _ = err.flush();
        }
    })))
}

/// Requests and output tokens per second between the window's first and last ticks.
fn rates(window: &VecDeque<(Instant, u64, u64)>) -> (f64, f64) {
    match (window.front(), window.back()) {
        (Some(a), Some(b)) if b.0 > a.0 => {
            let secs = (b.0 - a.0).as_secs_f64();
            // The token count wraps on absurd usage; a rate must not panic on it.
            let tokens = b.2.wrapping_sub(a.2);
            (b.1.saturating_sub(a.1) as f64 / secs, tokens as f64 / secs)
        }
        _ => (0.0, 0.0),
    }
}

/// One progress line, e.g. `12.5 s  340 done  2 errors  27.2 req/s  1741 output tok/s`.
fn line(elapsed: Duration, done: u64, errors: u64, (rps, tps): (f64, f64)) -> String {
    format!(
        "{:.1} s  {done} done  {errors} errors  {rps:.1} req/s  {tps:.0} output tok/s",
        elapsed.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cause::Failure;

    #[test]
    fn counts_and_rates() {
        let p = Progress::default();
        p.record(&Sample {
            output_tokens: 10,
            ..Sample::default()
        });
        p.record(&Sample {
            output_tokens: 3,
            error: Some(Failure::stream("stream ended without its end event")),
            ..Sample::default()
        });
        assert_eq!(p.counts(), (2, 1, 10));
        let t = Instant::now();
        let window = VecDeque::from([(t, 0, 0), (t + Duration::from_secs(2), 10, 640)]);
        assert_eq!(rates(&window), (5.0, 320.0));
        assert_eq!(rates(&VecDeque::from([(t, 4, 4)])), (0.0, 0.0));
        assert_eq!(
            line(Duration::from_millis(12_500), 340, 2, (27.24, 1741.4)),
            "12.5 s  340 done  2 errors  27.2 req/s  1741 output tok/s"
        );
    }
}
