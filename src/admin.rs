//! The admin listener (`listen.admin`, loopback by default): `/metrics` in Prometheus text
//! format, `/healthz`, and the JSON API the CLI and the TUI read (`/api/routes`). It sees the
//! proxy only through [`App`]'s tables and counters.

use crate::control;
use crate::gate::{self, Evidence, Thresholds};
use crate::proxy::body::{full, ProxyBody};
use crate::proxy::App;
use crate::stats::Counts;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
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
    json(status, &serde_json::json!({ "error": message }))
}

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
            &serde_json::json!({ "events": app.events.all() }),
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
                    &serde_json::json!({ "route": route, "samples": e.evidence().samples.latest() }),
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
            let route = q.get("route").cloned().unwrap_or_default();
            if path != "/api/reload" && route.is_empty() {
                return error(StatusCode::BAD_REQUEST, "route= is required");
            }
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
                    let reason = q.get("reason").cloned().unwrap_or_default();
                    // A fleet-wide verdict judged by `cutover promote` with several proxies.
                    let judged = q
                        .get("verdict")
                        .and_then(|v| serde_json::from_str::<gate::Verdict>(v).ok());
                    control::promote(app, &route, percent, force, &reason, judged).await
                }
                "/api/routes/rollback" => {
                    let reason = q.get("reason").cloned().unwrap_or_default();
                    control::rollback(app, &route, &reason, false).await
                }
                "/api/routes/reset" => control::reset(app, &route),
                _ => {
                    return match control::reload(app) {
                        Ok(ev) => json(StatusCode::OK, &ev),
                        Err(why) => error(StatusCode::BAD_REQUEST, &why),
                    }
                }
            };
            match result {
                Ok(ev) => json(StatusCode::OK, &ev),
                Err(control::ControlError::NoSuchRoute(r)) => {
                    error(StatusCode::NOT_FOUND, &format!("no route {r}"))
                }
                Err(control::ControlError::BadRequest(m)) => error(StatusCode::BAD_REQUEST, &m),
                Err(control::ControlError::State(m)) => error(StatusCode::CONFLICT, &m),
                Err(control::ControlError::GateClosed(v)) => json(
                    StatusCode::CONFLICT,
                    &serde_json::json!({ "error": format!("the gate is closed: {}", v.reason), "verdict": v }),
                ),
            }
        }
        (
            _,
            "/metrics"
            | "/healthz"
            | "/api/routes"
            | "/api/events"
            | "/api/routes/mismatches"
            | "/api/routes/promote"
            | "/api/routes/rollback"
            | "/api/routes/reset"
            | "/api/reload",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
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

/// Constant-time equality, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `Authorization: Bearer <token>`; Some is the 401 to send.
fn refused(app: &App, req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    let Some(token) = app.admin_token() else {
        return Some(unauthorized(&format!(
            "no admin token is configured: set {} for the proxy",
            app.config.admin.token_env
        )));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => None,
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

pub fn thresholds(app: &App) -> Thresholds {
    Thresholds {
        min_samples: app.config.gate.min_samples,
        max_mismatch_rate: *app.config.gate.max_mismatch_rate.get_ref(),
        confidence: *app.config.gate.confidence.get_ref(),
    }
}

/// Evidence for the gate from a route's window.
pub fn evidence(c: &Counts) -> Evidence {
    Evidence {
        samples: c.samples(),
        failures: c.mismatches + c.errors,
    }
}

/// Sets the gauges computed from windows (mismatch ratio, gate) just before a scrape.
fn refresh_gauges(app: &App) {
    let in_flight = i64::try_from(app.dispatcher.in_flight()).unwrap_or(i64::MAX);
    app.metrics.shadow_in_flight.set(in_flight);
    let t = thresholds(app);
    for e in app.routes.all() {
        // Also brings the route's counters up to date for the scrape.
        let c = e.stats.window_sum();
        if c.requests == 0 && c.samples() == 0 && e.pattern.is_none() {
            continue;
        }
        let v = gate::verdict(evidence(&c), &t);
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

#[derive(Serialize)]
pub struct GateView {
    pub passing: bool,
    pub reason: String,
}

#[derive(Serialize)]
pub struct RouteView {
    pub route: String,
    pub mode: &'static str,
    pub percent: u8,
    pub requests: u64,
    pub mirrored: u64,
    pub samples: u64,
    pub matches: u64,
    pub mismatches: u64,
    pub errors: u64,
    pub skipped: u64,
    pub mismatch_rate: f64,
    pub mismatch_upper_bound: f64,
    pub gate: GateView,
    pub legacy_p50_ms: Option<f64>,
    pub legacy_p99_ms: Option<f64>,
    pub candidate_p50_ms: Option<f64>,
    pub candidate_p99_ms: Option<f64>,
    pub noise: Vec<crate::noise::NoiseKey>,
    /// The state-store version of this route (0: never promoted or rolled back).
    pub state_version: u64,
    pub sparkline: Vec<Option<f64>>,
}

#[derive(Serialize)]
pub struct RoutesView {
    pub state_version: u64,
    pub uptime_secs: u64,
    pub routes: Vec<RouteView>,
    /// Addition: the thresholds the verdicts use, so a fleet's sums can be judged alike.
    pub gate_thresholds: ThresholdsView,
    /// Addition: proxy-wide counters since start.
    pub totals: TotalsView,
}

#[derive(Serialize)]
pub struct ThresholdsView {
    pub min_samples: u64,
    pub max_mismatch_rate: f64,
    pub confidence: f64,
}

#[derive(Serialize)]
pub struct TotalsView {
    pub requests: u64,
    pub mirrored: u64,
    pub shadow_dropped: u64,
    pub session_errors: u64,
    pub uptime_secs: u64,
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

pub fn routes_view(app: &App) -> RoutesView {
    let t = thresholds(app);
    let noise_t = crate::noise::Thresholds {
        relative: app.config.noise.relative_threshold,
        absolute: app.config.noise.absolute_threshold,
    };
    let mut routes = Vec::new();
    for e in app.routes.all() {
        let c = e.stats.window_sum();
        if e.pattern.is_none() && c.requests == 0 && c.samples() == 0 && c.skipped == 0 {
            // `other` and idle automatic labels say nothing.
            continue;
        }
        let v = gate::verdict(evidence(&c), &t);
        routes.push(RouteView {
            route: e.label.clone(),
            mode: e.mode().as_str(),
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
            },
            legacy_p50_ms: Counts::quantile_ms(&c.legacy_lat, 0.5),
            legacy_p99_ms: Counts::quantile_ms(&c.legacy_lat, 0.99),
            candidate_p50_ms: Counts::quantile_ms(&c.candidate_lat, 0.5),
            candidate_p99_ms: Counts::quantile_ms(&c.candidate_lat, 0.99),
            noise: e.evidence().noise.noise_keys(&noise_t),
            state_version: app.state_version_of(&e.label),
            sparkline: e.stats.rate_series(30),
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
        gate_thresholds: ThresholdsView {
            min_samples: t.min_samples,
            max_mismatch_rate: t.max_mismatch_rate,
            confidence: t.confidence,
        },
        totals: TotalsView {
            requests,
            mirrored,
            shadow_dropped,
            session_errors,
            uptime_secs: app.started.elapsed().as_secs(),
        },
        state_version: app.state_version(),
        uptime_secs: app.started.elapsed().as_secs(),
        routes,
    }
}
