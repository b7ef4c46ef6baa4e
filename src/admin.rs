//! The admin listener (`listen.admin`, loopback by default): `/metrics` in Prometheus text
//! format, `/healthz`, and the JSON API (`/api/*`, types in [`crate::api`]) the CLI and the TUI
//! read. POSTs and the mismatch samples need `Authorization: Bearer <token>`. It sees the proxy
//! only through [`App`]; changes go through [`crate::control`].

use crate::api::{
    ErrorView, EventsView, GateView, MismatchesView, RouteView, RoutesView, TotalsView,
};
use crate::app::App;
use crate::control::{self, ControlError, Promotion};
use crate::gate;
use crate::stats::Counts;
use crate::upstream::body::{full, ProxyBody};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub async fn serve(app: Arc<App>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let app = app.clone();
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(route(&app, req).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = stop.changed() => break,
        }
    }
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<ProxyBody> {
    let body = serde_json::to_vec_pretty(v)
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json(
        status,
        &ErrorView {
            error: message.to_string(),
            verdict: None,
        },
    )
}

const ENDPOINTS: &[&str] = &[
    "/metrics",
    "/healthz",
    "/api/routes",
    "/api/events",
    "/api/routes/mismatches",
    "/api/routes/promote",
    "/api/routes/rollback",
    "/api/routes/reset",
    "/api/reload",
];

async fn route(app: &App, req: Request<Incoming>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            refresh_gauges(app);
            let mut r = Response::new(full(Bytes::from(app.metrics.encode())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/healthz") => {
            let mut r = Response::new(full(Bytes::from_static(b"ok\n")));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
        (&Method::GET, "/api/routes") => json(StatusCode::OK, &routes_view(app)),
        (&Method::GET, "/api/events") => json(
            StatusCode::OK,
            &EventsView {
                events: app.events.all(),
            },
        ),
        (&Method::GET, "/api/routes/mismatches") => {
            if let Some(r) = refused(app, &req) {
                return r;
            }
            let q = query(&req);
            let Some(route) = q.get("route") else {
                return error(StatusCode::BAD_REQUEST, "route= is required");
            };
            match app.routes.by_label(route) {
                Some(e) => json(
                    StatusCode::OK,
                    &MismatchesView {
                        route: route.clone(),
                        samples: e.findings().samples.latest(),
                    },
                ),
                None => error(StatusCode::NOT_FOUND, &format!("no route {route}")),
            }
        }
        (
            &Method::POST,
            path @ ("/api/routes/promote"
            | "/api/routes/rollback"
            | "/api/routes/reset"
            | "/api/reload"),
        ) => {
            if let Some(r) = refused(app, &req) {
                return r;
            }
            let q = query(&req);
            if path == "/api/reload" {
                return match control::reload(app) {
                    Ok(ev) => json(StatusCode::OK, &ev),
                    Err(why) => error(StatusCode::BAD_REQUEST, &why.to_string()),
                };
            }
            let route = q.get("route").cloned().unwrap_or_default();
            if route.is_empty() {
                return error(StatusCode::BAD_REQUEST, "route= is required");
            }
            let reason = q.get("reason").cloned().unwrap_or_default();
            let result = match path {
                "/api/routes/promote" => {
                    let percent = match q.get("percent").map(|p| p.parse::<u8>()) {
                        None => 100,
                        Some(Ok(p)) => p,
                        Some(Err(_)) => {
                            return error(StatusCode::BAD_REQUEST, "percent must be 1..100")
                        }
                    };
                    let force = q.get("force").is_some_and(|f| f == "true" || f == "1");
                    control::promote(
                        app,
                        Promotion {
                            route: &route,
                            percent,
                            force,
                            reason: &reason,
                        },
                    )
                    .await
                }
                "/api/routes/rollback" => control::rollback(app, &route, &reason, false).await,
                _ => control::reset(app, &route),
            };
            match result {
                Ok(ev) => json(StatusCode::OK, &ev),
                Err(e @ ControlError::NoSuchRoute(_)) => {
                    error(StatusCode::NOT_FOUND, &e.to_string())
                }
                Err(e @ ControlError::BadRequest(_)) => {
                    error(StatusCode::BAD_REQUEST, &e.to_string())
                }
                Err(e @ ControlError::State(_)) => error(StatusCode::CONFLICT, &e.to_string()),
                Err(ControlError::GateClosed(v)) => json(
                    StatusCode::CONFLICT,
                    &ErrorView {
                        error: format!("the gate is closed: {}", v.reason),
                        verdict: Some(v),
                    },
                ),
            }
        }
        (_, path) if ENDPOINTS.contains(&path) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// The query string as a map (form-urlencoded: `+` is a space).
fn query(req: &Request<Incoming>) -> std::collections::HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Whether `given` is the token, in time that depends on neither: both are hashed first, so
/// the comparison is of two 32-byte digests whatever the lengths, and that comparison looks at
/// every byte.
fn same_token(given: &[u8], token: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(token));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Checks `Authorization: Bearer <token>`; Some is the 401 to send.
fn refused(app: &App, req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    let Some(token) = app.admin_token() else {
        return Some(unauthorized(&format!(
            "no admin token is configured: set {} for the proxy",
            app.config().admin.token_env
        )));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match given {
        Some(g) if same_token(g.as_bytes(), token.as_bytes()) => None,
        Some(_) => Some(unauthorized("wrong bearer token")),
        None => Some(unauthorized("Authorization: Bearer <token> is required")),
    }
}

fn unauthorized(why: &str) -> Response<ProxyBody> {
    let mut r = error(StatusCode::UNAUTHORIZED, why);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Sets the gauges computed from windows (mismatch ratio, gate) just before a scrape.
fn refresh_gauges(app: &App) {
    let in_flight = i64::try_from(app.mirror.dispatcher.in_flight()).unwrap_or(i64::MAX);
    app.metrics.shadow_in_flight.set(in_flight);
    let buffered = i64::try_from(app.mirror.budget.used()).unwrap_or(i64::MAX);
    app.metrics.mirror_buffered_bytes.set(buffered);
    let t = app.thresholds();
    for e in app.routes.all() {
        // Also brings the route's counters up to date for the scrape.
        let c = e.stats.window_sum();
        if c.requests == 0 && c.samples() == 0 && e.pattern.is_none() {
            continue;
        }
        let v = gate::verdict(c.evidence(), &t);
        app.metrics
            .mismatch_ratio
            .with_label_values(&[&e.label])
            .set(v.rate);
        app.metrics
            .gate_passing
            .with_label_values(&[&e.label])
            .set(i64::from(v.passing));
    }
}

fn counter_sum(app: &App, name: &str, filter: impl Fn(&prometheus::proto::Metric) -> bool) -> u64 {
    app.metrics
        .registry
        .gather()
        .iter()
        .filter(|f| f.get_name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| filter(m))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// `GET /api/routes`: every configured route, and the automatic labels that saw traffic.
/// How far back the rate of clean samples behind `gate.eta_secs` looks.
const ETA_SPAN_SECS: u64 = 300;

pub fn routes_view(app: &App) -> RoutesView {
    let t = app.thresholds();
    let uptime = app.started.elapsed().as_secs_f64();
    let noise_t = app.config().noise.thresholds();
    let mut routes = Vec::new();
    for e in app.routes.all() {
        let c = e.stats.window_sum();
        if e.pattern.is_none() && c.requests == 0 && c.samples() == 0 && c.skipped == 0 {
            // `other` and idle automatic labels say nothing.
            continue;
        }
        let v = gate::verdict(c.evidence(), &t);
        let last_error = e.last_error();
        let clean_per_sec = e.stats.clean_rate((ETA_SPAN_SECS as f64).min(uptime));
        let eta_secs = gate::eta_secs(&v, clean_per_sec);
        routes.push(RouteView {
            route: e.label.clone(),
            mode: e.mode().as_str().into(),
            percent: e.percent(),
            requests: c.requests,
            mirrored: c.mirrored,
            samples: c.samples(),
            matches: c.matches,
            mismatches: c.mismatches,
            errors: c.errors,
            skipped: c.skipped,
            mismatch_rate: v.rate,
            mismatch_upper_bound: v.upper_bound,
            gate: GateView {
                passing: v.passing,
                reason: v.reason,
                eta_secs,
            },
            legacy_p50_ms: Counts::quantile_ms(&c.legacy_lat, 0.5),
            legacy_p99_ms: Counts::quantile_ms(&c.legacy_lat, 0.99),
            candidate_p50_ms: Counts::quantile_ms(&c.candidate_lat, 0.5),
            candidate_p99_ms: Counts::quantile_ms(&c.candidate_lat, 0.99),
            noise: e.findings().noise.noise_keys(&noise_t),
            state_version: app.state_version_of(&e.label),
            sparkline: e.stats.rate_series(30),
            mirrorable: e.mirrorable(),
            last_error: last_error.as_ref().map(|(_, c)| c.clone()),
            last_error_at: last_error.map(|(at, _)| at),
            clean_per_sec,
        });
    }
    let requests = routes.iter().map(|r| r.requests).sum();
    let mirrored = routes.iter().map(|r| r.mirrored).sum();
    let shadow_dropped = counter_sum(app, "cutover_shadow_dropped_total", |m| {
        m.get_label().iter().any(|l| {
            l.get_name() == "reason" && l.get_value() != "sampled_out" && l.get_value() != "method"
        })
    });
    let session_errors = counter_sum(app, "cutover_session_resolutions_total", |m| {
        m.get_label().iter().any(|l| {
            l.get_name() == "outcome"
                && (l.get_value() == "error" || l.get_value() == "undecodable")
        })
    });
    RoutesView {
        gate_thresholds: Some(t),
        totals: Some(TotalsView {
            requests,
            mirrored,
            shadow_dropped,
            session_errors,
            uptime_secs: app.started.elapsed().as_secs(),
        }),
        state_version: app.state_version(),
        uptime_secs: app.started.elapsed().as_secs(),
        routes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn tokens_compare_by_digest() {
        assert!(same_token(b"s3cret", b"s3cret"));
        assert!(!same_token(b"s3cre", b"s3cret"));
        assert!(!same_token(b"", b"s3cret"));
        assert!(!same_token(b"s3cret-and-more", b"s3cret"));
    }
}
