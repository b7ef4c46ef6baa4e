//! A client of the admin API, for the CLI and the TUI: they see proxies only through it. Several
//! proxies' routes are summed into one fleet view, and the fleet is judged with the same pure
//! gate function the proxies use.

use crate::api::{Event, GateView, RouteView, RoutesView};
use crate::gate::{self, Thresholds, Verdict};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

#[derive(Clone)]
pub struct AdminClient {
    http: HttpClient,
    token: Option<String>,
    timeout: Duration,
}

/// What went wrong talking to a proxy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `error` field of a JSON error body, or the whole message.
    pub fn reason(&self) -> String {
        match self {
            ClientError::Status { body, .. } => serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| body.clone()),
            other => other.to_string(),
        }
    }
}

impl AdminClient {
    pub fn new(token: Option<String>) -> AdminClient {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        AdminClient {
            http: Client::builder(TokioExecutor::new()).build(http),
            token,
            timeout: Duration::from_secs(5),
        }
    }

    async fn call(&self, method: http::Method, url: &str) -> Result<Bytes, ClientError> {
        let unreachable = |m: String| ClientError::Unreachable {
            url: url.to_string(),
            message: m,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| unreachable(format!("bad URL: {e}")))?;
        let mut req = http::Request::builder().method(method).uri(uri);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = tokio::time::timeout(self.timeout, self.http.request(req))
            .await
            .map_err(|_| unreachable("no answer within 5 s".into()))?
            .map_err(|e| unreachable(format!("{e}")))?;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| unreachable("body not received within 5 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if status >= 400 {
            return Err(ClientError::Status {
                url: url.to_string(),
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body)
    }

    pub async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
    ) -> Result<T, ClientError> {
        let body = self.call(http::Method::GET, url).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Unreachable {
            url: url.into(),
            message: format!("not the admin API: {e}"),
        })
    }

    /// POSTs to an admin endpoint that answers with an event.
    pub async fn post(&self, url: &str) -> Result<Event, ClientError> {
        let body = self.call(http::Method::POST, url).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Unreachable {
            url: url.into(),
            message: format!("not the admin API: {e}"),
        })
    }

    pub async fn routes(&self, admin: &str) -> Result<RoutesView, ClientError> {
        self.get_json(&format!("{}/api/routes", admin.trim_end_matches('/')))
            .await
    }
}

/// An admin address as the user wrote it (`http://host:9090`, or `host:9090`) as a base URL.
pub fn admin_url(s: &str) -> String {
    let s = s.trim().trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// Percent-encodes a query value.
pub fn q(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Routes of several proxies summed by route label: counts add up, rates and bounds are
/// recomputed, latencies take the worst proxy, the mode is the first proxy's (with
/// `mixed` when they disagree).
pub fn fleet(views: &[RoutesView]) -> (Vec<RouteView>, Thresholds) {
    let t = views
        .iter()
        .find_map(|v| v.gate_thresholds)
        .unwrap_or(Thresholds {
            min_samples: 1000,
            max_mismatch_rate: 0.001,
            confidence: 0.95,
        });
    let mut by: BTreeMap<String, RouteView> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for v in views {
        for r in &v.routes {
            match by.get_mut(&r.route) {
                None => {
                    order.push(r.route.clone());
                    by.insert(r.route.clone(), r.clone());
                }
                Some(acc) => {
                    acc.requests += r.requests;
                    acc.mirrored += r.mirrored;
                    acc.samples += r.samples;
                    acc.matches += r.matches;
                    acc.mismatches += r.mismatches;
                    acc.errors += r.errors;
                    acc.skipped += r.skipped;
                    acc.mirrorable |= r.mirrorable;
                    acc.clean_per_sec = match (acc.clean_per_sec, r.clean_per_sec) {
                        (Some(a), Some(b)) => Some(a + b),
                        (a, b) => a.or(b),
                    };
                    if r.last_error_at > acc.last_error_at {
                        acc.last_error = r.last_error.clone();
                        acc.last_error_at = r.last_error_at;
                    }
                    if acc.mode != r.mode {
                        acc.mode = "mixed".into();
                    }
                    let worst = |a: Option<f64>, b: Option<f64>| match (a, b) {
                        (Some(x), Some(y)) => Some(x.max(y)),
                        (x, y) => x.or(y),
                    };
                    acc.legacy_p50_ms = worst(acc.legacy_p50_ms, r.legacy_p50_ms);
                    acc.legacy_p99_ms = worst(acc.legacy_p99_ms, r.legacy_p99_ms);
                    acc.candidate_p50_ms = worst(acc.candidate_p50_ms, r.candidate_p50_ms);
                    acc.candidate_p99_ms = worst(acc.candidate_p99_ms, r.candidate_p99_ms);
                    for n in &r.noise {
                        if !acc.noise.iter().any(|x| x.key == n.key) {
                            acc.noise.push(n.clone());
                        }
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for name in order {
        let Some(mut r) = by.remove(&name) else {
            continue;
        };
        if views.len() > 1 {
            let v = judge(&r, &t);
            r.mismatch_rate = v.rate;
            r.mismatch_upper_bound = v.upper_bound;
            r.gate = GateView {
                eta_secs: gate::eta_secs(&v, r.clean_per_sec),
                passing: v.passing,
                reason: v.reason,
            };
        }
        out.push(r);
    }
    (out, t)
}

/// The gate's verdict for a (possibly summed) route.
pub fn judge(r: &RouteView, t: &Thresholds) -> Verdict {
    gate::verdict(
        gate::Evidence {
            samples: r.samples,
            failures: r.mismatches + r.errors,
            errors: r.errors,
        },
        t,
    )
}

/// Why a promote, rollback or reset did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActionError {
    /// The gate is closed (the proxy's, or the fleet's): its reason.
    #[error("refused: {0}")]
    Refused(String),
    #[error("no route {route} on {admins}")]
    NoRoute { route: String, admins: String },
    #[error("{0}")]
    Client(#[from] ClientError),
}

/// What to promote.
#[derive(Debug, Clone)]
pub struct PromoteRequest {
    pub route: String,
    pub percent: Option<u8>,
    pub force: bool,
    pub reason: Option<String>,
}

/// Promotes a route on a proxy, or on a fleet judged as one: with several admin URLs every
/// proxy's counts are summed and judged; when the fleet passes, the first proxy is asked to
/// promote (the others follow through the state store). A proxy judges a promotion on its own
/// counts, so when its own gate is closed but the fleet's passes, the promotion is sent forced,
/// with the fleet's verdict as its recorded reason.
pub async fn promote(
    client: &AdminClient,
    admins: &[String],
    req: &PromoteRequest,
) -> Result<Event, ActionError> {
    let first = admins.first().map(String::as_str).unwrap_or("");
    let url = |force: bool, reason: Option<&str>| {
        let mut url = format!(
            "{}/api/routes/promote?route={}",
            first.trim_end_matches('/'),
            q(&req.route)
        );
        if let Some(p) = req.percent {
            url.push_str(&format!("&percent={p}"));
        }
        if force {
            url.push_str(&format!("&force=true&reason={}", q(reason.unwrap_or(""))));
        } else if let Some(r) = reason.filter(|r| !r.is_empty()) {
            url.push_str(&format!("&reason={}", q(r)));
        }
        url
    };
    if req.force || admins.len() < 2 {
        return match client.post(&url(req.force, req.reason.as_deref())).await {
            Ok(ev) => Ok(ev),
            Err(e) if e.status() == Some(409) => Err(ActionError::Refused(e.reason())),
            Err(e) => Err(e.into()),
        };
    }
    let mut views = Vec::new();
    for a in admins {
        views.push(client.routes(a).await?);
    }
    let (all, t) = fleet(&views);
    let Some(r) = all.iter().find(|r| r.route == req.route) else {
        return Err(ActionError::NoRoute {
            route: req.route.clone(),
            admins: admins.join(", "),
        });
    };
    let verdict = judge(r, &t);
    if !verdict.passing {
        return Err(ActionError::Refused(format!(
            "the fleet's gate for {} is closed: {}",
            req.route, verdict.reason
        )));
    }
    let fleet_reason = format!(
        "fleet of {} proxies passes: {}",
        admins.len(),
        verdict.reason
    );
    match client.post(&url(false, Some(&fleet_reason))).await {
        Ok(ev) => Ok(ev),
        Err(e) if e.status() == Some(409) => {
            Ok(client.post(&url(true, Some(&fleet_reason))).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// What to do to a route on every proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAction {
    Rollback,
    Reset,
}

/// Rolls a route back (or resets its window) on every proxy; one result per admin URL.
pub async fn on_every_proxy(
    client: &AdminClient,
    admins: &[String],
    route: &str,
    action: RouteAction,
    reason: Option<&str>,
) -> Vec<(String, Result<Event, ClientError>)> {
    let path = match action {
        RouteAction::Rollback => "rollback",
        RouteAction::Reset => "reset",
    };
    let mut out = Vec::new();
    for a in admins {
        let mut url = format!(
            "{}/api/routes/{path}?route={}",
            a.trim_end_matches('/'),
            q(route)
        );
        if let Some(r) = reason {
            url.push_str(&format!("&reason={}", q(r)));
        }
        out.push((a.clone(), client.post(&url).await));
    }
    out
}
