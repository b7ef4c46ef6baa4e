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

/// Problems worth a WARN line each time they start, but not one per request while they last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warning {
    /// The session store failed or was too slow.
    SessionStore,
    /// The candidate could not be reached, timed out or reset.
    Candidate,
    /// A mirror was dropped (queue full, buffers full).
    Dropped,
}

impl Warning {
    const ALL: usize = 3;

    fn as_str(self) -> &'static str {
        match self {
            Warning::SessionStore => "session store error",
            Warning::Candidate => "candidate error",
            Warning::Dropped => "mirror dropped",
        }
    }
}

/// Per kind: the second of the last WARN line, and how many were left out since.
static LAST: [std::sync::atomic::AtomicU64; Warning::ALL] =
    [const { std::sync::atomic::AtomicU64::new(0) }; Warning::ALL];
static SKIPPED: [std::sync::atomic::AtomicU64; Warning::ALL] =
    [const { std::sync::atomic::AtomicU64::new(0) }; Warning::ALL];

/// Logs `cause` at WARN, at most once a second per kind; the next line says how many were
/// left out.
pub fn warn_limited(kind: Warning, route: &str, cause: &str) {
    use std::sync::atomic::Ordering;
    let now = crate::stats::now_secs();
    let i = kind as usize;
    let last = LAST[i].load(Ordering::Relaxed);
    if now <= last
        || LAST[i]
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        SKIPPED[i].fetch_add(1, Ordering::Relaxed);
        return;
    }
    let skipped = SKIPPED[i].swap(0, Ordering::Relaxed);
    tracing::warn!(
        route,
        cause,
        more_in_the_last_second = skipped,
        "{}",
        kind.as_str()
    );
}
