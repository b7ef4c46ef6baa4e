//! Counting: the Prometheus metrics of the contract (one registry owned by the app, no globals,
//! one `register()` for the whole group) and the per-route sliding windows the gate judges.
//!
//! Per-route counter handles are created once, when the route's entry is created, and kept in
//! [`RouteStats`], so the request path never hashes label strings. Each proxy worker counts in a
//! shard of its own (the window slot it is filling, its Prometheus counts), so the request path
//! writes no cache line another core writes; readers — a scrape, the gate, the admin API —
//! publish the shards first.

use crate::mode::Mode;
use crossbeam_utils::CachePadded;
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Outcome of one shadow comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Match,
    Mismatch,
    CandidateError,
    Skipped,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Match,
        Outcome::Mismatch,
        Outcome::CandidateError,
        Outcome::Skipped,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Mismatch => "mismatch",
            Outcome::CandidateError => "candidate_error",
            Outcome::Skipped => "skipped",
        }
    }
}

/// Why a mirror was not sent or not completed (`cutover_shadow_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    BodyTooLarge,
    Method,
    SampledOut,
    Timeout,
    /// The mirror's budget for buffered request bodies was spent.
    BuffersFull,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::QueueFull,
        DropReason::BodyTooLarge,
        DropReason::Method,
        DropReason::SampledOut,
        DropReason::Timeout,
        DropReason::BuffersFull,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::BodyTooLarge => "body_too_large",
            DropReason::Method => "method",
            DropReason::SampledOut => "sampled_out",
            DropReason::Timeout => "timeout",
            DropReason::BuffersFull => "buffers_full",
        }
    }
}

/// Why the proxy answered a request itself instead of forwarding it
/// (`cutover_rejected_requests_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// 431: the request head is over 64 KiB.
    HeadTooLarge,
    /// 400: an HTTP/1.1 request without `Host`.
    MissingHost,
    /// 400: more than one `Host`.
    DuplicateHost,
    /// 408: the body stalled longer than `listen.body_timeout_ms`.
    BodyTimeout,
    /// 413: the body is over `listen.max_request_body_bytes`.
    BodyTooLarge,
    /// 400: the body could not be read from the client.
    BodyFailed,
    /// 405: CONNECT.
    Connect,
    /// 504: the legacy app gave no response head within `upstreams.legacy_timeout_ms`.
    LegacyTimeout,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::HeadTooLarge,
        RejectReason::MissingHost,
        RejectReason::DuplicateHost,
        RejectReason::BodyTimeout,
        RejectReason::BodyTooLarge,
        RejectReason::BodyFailed,
        RejectReason::Connect,
        RejectReason::LegacyTimeout,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::HeadTooLarge => "head_too_large",
            RejectReason::MissingHost => "missing_host",
            RejectReason::DuplicateHost => "duplicate_host",
            RejectReason::BodyTimeout => "body_timeout",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::BodyFailed => "body_failed",
            RejectReason::Connect => "connect",
            RejectReason::LegacyTimeout => "legacy_timeout",
        }
    }
}

/// Which upstream a duration or an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Legacy,
    Candidate,
    LegacyTwin,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::Candidate => "candidate",
            Side::LegacyTwin => "legacy_twin",
        }
    }
}

/// The metric families of the contract, plus a few additions (marked).
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub comparisons: IntCounterVec,
    pub mismatch_ratio: GaugeVec,
    pub upstream_duration: HistogramVec,
    pub shadow_dropped: IntCounterVec,
    pub session_resolutions: IntCounterVec,
    pub route_mode: IntGaugeVec,
    pub gate_passing: IntGaugeVec,
    pub differences: IntCounterVec,
    /// Addition: failed upstream exchanges (connect, reset, timeout) by side.
    pub upstream_errors: IntCounterVec,
    /// Addition: mirrors in flight or queued now.
    pub shadow_in_flight: prometheus::IntGauge,
    /// Addition: routes sent back to shadow by auto-rollback.
    pub auto_rollbacks: IntCounter,
    /// Addition: promoted requests answered by the legacy app because the candidate failed.
    pub candidate_fallbacks: IntCounter,
    /// Addition: requests the proxy answered itself, by reason.
    pub rejected_requests: IntCounterVec,
    /// Addition: request bytes held in memory for mirrors now.
    pub mirror_buffered_bytes: prometheus::IntGauge,
    /// WebSocket handshakes by route, upstream and outcome; tunnels open now.
    pub websockets: IntCounterVec,
    pub websockets_open: prometheus::IntGauge,
    /// Exchanges handed to the `[record]` file (`recorded`) or dropped because its writer was
    /// behind (`dropped`).
    pub recorded: IntCounterVec,
    dropped: [IntCounter; 6],
    rejected: [IntCounter; 8],
    /// How many shards each route's statistics have ([`shards_for`] the workers).
    shards: usize,
}

impl Metrics {
    /// Creates and registers the whole group.
    pub fn register() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "cutover_requests_total",
                "Client requests by route, mode and status class.",
            ),
            &["route", "mode", "status_class"],
        )?;
        let comparisons = IntCounterVec::new(
            Opts::new(
                "cutover_comparisons_total",
                "Shadow comparisons by outcome.",
            ),
            &["route", "outcome"],
        )?;
        let mismatch_ratio = GaugeVec::new(
            Opts::new(
                "cutover_mismatch_ratio",
                "Mismatches and candidate errors over samples, over the gate window.",
            ),
            &["route"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "cutover_upstream_duration_seconds",
                "Time to the upstream's response head.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route", "upstream"],
        )?;
        let shadow_dropped = IntCounterVec::new(
            Opts::new(
                "cutover_shadow_dropped_total",
                "Eligible-looking requests not mirrored or not completed, by reason.",
            ),
            &["reason"],
        )?;
        let session_resolutions = IntCounterVec::new(
            Opts::new(
                "cutover_session_resolutions_total",
                "Session look-ups by store and outcome.",
            ),
            &["store", "outcome"],
        )?;
        let route_mode = IntGaugeVec::new(
            Opts::new("cutover_route_mode", "1 for the route's current mode."),
            &["route", "mode"],
        )?;
        let gate_passing = IntGaugeVec::new(
            Opts::new(
                "cutover_gate_passing",
                "1 while the route's promotion gate passes.",
            ),
            &["route"],
        )?;
        let differences = IntCounterVec::new(
            Opts::new(
                "cutover_differences_total",
                "Differences found by field and kind.",
            ),
            &["route", "field", "kind"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "cutover_upstream_errors_total",
                "Upstream exchanges that failed (connect, reset, timeout).",
            ),
            &["route", "upstream"],
        )?;
        let auto_rollbacks = IntCounter::new(
            "cutover_auto_rollbacks_total",
            "Routes sent back to shadow by auto-rollback.",
        )?;
        let candidate_fallbacks = IntCounter::new(
            "cutover_candidate_fallbacks_total",
            "Promoted requests answered by the legacy app because the candidate could not answer.",
        )?;
        let shadow_in_flight = prometheus::IntGauge::new(
            "cutover_shadow_in_flight",
            "Mirrors running or queued now.",
        )?;
        let rejected_requests = IntCounterVec::new(
            Opts::new(
                "cutover_rejected_requests_total",
                "Requests cutover answered itself (4xx, 504) instead of forwarding, by reason.",
            ),
            &["reason"],
        )?;
        let mirror_buffered_bytes = prometheus::IntGauge::new(
            "cutover_mirror_buffered_bytes",
            "Request body bytes held in memory for mirrors now.",
        )?;
        let websockets = IntCounterVec::new(
            Opts::new(
                "cutover_websockets_total",
                "WebSocket handshakes passed through (never mirrored), by route, upstream and outcome (tunnelled, refused, failed, unsupported).",
            ),
            &["route", "upstream", "outcome"],
        )?;
        let websockets_open =
            prometheus::IntGauge::new("cutover_websockets_open", "WebSocket tunnels open now.")?;
        let recorded = IntCounterVec::new(
            Opts::new(
                "cutover_recorded_exchanges_total",
                "Exchanges written to the [record] file (outcome recorded), or dropped because its writer was behind (dropped).",
            ),
            &["outcome"],
        )?;
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(websockets.clone()),
            Box::new(websockets_open.clone()),
            Box::new(recorded.clone()),
            Box::new(comparisons.clone()),
            Box::new(mismatch_ratio.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(shadow_dropped.clone()),
            Box::new(session_resolutions.clone()),
            Box::new(route_mode.clone()),
            Box::new(gate_passing.clone()),
            Box::new(differences.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(shadow_in_flight.clone()),
            Box::new(auto_rollbacks.clone()),
            Box::new(candidate_fallbacks.clone()),
            Box::new(rejected_requests.clone()),
            Box::new(mirror_buffered_bytes.clone()),
        ] {
            registry.register(c)?;
        }
        let dropped = DropReason::ALL.map(|r| shadow_dropped.with_label_values(&[r.as_str()]));
        let rejected =
            RejectReason::ALL.map(|r| rejected_requests.with_label_values(&[r.as_str()]));
        Ok(Metrics {
            registry,
            requests,
            comparisons,
            mismatch_ratio,
            upstream_duration,
            shadow_dropped,
            session_resolutions,
            route_mode,
            gate_passing,
            differences,
            upstream_errors,
            shadow_in_flight,
            auto_rollbacks,
            candidate_fallbacks,
            rejected_requests,
            mirror_buffered_bytes,
            websockets,
            websockets_open,
            recorded,
            dropped,
            rejected,
            shards: 1,
        })
    }

    /// The same group, with route statistics split for `workers` proxy workers.
    pub fn for_workers(mut self, workers: usize) -> Metrics {
        self.shards = shards_for(workers);
        self
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected[reason as usize].inc();
    }

    /// The registry in Prometheus text format: route counts as of their last
    /// [`RouteStats::publish`] (the admin API publishes every route before it encodes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for I/O reasons; a collector error yields what was written.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Number of latency histogram buckets: bucket i holds durations below 2^(i/4) × 50 µs.
const LAT_BUCKETS: usize = 64;

fn lat_bucket(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6 / 50.0;
    if us <= 1.0 {
        return 0;
    }
    ((us.log2() * 4.0).ceil() as usize).min(LAT_BUCKETS - 1)
}

fn lat_bucket_upper_ms(i: usize) -> f64 {
    0.05 * 2f64.powf(i as f64 / 4.0)
}

/// Counts for one window slot (or the sum over the window).
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub matches: u64,
    pub mismatches: u64,
    pub errors: u64,
    pub skipped: u64,
    pub requests: u64,
    pub mirrored: u64,
    pub legacy_lat: [u32; LAT_BUCKETS],
    pub candidate_lat: [u32; LAT_BUCKETS],
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            matches: 0,
            mismatches: 0,
            errors: 0,
            skipped: 0,
            requests: 0,
            mirrored: 0,
            legacy_lat: [0; LAT_BUCKETS],
            candidate_lat: [0; LAT_BUCKETS],
        }
    }
}

impl Counts {
    fn is_empty(&self) -> bool {
        self.samples() == 0 && self.skipped == 0 && self.requests == 0
    }

    /// Completed comparisons: what the gate counts as samples.
    pub fn samples(&self) -> u64 {
        self.matches + self.mismatches + self.errors
    }

    /// What the gate judges: samples, and failures (mismatches and candidate errors).
    pub fn evidence(&self) -> crate::gate::Evidence {
        crate::gate::Evidence {
            samples: self.samples(),
            failures: self.mismatches + self.errors,
            errors: self.errors,
        }
    }

    fn add(&mut self, o: &Counts) {
        self.matches += o.matches;
        self.mismatches += o.mismatches;
        self.errors += o.errors;
        self.skipped += o.skipped;
        self.requests += o.requests;
        self.mirrored += o.mirrored;
        for i in 0..LAT_BUCKETS {
            self.legacy_lat[i] += o.legacy_lat[i];
            self.candidate_lat[i] += o.candidate_lat[i];
        }
    }

    /// Quantile `q` of a latency histogram in milliseconds (the bucket's upper edge), None when empty.
    pub fn quantile_ms(hist: &[u32; LAT_BUCKETS], q: f64) -> Option<f64> {
        let total: u64 = hist.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &c) in hist.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(lat_bucket_upper_ms(i));
            }
        }
        Some(lat_bucket_upper_ms(LAT_BUCKETS - 1))
    }
}

/// A sliding window as a ring of time slots; old slots are reused, so memory is fixed.
#[derive(Debug)]
pub struct Window {
    slot_secs: u64,
    slots: Vec<(u64, Counts)>,
}

const SLOTS: u64 = 60;

impl Window {
    pub fn new(window_secs: u64) -> Window {
        let slot_secs = (window_secs / SLOTS).max(1);
        Window {
            slot_secs,
            slots: vec![(u64::MAX, Counts::default()); SLOTS as usize],
        }
    }

    /// The slot `now_secs` falls in, as a number that only grows.
    pub fn index_of(&self, now_secs: u64) -> u64 {
        now_secs / self.slot_secs
    }

    #[cfg(test)]
    fn slot(&mut self, now_secs: u64) -> &mut Counts {
        let index = self.index_of(now_secs);
        self.slot_at(index)
            .unwrap_or_else(|| unreachable!("a current slot"))
    }

    /// The slot numbered `index`, cleared if the ring still held an older one there; None
    /// when the ring already holds a newer one (`index` has left the window).
    fn slot_at(&mut self, index: u64) -> Option<&mut Counts> {
        let at = (index % SLOTS) as usize;
        let slot = &mut self.slots[at];
        if slot.0 == u64::MAX || slot.0 < index {
            *slot = (index, Counts::default());
        } else if slot.0 > index {
            return None;
        }
        Some(&mut slot.1)
    }

    /// Adds counts made during slot `index` (dropped if it has left the window).
    pub fn add_at(&mut self, index: u64, counts: &Counts) {
        if let Some(slot) = self.slot_at(index) {
            slot.add(counts);
        }
    }

    /// The sum of the slots still inside the window at `now_secs` (the current one included).
    pub fn sum(&self, now_secs: u64) -> Counts {
        let current = now_secs / self.slot_secs;
        let oldest = current.saturating_sub(SLOTS - 1);
        let mut total = Counts::default();
        for (index, c) in &self.slots {
            if *index != u64::MAX && *index >= oldest && *index <= current {
                total.add(c);
            }
        }
        total
    }

    /// Mismatch rate of each of the last `n` slots, oldest first (for sparklines).
    pub fn rate_series(&self, now_secs: u64, n: usize) -> Vec<Option<f64>> {
        let current = now_secs / self.slot_secs;
        (0..n as u64)
            .rev()
            .map(|back| {
                let index = current.checked_sub(back)?;
                let (i, c) = &self.slots[(index % SLOTS) as usize];
                if *i != index || c.samples() == 0 {
                    return None;
                }
                Some((c.mismatches + c.errors) as f64 / c.samples() as f64)
            })
            .collect()
    }

    pub fn clear(&mut self) {
        for s in &mut self.slots {
            *s = (u64::MAX, Counts::default());
        }
    }

    /// The slots still inside the window at `now_secs`, to be saved.
    pub fn export(&self, now_secs: u64) -> SavedWindow {
        let current = now_secs / self.slot_secs;
        let oldest = current.saturating_sub(SLOTS - 1);
        let mut slots: Vec<SavedSlot> = self
            .slots
            .iter()
            .filter(|(i, c)| *i != u64::MAX && *i >= oldest && *i <= current && !c.is_empty())
            .map(|(i, c)| SavedSlot::of(*i, c))
            .collect();
        slots.sort_by_key(|s| s.index);
        SavedWindow {
            slot_secs: self.slot_secs,
            slots,
        }
    }

    /// Adds saved slots back (those that have left the window by now, or were saved with
    /// another slot length, are dropped).
    pub fn import(&mut self, saved: &SavedWindow, now_secs: u64) {
        if saved.slot_secs != self.slot_secs {
            return;
        }
        let current = now_secs / self.slot_secs;
        let oldest = current.saturating_sub(SLOTS - 1);
        for s in &saved.slots {
            if s.index >= oldest && s.index <= current {
                self.add_at(s.index, &s.counts());
            }
        }
    }

    /// Clean samples (matches) per second over the last `span` seconds at `now` (unix seconds,
    /// fractional), None when that time holds none. When the counting began less than a
    /// window ago (`span` is then the time since), the rate is exact; over longer spans it is
    /// the rate of whole slots.
    pub fn clean_rate(&self, now: f64, span: f64) -> Option<f64> {
        let slot = self.slot_secs as f64;
        let current = (now / slot) as u64;
        let slots = ((span / slot).ceil() as u64 + 1).clamp(1, SLOTS);
        let oldest = current.saturating_sub(slots - 1);
        let matches: u64 = self
            .slots
            .iter()
            .filter(|(i, _)| *i != u64::MAX && *i >= oldest && *i <= current)
            .map(|(_, c)| c.matches)
            .sum();
        // The current slot has only run for part of its length.
        let covered = (slots - 1) as f64 * slot + (now - current as f64 * slot);
        let covered = covered.min(span).max(1e-3);
        (matches > 0).then(|| matches as f64 / covered)
    }
}

/// A route's window as saved across restarts: its non-empty slots, by absolute slot number.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedWindow {
    pub slot_secs: u64,
    pub slots: Vec<SavedSlot>,
}

/// One saved slot; latencies as (bucket, count) pairs of the non-empty buckets.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedSlot {
    pub index: u64,
    pub matches: u64,
    pub mismatches: u64,
    pub errors: u64,
    pub skipped: u64,
    pub requests: u64,
    pub mirrored: u64,
    #[serde(default)]
    pub legacy_lat: Vec<(u16, u32)>,
    #[serde(default)]
    pub candidate_lat: Vec<(u16, u32)>,
}

impl SavedSlot {
    fn of(index: u64, c: &Counts) -> SavedSlot {
        let sparse = |h: &[u32; LAT_BUCKETS]| {
            h.iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (i as u16, *n))
                .collect()
        };
        SavedSlot {
            index,
            matches: c.matches,
            mismatches: c.mismatches,
            errors: c.errors,
            skipped: c.skipped,
            requests: c.requests,
            mirrored: c.mirrored,
            legacy_lat: sparse(&c.legacy_lat),
            candidate_lat: sparse(&c.candidate_lat),
        }
    }

    fn counts(&self) -> Counts {
        let dense = |pairs: &[(u16, u32)]| {
            let mut h = [0u32; LAT_BUCKETS];
            for (i, n) in pairs {
                if let Some(b) = h.get_mut(usize::from(*i)) {
                    *b = *n;
                }
            }
            h
        };
        Counts {
            matches: self.matches,
            mismatches: self.mismatches,
            errors: self.errors,
            skipped: self.skipped,
            requests: self.requests,
            mirrored: self.mirrored,
            legacy_lat: dense(&self.legacy_lat),
            candidate_lat: dense(&self.candidate_lat),
        }
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

thread_local! {
    /// This thread's statistics shard: 0 unless the thread is a proxy worker (see
    /// [`set_worker_shard`]).
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Most shards a route's statistics are split into (workers beyond share them round-robin).
pub const MAX_SHARDS: usize = 17;

/// Marks the calling thread as proxy worker `i`: its counts go to a shard of their own.
pub fn set_worker_shard(i: usize) {
    SHARD.with(|s| s.set(i % (MAX_SHARDS - 1) + 1));
}

/// How many shards statistics need for `workers` proxy workers (one more for other threads).
pub fn shards_for(workers: usize) -> usize {
    workers.clamp(1, MAX_SHARDS - 1) + 1
}

/// One thread's share of a route's counts. Aligned to its own cache lines: the request path
/// of each worker updates only its shard, and a counter shared by the workers cost a
/// cache-line transfer between cores per update (two threads updating one route's statistics
/// took 11× as long per request as two updating their own).
struct Shard(CachePadded<Mutex<ShardCounts>>);

struct ShardCounts {
    /// The window slot being filled (`NO_SLOT`: none yet) and its counts, not yet in the
    /// route's window.
    pending_at: u64,
    pending: Counts,
    metrics: ShardMetrics,
}

const NO_SLOT: u64 = u64::MAX;

impl ShardCounts {
    /// Moves the pending slot's counts into the route's window; none pending after.
    fn fold_into(&mut self, window: &Mutex<Window>) {
        if self.pending_at != NO_SLOT {
            lock(window).add_at(self.pending_at, &self.pending);
            self.pending = Counts::default();
            self.pending_at = NO_SLOT;
        }
    }
}

/// A shard's Prometheus counts, buffered until a reader flushes them.
struct ShardMetrics {
    requests: [[Option<LocalIntCounter>; 6]; 3],
    comparisons: [LocalIntCounter; 4],
    /// Legacy, candidate, legacy twin (`Side` order).
    durations: [LocalHistogram; 3],
}

impl ShardMetrics {
    /// Moves what this shard counted into the Prometheus metrics.
    fn flush(&self) {
        for c in self.requests.iter().flatten().flatten() {
            c.flush();
        }
        for c in &self.comparisons {
            c.flush();
        }
        for h in &self.durations {
            h.flush();
        }
    }
}

impl Drop for ShardMetrics {
    fn drop(&mut self) {
        // Local counters keep their counts until flushed.
        self.flush();
    }
}

/// One route label's counters: Prometheus handles made once, and its window; counted per
/// thread in shards, summed when read (a scrape, the gate, the admin API).
pub struct RouteStats {
    pub label: String,
    shards: Box<[Shard]>,
    /// The window's slot length, to number slots without taking its lock.
    slot_secs: u64,
    /// The comparison counters the shards flush into, read for [`Totals`].
    comparisons: [IntCounter; 4],
    legacy_errors: IntCounter,
    candidate_errors: IntCounter,
    metrics_requests: IntCounterVec,
    window: Mutex<Window>,
    promoted_served: std::sync::atomic::AtomicU64,
    promoted_5xx: std::sync::atomic::AtomicU64,
}

/// Monotonic totals of a route, for counting "since the promotion".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub matches: u64,
    pub mismatches: u64,
    pub errors: u64,
    /// Answers the candidate gave the client in candidate mode.
    pub served: u64,
    /// Of which 5xx (or no answer at all).
    pub server_errors: u64,
}

impl Totals {
    pub fn since(&self, base: &Totals) -> Totals {
        Totals {
            matches: self.matches.saturating_sub(base.matches),
            mismatches: self.mismatches.saturating_sub(base.mismatches),
            errors: self.errors.saturating_sub(base.errors),
            served: self.served.saturating_sub(base.served),
            server_errors: self.server_errors.saturating_sub(base.server_errors),
        }
    }
}

impl RouteStats {
    pub fn new(label: &str, metrics: &Metrics, window_secs: u64) -> RouteStats {
        let hist = |side: Side| {
            metrics
                .upstream_duration
                .with_label_values(&[label, side.as_str()])
        };
        let durations = [
            hist(Side::Legacy),
            hist(Side::Candidate),
            hist(Side::LegacyTwin),
        ];
        let comparisons =
            Outcome::ALL.map(|o| metrics.comparisons.with_label_values(&[label, o.as_str()]));
        let window = Window::new(window_secs);
        let shards = (0..metrics.shards.clamp(1, MAX_SHARDS))
            .map(|_| {
                Shard(CachePadded::new(Mutex::new(ShardCounts {
                    pending_at: NO_SLOT,
                    pending: Counts::default(),
                    metrics: ShardMetrics {
                        requests: Default::default(),
                        comparisons: comparisons.clone().map(|c| c.local()),
                        durations: durations.clone().map(|h| h.local()),
                    },
                })))
            })
            .collect();
        RouteStats {
            label: label.to_string(),
            shards,
            slot_secs: window.slot_secs,
            comparisons,
            legacy_errors: metrics
                .upstream_errors
                .with_label_values(&[label, "legacy"]),
            candidate_errors: metrics
                .upstream_errors
                .with_label_values(&[label, "candidate"]),
            metrics_requests: metrics.requests.clone(),
            window: Mutex::new(window),
            promoted_served: Default::default(),
            promoted_5xx: Default::default(),
        }
    }

    fn with_window<R>(&self, f: impl FnOnce(&mut Window) -> R) -> R {
        f(&mut lock(&self.window))
    }

    /// The calling thread's shard.
    fn my_shard(&self) -> std::sync::MutexGuard<'_, ShardCounts> {
        let i = SHARD.with(|s| s.get()) % self.shards.len();
        lock(&self.shards[i].0)
    }

    /// The calling thread's shard, with the window slot of `now` ready to count in: a slot
    /// left behind goes into the route's window first (once per slot and shard).
    fn with_slot<R>(&self, now: u64, f: impl FnOnce(&mut ShardMetrics, &mut Counts) -> R) -> R {
        let mut guard = self.my_shard();
        let shard = &mut *guard;
        let index = now / self.slot_secs;
        if shard.pending_at != index {
            shard.fold_into(&self.window);
            shard.pending_at = index;
        }
        f(&mut shard.metrics, &mut shard.pending)
    }

    /// Brings every shard's counts into the window and the Prometheus metrics, for a reader.
    pub fn publish(&self) {
        for shard in self.shards.iter() {
            let mut shard = lock(&shard.0);
            shard.fold_into(&self.window);
            shard.metrics.flush();
        }
    }

    /// A client request was answered with `status` in `mode`.
    pub fn request(&self, mode: Mode, status: u16, mirrored: bool) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
        self.with_slot(now_secs(), |shard, slot| {
            shard.requests[mode.index()][class]
                .get_or_insert_with(|| {
                    self.metrics_requests
                        .with_label_values(&[&self.label, mode.as_str(), CLASSES[class]])
                        .local()
                })
                .inc();
            slot.requests += 1;
            if mirrored {
                slot.mirrored += 1;
            }
        });
    }

    /// How long an upstream took to its response head.
    pub fn duration(&self, side: Side, took: Duration) {
        self.my_shard().metrics.durations[side as usize].observe(took.as_secs_f64());
    }

    /// The candidate answered a client of a promoted route with `status` (502: no answer).
    pub fn promoted_answer(&self, status: u16) {
        use std::sync::atomic::Ordering;
        self.promoted_served.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.promoted_5xx.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn totals(&self) -> Totals {
        use std::sync::atomic::Ordering;
        self.publish();
        let comparisons = |o: Outcome| self.comparisons[o as usize].get();
        Totals {
            matches: comparisons(Outcome::Match),
            mismatches: comparisons(Outcome::Mismatch),
            errors: comparisons(Outcome::CandidateError),
            served: self.promoted_served.load(Ordering::Relaxed),
            server_errors: self.promoted_5xx.load(Ordering::Relaxed),
        }
    }

    pub fn upstream_error(&self, side: Side) {
        match side {
            Side::Legacy => self.legacy_errors.inc(),
            _ => self.candidate_errors.inc(),
        }
    }

    /// A comparison finished (or was skipped).
    pub fn outcome(&self, outcome: Outcome, legacy: Option<Duration>, candidate: Option<Duration>) {
        self.with_slot(now_secs(), |shard, s| {
            shard.comparisons[outcome as usize].inc();
            match outcome {
                Outcome::Match => s.matches += 1,
                Outcome::Mismatch => s.mismatches += 1,
                Outcome::CandidateError => s.errors += 1,
                Outcome::Skipped => s.skipped += 1,
            }
            if let Some(d) = legacy {
                s.legacy_lat[lat_bucket(d)] += 1;
            }
            if let Some(d) = candidate {
                s.candidate_lat[lat_bucket(d)] += 1;
            }
        });
    }

    pub fn window_sum(&self) -> Counts {
        self.publish();
        let now = now_secs();
        self.with_window(|w| w.sum(now))
    }

    pub fn rate_series(&self, n: usize) -> Vec<Option<f64>> {
        self.publish();
        let now = now_secs();
        self.with_window(|w| w.rate_series(now, n))
    }

    /// The window as it is now, to be saved.
    pub fn saved_window(&self) -> SavedWindow {
        self.publish();
        let now = now_secs();
        self.with_window(|w| w.export(now))
    }

    /// Adds a saved window's slots (a restart resuming where it stopped).
    pub fn restore_window(&self, saved: &SavedWindow) {
        let now = now_secs();
        self.with_window(|w| w.import(saved, now));
    }

    /// Clean samples per second over the last `span` seconds (None: none in that time).
    pub fn clean_rate(&self, span: f64) -> Option<f64> {
        self.publish();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.with_window(|w| w.clean_rate(now, span))
    }

    pub fn reset_window(&self) {
        for shard in self.shards.iter() {
            // The counts a shard has not yet folded in are forgotten with the rest.
            let mut shard = lock(&shard.0);
            shard.pending = Counts::default();
            shard.pending_at = NO_SLOT;
        }
        self.with_window(Window::clear);
    }
}

/// A poisoned lock only means a panic elsewhere mid-update; the counts are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_old_slots() {
        let mut w = Window::new(60); // 1-second slots
        w.slot(1000).matches += 3;
        w.slot(1030).mismatches += 1;
        assert_eq!(w.sum(1030).samples(), 4);
        assert_eq!(w.sum(1059).samples(), 4);
        // At 1060 the slot of second 1000 has left the window.
        assert_eq!(w.sum(1060).samples(), 1);
        assert_eq!(w.sum(1090).samples(), 0);
        // A reused ring slot starts from zero.
        w.slot(1120).matches += 1;
        assert_eq!(w.sum(1120).matches, 1);
    }

    #[test]
    fn windows_are_saved_and_resumed() {
        let mut w = Window::new(600); // 10-second slots
        w.slot(10_000).matches += 3;
        w.slot(10_000).legacy_lat[5] += 2;
        w.slot(10_300).mismatches += 1;
        let saved = w.export(10_305);
        assert_eq!(saved.slots.len(), 2);
        let json = serde_json::to_string(&saved).expect("json");
        let back: SavedWindow = serde_json::from_str(&json).expect("back");
        let mut fresh = Window::new(600);
        fresh.import(&back, 10_400);
        let c = fresh.sum(10_400);
        assert_eq!((c.matches, c.mismatches, c.legacy_lat[5]), (3, 1, 2));
        // Later, the slot of second 10000 has left the window: not brought back.
        let mut later = Window::new(600);
        later.import(&back, 10_700);
        assert_eq!(later.sum(10_700).matches, 0);
        assert_eq!(later.sum(10_700).mismatches, 1);
        // Another window length: nothing is brought back.
        let mut other = Window::new(3600);
        other.import(&back, 10_400);
        assert_eq!(other.sum(10_400).samples(), 0);
    }

    #[test]
    fn clean_rate_over_recent_slots() {
        let mut w = Window::new(60); // 1-second slots
        for t in 1000..1010 {
            w.slot(t).matches += 5;
        }
        // Counting began 10 s ago: 50 matches in 10 s.
        let r = w.clean_rate(1010.0, 10.0).expect("a rate");
        assert!((r - 5.0).abs() < 1e-9, "{r}");
        assert_eq!(w.clean_rate(2000.0, 5.0), None);
    }

    #[test]
    fn quantiles_from_buckets() {
        let mut c = Counts::default();
        for ms in [1.0, 1.0, 1.0, 100.0] {
            c.legacy_lat[lat_bucket(Duration::from_secs_f64(ms / 1000.0))] += 1;
        }
        let p50 = Counts::quantile_ms(&c.legacy_lat, 0.5).expect("data");
        assert!((1.0..1.2).contains(&p50), "{p50}");
        let p99 = Counts::quantile_ms(&c.legacy_lat, 0.99).expect("data");
        assert!((100.0..120.0).contains(&p99), "{p99}");
        assert_eq!(Counts::quantile_ms(&[0; LAT_BUCKETS], 0.5), None);
    }

    #[test]
    fn shards_of_many_threads_add_up() {
        let m = Metrics::register().expect("register").for_workers(3);
        let r = std::sync::Arc::new(RouteStats::new("/r", &m, 3600));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let r = r.clone();
                std::thread::spawn(move || {
                    set_worker_shard(i);
                    for _ in 0..1000 {
                        r.request(Mode::Shadow, 200, true);
                        r.duration(Side::Candidate, Duration::from_millis(2));
                        r.outcome(Outcome::Mismatch, None, Some(Duration::from_millis(2)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        // Not in the metrics until published; a window read publishes.
        let unpublished = String::from_utf8(m.encode()).expect("utf8");
        assert!(!unpublished.contains(
            r#"cutover_requests_total{mode="shadow",route="/r",status_class="2xx"} 4000"#
        ));
        let c = r.window_sum();
        assert_eq!((c.requests, c.mirrored, c.mismatches), (4000, 4000, 4000));
        assert_eq!(
            c.candidate_lat.iter().map(|&n| u64::from(n)).sum::<u64>(),
            4000
        );
        assert_eq!(r.totals().mismatches, 4000);
        let text = String::from_utf8(m.encode()).expect("utf8");
        for line in [
            r#"cutover_requests_total{mode="shadow",route="/r",status_class="2xx"} 4000"#,
            r#"cutover_comparisons_total{outcome="mismatch",route="/r"} 4000"#,
            r#"cutover_upstream_duration_seconds_count{route="/r",upstream="candidate"} 4000"#,
            r#"cutover_upstream_duration_seconds_bucket{route="/r",upstream="candidate",le="0.0025"} 4000"#,
            r#"cutover_upstream_duration_seconds_bucket{route="/r",upstream="candidate",le="0.001"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Reading again adds nothing twice.
        assert_eq!(r.window_sum().requests, 4000);
        assert_eq!(r.totals().mismatches, 4000);
        r.reset_window();
        assert_eq!(r.window_sum().requests, 0);
    }

    #[test]
    fn a_reset_forgets_counts_not_yet_folded_into_the_window() {
        let m = Metrics::register().expect("register").for_workers(2);
        let r = RouteStats::new("/r", &m, 3600);
        for _ in 0..3 {
            r.request(Mode::Shadow, 200, true);
        }
        // Nothing has read the window, so the three are still in this thread's shard.
        r.reset_window();
        r.request(Mode::Shadow, 200, true);
        assert_eq!(r.window_sum().requests, 1);
    }

    #[test]
    fn a_slot_that_left_the_window_is_not_counted_into_a_newer_one() {
        let mut w = Window::new(60);
        w.add_at(
            w.index_of(1120),
            &Counts {
                matches: 1,
                ..Counts::default()
            },
        );
        // Slot 1060 maps to the same ring place as 1120 but is older: dropped.
        w.add_at(
            w.index_of(1060),
            &Counts {
                matches: 5,
                ..Counts::default()
            },
        );
        assert_eq!(w.sum(1120).matches, 1);
    }

    #[test]
    fn metrics_encode_contract_names() {
        let m = Metrics::register().expect("register");
        let r = RouteStats::new("/users/{id}", &m, 3600);
        r.request(Mode::Shadow, 200, true);
        r.outcome(Outcome::Match, None, None);
        m.dropped(DropReason::Method);
        r.publish();
        let text = String::from_utf8(m.encode()).expect("utf8");
        assert!(
            text.contains(
                r#"cutover_requests_total{mode="shadow",route="/users/{id}",status_class="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"cutover_comparisons_total{outcome="match",route="/users/{id}"} 1"#)
        );
        assert!(text.contains(r#"cutover_shadow_dropped_total{reason="method"} 1"#));
    }
}
