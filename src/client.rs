//! A client of the admin API, for the CLI and the TUI: they see proxies only through it. Several
//! proxies' routes are summed into one fleet view, and the fleet is judged with the same pure
//! gate function the proxies use.

use crate::gate::{self, Evidence, Thresholds, Verdict};
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

/// A route as `/api/routes` describes it (fields the client needs).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RouteInfo {
    pub route: String,
    pub mode: String,
    #[serde(default)]
    pub percent: u8,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub mirrored: u64,
    pub samples: u64,
    pub matches: u64,
    pub mismatches: u64,
    pub errors: u64,
    pub skipped: u64,
    pub mismatch_rate: f64,
    pub mismatch_upper_bound: f64,
    pub gate: GateInfo,
    pub legacy_p50_ms: Option<f64>,
    #[serde(default)]
    pub legacy_p99_ms: Option<f64>,
    pub candidate_p50_ms: Option<f64>,
    #[serde(default)]
    pub candidate_p99_ms: Option<f64>,
    #[serde(default)]
    pub noise: Vec<NoiseInfo>,
    #[serde(default)]
    pub sparkline: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct GateInfo {
    pub passing: bool,
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct NoiseInfo {
    pub key: String,
    pub raw: u64,
    pub noise: u64,
    pub suggested_rule: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ThresholdsInfo {
    pub min_samples: u64,
    pub max_mismatch_rate: f64,
    pub confidence: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RoutesInfo {
    pub state_version: u64,
    pub routes: Vec<RouteInfo>,
    pub gate_thresholds: Option<ThresholdsInfo>,
    #[serde(default)]
    pub totals: Option<TotalsInfo>,
}

/// Proxy-wide counters for the TUI header.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct TotalsInfo {
    pub requests: u64,
    pub mirrored: u64,
    pub shadow_dropped: u64,
    pub session_errors: u64,
    pub uptime_secs: u64,
}

/// What went wrong talking to a proxy.
#[derive(Debug, thiserror::Error)]
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

    pub async fn post(&self, url: &str) -> Result<serde_json::Value, ClientError> {
        let body = self.call(http::Method::POST, url).await?;
        Ok(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    pub async fn routes(&self, admin: &str) -> Result<RoutesInfo, ClientError> {
        self.get_json(&format!("{}/api/routes", admin.trim_end_matches('/')))
            .await
    }
}

/// Percent-encodes a query value.
pub fn q(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Routes of several proxies summed by route label: counts add up, rates and bounds are
/// recomputed, latencies take the worst proxy, the mode is the first proxy's (with
/// `mixed` when they disagree).
pub fn fleet(views: &[RoutesInfo]) -> (Vec<RouteInfo>, Thresholds) {
    let t = views
        .iter()
        .find_map(|v| v.gate_thresholds.clone())
        .map(|t| Thresholds {
            min_samples: t.min_samples,
            max_mismatch_rate: t.max_mismatch_rate,
            confidence: t.confidence,
        })
        .unwrap_or(Thresholds {
            min_samples: 1000,
            max_mismatch_rate: 0.001,
            confidence: 0.95,
        });
    let mut by: BTreeMap<String, RouteInfo> = BTreeMap::new();
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
            r.gate = GateInfo {
                passing: v.passing,
                reason: v.reason,
            };
        }
        out.push(r);
    }
    (out, t)
}

/// The gate's verdict for a (possibly summed) route.
pub fn judge(r: &RouteInfo, t: &Thresholds) -> Verdict {
    gate::verdict(
        Evidence {
            samples: r.samples,
            failures: r.mismatches + r.errors,
        },
        t,
    )
}
