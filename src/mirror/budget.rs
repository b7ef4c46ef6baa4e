//! The bound on request bodies kept in memory for mirroring, over every request at once: a
//! mirrored request's body is held until its exchange ends, so without a bound a few hundred
//! slow uploads on a mirrored route would hold hundreds of megabytes. A request that finds the
//! budget spent is served, not mirrored (`cutover_shadow_dropped_total{reason="buffers_full"}`).

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct BodyBudget {
    // On a cache line of its own: every worker's mirrored bodies write it.
    used: CachePadded<AtomicUsize>,
    max: usize,
}

impl BodyBudget {
    pub fn new(max: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            used: CachePadded::new(AtomicUsize::new(0)),
            max,
        })
    }

    /// Bytes held by bodies now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= self.max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// An empty hold, to grow as a body is read.
    pub fn hold(self: &Arc<Self>) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes of the budget held by one body; given back when dropped.
pub struct Held {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Held {
    /// Holds `n` more bytes; false (and nothing more held) when the budget is spent.
    pub fn grow(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let ok = self.budget.take(n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_bounded_and_given_back() {
        let b = BodyBudget::new(100);
        let mut a = b.hold();
        assert!(a.grow(60));
        let mut c = b.hold();
        assert!(!c.grow(50), "60 + 50 > 100");
        assert!(c.grow(40));
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        assert!(c.grow(60));
        drop(c);
        assert_eq!(b.used(), 0);
    }
}
