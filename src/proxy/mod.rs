//! The shadowing proxy's request path: accepts client connections on a worker (HTTP/1.1,
//! keep-alive, a 64 KiB head limit answered with 431, a 10 s head timeout), picks the route,
//! serves the client from the legacy app (or the candidate once promoted) by streaming, and hands
//! eligible requests to the [`crate::mirror`] without ever waiting for it.

pub mod request_body;
pub mod websocket;

use crate::access::{self, AccessEntry};
use crate::app::App;
use crate::mirror::dispatch::sampled;
use crate::mirror::{self, LegacyHead};
use crate::mode::Mode;
use crate::route::RouteEntry;
use crate::stats::{DropReason, Outcome, RejectReason, Side};
use crate::upstream::body::{self, full, ProxyBody, TeeBody};
use crate::upstream::headers::{ClientInfo, Direction};
use crate::upstream::{detach, forward_request, headers, UpstreamBody, UpstreamError};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use request_body::{BodyError, BodyLimits, Mirroring};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

/// Largest request head accepted (request line plus headers); larger gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client must finish sending its head within this time.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts and serves client connections on this worker until `stop` changes, then lets
/// in-flight requests finish (up to 30 s).
pub async fn serve(app: Arc<App>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    // Connections are tracked here rather than by hyper-util's GracefulShutdown, which cannot
    // watch a connection that upgrades (a WebSocket tunnel).
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let local = stream.local_addr().unwrap_or(remote);
                let client = ClientInfo::new(remote, local, &app.limits.trusted_proxies);
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    let client = client.clone();
                    async move { Ok::<_, Infallible>(handle(app, req, client).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let mut stopping = stop.clone();
                connections.spawn(async move {
                    let mut conn = std::pin::pin!(conn);
                    let ended = tokio::select! {
                        r = conn.as_mut() => Some(r),
                        _ = stopping.changed() => None,
                    };
                    let result = match ended {
                        Some(r) => r,
                        None => {
                            // Finish the request in flight, then close.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        debug!(error = %e, %remote, "client connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    connections.close();
    tokio::select! {
        _ = connections.wait() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => warn!("in-flight requests still running after 30 s; closing"),
    }
}

/// A short plain-text response made by the proxy itself.
pub fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A response cutover makes itself that ends the connection (the client's request was not
/// read to its end).
fn closing(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut r = plain(status, text);
    r.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn upstream_response(resp: Response<UpstreamBody>) -> (http::response::Parts, UpstreamBody) {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, Direction::Response);
    (parts, body)
}

/// The session id the request carries, by PHP's rules (None: no session).
fn session_id_of(headers: &http::HeaderMap, cookie: &str) -> Option<String> {
    cutover_session::session_id(
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        cookie,
    )
}

fn body_limits(app: &App) -> BodyLimits {
    BodyLimits {
        idle: app.limits.body_idle,
        max: app.limits.max_body,
        spool_dir: app.limits.spool_dir.clone(),
    }
}

fn declared_length(parts: &http::request::Parts) -> Option<u64> {
    parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The answer for a body that could not be read, counted.
fn body_refused(app: &App, e: BodyError) -> Response<ProxyBody> {
    debug!(error = %e, "client request body");
    match e {
        BodyError::Timeout(_) => {
            app.metrics.rejected(RejectReason::BodyTimeout);
            closing(
                StatusCode::REQUEST_TIMEOUT,
                "cutover: the request body stalled\n",
            )
        }
        BodyError::TooLarge(_) => {
            app.metrics.rejected(RejectReason::BodyTooLarge);
            closing(
                StatusCode::PAYLOAD_TOO_LARGE,
                "cutover: the request body is too large\n",
            )
        }
        BodyError::Client(_) => {
            app.metrics.rejected(RejectReason::BodyFailed);
            closing(
                StatusCode::BAD_REQUEST,
                "cutover: the request body could not be read\n",
            )
        }
        BodyError::Spool(_) => closing(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cutover: the request body could not be stored\n",
        ),
    }
}

/// The request body read whole before an upstream connection is taken for it (see
/// [`request_body`]), ready to send; Err is the answer to give instead.
async fn buffered_body(
    app: &App,
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<ProxyBody, Response<ProxyBody>> {
    if body.is_end_stream() {
        return Ok(body::empty());
    }
    match request_body::read(body, declared_length(parts), &body_limits(app), None).await {
        Ok(read) => Ok(read.stored.into_body()),
        Err(e) => Err(body_refused(app, e)),
    }
}

/// Serves one client request; `client` is what its connection says about the client.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    client: ClientInfo,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    if head_size(&parts) > MAX_HEAD_BYTES {
        // hyper's read buffer limit is not an exact head limit: a head that arrives in one
        // read can pass it. This is the exact one.
        app.metrics.rejected(RejectReason::HeadTooLarge);
        return closing(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "cutover: request head too large\n",
        );
    }
    if parts.method == Method::CONNECT {
        app.metrics.rejected(RejectReason::Connect);
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "cutover: CONNECT is not proxied\n",
        );
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or with more than one, is answered 400
    // (as nginx does); forwarded, PHP would see the upstream's address or either host.
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if parts.version == http::Version::HTTP_11 => {
            app.metrics.rejected(RejectReason::MissingHost);
            return closing(StatusCode::BAD_REQUEST, "cutover: Host is required\n");
        }
        (Some(_), Some(_)) => {
            app.metrics.rejected(RejectReason::DuplicateHost);
            return closing(StatusCode::BAD_REQUEST, "cutover: more than one Host\n");
        }
        _ => {}
    }
    // Kept (for the log, the exchange) while the upstream answers: not as a slice of hyper's
    // read buffer (see `detach`).
    parts.uri = detach::uri(&parts.uri);
    let entry = app.routes.lookup(parts.uri.path());
    if websocket::is_handshake(&parts) {
        // Before the hop-by-hop headers go: Upgrade and Connection are the handshake.
        return websocket::tunnel(&app, &entry, parts, &client, started).await;
    }
    if parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
        // hyper framed the body by Transfer-Encoding (and will close the connection after); a
        // Content-Length sent alongside must not reach the upstream, or it would read the body
        // differently (request smuggling).
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    headers::strip_hop_by_hop(&mut parts.headers, Direction::Request);
    headers::strip_cutover_headers(&mut parts.headers);
    headers::add_forwarded(&mut parts.headers, &client);
    // What a FastCGI upstream is told about the peers (REMOTE_ADDR, SERVER_PORT, HTTPS).
    parts.extensions.insert(client);
    let mode = entry.mode();
    if mode == Mode::Legacy && !app.mirror.compares_sessions() {
        let body = match buffered_body(&app, &parts, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        return serve_plain(&app, &entry, mode, parts, body, started, Some("route_mode")).await;
    }
    // The mirrored and promoted paths need the session cookie (sampling, the snapshot); with
    // sessions compared every request of a session is counted while it runs (see
    // `mirror::races`), whatever its route.
    let session = session_id_of(&parts.headers, &app.session_cookie);
    let in_flight = match &session {
        Some(id) if app.mirror.compares_sessions() => Some(app.mirror.races.enter(id)),
        _ => None,
    };
    let request = ClientRequest {
        parts,
        body,
        session,
        in_flight: in_flight.as_ref(),
        started,
    };
    let response = dispatch(&app, &entry, mode, request).await;
    match in_flight {
        // Counted until the response has gone out.
        Some(guard) => response.map(|b| body::boxed(body::Guarded::new(b, guard))),
        None => response,
    }
}

/// A client's request on its way: what the proxy took of it.
struct ClientRequest<'a> {
    parts: http::request::Parts,
    body: Incoming,
    /// Its session id, by PHP's rules.
    session: Option<String>,
    /// Its count among its session's requests in flight (sessions compared only).
    in_flight: Option<&'a crate::mirror::races::InFlight>,
    started: Instant,
}

/// Serves a request by its route's mode.
async fn dispatch(
    app: &Arc<App>,
    entry: &Arc<RouteEntry>,
    mode: Mode,
    request: ClientRequest<'_>,
) -> Response<ProxyBody> {
    let ClientRequest {
        parts,
        body,
        session,
        in_flight,
        started,
    } = request;
    match mode {
        Mode::Legacy => {
            let body = match buffered_body(app, &parts, body).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            serve_plain(app, entry, mode, parts, body, started, Some("route_mode")).await
        }
        Mode::Shadow => serve_shadow(app, entry, parts, body, session, in_flight, started).await,
        Mode::Candidate => {
            if entry.percent() >= 100
                || sampled(f64::from(entry.percent()) / 100.0, session.as_deref())
            {
                match resolve_session(app, &parts, session.clone()).await {
                    // Boxed to keep every request's future small (see resolve_session).
                    Ok(resolved) => {
                        Box::pin(serve_candidate(
                            app,
                            entry,
                            parts,
                            body,
                            resolved.map(|r| r.header),
                            session.as_deref(),
                            started,
                        ))
                        .await
                    }
                    // Without the user's session the candidate would answer a logged-out page.
                    Err(cause) => {
                        access::warn_limited(access::Warning::SessionStore, &entry.label, &cause);
                        entry.record_error(cause, crate::stats::now_secs());
                        let body = match buffered_body(app, &parts, body).await {
                            Ok(b) => b,
                            Err(r) => return r,
                        };
                        serve_plain(
                            app,
                            entry,
                            mode,
                            parts,
                            body,
                            started,
                            Some("session_error"),
                        )
                        .await
                    }
                }
            } else {
                serve_shadow(app, entry, parts, body, session, in_flight, started).await
            }
        }
    }
}

/// Bytes of a request head as it came over the wire (request line, headers, line ends).
fn head_size(parts: &http::request::Parts) -> usize {
    // The request-target as sent: path and query, plus scheme and authority in absolute form
    // (measured without formatting the URI: this runs for every request).
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + parts.uri.authority().map_or(0, |a| {
            a.as_str().len() + parts.uri.scheme_str().map_or(0, |s| s.len() + 3)
        });
    let line = parts.method.as_str().len() + target + 12;
    parts
        .headers
        .iter()
        .fold(line + 2, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Sends to the legacy app and streams its answer back; nothing else. `not_mirrored`: why the
/// request was not mirrored, for the access log.
async fn serve_plain(
    app: &App,
    entry: &RouteEntry,
    mode: Mode,
    mut parts: http::request::Parts,
    body: ProxyBody,
    started: Instant,
    not_mirrored: Option<&str>,
) -> Response<ProxyBody> {
    let headers = std::mem::take(&mut parts.headers);
    let resp = match forward_request(&app.legacy, &parts, headers, body) {
        Ok(req) => send_legacy(app, req).await,
        Err(e) => {
            warn!(error = %e, "cannot build the legacy request");
            return plain(StatusCode::BAD_REQUEST, "cutover: bad request target\n");
        }
    };
    let elapsed = started.elapsed();
    match resp {
        Ok(resp) => {
            entry.stats.duration(Side::Legacy, elapsed);
            let (parts_out, body) = upstream_response(resp);
            let status = parts_out.status.as_u16();
            entry.stats.request(mode, status, false);
            access::log(AccessEntry {
                route: &entry.label,
                mode,
                served_by: "legacy",
                method: &parts.method,
                path: parts.uri.path(),
                legacy: Some((status, elapsed)),
                candidate: None,
                outcome: "not_mirrored",
                reason: not_mirrored,
            });
            Response::from_parts(parts_out, body::boxed(body))
        }
        Err(e) => legacy_failed(app, entry, mode, &parts, e, elapsed),
    }
}

/// Why the legacy app gave no response.
enum LegacyFailure {
    Upstream(UpstreamError),
    /// No response head within `upstreams.legacy_timeout_ms`.
    Timeout(Duration),
}

/// Sends a request to the legacy app, waiting at most `upstreams.legacy_timeout_ms` for the
/// response head.
async fn send_legacy(
    app: &App,
    req: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, LegacyFailure> {
    let wait = app.limits.legacy_timeout;
    match tokio::time::timeout(wait, app.pool().send(&app.legacy, req)).await {
        Ok(r) => r.map_err(LegacyFailure::Upstream),
        Err(_) => Err(LegacyFailure::Timeout(wait)),
    }
}

fn legacy_failed(
    app: &App,
    entry: &RouteEntry,
    mode: Mode,
    parts: &http::request::Parts,
    failure: LegacyFailure,
    elapsed: Duration,
) -> Response<ProxyBody> {
    let (status, outcome, cause) = match &failure {
        LegacyFailure::Upstream(e) => (502, "legacy_error", e.to_string()),
        LegacyFailure::Timeout(d) => {
            app.metrics.rejected(RejectReason::LegacyTimeout);
            (
                504,
                "legacy_timeout",
                format!("no response head within {d:?}"),
            )
        }
    };
    warn!(route = %entry.label, %cause, "legacy upstream failed");
    entry.stats.upstream_error(Side::Legacy);
    entry.stats.request(mode, status, false);
    access::log(AccessEntry {
        route: &entry.label,
        mode,
        served_by: "proxy",
        method: &parts.method,
        path: parts.uri.path(),
        legacy: Some((status, elapsed)),
        candidate: None,
        outcome,
        reason: Some(&cause),
    });
    match failure {
        LegacyFailure::Upstream(_) => plain(
            StatusCode::BAD_GATEWAY,
            "cutover: the legacy upstream is unavailable\n",
        ),
        LegacyFailure::Timeout(_) => plain(
            StatusCode::GATEWAY_TIMEOUT,
            "cutover: the legacy upstream did not answer in time\n",
        ),
    }
}

async fn serve_shadow(
    app: &Arc<App>,
    entry: &Arc<RouteEntry>,
    mut parts: http::request::Parts,
    body: Incoming,
    session: Option<String>,
    in_flight: Option<&crate::mirror::races::InFlight>,
    started: Instant,
) -> Response<ProxyBody> {
    let mode = Mode::Shadow;
    let (mirrored, sample, max_body) = {
        let s = entry.settings();
        (
            s.mirror_methods.contains(&parts.method),
            s.sample,
            s.max_body_bytes,
        )
    };
    if !mirrored {
        app.metrics.dropped(DropReason::Method);
        let body = match buffered_body(app, &parts, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        return serve_plain(app, entry, mode, parts, body, started, Some("method")).await;
    }
    entry.note_mirror_eligible();
    if !sampled(sample, session.as_deref()) {
        app.metrics.dropped(DropReason::SampledOut);
        let body = match buffered_body(app, &parts, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        return serve_plain(app, entry, mode, parts, body, started, Some("sampled_out")).await;
    }
    let read = match request_body::read(
        body,
        declared_length(&parts),
        &body_limits(app),
        Some((max_body, app.mirror.budget.hold())),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return body_refused(app, e),
    };
    let (bytes, held) = match (read.mirroring, read.stored) {
        (Mirroring::Kept(held), request_body::Stored::Memory(bytes)) => (bytes, held),
        (mirroring, stored) => {
            let (reason, why) = match mirroring {
                Mirroring::BuffersFull => (DropReason::BuffersFull, "buffers_full"),
                _ => (DropReason::BodyTooLarge, "body_too_large"),
            };
            app.metrics.dropped(reason);
            if reason == DropReason::BuffersFull {
                access::warn_limited(
                    access::Warning::Dropped,
                    &entry.label,
                    "mirror buffers full: served without a comparison",
                );
            }
            return serve_plain(
                app,
                entry,
                mode,
                parts,
                stored.into_body(),
                started,
                Some(why),
            )
            .await;
        }
    };
    let resolved = match resolve_session(app, &parts, session.clone()).await {
        Ok(h) => h,
        Err(cause) => {
            // The store failed: serve as if cutover were not there, and skip the comparison.
            entry.record_error(cause, crate::stats::now_secs());
            entry.stats.outcome(Outcome::Skipped, None, None);
            return serve_plain(
                app,
                entry,
                mode,
                parts,
                body::full(bytes),
                started,
                Some("session_error"),
            )
            .await;
        }
    };
    let Some(slot) = app.mirror.dispatcher.try_reserve() else {
        app.metrics.dropped(DropReason::QueueFull);
        access::warn_limited(
            access::Warning::Dropped,
            &entry.label,
            "mirror queue full: served without a comparison",
        );
        return serve_plain(
            app,
            entry,
            mode,
            parts,
            body::full(bytes),
            started,
            Some("queue_full"),
        )
        .await;
    };
    let (head_tx, head_rx) = oneshot::channel::<LegacyHead>();
    mirror::spawn_exchange(
        app.mirror.clone(),
        entry.clone(),
        slot,
        mirror::ShadowRequest {
            parts: parts.clone(),
            body: bytes.clone(),
            held: Some(held),
            // A request without a session may get one from PHP: watched from its response.
            ticket: in_flight.map(|f| f.ticket()).or_else(|| {
                app.mirror
                    .compares_sessions()
                    .then(|| app.mirror.races.ticket())
            }),
            session_id: session,
            session: resolved,
            reverse: false,
        },
        head_rx,
    );
    let headers = std::mem::take(&mut parts.headers);
    let resp = match forward_request(&app.legacy, &parts, headers, body::full(bytes)) {
        Ok(req) => send_legacy(app, req).await,
        Err(e) => {
            warn!(error = %e, "cannot build the legacy request");
            return plain(StatusCode::BAD_REQUEST, "cutover: bad request target\n");
        }
    };
    let elapsed = started.elapsed();
    match resp {
        Ok(resp) => {
            entry.stats.duration(Side::Legacy, elapsed);
            let (parts_out, body) = upstream_response(resp);
            entry.stats.request(mode, parts_out.status.as_u16(), true);
            tee_to_exchange(head_tx, parts_out, body, elapsed, max_body)
        }
        Err(e) => legacy_failed(app, entry, mode, &parts, e, elapsed),
    }
}

/// The session of this request, resolved before PHP sees it: Ok(None) without a session,
/// Err(cause) when the store failed (the caller then serves without the comparison).
async fn resolve_session(
    app: &App,
    parts: &http::request::Parts,
    id: Option<String>,
) -> Result<Option<crate::session::Resolved>, String> {
    let Some(resolver) = &app.session else {
        return Ok(None);
    };
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    // Boxed: a store lookup's future (the DynamoDB client's above all) is kilobytes, and every
    // request's future would otherwise carry and move that size, with or without a store.
    match Box::pin(resolver.resolve(id, format!("{} {pq}", parts.method))).await {
        crate::session::Resolution::None => Ok(None),
        crate::session::Resolution::Found(r) => Ok(Some(r)),
        crate::session::Resolution::Failed(cause) => Err(cause),
    }
}

/// Streams the served response to the client while handing its head, and a capture of its
/// body (up to `cap`), to the waiting exchange.
fn tee_to_exchange(
    head_tx: oneshot::Sender<LegacyHead>,
    parts_out: http::response::Parts,
    body: UpstreamBody,
    elapsed: Duration,
    cap: usize,
) -> Response<ProxyBody> {
    let (cap_tx, cap_rx) = oneshot::channel();
    let _ = head_tx.send(LegacyHead {
        status: parts_out.status,
        headers: parts_out.headers.clone(),
        elapsed,
        capture: cap_rx,
    });
    Response::from_parts(parts_out, body::boxed(TeeBody::new(body, cap, cap_tx)))
}

async fn serve_candidate(
    app: &Arc<App>,
    entry: &Arc<RouteEntry>,
    parts: http::request::Parts,
    body: Incoming,
    session_header: Option<HeaderValue>,
    cookie: Option<&str>,
    started: Instant,
) -> Response<ProxyBody> {
    let mode = Mode::Candidate;
    let settings = entry.settings_owned();
    let bodiless = body.is_end_stream();
    let body = match buffered_body(app, &parts, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let retry_on_legacy = crate::upstream::is_safe(&parts.method) && bodiless;
    // verify_after_promotion: safe, bodiless, eligible requests are also sent to the legacy app
    // and compared, the other way round. Unsafe ones never are: PHP would commit them twice.
    let verify = app.config().gate.verify_after_promotion
        && retry_on_legacy
        && settings.mirror_methods.contains(&parts.method)
        && sampled(settings.sample, cookie);
    let slot = if verify {
        app.mirror.dispatcher.try_reserve()
    } else {
        None
    };
    if verify && slot.is_none() {
        app.metrics.dropped(DropReason::QueueFull);
    }
    // A copy: PHP may still get these headers if the candidate cannot answer.
    let headers = parts.headers.clone();
    let mut req = match forward_request(&settings.candidate, &parts, headers, body) {
        Ok(r) => r,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "cutover: bad request target\n"),
    };
    if let Some(h) = &session_header {
        req.headers_mut().insert(cutover_session::HEADER, h.clone());
    }
    let head_tx = slot.map(|slot| {
        let (tx, rx) = oneshot::channel::<LegacyHead>();
        mirror::spawn_exchange(
            app.mirror.clone(),
            entry.clone(),
            slot,
            mirror::ShadowRequest {
                parts: parts.clone(),
                body: Bytes::new(),
                held: None,
                session_id: None,
                session: None,
                reverse: true,
                ticket: None,
            },
            rx,
        );
        tx
    });
    let result = tokio::time::timeout(
        settings.candidate_timeout,
        app.pool().send(&settings.candidate, req),
    )
    .await;
    let elapsed = started.elapsed();
    match result {
        Ok(Ok(resp)) => {
            entry.stats.duration(Side::Candidate, elapsed);
            let (mut parts_out, body) = upstream_response(resp);
            // A declaration meant for shadow mode never reaches a client.
            parts_out.headers.remove(cutover_session::WRITE_HEADER);
            let status = parts_out.status.as_u16();
            entry.stats.request(mode, status, head_tx.is_some());
            entry.stats.promoted_answer(status);
            access::log(AccessEntry {
                route: &entry.label,
                mode,
                served_by: "candidate",
                method: &parts.method,
                path: parts.uri.path(),
                legacy: None,
                candidate: Some((status, elapsed)),
                outcome: "promoted",
                reason: None,
            });
            match head_tx {
                Some(tx) => tee_to_exchange(tx, parts_out, body, elapsed, settings.max_body_bytes),
                None => Response::from_parts(parts_out, body::boxed(body)),
            }
        }
        failed => {
            entry.stats.upstream_error(Side::Candidate);
            entry.stats.promoted_answer(502);
            let cause = match failed {
                Err(_) => format!(
                    "candidate: timeout after {:?} in candidate mode",
                    settings.candidate_timeout
                ),
                Ok(Err(e)) => format!(
                    "candidate: {} in candidate mode",
                    mirror::CallError::from(e)
                ),
                Ok(Ok(_)) => String::new(),
            };
            warn!(route = %entry.label, %cause, "candidate failed");
            entry.record_error(cause, crate::stats::now_secs());
            if retry_on_legacy {
                app.metrics.candidate_fallbacks.inc();
                serve_plain(
                    app,
                    entry,
                    mode,
                    parts,
                    body::empty(),
                    Instant::now(),
                    Some("candidate_fallback"),
                )
                .await
            } else {
                entry.stats.request(mode, 502, false);
                plain(
                    StatusCode::BAD_GATEWAY,
                    "cutover: the candidate upstream is unavailable\n",
                )
            }
        }
    }
}
