//! Which requests are mirrored ([`sampled`], sticky per session) and the bounded dispatcher: a slot for every mirror in flight or queued, `concurrency` of them
//! calling the candidate at once; none free means the mirror is dropped and counted, never
//! buffered without limit.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

/// Bounds the mirrors: `capacity` slots for mirrors running or queued, `running` for
/// concurrent candidate calls. Shared by the workers, so it touches as few shared cache lines
/// as it can: a slot is one atomic add and one subtract (a semaphore took a lock to give a
/// permit back, and an `Arc` clone to hand it to the task).
pub struct Dispatcher {
    // Each on a cache line of its own: both are written by every worker.
    taken: CachePadded<AtomicUsize>,
    capacity: usize,
    running: CachePadded<Semaphore>,
}

impl Dispatcher {
    pub fn new(concurrency: usize, queue: usize) -> Dispatcher {
        Dispatcher {
            taken: CachePadded::new(AtomicUsize::new(0)),
            capacity: concurrency + queue,
            running: CachePadded::new(Semaphore::new(concurrency)),
        }
    }

    /// A slot for one more mirror, or None when the queue is full.
    pub fn try_reserve(&self) -> Option<Reservation<'_>> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < self.capacity).then_some(taken + 1)
            })
            .ok()?;
        Some(Reservation {
            dispatcher: self,
            armed: true,
        })
    }

    /// Mirrors running or queued now: the slots taken. Read when scraped rather than kept in
    /// a gauge, which every mirror would update twice from every worker.
    pub fn in_flight(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

/// A slot taken and not yet handed to an exchange; given back if dropped.
pub struct Reservation<'a> {
    dispatcher: &'a Dispatcher,
    pub(super) armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.dispatcher.taken.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Dispatcher {
    /// Gives back a slot held by an exchange (see `Reservation`).
    pub(super) fn release(&self) {
        self.taken.fetch_sub(1, Ordering::AcqRel);
    }

    /// The permit to call the candidate now; waits while `concurrency` calls run.
    pub(super) async fn running(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.running.acquire().await.ok()
    }
}

/// Whether this request is in the sample: sticky per session cookie (a hash of its value, the
/// same on every proxy of a fleet), random without one.
pub fn sampled(rate: f64, session: Option<&str>) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let x = match session {
        Some(id) => {
            // FNV-1a: stable across processes and versions, unlike std's hasher.
            let mut h: u64 = 0xcbf29ce484222325;
            for b in id.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
            // FNV's high bits barely move when only the last bytes differ (session ids that
            // share a prefix): mix them (MurmurHash3's finaliser) before taking a fraction.
            h ^= h >> 33;
            h = h.wrapping_mul(0xff51afd7ed558ccd);
            h ^= h >> 33;
            h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
            h ^= h >> 33;
            (h >> 11) as f64 / (1u64 << 53) as f64
        }
        None => fastrand::f64(),
    };
    x < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dispatcher_gives_at_most_its_slots_and_takes_back_unused_ones() {
        let d = Dispatcher::new(2, 1);
        let a = d.try_reserve().expect("slot 1");
        let b = d.try_reserve().expect("slot 2");
        let c = d.try_reserve().expect("slot 3");
        assert!(d.try_reserve().is_none(), "past concurrency + queue");
        assert_eq!(d.in_flight(), 3);
        drop(b);
        assert_eq!(d.in_flight(), 2);
        let again = d.try_reserve().expect("a slot given back is free again");
        assert!(d.try_reserve().is_none());
        drop((a, c, again));
        assert_eq!(d.in_flight(), 0);
        // Many threads racing for the slots never get more than there are.
        let d = std::sync::Arc::new(Dispatcher::new(3, 2));
        let got: usize = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    let mut most = 0;
                    for _ in 0..10_000 {
                        if let Some(r) = d.try_reserve() {
                            held.push(r);
                        }
                        most = most.max(d.in_flight());
                        if held.len() > 1 {
                            held.clear();
                        }
                    }
                    drop(held);
                    most
                })
            })
            .map(|t| t.join().expect("thread"))
            .max()
            .unwrap_or(0);
        assert!(got <= 5, "{got} slots taken at once");
        assert_eq!(d.in_flight(), 0);
    }
    #[test]
    fn sticky_sampling_is_spread_and_stable() {
        let ids: Vec<String> = (0..2000).map(|i| format!("user{i:05}")).collect();
        let share = ids
            .iter()
            .filter(|id| super::sampled(0.3, Some(id)))
            .count() as f64
            / 2000.0;
        assert!((0.25..0.35).contains(&share), "{share}");
        for id in &ids {
            assert_eq!(super::sampled(0.3, Some(id)), super::sampled(0.3, Some(id)));
        }
        // Nested shares: a session in the 10% sample is in the 30% sample too.
        assert!(ids
            .iter()
            .filter(|id| super::sampled(0.1, Some(id)))
            .all(|id| super::sampled(0.3, Some(id))));
    }
}
