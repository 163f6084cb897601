//! The sliding window both stores count in: a minute cut into one-second buckets. A request
//! is admitted when what the buckets of the last 60 seconds hold, plus its cost, is within
//! the limit. Exact to the second: over any 60 whole seconds no more than the limit is
//! admitted; the 60 s ending at an arbitrary instant may also see up to one more second's
//! bucket (the one the window is leaving). The Lua script in `redis.rs` is this same
//! algorithm run inside Redis.

use std::collections::VecDeque;
use std::time::Duration;

/// Seconds in the window.
pub const WINDOW_SECS: u64 = 60;

/// Cost counted per second of the last minute, oldest first.
#[derive(Debug, Default)]
pub struct Window {
    buckets: VecDeque<(u64, u64)>,
}

/// The window after a decision, as the `x-ratelimit-*` headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub limit: u64,
    pub remaining: u64,
    /// Until the oldest bucket counted leaves the window (zero when none is).
    pub reset: Duration,
}

/// `now_ms` on the wall clock; the second it falls in.
fn second(now_ms: u64) -> u64 {
    now_ms / 1000
}

/// How long until the bucket of second `s` leaves the window.
fn leaves(s: u64, now_ms: u64) -> Duration {
    Duration::from_millis(((s + WINDOW_SECS) * 1000).saturating_sub(now_ms))
}

impl Window {
    /// Forgets the buckets older than the window; what the rest hold.
    fn used(&mut self, now_ms: u64) -> u64 {
        let sec = second(now_ms);
        while self
            .buckets
            .front()
            .is_some_and(|&(s, _)| s + WINDOW_SECS <= sec)
        {
            self.buckets.pop_front();
        }
        self.buckets.iter().map(|&(_, n)| n).sum()
    }

    /// Whether `cost` fits under `limit` now; when it does not, how long until it would.
    pub fn check(&mut self, now_ms: u64, cost: u64, limit: u64) -> Result<(), Duration> {
        let used = self.used(now_ms);
        if used + cost <= limit {
            return Ok(());
        }
        let mut freed = 0;
        for &(s, n) in &self.buckets {
            freed += n;
            if used - freed + cost <= limit {
                return Err(leaves(s, now_ms));
            }
        }
        // More than the whole limit: it never fits; a minute is as good an answer as any.
        Err(Duration::from_secs(WINDOW_SECS))
    }

    /// Counts `cost` in the current second.
    pub fn add(&mut self, now_ms: u64, cost: u64) {
        let sec = second(now_ms);
        match self.buckets.back_mut() {
            Some((s, n)) if *s == sec => *n += cost,
            _ => self.buckets.push_back((sec, cost)),
        }
    }

    /// Corrects what was counted at second `at` by `delta` (never below zero); when that
    /// bucket has left the window, more than estimated is counted now, less is forgotten.
    pub fn correct(&mut self, now_ms: u64, at: u64, delta: i64) {
        self.used(now_ms);
        if let Some((_, n)) = self.buckets.iter_mut().find(|(s, _)| *s == at) {
            *n = n.saturating_add_signed(delta);
        } else if delta > 0 && at + WINDOW_SECS > second(now_ms) {
            // In the window but emptied (nothing else counted then): keep its place.
            let i = self.buckets.partition_point(|&(s, _)| s < at);
            self.buckets.insert(i, (at, delta as u64));
        } else if delta > 0 {
            self.add(now_ms, delta as u64);
        }
    }

    /// The window as the headers tell it.
    pub fn room(&mut self, now_ms: u64, limit: u64) -> Room {
        let used = self.used(now_ms);
        Room {
            limit,
            remaining: limit.saturating_sub(used),
            reset: self
                .buckets
                .front()
                .map_or(Duration::ZERO, |&(s, _)| leaves(s, now_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_window_frees_as_its_oldest_seconds_leave() {
        let mut w = Window::default();
        let t = 1_000_000_000;
        for i in 0..3 {
            assert!(w.check(t + i * 1000, 1, 3).is_ok());
            w.add(t + i * 1000, 1);
        }
        // Full at t+2.5s: the bucket of second t leaves at t+60s.
        assert_eq!(w.check(t + 2500, 1, 3), Err(Duration::from_millis(57_500)));
        assert_eq!(w.room(t + 2500, 3).remaining, 0);
        assert!(w.check(t + 60_000, 1, 3).is_ok());
        assert_eq!(w.room(t + 60_000, 3).remaining, 1);
        // Two needed: the second oldest must leave too.
        assert_eq!(w.check(t + 2500, 2, 3), Err(Duration::from_millis(58_500)));
        assert_eq!(w.check(t, 4, 3), Err(Duration::from_secs(60)));
    }

    #[test]
    fn corrections_land_where_the_estimate_was_counted() {
        let mut w = Window::default();
        let t = 5_000_000;
        w.add(t, 100);
        w.add(t + 1000, 10);
        w.correct(t + 2000, t / 1000, -70);
        assert_eq!(w.room(t + 2000, 1000).remaining, 1000 - 40);
        w.correct(t + 2000, t / 1000, -500);
        assert_eq!(w.room(t + 2000, 1000).remaining, 1000 - 10, "never below 0");
        // Past the window: more than estimated is counted now, less forgotten.
        w.correct(t + 70_000, t / 1000, 5);
        w.correct(t + 70_000, t / 1000, -5);
        assert_eq!(w.room(t + 70_000, 1000).remaining, 995);
    }
}
