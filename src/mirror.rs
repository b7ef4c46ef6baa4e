//! Mirroring: the bounded dispatcher (a slot for every mirror in flight or queued; none free
//! means the mirror is dropped and counted, never buffered without limit), and the exchange
//! task that calls the candidate with `x-cutover-shadow: 1`, waits for the legacy capture the
//! client's stream feeds, compares, and counts. Nothing here is on the client's path.

use crate::diff::{Captured, Comparator, DiffKind, Difference, Report};
use crate::proxy::body::{self, Capture};
use crate::proxy::detach;
use crate::proxy::table::{RouteEntry, MAX_DIFF_FIELDS};
use crate::proxy::{access_log, App};
use crate::stats::{DropReason, Outcome, Side};
use bytes::Bytes;
use crossbeam_utils::CachePadded;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

/// Bodies up to this size are compared on the IO thread; larger ones go to the blocking pool.
const INLINE_COMPARE_BYTES: usize = 64 * 1024;
/// How long an exchange waits for the legacy response to finish streaming to the client.
const LEGACY_CAPTURE_WAIT: Duration = Duration::from_secs(60);

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
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.dispatcher.taken.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An exchange's hold on the app and on its slot: the slot is given back when the exchange's
/// task ends or is dropped unpolled (a runtime shutting down).
struct Holding(Arc<App>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.dispatcher.taken.fetch_sub(1, Ordering::AcqRel);
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
    /// The signed session snapshot, resolved before PHP saw the request.
    pub session_header: Option<HeaderValue>,
    /// A promoted route verified the other way round: the candidate served the client (its
    /// answer is the "head"), and the legacy app is the mirror.
    pub reverse: bool,
}

impl ShadowRequest {
    /// The same request in memory of its own (see `proxy::detach`): an exchange waiting for a
    /// slow candidate would otherwise hold the client connection's read buffer, and make hyper
    /// allocate another for its next read.
    fn detached(self) -> ShadowRequest {
        let ShadowRequest {
            mut parts,
            body,
            session_header,
            reverse,
        } = self;
        // The URI has been in memory of its own since `proxy::handle`.
        detach::headers(&mut parts.headers);
        ShadowRequest {
            parts,
            body: Bytes::copy_from_slice(&body),
            session_header,
            reverse,
        }
    }
}

/// What the candidate did.
enum CandidateResult {
    Answered(Captured, Duration),
    BodyTooLarge(StatusCode, Duration),
    Failed(String),
    TimedOut,
}

pub fn spawn_exchange(
    app: Arc<App>,
    entry: Arc<RouteEntry>,
    mut slot: Reservation<'_>,
    request: ShadowRequest,
    head: oneshot::Receiver<LegacyHead>,
) {
    // From here the task's `Holding` gives the slot back.
    slot.armed = false;
    let holding = Holding(app);
    // Detached here, not in the task: the client's connection reads again before the task
    // first runs, and would find its read buffer still shared.
    let request = request.detached();
    // Boxed: the exchange's state is kilobytes, and tokio moves a task's future several times
    // on its way into the task; a box is moved as a pointer.
    tokio::spawn(Box::pin(async move {
        let holding = holding;
        exchange(&holding.0, &entry, request, head).await;
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
    app: &App,
    entry: &RouteEntry,
    request: &ShadowRequest,
    target: Target,
) -> CandidateResult {
    let url = match target {
        Target::Candidate => entry.candidate.as_ref(),
        Target::Twin => match &app.twin {
            Some(t) => t,
            None => return CandidateResult::Failed("no twin".into()),
        },
        Target::Legacy => &app.legacy,
    };
    let mut req = match crate::proxy::forward_request(
        url,
        &request.parts,
        request.parts.headers.clone(),
        body::full(request.body.clone()),
    ) {
        Ok(r) => r,
        Err(e) => return CandidateResult::Failed(e.to_string()),
    };
    if target == Target::Candidate {
        req.headers_mut()
            .insert("x-cutover-shadow", HeaderValue::from_static("1"));
        if let Some(h) = &request.session_header {
            req.headers_mut()
                .insert(crate::session::header::HEADER, h.clone());
        }
    }
    let started = Instant::now();
    let call = async {
        let resp = app
            .client()
            .send(url, req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let elapsed = started.elapsed();
        let (parts, body) = resp.into_parts();
        match Limited::new(body, entry.max_body_bytes).collect().await {
            Ok(collected) => Ok(CandidateResult::Answered(
                Captured {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: collected.to_bytes(),
                },
                elapsed,
            )),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Ok(CandidateResult::BodyTooLarge(parts.status, elapsed))
            }
            Err(e) => Err(format!("body: {e}")),
        }
    };
    match tokio::time::timeout(entry.candidate_timeout, call).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => CandidateResult::Failed(e),
        Err(_) => CandidateResult::TimedOut,
    }
}

async fn legacy_capture(
    head: oneshot::Receiver<LegacyHead>,
) -> Result<(Captured, Duration), &'static str> {
    let head = head.await.map_err(|_| "legacy_failed")?;
    let capture = tokio::time::timeout(LEGACY_CAPTURE_WAIT, head.capture)
        .await
        .map_err(|_| "legacy_slow")?
        .map_err(|_| "client_gone")?;
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
        Capture::TooLarge => Err("legacy_body_too_large"),
        Capture::Failed => Err("legacy_body_failed"),
    }
}

async fn exchange(
    app: &App,
    entry: &Arc<RouteEntry>,
    request: ShadowRequest,
    head: oneshot::Receiver<LegacyHead>,
) {
    let use_twin =
        app.twin.is_some() && crate::proxy::is_safe(&request.parts.method) && !request.reverse;
    let other = if request.reverse {
        Target::Legacy
    } else {
        Target::Candidate
    };
    // The legacy side is taken in (and copied) while this exchange may still be queued for
    // a slot, so a queue behind a slow candidate holds no upstream buffers.
    let calls = async {
        let permit = app.dispatcher.running.acquire().await.ok()?;
        // Boxed: only running exchanges need the calls' state; a queued one stays small.
        let (other_side, twin) = Box::pin(async {
            let twin_call = async {
                if use_twin {
                    Some(call_upstream(app, entry, &request, Target::Twin).await)
                } else {
                    None
                }
            };
            tokio::join!(call_upstream(app, entry, &request, other), twin_call)
        })
        .await;
        Some((permit, other_side, twin))
    };
    let (calls, served) = tokio::join!(calls, legacy_capture(head));
    let Some((_running, other_side, twin)) = calls else {
        return;
    };
    let (candidate, legacy) = if request.reverse {
        // The client got the candidate's answer; the legacy app answered the mirror.
        let candidate = match served {
            Ok((c, t)) => CandidateResult::Answered(c, t),
            Err(why) => CandidateResult::Failed(why.to_string()),
        };
        let legacy = match other_side {
            CandidateResult::Answered(l, t) => Ok((l, t)),
            _ => Err("legacy_mirror_failed"),
        };
        (candidate, legacy)
    } else {
        (other_side, served)
    };
    let parts = &request.parts;
    let (legacy, legacy_time) = match legacy {
        Ok(l) => l,
        Err(why) => {
            entry.stats.outcome(Outcome::Skipped, None, None);
            access_log(
                entry,
                crate::config::Mode::Shadow,
                "legacy",
                parts,
                None,
                None,
                None,
                None,
                why,
            );
            return;
        }
    };
    if let Some(CandidateResult::Answered(_, t)) = &twin {
        entry.stats.duration(Side::LegacyTwin, *t);
    }
    let (candidate, candidate_time) = match candidate {
        CandidateResult::Answered(c, t) => (c, t),
        CandidateResult::BodyTooLarge(status, t) => {
            let report = Report {
                differences: vec![Difference {
                    path: "body".into(),
                    kind: DiffKind::Size,
                    legacy: Some(format!("{} bytes", legacy.body.len())),
                    candidate: Some(format!("more than {} bytes", entry.max_body_bytes)),
                }],
                unified: String::new(),
            };
            finish(
                app,
                entry,
                &request,
                &legacy,
                legacy_time,
                status.as_u16(),
                t,
                report,
                None,
            );
            return;
        }
        CandidateResult::Failed(e) => {
            tracing::debug!(route = %entry.label, error = %e, "candidate failed");
            entry.stats.upstream_error(Side::Candidate);
            entry
                .stats
                .outcome(Outcome::CandidateError, Some(legacy_time), None);
            access_log(
                entry,
                crate::config::Mode::Shadow,
                "legacy",
                parts,
                Some(legacy.status),
                Some(legacy_time),
                None,
                None,
                "candidate_error",
            );
            return;
        }
        CandidateResult::TimedOut => {
            app.metrics.dropped(DropReason::Timeout);
            entry.stats.upstream_error(Side::Candidate);
            entry
                .stats
                .outcome(Outcome::CandidateError, Some(legacy_time), None);
            access_log(
                entry,
                crate::config::Mode::Shadow,
                "legacy",
                parts,
                Some(legacy.status),
                Some(legacy_time),
                None,
                None,
                "candidate_timeout",
            );
            return;
        }
    };
    entry.stats.duration(Side::Candidate, candidate_time);
    let twin = match twin {
        Some(CandidateResult::Answered(t, _)) => Some(t),
        _ => None,
    };
    let cap = entry.max_body_bytes;
    let large = legacy.body.len() + candidate.body.len() > INLINE_COMPARE_BYTES;
    let compare = move |rules: &crate::normalize::Rules,
                        legacy: Captured,
                        candidate: Captured,
                        twin: Option<Captured>| {
        let l = decoded(legacy, cap);
        let report_of = |l: &Result<Captured, String>, other: Captured| {
            let c = decoded(other, cap);
            match (l, &c) {
                (Ok(l), Ok(c)) => rules.compare(l, c),
                (Err(e), _) | (_, Err(e)) => Report {
                    differences: vec![Difference {
                        path: "body".into(),
                        kind: DiffKind::Changed,
                        legacy: None,
                        candidate: Some(e.clone()),
                    }],
                    unified: String::new(),
                },
            }
        };
        let report = report_of(&l, candidate);
        let twin_report = twin.map(|t| report_of(&l, t));
        (l.ok(), report, twin_report)
    };
    let candidate_status = candidate.status;
    let (legacy_decoded, report, twin_report) = if large {
        let rules = entry.rules();
        match tokio::task::spawn_blocking(move || compare(&rules, legacy, candidate, twin)).await {
            Ok(r) => r,
            Err(_) => {
                entry.stats.outcome(Outcome::Skipped, None, None);
                return;
            }
        }
    } else {
        compare(&entry.rules_now(), legacy, candidate, twin)
    };
    let Some(legacy) = legacy_decoded else {
        entry.stats.outcome(Outcome::Skipped, None, None);
        return;
    };
    finish(
        app,
        entry,
        &request,
        &legacy,
        legacy_time,
        candidate_status,
        candidate_time,
        report,
        twin_report,
    );
}

/// The session id and raw cookie of a request, to be redacted from samples.
fn secrets_of(app: &App, headers: &http::HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        if let Some(raw) = crate::session::cookie_value(v, &app.session_cookie) {
            out.push(raw.to_string());
            if let Some(id) = crate::session::valid_session_id(raw) {
                out.push(id);
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn finish(
    app: &App,
    entry: &RouteEntry,
    request: &ShadowRequest,
    legacy: &Captured,
    legacy_time: Duration,
    candidate_status: u16,
    candidate_time: Duration,
    report: Report,
    twin_report: Option<Report>,
) {
    let parts = &request.parts;
    let thresholds = crate::noise::Thresholds {
        relative: app.config.noise.relative_threshold,
        absolute: app.config.noise.absolute_threshold,
    };
    // The route's evidence lock is shared by every worker's exchanges: taken only when there
    // is noise to learn (a twin) or a mismatch to keep, not for every match.
    let mut evidence =
        (app.twin.is_some() || !report.differences.is_empty()).then(|| entry.evidence());
    let real: Vec<Difference> = match evidence.as_mut() {
        Some(evidence) if app.twin.is_some() => {
            evidence.noise.record(
                &report.differences,
                twin_report.as_ref().map(|r| r.differences.as_slice()),
            );
            evidence
                .noise
                .real(&report.differences, &thresholds)
                .into_iter()
                .cloned()
                .collect()
        }
        _ => report.differences.clone(),
    };
    let outcome = if real.is_empty() {
        Outcome::Match
    } else {
        Outcome::Mismatch
    };
    if !real.is_empty() {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let secrets = secrets_of(app, &parts.headers);
        let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let mut sample = app.redactor.sample(
            &entry.label,
            &format!("{} {pq}", parts.method),
            &parts.headers,
            legacy.status,
            candidate_status,
            &real,
            &report.unified,
            &secret_refs,
            crate::stats::now_secs(),
        );
        if app.config.samples.keep_request_bodies && !request.body.is_empty() {
            let cut = request.body.len().min(4096);
            sample.request_body = Some(
                app.redactor
                    .text(&String::from_utf8_lossy(&request.body[..cut]), &secret_refs),
            );
        }
        if let Some(sink) = &app.samples_sink {
            if !sink.send(sample.clone()) {
                tracing::debug!("samples file is behind; a sample was not written");
            }
        }
        if let Some(evidence) = evidence.as_mut() {
            evidence.samples.push(sample, app.config.samples.per_route);
        }
    }
    drop(evidence);
    entry
        .stats
        .outcome(outcome, Some(legacy_time), Some(candidate_time));
    if !real.is_empty() {
        count_differences(app, entry, &real);
    }
    access_log(
        entry,
        crate::config::Mode::Shadow,
        "legacy",
        parts,
        Some(legacy.status),
        Some(legacy_time),
        Some(candidate_status),
        Some(candidate_time),
        outcome.as_str(),
    );
}

/// The field label of a difference: array indexes folded to `*` (so `/items/0/id` and
/// `/items/7/id` are one series).
pub fn field_label(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("body:line") {
        let _ = rest;
        return "body:text".into();
    }
    path.split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn count_differences(app: &App, entry: &RouteEntry, diffs: &[Difference]) {
    let mut fields = match entry.diff_fields.lock() {
        Ok(f) => f,
        Err(p) => p.into_inner(),
    };
    for d in diffs {
        let mut field = field_label(&d.path);
        if !fields.contains(&field) {
            if fields.len() >= MAX_DIFF_FIELDS {
                field = "other".into();
            } else {
                fields.insert(field.clone());
            }
        }
        app.metrics
            .differences
            .with_label_values(&[&entry.label, &field, d.kind.as_str()])
            .inc();
    }
}

/// The body decoded from its `Content-Encoding` (gzip, deflate, br), at most `cap` bytes
/// decoded (a compressed bomb is an error, not an allocation).
pub fn decoded(mut c: Captured, cap: usize) -> Result<Captured, String> {
    let encoding = match c
        .headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        Some(e) => e.trim().to_ascii_lowercase(),
        None => return Ok(c),
    };
    if encoding.is_empty() || encoding == "identity" {
        return Ok(c);
    }
    let limit = cap as u64 + 1;
    let mut out = Vec::new();
    let raw: &[u8] = &c.body;
    let result = match encoding.as_str() {
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => {
            let r = flate2::read::ZlibDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out);
            if r.is_err() {
                // Some servers send raw deflate without the zlib wrapper.
                out.clear();
                flate2::read::DeflateDecoder::new(raw)
                    .take(limit)
                    .read_to_end(&mut out)
            } else {
                r
            }
        }
        "br" => brotli::Decompressor::new(raw, 4096)
            .take(limit)
            .read_to_end(&mut out),
        other => return Err(format!("unsupported content-encoding `{other}`")),
    };
    result.map_err(|e| format!("{encoding} body does not decode: {e}"))?;
    if out.len() as u64 >= limit {
        return Err(format!("{encoding} body decodes to more than {cap} bytes"));
    }
    c.body = Bytes::from(out);
    c.headers.remove(http::header::CONTENT_ENCODING);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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

    fn cap(encoding: &str, body: Vec<u8>) -> Captured {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_str(encoding).expect("value"),
        );
        Captured {
            status: 200,
            headers: h,
            body: Bytes::from(body),
        }
    }

    #[test]
    fn decodes_gzip_deflate_br() {
        let text = b"hello hello hello".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).expect("write");
        let gz = gz.finish().expect("finish");
        assert_eq!(
            decoded(cap("gzip", gz), 1000).expect("gzip").body,
            &text[..]
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).expect("write");
        assert_eq!(
            decoded(cap("deflate", z.finish().expect("finish")), 1000)
                .expect("deflate")
                .body,
            &text[..]
        );
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
            .write_all(&text)
            .expect("write");
        assert_eq!(decoded(cap("br", br), 1000).expect("br").body, &text[..]);
    }

    #[test]
    fn bombs_are_refused() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 1 << 20]).expect("write");
        let e = decoded(cap("gzip", gz.finish().expect("finish")), 1000).expect_err("over the cap");
        assert!(e.contains("more than 1000 bytes"), "{e}");
        assert!(decoded(cap("gzip", b"not gzip".to_vec()), 1000).is_err());
    }

    #[test]
    fn field_labels_fold_indexes() {
        assert_eq!(field_label("body/items/12/id"), "body/items/*/id");
        assert_eq!(field_label("body:line 7"), "body:text");
        assert_eq!(field_label("header:vary"), "header:vary");
    }
}
