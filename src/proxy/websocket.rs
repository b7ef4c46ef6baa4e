//! WebSocket handshakes (`Upgrade: websocket`): passed to whichever side serves the route (the
//! legacy app, or the candidate once promoted for this session) on a connection of their own,
//! then tunnelled byte for byte in both directions until either side closes. Never mirrored:
//! a second handshake would open a second live conversation with the application. Counted in
//! `cutover_websockets_total{route, upstream, outcome}` and `cutover_websockets_open`.

use super::{plain, resolve_session, sampled, session_id_of};
use crate::access::{self, AccessEntry};
use crate::app::App;
use crate::mode::Mode;
use crate::route::RouteEntry;
use crate::upstream::body::{self, ProxyBody};
use crate::upstream::headers::{self, ClientInfo, Direction};
use crate::upstream::{forward_request, Protocol, UpstreamUrl};
use http::{HeaderValue, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

/// Whether the request asks to become a WebSocket (RFC 6455 §4.1): a GET whose `Connection`
/// names `upgrade` and whose `Upgrade` names `websocket`.
pub fn is_handshake(parts: &http::request::Parts) -> bool {
    let names = |h: http::header::HeaderName, token: &str| {
        parts
            .headers
            .get_all(h)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    parts.method == http::Method::GET
        && parts.version == http::Version::HTTP_11
        && names(http::header::CONNECTION, "upgrade")
        && names(http::header::UPGRADE, "websocket")
}

/// Which side a tunnel goes to.
#[derive(Clone, Copy)]
enum Side {
    Legacy,
    Candidate,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::Candidate => "candidate",
        }
    }
}

/// Passes the handshake on and, when the upstream accepts it (101), joins the two connections.
pub async fn tunnel(
    app: &Arc<App>,
    entry: &Arc<RouteEntry>,
    mut parts: http::request::Parts,
    client: &ClientInfo,
    started: Instant,
) -> Response<ProxyBody> {
    let mode = entry.mode();
    let session = session_id_of(&parts.headers, &app.session_cookie);
    let side = match mode {
        Mode::Candidate
            if entry.percent() >= 100
                || sampled(f64::from(entry.percent()) / 100.0, session.as_deref()) =>
        {
            Side::Candidate
        }
        _ => Side::Legacy,
    };
    let url: Arc<UpstreamUrl> = match side {
        Side::Legacy => Arc::new(app.legacy.clone()),
        Side::Candidate => entry.settings_owned().candidate.clone(),
    };
    let count = |outcome: &str| {
        app.metrics
            .websockets
            .with_label_values(&[entry.label.as_str(), side.as_str(), outcome])
            .inc();
    };
    if url.protocol == Protocol::FastCgi {
        // FastCGI has no way to hand a connection over: nginx cannot either.
        count("unsupported");
        return plain(
            StatusCode::NOT_IMPLEMENTED,
            "cutover: WebSockets cannot be passed to a FastCGI upstream\n",
        );
    }
    let Some(client_side) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        count("failed");
        return plain(
            StatusCode::BAD_REQUEST,
            "cutover: the connection cannot upgrade\n",
        );
    };
    // The hop-by-hop headers go, except the two that make the handshake, set again for the
    // upstream's hop.
    let upgrade = parts.headers.get(http::header::UPGRADE).cloned();
    headers::strip_hop_by_hop(&mut parts.headers, Direction::Request);
    headers::strip_cutover_headers(&mut parts.headers);
    headers::add_forwarded(&mut parts.headers, client);
    if let Some(u) = upgrade {
        parts.headers.insert(http::header::UPGRADE, u);
    }
    parts.headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    if let Side::Candidate = side {
        // The candidate learns the user as it does for any promoted request.
        match resolve_session(app, &parts, session).await {
            Ok(Some(r)) => {
                parts.headers.insert(cutover_session::HEADER, r.header);
            }
            Ok(None) => {}
            Err(cause) => {
                warn!(route = %entry.label, %cause, "WebSocket handshake without its session");
                entry.record_error(cause, crate::stats::now_secs());
            }
        }
    }
    let headers = std::mem::take(&mut parts.headers);
    let req = match forward_request(&url, &parts, headers, body::empty()) {
        Ok(r) => r,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "cutover: bad request target\n"),
    };
    let wait = app.limits.legacy_timeout;
    let answered = tokio::time::timeout(wait, app.pool().send_upgrade(&url, req)).await;
    let mut resp = match answered {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            count("failed");
            warn!(route = %entry.label, upstream = side.as_str(), error = %e, "WebSocket handshake failed");
            log(entry, mode, side, &parts, 502, started);
            return plain(
                StatusCode::BAD_GATEWAY,
                "cutover: the upstream cannot be reached\n",
            );
        }
        Err(_) => {
            count("failed");
            log(entry, mode, side, &parts, 504, started);
            return plain(
                StatusCode::GATEWAY_TIMEOUT,
                "cutover: no answer to the WebSocket handshake\n",
            );
        }
    };
    let status = resp.status();
    log(entry, mode, side, &parts, status.as_u16(), started);
    entry.stats.request(mode, status.as_u16(), false);
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // Refused (401, 404…): the client gets the answer as any other.
        count("refused");
        let (mut out, incoming) = resp.into_parts();
        headers::strip_hop_by_hop(&mut out.headers, Direction::Response);
        return Response::from_parts(out, body::boxed(incoming));
    }
    count("tunnelled");
    let upstream_side = hyper::upgrade::on(&mut resp);
    let open = app.metrics.websockets_open.clone();
    let label = entry.label.clone();
    tokio::spawn(async move {
        let (client_io, upstream_io) = match tokio::join!(client_side, upstream_side) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                debug!(route = %label, client = c.is_ok(), upstream = u.is_ok(), "WebSocket upgrade did not complete");
                return;
            }
        };
        open.inc();
        let mut client_io = TokioIo::new(client_io);
        let mut upstream_io = TokioIo::new(upstream_io);
        match tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await {
            Ok((up, down)) => debug!(route = %label, up, down, "WebSocket tunnel closed"),
            Err(e) => debug!(route = %label, error = %e, "WebSocket tunnel ended with an error"),
        }
        open.dec();
    });
    // The upstream's 101 as it is (Upgrade, Connection, Sec-WebSocket-Accept and -Protocol).
    let (out, _) = resp.into_parts();
    Response::from_parts(out, body::empty())
}

fn log(
    entry: &RouteEntry,
    mode: Mode,
    side: Side,
    parts: &http::request::Parts,
    status: u16,
    started: Instant,
) {
    let elapsed = started.elapsed();
    let (legacy, candidate) = match side {
        Side::Legacy => (Some((status, elapsed)), None),
        Side::Candidate => (None, Some((status, elapsed))),
    };
    access::log(AccessEntry {
        route: &entry.label,
        mode,
        served_by: side.as_str(),
        method: &parts.method,
        path: parts.uri.path(),
        legacy,
        candidate,
        outcome: "not_mirrored",
        reason: Some("websocket"),
    });
}
