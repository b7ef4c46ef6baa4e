//! Whether a session's after-read can be trusted. The snapshot the candidate gets is read
//! before PHP runs, and what PHP left is read after its response; if another request of the
//! same session ran in between or alongside (a parallel AJAX call, the browser's next page), PHP
//! may have changed the session for that request's sake, and the comparison would blame the
//! candidate. So, while sessions are compared, every request that carries a session id is
//! counted in flight until its response has gone out, and an exchange whose session saw another
//! request during its own has its session comparison skipped (`session_raced`).
//!
//! A request takes one of sixteen shard locks when it starts and when its response ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

#[derive(Default)]
struct Entry {
    /// Requests carrying this id whose responses have not ended.
    inflight: u32,
    /// Exchanges that still have to read the session.
    watchers: u32,
    /// Bumped by every request that starts with this id.
    arrivals: u64,
}

pub struct SessionRaces {
    shards: [Mutex<HashMap<String, Entry>>; SHARDS],
    /// Makes shard choice differ per process.
    seed: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl SessionRaces {
    pub fn new() -> Arc<SessionRaces> {
        Arc::new(SessionRaces {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            seed: fastrand::u64(..),
        })
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<String, Entry>> {
        let mut h = self.seed ^ 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        &self.shards[(h as usize) % SHARDS]
    }

    /// A request carrying session `id` starts; it counts until the guard is dropped (when its
    /// response has ended).
    pub fn enter(self: &Arc<Self>, id: &str) -> InFlight {
        let mut shard = lock(self.shard(id));
        let e = shard.entry(id.to_string()).or_default();
        e.inflight += 1;
        e.arrivals += 1;
        InFlight {
            races: self.clone(),
            id: id.to_string(),
            others_at_start: e.inflight > 1,
            arrivals_at_start: e.arrivals,
        }
    }

    /// A watch for an exchange whose request carried no session id (PHP may start one).
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        Ticket {
            races: self.clone(),
            ids: Vec::new(),
            raced: false,
        }
    }

    fn release(&self, id: &str, inflight: bool) {
        let mut shard = lock(self.shard(id));
        let gone = match shard.get_mut(id) {
            Some(e) => {
                if inflight {
                    e.inflight = e.inflight.saturating_sub(1);
                } else {
                    e.watchers = e.watchers.saturating_sub(1);
                }
                e.inflight == 0 && e.watchers == 0
            }
            None => false,
        };
        if gone {
            shard.remove(id);
        }
    }
}

/// A request in flight with a session id.
pub struct InFlight {
    races: Arc<SessionRaces>,
    id: String,
    /// Another request of the session was in flight when this one started.
    others_at_start: bool,
    arrivals_at_start: u64,
}

impl InFlight {
    /// The watch an exchange keeps on this request's session until its after-read.
    pub fn ticket(&self) -> Ticket {
        let mut shard = lock(self.races.shard(&self.id));
        let e = shard.entry(self.id.clone()).or_default();
        e.watchers += 1;
        Ticket {
            races: self.races.clone(),
            ids: vec![(self.id.clone(), self.arrivals_at_start)],
            raced: self.others_at_start,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.races.release(&self.id, true);
    }
}

/// An exchange's watch on its session ids, from its request's start until its after-read.
pub struct Ticket {
    races: Arc<SessionRaces>,
    /// (id, arrivals when watched).
    ids: Vec<(String, u64)>,
    /// Already known to have raced.
    raced: bool,
}

impl Ticket {
    /// Watches one more id (a new or regenerated one the response sets).
    pub fn also(&mut self, id: &str) {
        if self.ids.iter().any(|(i, _)| i == id) {
            return;
        }
        let mut shard = lock(self.races.shard(id));
        let e = shard.entry(id.to_string()).or_default();
        e.watchers += 1;
        self.raced |= e.inflight > 0;
        let at = e.arrivals;
        drop(shard);
        self.ids.push((id.to_string(), at));
    }

    /// Whether another request of one of the sessions ran alongside or since.
    pub fn raced(&self) -> bool {
        self.raced
            || self.ids.iter().any(|(id, at)| {
                lock(self.races.shard(id))
                    .get(id)
                    .is_some_and(|e| e.arrivals != *at)
            })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        for (id, _) in self.ids.drain(..) {
            self.races.release(&id, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_a_session_during_an_exchange_race_it() {
        let r = SessionRaces::new();
        // Alone: not raced, even after its own response ended.
        let a = r.enter("abc");
        let t = a.ticket();
        drop(a);
        assert!(!t.raced());
        // Another request of the session before the read: raced.
        let b = r.enter("abc");
        assert!(t.raced());
        drop((b, t));
        // Another session does not count.
        let c = r.enter("s1");
        let tc = c.ticket();
        let other = r.enter("s2");
        assert!(!tc.raced());
        drop((c, tc, other));
        // Started while another request of the session was in flight: raced from the start.
        let d = r.enter("s3");
        let e = r.enter("s3");
        assert!(e.ticket().raced());
        drop((d, e));
        // A regenerated id is watched too.
        let f = r.enter("old");
        let mut tf = f.ticket();
        tf.also("new1");
        assert!(!tf.raced());
        let _g = r.enter("new1");
        assert!(tf.raced());
        drop((f, tf, _g));
        for s in &r.shards {
            assert!(lock(s).is_empty(), "entries are released");
        }
    }
}
