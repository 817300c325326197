//! Receive memory shared by every session of a process: the third level of the
//! stream → session → process bound.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A byte budget that reservations draw from and release to. Lock-free; shared by `Arc`.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// The default process budget: 1 GiB of receive buffers across all sessions.
    pub fn default_process() -> Self {
        Self::new(1024 * 1024 * 1024)
    }

    /// Takes `bytes` if they fit; false (taking nothing) if not.
    pub fn try_reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Returns `bytes` taken earlier.
    pub fn release(&self, bytes: usize) {
        let previous = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(previous >= bytes, "released more than reserved");
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_exceed_the_limit() {
        let budget = MemoryBudget::new(100);
        assert!(budget.try_reserve(60));
        assert!(!budget.try_reserve(41));
        assert!(budget.try_reserve(40));
        assert!(!budget.try_reserve(1));
        budget.release(60);
        assert_eq!(budget.used(), 40);
        assert!(!budget.try_reserve(usize::MAX));
    }
}
