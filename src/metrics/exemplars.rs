//! Exemplars: for each bucket of a latency histogram's series, the latest request that fell
//! into it — its trace and span ids, the value and when — so that a P99 on a dashboard
//! leads to the requests behind it. The `prometheus` crate keeps the counts; the exemplars
//! live beside them, one fixed slot per bucket allocated with the series, written without a
//! lock (a sequence number per slot: a writer that finds the slot being written skips it,
//! a reader retries), once per request and never per token.

use std::sync::atomic::{AtomicU64, Ordering};

/// The ids of a request's trace and SERVER span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// One exemplar as read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    pub ids: Ids,
    pub value: f64,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
}

/// One bucket's latest exemplar.
#[derive(Default)]
struct Slot {
    /// Even: stable; odd: being written; 0: never written.
    seq: AtomicU64,
    trace_hi: AtomicU64,
    trace_lo: AtomicU64,
    span: AtomicU64,
    value: AtomicU64,
    timestamp: AtomicU64,
}

/// The exemplars of one histogram series: `bounds` are its buckets' upper bounds (the
/// last slot is `+Inf`'s).
pub struct Exemplars {
    bounds: Box<[f64]>,
    slots: Box<[Slot]>,
}

impl Exemplars {
    pub fn new(bounds: &[f64]) -> Exemplars {
        Exemplars {
            bounds: bounds.into(),
            slots: (0..=bounds.len()).map(|_| Slot::default()).collect(),
        }
    }

    /// The bucket a value falls in (the first whose bound is at least the value).
    fn bucket(&self, value: f64) -> usize {
        self.bounds.partition_point(|&b| b < value)
    }

    /// Keeps `value` of the request `ids`, seen at `timestamp`, as its bucket's exemplar.
    pub fn record(&self, value: f64, ids: Ids, timestamp: f64) {
        let slot = &self.slots[self.bucket(value)];
        let seq = slot.seq.load(Ordering::Relaxed);
        // Another writer is at it: the latest of two concurrent requests is as good.
        if seq % 2 == 1
            || slot
                .seq
                .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let trace = u128::from_be_bytes(ids.trace_id);
        slot.trace_hi.store((trace >> 64) as u64, Ordering::Relaxed);
        slot.trace_lo.store(trace as u64, Ordering::Relaxed);
        slot.span
            .store(u64::from_be_bytes(ids.span_id), Ordering::Relaxed);
        slot.value.store(value.to_bits(), Ordering::Relaxed);
        slot.timestamp.store(timestamp.to_bits(), Ordering::Relaxed);
        slot.seq.store(seq + 2, Ordering::Release);
    }

    /// The exemplar of bucket `i` (`bounds().len()` for `+Inf`), if one was recorded.
    pub fn get(&self, i: usize) -> Option<Exemplar> {
        let slot = self.slots.get(i)?;
        for _ in 0..64 {
            let before = slot.seq.load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let trace = (u128::from(slot.trace_hi.load(Ordering::Relaxed)) << 64)
                | u128::from(slot.trace_lo.load(Ordering::Relaxed));
            let span = slot.span.load(Ordering::Relaxed);
            let value = f64::from_bits(slot.value.load(Ordering::Relaxed));
            let timestamp = f64::from_bits(slot.timestamp.load(Ordering::Relaxed));
            std::sync::atomic::fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) == before {
                let ids = Ids {
                    trace_id: trace.to_be_bytes(),
                    span_id: span.to_be_bytes(),
                };
                return Some(Exemplar {
                    ids,
                    value,
                    timestamp,
                });
            }
        }
        None
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u8) -> Ids {
        Ids {
            trace_id: [n; 16],
            span_id: [n; 8],
        }
    }

    #[test]
    fn each_bucket_keeps_its_latest_exemplar() {
        let e = Exemplars::new(&[0.1, 0.2, 0.5]);
        assert_eq!(e.get(1), None);
        e.record(0.15, ids(1), 10.0);
        e.record(0.2, ids(2), 11.0);
        e.record(0.05, ids(3), 12.0);
        e.record(9.0, ids(4), 13.0);
        let got = e.get(1).unwrap();
        assert_eq!(
            (got.ids, got.value, got.timestamp),
            (ids(2), 0.2, 11.0),
            "le is inclusive"
        );
        assert_eq!(e.get(0).unwrap().ids, ids(3));
        assert_eq!(e.get(2), None);
        assert_eq!(e.get(3).unwrap().value, 9.0, "+Inf");
        assert_eq!(e.get(4), None);
    }

    #[test]
    fn concurrent_writers_never_tear_an_exemplar() {
        let e = std::sync::Arc::new(Exemplars::new(&[1.0]));
        let writers: Vec<_> = (1..=4u8)
            .map(|n| {
                let e = e.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        e.record(0.5, ids(n), f64::from(i));
                    }
                })
            })
            .collect();
        for _ in 0..20_000 {
            if let Some(x) = e.get(0) {
                let n = x.ids.trace_id[0];
                assert!(x.ids.trace_id.iter().all(|&b| b == n) && x.ids.span_id == [n; 8]);
            }
        }
        for w in writers {
            w.join().unwrap();
        }
    }
}
