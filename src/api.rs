//! The admin API's wire types, one set for both ends: the admin server serializes them, the CLI
//! and the TUI (through [`crate::client`]) deserialize them. Fields added later carry
//! `#[serde(default)]`, so a newer client reads an older proxy.

use crate::gate::{Thresholds, Verdict};
use crate::noise::NoiseKey;
use crate::samples::Sample;
use serde::{Deserialize, Serialize};

/// `GET /api/routes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutesView {
    /// Changes whenever any route's stored mode does (the sum of the routes' versions).
    pub state_version: u64,
    #[serde(default)]
    pub uptime_secs: u64,
    pub routes: Vec<RouteView>,
    /// The thresholds the verdicts use, so a fleet's sums can be judged alike.
    #[serde(default)]
    pub gate_thresholds: Option<Thresholds>,
    /// Proxy-wide counters since start.
    #[serde(default)]
    pub totals: Option<TotalsView>,
}

/// One route of `GET /api/routes`; counts are over the gate window, the current moment included.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RouteView {
    pub route: String,
    /// `legacy`, `shadow`, `candidate` (`mixed` in a fleet's sum whose proxies disagree).
    pub mode: String,
    #[serde(default)]
    pub percent: u8,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub mirrored: u64,
    /// Completed comparisons: matches + mismatches + errors.
    pub samples: u64,
    pub matches: u64,
    pub mismatches: u64,
    /// Candidate errors (connect, timeout, reset).
    pub errors: u64,
    pub skipped: u64,
    pub mismatch_rate: f64,
    pub mismatch_upper_bound: f64,
    pub gate: GateView,
    pub legacy_p50_ms: Option<f64>,
    #[serde(default)]
    pub legacy_p99_ms: Option<f64>,
    pub candidate_p50_ms: Option<f64>,
    #[serde(default)]
    pub candidate_p99_ms: Option<f64>,
    #[serde(default)]
    pub noise: Vec<NoiseKey>,
    /// The route's state-store version (0: never promoted or rolled back).
    #[serde(default)]
    pub state_version: u64,
    /// Mismatch rate of the latest window slots, oldest first.
    #[serde(default)]
    pub sparkline: Vec<Option<f64>>,
    /// Whether the route's comparisons can say anything: not in `legacy` mode, and some
    /// request of it could be mirrored (a route that only ever received POSTs while
    /// `mirror_methods` is GET and HEAD is not).
    #[serde(default)]
    pub mirrorable: bool,
    /// The latest candidate or session error with its cause (`candidate: connect refused`).
    #[serde(default)]
    pub last_error: Option<String>,
    /// When it happened (unix seconds).
    #[serde(default)]
    pub last_error_at: Option<u64>,
    /// Clean samples (matches) per second over the last few minutes: what `gate.eta_secs`
    /// is computed from (a fleet's rates add up).
    #[serde(default)]
    pub clean_per_sec: Option<f64>,
}

/// A route's gate verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateView {
    pub passing: bool,
    pub reason: String,
    /// Seconds until the gate would open at the recent rate of clean samples (0 when
    /// passing; null when unknown: no recent clean samples, or failures keep it closed).
    #[serde(default)]
    pub eta_secs: Option<u64>,
}

/// Proxy-wide counters for the TUI header.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TotalsView {
    pub requests: u64,
    pub mirrored: u64,
    pub shadow_dropped: u64,
    pub session_errors: u64,
    pub uptime_secs: u64,
}

/// One entry of `GET /api/events` (and the answer of a POST that changed something).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at: u64,
    /// `promote`, `forced_promote`, `rollback`, `auto_rollback`, `reset`, `reload`,
    /// `reload_failed`, `state_applied`.
    pub kind: String,
    pub route: Option<String>,
    pub reason: String,
    pub mode: Option<String>,
    pub percent: Option<u8>,
    /// The route's verdict at that moment.
    pub verdict: Option<Verdict>,
}

/// `GET /api/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsView {
    pub events: Vec<Event>,
}

/// `GET /api/routes/mismatches?route=R`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MismatchesView {
    pub route: String,
    /// Newest first.
    pub samples: Vec<Sample>,
}

/// Any error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorView {
    pub error: String,
    /// With a 409 from a closed gate: its verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}
