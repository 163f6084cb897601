//! One budget for every body the gateway holds whole in memory: request bodies being read
//! for inspection, response bodies kept to read their usage. Each holder reserves what it
//! keeps and gives it back when it lets go (`Reservation` is dropped); what would take the
//! total past the limit is refused (a request gets a 503, a response passes unmeasured). A
//! leaf: it imports nothing of weir.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held, against a limit.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        })
    }

    /// A new limit (a reload): what is held stays held.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow as bytes arrive.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: 0,
        }
    }

    fn take(&self, n: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .is_ok()
    }
}

/// Bytes one holder keeps; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    held: usize,
}

impl Reservation {
    /// Takes `n` more bytes; false (and nothing taken) when the budget has not got them.
    pub fn grow(&mut self, n: usize) -> bool {
        if n == 0 || self.budget.take(n) {
            self.held += n;
            true
        } else {
            false
        }
    }

    /// Gives everything back now.
    pub fn release(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
        self.held = 0;
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_limit_and_give_back_on_drop() {
        let b = Budget::new(100);
        let mut r1 = b.reserve();
        let mut r2 = b.reserve();
        assert!(r1.grow(60));
        assert!(!r2.grow(41), "over the limit");
        assert_eq!(r2.held(), 0);
        assert!(r2.grow(40));
        assert_eq!(b.used(), 100);
        drop(r1);
        assert_eq!(b.used(), 40);
        assert!(r2.grow(60));
        r2.release();
        assert_eq!(b.used(), 0);
        b.set_limit(10);
        assert!(!b.reserve().grow(11));
    }
}
