//! The access log: one JSON line per client request (and per finished comparison) on the
//! `cutover::access` tracing target, written through the non-blocking log writer.

use crate::mode::Mode;
use std::time::Duration;

/// One line of the access log.
pub struct AccessEntry<'a> {
    pub route: &'a str,
    pub mode: Mode,
    /// `legacy`, `candidate` or `proxy` (cutover answered itself).
    pub served_by: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    /// The legacy app's status and time to its response head.
    pub legacy: Option<(u16, Duration)>,
    /// The candidate's status and time to its response head.
    pub candidate: Option<(u16, Duration)>,
    /// What happened: `match`, `mismatch`, `candidate_error`, `not_mirrored`, …
    pub outcome: &'a str,
    /// Why, when the outcome needs one (why a request was not mirrored, an error's cause).
    pub reason: Option<&'a str>,
}

pub fn log(e: AccessEntry<'_>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    tracing::info!(
        target: "cutover::access",
        route = e.route,
        mode = e.mode.as_str(),
        served_by = e.served_by,
        method = %e.method,
        path = e.path,
        legacy_status = e.legacy.map(|l| l.0),
        legacy_ms = e.legacy.map(|l| ms(l.1)),
        candidate_status = e.candidate.map(|c| c.0),
        candidate_ms = e.candidate.map(|c| ms(c.1)),
        outcome = e.outcome,
        reason = e.reason,
    );
}
