//! Mirroring, off the client's path: the bounded [`dispatch`]er, and the exchange task that calls
//! the candidate (with `x-cutover-shadow: 1` and the session snapshot) and the twin, waits for
//! the capture of the legacy response the client's stream feeds, compares under the route's
//! rules, learns noise, counts, and keeps a redacted sample of a mismatch. It sits below the
//! proxy and above the upstream side: the proxy hands it requests, it never calls back.

pub mod budget;
pub mod dispatch;
pub mod effects;
pub mod races;

use crate::access::{self, AccessEntry};
use crate::diff::{Captured, Comparator, DiffKind, Difference, Report};
use crate::mode::Mode;
use crate::route::table::MAX_DIFF_FIELDS;
use crate::route::{RouteEntry, RouteSettings};
use crate::samples::{JsonlSink, Redactor, Sample, SampleInput};
use crate::stats::{DropReason, Metrics, Outcome, Side};
use crate::upstream::body::{self, Capture};
use crate::upstream::{detach, Pool, UpstreamError, UpstreamUrl};
use arc_swap::ArcSwap;
use bytes::Bytes;
use dispatch::{Dispatcher, Reservation};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Bodies up to this size (both sides) may be compared on the IO thread when the comparison
/// is quick (see `Rules::compare_quickly`): byte-identical ones take a `memcmp`; larger ones
/// go to the blocking pool.
const INLINE_COMPARE_BYTES: usize = 64 * 1024;
/// Bodies that differ in bytes are walked on the IO thread up to this size (both sides): the
/// JSON and the HTML walks cover 2 × 20 KB in 40–100 µs on the 2-core test machines (`cargo
/// bench --bench normalize -- 20kb`): within the ~100 µs an IO thread may be held, and no
/// hand-over to another thread.
const INLINE_WALK_BYTES: usize = 48 * 1024;
/// How long an exchange waits for the legacy response to finish streaming to the client.
const LEGACY_CAPTURE_WAIT: Duration = Duration::from_secs(60);

/// What the mirror reads of the config, swapped whole on a reload.
pub struct MirrorSettings {
    pub redactor: Redactor,
    /// Latest mismatch samples kept per route.
    pub samples_per_route: usize,
    pub keep_request_bodies: bool,
    pub noise: crate::noise::Thresholds,
}

/// Everything an exchange needs, shared by every worker's exchanges.
pub struct Mirror {
    pub dispatcher: Dispatcher,
    /// Bounds the request bodies held in memory for mirrors.
    pub budget: Arc<budget::BodyBudget>,
    legacy: UpstreamUrl,
    twin: Option<UpstreamUrl>,
    /// Used by threads that are not proxy workers (each worker has a pool of its own).
    shared_pool: Pool,
    metrics: Arc<Metrics>,
    settings: ArcSwap<MirrorSettings>,
    sink: Option<JsonlSink<Sample>>,
    /// The session store, for what each side leaves in the session (None: no store).
    session: Option<Arc<crate::session::Resolver>>,
    /// Requests of a session that arrive while an exchange waits to read it.
    pub races: Arc<races::SessionRaces>,
    /// `[record]`: a share of the exchanges written for `cutover replay`.
    recorder: Option<crate::record::Recorder>,
}

/// How the mirror is set up.
pub struct MirrorParts {
    pub concurrency: usize,
    pub queue: usize,
    pub max_buffered_bytes: usize,
    pub legacy: UpstreamUrl,
    pub twin: Option<UpstreamUrl>,
    pub shared_pool: Pool,
    pub metrics: Arc<Metrics>,
    pub settings: MirrorSettings,
    pub sink: Option<JsonlSink<Sample>>,
    pub session: Option<Arc<crate::session::Resolver>>,
    pub recorder: Option<crate::record::Recorder>,
}

impl Mirror {
    /// Whether sessions are compared (a store is configured).
    pub fn compares_sessions(&self) -> bool {
        self.session.is_some()
    }

    pub fn new(p: MirrorParts) -> Mirror {
        Mirror {
            dispatcher: Dispatcher::new(p.concurrency, p.queue),
            budget: budget::BodyBudget::new(p.max_buffered_bytes),
            legacy: p.legacy,
            twin: p.twin,
            shared_pool: p.shared_pool,
            metrics: p.metrics,
            settings: ArcSwap::from_pointee(p.settings),
            sink: p.sink,
            session: p.session,
            races: races::SessionRaces::new(),
            recorder: p.recorder,
        }
    }

    pub fn set_settings(&self, s: MirrorSettings) {
        self.settings.store(Arc::new(s));
    }

    pub fn has_twin(&self) -> bool {
        self.twin.is_some()
    }

    fn pool(&self) -> Pool {
        crate::upstream::pool_for_this_thread(&self.shared_pool)
    }
}

/// An exchange's hold on the mirror and on its slot: the slot is given back when the exchange's
/// task ends or is dropped unpolled (a runtime shutting down).
struct Holding(Arc<Mirror>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.dispatcher.release();
    }
}

/// The legacy response head, sent by the proxy once it has it; `capture` delivers the body.
pub struct LegacyHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub elapsed: Duration,
    pub capture: oneshot::Receiver<Capture>,
}

/// The client's request as it will be mirrored.
pub struct ShadowRequest {
    pub parts: http::request::Parts,
    pub body: Bytes,
    /// The body's bytes in the mirror's budget, given back when the exchange ends.
    pub held: Option<budget::Held>,
    /// The request's session id, by PHP's rules (its store may hold nothing under it).
    pub session_id: Option<String>,
    /// The session resolved before PHP saw the request: the signed header for the candidate,
    /// the data, the stored bytes.
    pub session: Option<crate::session::Resolved>,
    /// A promoted route verified the other way round: the candidate served the client (its
    /// answer is the "head"), and the legacy app is the mirror.
    pub reverse: bool,
    /// Watches the session for other requests until the after-read.
    pub ticket: Option<races::Ticket>,
}

impl ShadowRequest {
    /// The same request in memory of its own (see `upstream::detach`): an exchange waiting for
    /// a slow candidate would otherwise hold the client connection's read buffer, and make
    /// hyper allocate another for its next read.
    fn detached(self) -> ShadowRequest {
        let ShadowRequest {
            mut parts,
            body,
            held,
            session_id,
            session,
            reverse,
            ticket,
        } = self;
        // The URI has been in memory of its own since the proxy took the request.
        detach::headers(&mut parts.headers);
        ShadowRequest {
            parts,
            body: Bytes::copy_from_slice(&body),
            held,
            session_id,
            session,
            reverse,
            ticket,
        }
    }
}

/// Why a call to the candidate (or the twin, or the legacy app as a mirror) gave no answer to
/// compare: the cause a person reads in `last_error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("connect {0}")]
    Connect(String),
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    #[error("reset: {0}")]
    Reset(String),
    #[error("bad request target: {0}")]
    Target(String),
}

/// The innermost cause of an error: the OS's word for what happened (a connector wraps it
/// in "tcp connect error", hyper in "connection error").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        return match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused".into(),
            std::io::ErrorKind::ConnectionReset => "reset by peer".into(),
            std::io::ErrorKind::TimedOut => "timed out".into(),
            _ => io.to_string(),
        };
    }
    cur.to_string()
}

impl From<UpstreamError> for CallError {
    fn from(e: UpstreamError) -> CallError {
        match e {
            UpstreamError::Connect { source, .. } => CallError::Connect(root_cause(&*source)),
            UpstreamError::Http(e) => CallError::Reset(root_cause(&e)),
            UpstreamError::Io(e) => CallError::Reset(root_cause(&e)),
            e @ (UpstreamError::FastCgi(_) | UpstreamError::NoApplication) => {
                CallError::Reset(e.to_string())
            }
        }
    }
}

/// What the other side did.
enum CallResult {
    Answered(Captured, Duration),
    BodyTooLarge(StatusCode, Duration),
    Failed(CallError),
}

/// Starts the exchange of a mirrored request; `slot` was reserved by the proxy.
pub fn spawn_exchange(
    mirror: Arc<Mirror>,
    entry: Arc<RouteEntry>,
    mut slot: Reservation<'_>,
    request: ShadowRequest,
    head: oneshot::Receiver<LegacyHead>,
) {
    // From here the task's `Holding` gives the slot back.
    slot.armed = false;
    let holding = Holding(mirror);
    // Detached here, not in the task: the client's connection reads again before the task
    // first runs, and would find its read buffer still shared.
    let request = request.detached();
    // Boxed: the exchange's state is kilobytes, and tokio moves a task's future several times
    // on its way into the task; a box is moved as a pointer.
    tokio::spawn(Box::pin(async move {
        exchange(holding, &entry, request, head).await;
    }));
}

/// Which upstream an exchange call goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The candidate: `x-cutover-shadow: 1` and the session snapshot.
    Candidate,
    /// The second legacy instance: the client's request as PHP got it.
    Twin,
    /// The legacy app, as the mirror of a promoted route.
    Legacy,
}

async fn call_upstream(
    mirror: &Mirror,
    settings: &RouteSettings,
    request: &ShadowRequest,
    target: Target,
) -> CallResult {
    let url = match target {
        Target::Candidate => settings.candidate.as_ref(),
        Target::Twin => match &mirror.twin {
            Some(t) => t,
            None => return CallResult::Failed(CallError::Target("no twin".into())),
        },
        Target::Legacy => &mirror.legacy,
    };
    let mut req = match crate::upstream::forward_request(
        url,
        &request.parts,
        request.parts.headers.clone(),
        body::full(request.body.clone()),
    ) {
        Ok(r) => r,
        Err(e) => return CallResult::Failed(CallError::Target(e.to_string())),
    };
    if target == Target::Candidate {
        req.headers_mut()
            .insert("x-cutover-shadow", HeaderValue::from_static("1"));
        if let Some(s) = &request.session {
            req.headers_mut()
                .insert(cutover_session::HEADER, s.header.clone());
        }
    }
    let started = Instant::now();
    let cap = settings.max_body_bytes;
    let call = async {
        let resp = mirror
            .pool()
            .send(url, req)
            .await
            .map_err(CallError::from)?;
        let elapsed = started.elapsed();
        let (parts, body) = resp.into_parts();
        match Limited::new(body, cap).collect().await {
            Ok(collected) => Ok(CallResult::Answered(
                Captured {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: collected.to_bytes(),
                },
                elapsed,
            )),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Ok(CallResult::BodyTooLarge(parts.status, elapsed))
            }
            Err(e) => Err(CallError::Reset(format!("body: {e}"))),
        }
    };
    match tokio::time::timeout(settings.candidate_timeout, call).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => CallResult::Failed(e),
        Err(_) => CallResult::Failed(CallError::Timeout(settings.candidate_timeout)),
    }
}

/// Why the legacy side of an exchange cannot be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegacyGone {
    Failed,
    Slow,
    ClientGone,
    BodyTooLarge,
    BodyFailed,
    MirrorFailed,
}

impl LegacyGone {
    /// The access log's outcome for it.
    fn as_str(self) -> &'static str {
        match self {
            LegacyGone::Failed => "legacy_failed",
            LegacyGone::Slow => "legacy_slow",
            LegacyGone::ClientGone => "client_gone",
            LegacyGone::BodyTooLarge => "legacy_body_too_large",
            LegacyGone::BodyFailed => "legacy_body_failed",
            LegacyGone::MirrorFailed => "legacy_mirror_failed",
        }
    }
}

/// The legacy side of an exchange: the response as the client got it, and (in shadow mode with
/// a session store) the session PHP left, read as soon as the response has ended.
struct LegacySide {
    captured: Captured,
    elapsed: Duration,
    /// None: no session comparison. Err: the store could not be read.
    after: Option<Result<crate::diff::SessionAfter, effects::EffectsError>>,
    /// Another request of the session arrived before the read: it cannot be trusted.
    raced: bool,
}

async fn legacy_side(
    mirror: &Mirror,
    request: &ShadowRequest,
    mut ticket: Option<races::Ticket>,
    head: oneshot::Receiver<LegacyHead>,
) -> Result<LegacySide, LegacyGone> {
    let head = head.await.map_err(|_| LegacyGone::Failed)?;
    // A session id the response sets is watched from now: the client can use it only once
    // it has this head.
    if let Some(t) = ticket.as_mut() {
        effects::watch_new_id(mirror, t, &head.headers);
    }
    let (captured, elapsed) = legacy_capture(head).await?;
    let after = match effects::legacy_after(mirror, request, &captured.headers).await {
        Ok(None) => None,
        Ok(Some(a)) => Some(Ok(a)),
        Err(e) => Some(Err(e)),
    };
    let raced = ticket.as_ref().is_some_and(races::Ticket::raced);
    Ok(LegacySide {
        captured,
        elapsed,
        after,
        raced,
    })
}

async fn legacy_capture(head: LegacyHead) -> Result<(Captured, Duration), LegacyGone> {
    let capture = tokio::time::timeout(LEGACY_CAPTURE_WAIT, head.capture)
        .await
        .map_err(|_| LegacyGone::Slow)?
        .map_err(|_| LegacyGone::ClientGone)?;
    match capture {
        Capture::Complete(chunks) => {
            // Owned copies: the upstream's read buffer is not held while the candidate is
            // waited for.
            let mut headers = head.headers;
            detach::headers(&mut headers);
            Ok((
                Captured {
                    status: head.status.as_u16(),
                    headers,
                    body: body::concat_owned(chunks),
                },
                head.elapsed,
            ))
        }
        Capture::TooLarge => Err(LegacyGone::BodyTooLarge),
        Capture::Failed => Err(LegacyGone::BodyFailed),
    }
}

fn log_exchange(
    entry: &RouteEntry,
    parts: &http::request::Parts,
    legacy: Option<(u16, Duration)>,
    candidate: Option<(u16, Duration)>,
    outcome: &str,
    reason: Option<&str>,
) {
    access::log(AccessEntry {
        route: &entry.label,
        mode: Mode::Shadow,
        served_by: "legacy",
        method: &parts.method,
        path: parts.uri.path(),
        legacy,
        candidate,
        outcome,
        reason,
    });
}

async fn exchange(
    holding: Holding,
    entry: &Arc<RouteEntry>,
    mut request: ShadowRequest,
    head: oneshot::Receiver<LegacyHead>,
) {
    let mirror: &Mirror = &holding.0;
    let ticket = request.ticket.take();
    let use_twin = mirror.twin.is_some()
        && crate::upstream::is_safe(&request.parts.method)
        && !request.reverse;
    let other = if request.reverse {
        Target::Legacy
    } else {
        Target::Candidate
    };
    // Held for the exchange: a reload mid-way does not change its rules or its candidate.
    let settings = entry.settings_owned();
    // The legacy side is taken in (and copied) while this exchange may still be queued for
    // a slot, so a queue behind a slow candidate holds no upstream buffers.
    let calls = async {
        let permit = mirror.dispatcher.running().await?;
        // Boxed: only running exchanges need the calls' state; a queued one stays small.
        let (other_side, twin) = Box::pin(async {
            let twin_call = async {
                if !use_twin {
                    return None;
                }
                // The twin runs on a copy of the session, never on the live store.
                if let Err(e) = effects::copy_to_twin(mirror, &request).await {
                    return Some(CallResult::Failed(CallError::Target(e.to_string())));
                }
                Some(call_upstream(mirror, &settings, &request, Target::Twin).await)
            };
            tokio::join!(call_upstream(mirror, &settings, &request, other), twin_call)
        })
        .await;
        Some((permit, other_side, twin))
    };
    let (calls, served) = tokio::join!(calls, legacy_side(mirror, &request, ticket, head));
    // Moved out whole (`identity`): the permit borrows the mirror, whose hold may be handed
    // to the blocking pool below.
    let Some((running, other_side, twin)) = std::convert::identity(calls) else {
        return;
    };
    let (candidate, legacy) = if request.reverse {
        // The client got the candidate's answer; the legacy app answered the mirror.
        let candidate = match served {
            Ok(s) => CallResult::Answered(s.captured, s.elapsed),
            Err(why) => CallResult::Failed(CallError::Reset(why.as_str().to_string())),
        };
        let legacy = match other_side {
            CallResult::Answered(l, t) => Ok(LegacySide {
                captured: l,
                elapsed: t,
                after: None,
                raced: false,
            }),
            _ => Err(LegacyGone::MirrorFailed),
        };
        (candidate, legacy)
    } else {
        (other_side, served)
    };
    drop(running);
    let parts = &request.parts;
    let LegacySide {
        captured: legacy,
        elapsed: legacy_time,
        after: legacy_after,
        raced,
    } = match legacy {
        Ok(l) => l,
        Err(why) => {
            entry.stats.outcome(Outcome::Skipped, None, None);
            log_exchange(entry, parts, None, None, why.as_str(), None);
            return;
        }
    };
    if !raced && !request.reverse {
        record(mirror, entry, &request, &legacy, legacy_after.as_ref());
    }
    if let Some(CallResult::Answered(_, t)) = &twin {
        entry.stats.duration(Side::LegacyTwin, *t);
    }
    let legacy_seen = Some((legacy.status, legacy_time));
    let (candidate, candidate_time) = match candidate {
        CallResult::Answered(c, t) => (c, t),
        CallResult::BodyTooLarge(status, t) => {
            let report = Report {
                differences: vec![Difference {
                    path: "body".into(),
                    kind: DiffKind::Size,
                    legacy: Some(format!("{} bytes", legacy.body.len())),
                    candidate: Some(format!("more than {} bytes", settings.max_body_bytes)),
                }],
                unified: String::new(),
            };
            finish(
                mirror,
                entry,
                Finished {
                    request: &request,
                    legacy: &legacy,
                    legacy_time,
                    candidate_status: status.as_u16(),
                    candidate_time: t,
                    report,
                    twin_report: None,
                },
            );
            return;
        }
        CallResult::Failed(e) => {
            if matches!(e, CallError::Timeout(_)) {
                mirror.metrics.dropped(DropReason::Timeout);
            }
            let cause = format!("candidate: {e}");
            access::warn_limited(access::Warning::Candidate, &entry.label, &cause);
            entry.record_error(cause.clone(), crate::stats::now_secs());
            entry.stats.upstream_error(Side::Candidate);
            entry
                .stats
                .outcome(Outcome::CandidateError, Some(legacy_time), None);
            log_exchange(
                entry,
                parts,
                legacy_seen,
                None,
                "candidate_error",
                Some(&cause),
            );
            return;
        }
    };
    entry.stats.duration(Side::Candidate, candidate_time);
    // The candidate's declared session is what it would leave, not a header to compare.
    let mut candidate = candidate;
    let declared = candidate.headers.remove(cutover_session::WRITE_HEADER);
    let mut twin = match twin {
        Some(CallResult::Answered(t, _)) => Some(t),
        _ => None,
    };
    if let Some(t) = &mut twin {
        t.headers.remove(cutover_session::WRITE_HEADER);
    }
    let session_differences = match legacy_after {
        None => Vec::new(),
        // Another request of the session reached PHP before the read: what the read saw may
        // be that request's doing, so this comparison says nothing.
        Some(_) if raced => {
            entry.stats.outcome(Outcome::Skipped, None, None);
            log_exchange(
                entry,
                parts,
                legacy_seen,
                None,
                "skipped",
                Some("session_raced"),
            );
            return;
        }
        Some(Ok(after)) => {
            effects::session_differences(&settings.rules, &after, &request, declared.as_ref())
        }
        Some(Err(e)) => {
            let cause = e.to_string();
            access::warn_limited(access::Warning::SessionStore, &entry.label, &cause);
            entry.record_error(cause.clone(), crate::stats::now_secs());
            entry.stats.outcome(Outcome::Skipped, None, None);
            log_exchange(entry, parts, legacy_seen, None, "skipped", Some(&cause));
            return;
        }
    };
    let cap = settings.max_body_bytes;
    let large = legacy.body.len() + candidate.body.len() > INLINE_COMPARE_BYTES;
    let compare = move |rules: &crate::normalize::Rules,
                        legacy: Captured,
                        candidate: Captured,
                        twin: Option<Captured>| {
        let decode = |c| crate::normalize::decode::decoded(c, cap);
        let l = decode(legacy);
        let report_of = |l: &Result<Captured, crate::normalize::decode::DecodeError>,
                         other: Captured| {
            match (l, decode(other)) {
                (Ok(l), Ok(c)) => rules.compare(l, &c),
                (Err(e), _) => undecodable(e.to_string()),
                (_, Err(e)) => undecodable(e.to_string()),
            }
        };
        let report = report_of(&l, candidate);
        let twin_report = twin.map(|t| report_of(&l, t));
        (l.ok(), report, twin_report)
    };
    let candidate_status = candidate.status;
    // On this IO thread only what takes little time: equal bodies, or bodies the lockstep walk
    // finds equal after the rules. Anything else (a real difference, a compressed or large
    // body) is compared on the blocking pool, so the clients of this thread do not wait.
    let identity = crate::normalize::decode::identity_encoded;
    let walkable = |c: &Captured| {
        legacy.body.len() + c.body.len() <= INLINE_WALK_BYTES || c.body == legacy.body
    };
    let quick = if large
        || !walkable(&candidate)
        || twin.as_ref().is_some_and(|t| !walkable(t))
        || !identity(&legacy)
        || !identity(&candidate)
        || twin.as_ref().is_some_and(|t| !identity(t))
    {
        None
    } else {
        let rules = &settings.rules;
        rules
            .compare_quickly(&legacy, &candidate)
            .and_then(|report| match &twin {
                None => Some((report, None)),
                Some(t) => rules
                    .compare_quickly(&legacy, t)
                    .map(|twin_report| (report, Some(twin_report))),
            })
    };
    // What is left once the bodies are compared (judging, counting, sampling) takes no IO: a
    // comparison handed to the blocking pool finishes there, and this task ends without
    // waiting for it (a wake-up of this thread per comparison saved). The hold on the mirror
    // goes with it, so the exchange's slot is given back only when it is done.
    let route = Arc::clone(entry);
    let conclude = move |mirror: &Mirror,
                         legacy_decoded: Option<Captured>,
                         mut report: Report,
                         twin_report: Option<Report>| {
        let Some(legacy) = legacy_decoded else {
            route.stats.outcome(Outcome::Skipped, None, None);
            return;
        };
        report.differences.extend(session_differences);
        finish(
            mirror,
            &route,
            Finished {
                request: &request,
                legacy: &legacy,
                legacy_time,
                candidate_status,
                candidate_time,
                report,
                twin_report,
            },
        );
    };
    match quick {
        Some((report, twin_report)) => conclude(&holding.0, Some(legacy), report, twin_report),
        None => {
            let rules = settings.rules.clone();
            let entry_on_panic = Arc::clone(entry);
            // Dropped unrun (a runtime shutting down), the closure drops its hold as well.
            drop(tokio::task::spawn_blocking(move || {
                // A comparison that panics is counted as skipped, as a failed task was.
                let compared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    compare(&rules, legacy, candidate, twin)
                }));
                match compared {
                    Ok((legacy_decoded, report, twin_report)) => {
                        conclude(&holding.0, legacy_decoded, report, twin_report)
                    }
                    Err(_) => entry_on_panic.stats.outcome(Outcome::Skipped, None, None),
                }
            }));
        }
    }
}

/// Hands the exchange to the recorder when it is in the recorded share (sticky per session).
/// What PHP answered is recorded whatever the candidate did; an exchange whose session could not
/// be read after PHP is not (a replay could not compare its session).
fn record(
    mirror: &Mirror,
    entry: &RouteEntry,
    request: &ShadowRequest,
    legacy: &Captured,
    after: Option<&Result<crate::diff::SessionAfter, effects::EffectsError>>,
) {
    let Some(recorder) = &mirror.recorder else {
        return;
    };
    if !dispatch::sampled(recorder.sample, request.session_id.as_deref()) {
        return;
    }
    let session_after = match after {
        None => None,
        Some(Ok(a)) => Some(a.clone()),
        Some(Err(_)) => return,
    };
    let session = match (&request.session, &mirror.session) {
        (Some(s), Some(resolver)) => Some(crate::record::TakenSession {
            id: s.id.clone(),
            store: resolver.stores().name().to_string(),
            serializer: resolver.serializer().name().to_string(),
            raw: s.raw.clone(),
            data: s.data.clone(),
        }),
        _ => None,
    };
    let noise = if mirror.twin.is_some() {
        let thresholds = mirror.settings.load().noise;
        entry
            .findings()
            .noise
            .noise_keys(&thresholds)
            .into_iter()
            .map(|k| k.key)
            .collect()
    } else {
        Vec::new()
    };
    let parts = &request.parts;
    recorder.send(crate::record::Taken {
        redaction: recorder.redaction.clone(),
        at: crate::stats::now_secs(),
        route: entry.label.clone(),
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        request_headers: parts.headers.clone(),
        request_body: request.body.clone(),
        session,
        session_after,
        status: legacy.status,
        response_headers: legacy.headers.clone(),
        response_body: legacy.body.clone(),
        noise,
    });
}

fn undecodable(why: String) -> Report {
    Report {
        differences: vec![Difference {
            path: "body".into(),
            kind: DiffKind::Changed,
            legacy: None,
            candidate: Some(why),
        }],
        unified: String::new(),
    }
}

/// A finished comparison, to be judged against the noise, counted and sampled.
struct Finished<'a> {
    request: &'a ShadowRequest,
    legacy: &'a Captured,
    legacy_time: Duration,
    candidate_status: u16,
    candidate_time: Duration,
    report: Report,
    twin_report: Option<Report>,
}

fn finish(mirror: &Mirror, entry: &RouteEntry, f: Finished<'_>) {
    let parts = &f.request.parts;
    let settings = mirror.settings.load();
    let has_twin = mirror.twin.is_some();
    // The route's findings lock is shared by every worker's exchanges: taken only when there
    // is noise to learn (a twin) or a mismatch to keep, not for every match.
    let mut findings = (has_twin || !f.report.differences.is_empty()).then(|| entry.findings());
    let real: Vec<Difference> = match findings.as_mut() {
        Some(findings) if has_twin => {
            findings.noise.record(
                &f.report.differences,
                f.twin_report.as_ref().map(|r| r.differences.as_slice()),
            );
            findings
                .noise
                .real(&f.report.differences, &settings.noise)
                .into_iter()
                .cloned()
                .collect()
        }
        _ => f.report.differences.clone(),
    };
    let outcome = if real.is_empty() {
        Outcome::Match
    } else {
        Outcome::Mismatch
    };
    if !real.is_empty() {
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut sample = settings.redactor.sample(SampleInput {
            route: &entry.label,
            method: &parts.method,
            target,
            headers: &parts.headers,
            legacy_status: f.legacy.status,
            candidate_status: f.candidate_status,
            differences: &real,
            unified: &f.report.unified,
            at: crate::stats::now_secs(),
        });
        if settings.keep_request_bodies && !f.request.body.is_empty() {
            let cut = f.request.body.len().min(4096);
            let secrets = settings.redactor.secrets(target, &parts.headers);
            sample.request_body = Some(
                settings
                    .redactor
                    .text(&String::from_utf8_lossy(&f.request.body[..cut]), &secrets),
            );
        }
        if let Some(sink) = &mirror.sink {
            if !sink.send(sample.clone()) {
                tracing::debug!("samples file is behind; a sample was not written");
            }
        }
        if let Some(findings) = findings.as_mut() {
            findings.samples.push(sample, settings.samples_per_route);
        }
    }
    drop(findings);
    entry
        .stats
        .outcome(outcome, Some(f.legacy_time), Some(f.candidate_time));
    if !real.is_empty() {
        count_differences(mirror, entry, &real);
    }
    log_exchange(
        entry,
        parts,
        Some((f.legacy.status, f.legacy_time)),
        Some((f.candidate_status, f.candidate_time)),
        outcome.as_str(),
        None,
    );
}

fn count_differences(mirror: &Mirror, entry: &RouteEntry, diffs: &[Difference]) {
    let mut fields = match entry.diff_fields.lock() {
        Ok(f) => f,
        Err(p) => p.into_inner(),
    };
    for d in diffs {
        let mut field = crate::diff::field_label(&d.path);
        if !fields.contains(&field) {
            if fields.len() >= MAX_DIFF_FIELDS {
                field = "other".into();
            } else {
                fields.insert(field.clone());
            }
        }
        mirror
            .metrics
            .differences
            .with_label_values(&[&entry.label, &field, d.kind.as_str()])
            .inc();
    }
}
