//! `cutover replay`: a recording's requests sent to a candidate build, each with a freshly signed
//! `x-cutover-session` (bound to that request) and `x-cutover-shadow: 1`, at most `concurrency`
//! at once; each answer compared with PHP's recorded one by the same engine and rules as the
//! proxy (the session PHP left against the candidate's declaration, noise learned by the proxy
//! left out), and one gate verdict per route. It needs no PHP, no proxy and no session store.

use crate::config::Config;
use crate::diff::{Captured, Comparator, Difference};
use crate::gate::{Evidence, Thresholds, Verdict};
use crate::normalize::{RuleSet, Rules};
use crate::record::Exchange;
use crate::upstream::headers::{strip_hop_by_hop, Direction};
use crate::upstream::{Pool, UpstreamUrl};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use cutover_session::header::{sign_decoded, Keyring, Snapshot};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The environment variable holding the secret replayed session headers are signed with.
pub const SECRET_ENV: &str = "CUTOVER_SESSION_SECRET";

/// Differences kept per failing route, to show what went wrong.
const EXAMPLES_PER_ROUTE: usize = 3;

/// What to replay, and against what.
pub struct ReplayArgs {
    pub candidate: String,
    pub config: Option<PathBuf>,
    pub rules: Vec<PathBuf>,
    pub min_samples: Option<u64>,
    pub concurrency: usize,
    pub recordings: Vec<PathBuf>,
}

/// Why a replay could not judge (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Read(#[from] crate::record::ReadError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("--candidate {url}: {why}")]
    Candidate { url: String, why: String },
    #[error("no recorded exchanges in {0}")]
    Empty(String),
    #[error("the recording holds sessions: set {SECRET_ENV} to the secret the candidate verifies x-cutover-session with")]
    NoSecret,
    #[error("the candidate answered none of {0} requests; first error: {1}")]
    Unreachable(usize, String),
    #[error("upstream setup: {0}")]
    Tls(#[from] crate::upstream::TlsError),
}

/// One route's replay.
#[derive(Debug, Clone, Serialize)]
pub struct RouteReplay {
    pub route: String,
    pub samples: u64,
    pub mismatches: u64,
    pub errors: u64,
    pub verdict: Verdict,
    /// A few failing requests and what differed.
    pub examples: Vec<Example>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// `METHOD /path?query` as replayed.
    pub request: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<Difference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole replay.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub passing: bool,
    pub exchanges: usize,
    pub elapsed_secs: f64,
    pub comparisons_per_sec: f64,
    pub routes: Vec<RouteReplay>,
}

/// How one route's exchanges are judged.
struct RouteRules {
    rules: Arc<Rules>,
    max_body_bytes: usize,
    timeout: Duration,
    /// Difference keys learned as noise when recording.
    noise: HashSet<String>,
}

/// What one replayed exchange gave.
enum Outcome {
    Match,
    Mismatch(Vec<Difference>),
    Error(String),
}

#[derive(Default)]
struct Tally {
    samples: u64,
    mismatches: u64,
    errors: u64,
    examples: Vec<Example>,
}

/// The rules of every recorded route: from the config's route of that label (or its defaults)
/// when one is given, else the built-in rules; `--rules` files after them.
fn route_rules(
    args: &ReplayArgs,
    config: Option<&Config>,
    exchanges: &[Exchange],
) -> Result<BTreeMap<String, RouteRules>, ReplayError> {
    let mut extra = Vec::new();
    for path in &args.rules {
        extra.push(Arc::new(RuleSet::load(path)?));
    }
    let mut out: BTreeMap<String, RouteRules> = BTreeMap::new();
    for x in exchanges {
        if let Some(r) = out.get_mut(&x.route) {
            r.noise.extend(x.noise.iter().cloned());
            continue;
        }
        let (mut sets, max_body_bytes, timeout) = match config {
            Some(c) => {
                let route = c.routes.iter().find(|r| r.label() == x.route);
                let own = route.map(|r| r.rules.as_slice()).unwrap_or(&[]);
                let d = &c.defaults;
                (
                    c.rule_sets_for(own)?,
                    route
                        .and_then(|r| r.max_body_bytes)
                        .unwrap_or(d.max_body_bytes),
                    route
                        .and_then(|r| r.candidate_timeout_ms)
                        .unwrap_or(d.candidate_timeout_ms),
                )
            }
            None => (
                vec![Arc::new(RuleSet::builtin()?)],
                crate::config::Defaults::default().max_body_bytes,
                crate::config::Defaults::default().candidate_timeout_ms,
            ),
        };
        sets.extend(extra.iter().cloned());
        out.insert(
            x.route.clone(),
            RouteRules {
                rules: Arc::new(Rules::compile(&sets)),
                max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
                timeout: Duration::from_millis(timeout.max(1)),
                noise: x.noise.iter().cloned().collect(),
            },
        );
    }
    Ok(out)
}

fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    h
}

fn b64(s: &str) -> Result<Bytes, String> {
    STANDARD
        .decode(s)
        .map(Bytes::from)
        .map_err(|e| format!("base64: {e}"))
}

/// The request to send for a recorded one.
fn request_of(
    x: &Exchange,
    url: &UpstreamUrl,
    keys: Option<&Keyring>,
) -> Result<http::Request<crate::upstream::body::ProxyBody>, String> {
    let body = match &x.request.body {
        Some(b) => b64(b)?,
        None => Bytes::new(),
    };
    let method =
        http::Method::from_bytes(x.request.method.as_bytes()).map_err(|e| e.to_string())?;
    let pq: http::uri::PathAndQuery = x.request.uri.parse().map_err(|e| format!("uri: {e}"))?;
    let mut headers = header_map(&x.request.headers);
    strip_hop_by_hop(&mut headers, Direction::Request);
    // The recorded body may have lost bytes to redaction: its length is the one sent.
    headers.remove(http::header::CONTENT_LENGTH);
    if !body.is_empty() {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    headers.insert("x-cutover-shadow", HeaderValue::from_static("1"));
    if let (Some(s), Some(keys)) = (&x.session, keys) {
        let serializer = cutover_session::php::Serializer::parse(&s.serializer)
            .ok_or_else(|| format!("session serializer `{}`", s.serializer))?;
        let snapshot = Snapshot {
            name: s.name.clone(),
            id: s.id.clone(),
            store: s.store.clone(),
            serializer,
            raw: b64(&s.raw)?.to_vec(),
            resolved_at: crate::stats::now_secs(),
            req: format!("{} {}", x.request.method, x.request.uri),
        };
        let signed = sign_decoded(&snapshot, s.data.clone(), keys).map_err(|e| e.to_string())?;
        headers.insert(
            cutover_session::HEADER,
            HeaderValue::from_str(&signed).map_err(|e| e.to_string())?,
        );
    }
    let mut req = http::Request::new(crate::upstream::body::full(body));
    *req.method_mut() = method;
    *req.uri_mut() = url
        .origin_form(Some(&pq))
        .map_err(|e| format!("uri: {e}"))?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Sends one exchange and compares the answer.
async fn replay_one(
    x: &Exchange,
    url: &UpstreamUrl,
    pool: &Pool,
    keys: Option<&Keyring>,
    r: &RouteRules,
) -> Outcome {
    let req = match request_of(x, url, keys) {
        Ok(r) => r,
        Err(e) => return Outcome::Error(format!("recorded request: {e}")),
    };
    let call = async {
        let resp = pool.send(url, req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, r.max_body_bytes)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok::<_, String>(Captured {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    let candidate = match tokio::time::timeout(r.timeout, call).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Outcome::Error(e),
        Err(_) => return Outcome::Error(format!("timeout after {:?}", r.timeout)),
    };
    judge(x, candidate, r)
}

/// Compares the candidate's answer with the recorded one: the bodies and headers under the
/// route's rules, the session PHP left against the candidate's declaration, and what the proxy
/// had learned as noise left out.
fn judge(x: &Exchange, mut candidate: Captured, r: &RouteRules) -> Outcome {
    let legacy = match b64(&x.response.body) {
        Ok(body) => Captured {
            status: x.response.status,
            headers: header_map(&x.response.headers),
            body,
        },
        Err(e) => return Outcome::Error(format!("recorded response: {e}")),
    };
    let declared = candidate.headers.remove(cutover_session::WRITE_HEADER);
    let decode = |c| crate::normalize::decode::decoded(c, r.max_body_bytes);
    let mut differences = match (decode(legacy), decode(candidate)) {
        (Ok(l), Ok(c)) => r.rules.compare(&l, &c).differences,
        (Err(e), _) => return Outcome::Error(format!("recorded response: {e}")),
        (_, Err(e)) => vec![Difference {
            path: "body".into(),
            kind: crate::diff::DiffKind::Changed,
            legacy: None,
            candidate: Some(e.to_string()),
        }],
    };
    if let Some(after) = &x.session_after {
        let before = x.session.as_ref().map(|s| &s.data);
        let id = x.session.as_ref().map(|s| s.id.as_str());
        match crate::mirror::effects::declared_after(before, id, declared.as_ref()) {
            Ok(candidate_after) => {
                differences.extend(r.rules.compare_sessions(after, &candidate_after))
            }
            Err(e) => differences.push(Difference {
                path: "session".into(),
                kind: crate::diff::DiffKind::Changed,
                legacy: None,
                candidate: Some(e.to_string()),
            }),
        }
    }
    differences.retain(|d| !r.noise.contains(&crate::noise::key_of(d)));
    if differences.is_empty() {
        Outcome::Match
    } else {
        Outcome::Mismatch(differences)
    }
}

/// Replays the recordings and judges every route.
pub async fn run(args: &ReplayArgs) -> Result<ReplayReport, ReplayError> {
    let url = UpstreamUrl::parse(&args.candidate).map_err(|e| ReplayError::Candidate {
        url: args.candidate.clone(),
        why: e.to_string(),
    })?;
    if url.protocol == crate::upstream::Protocol::FastCgi {
        return Err(ReplayError::Candidate {
            url: args.candidate.clone(),
            why: "a candidate speaks HTTP, not FastCGI".into(),
        });
    }
    let config = match &args.config {
        Some(p) => Some(Config::load(p)?),
        None => None,
    };
    let mut exchanges = Vec::new();
    for path in &args.recordings {
        exchanges.extend(crate::record::read(path)?);
    }
    if exchanges.is_empty() {
        let names: Vec<String> = args
            .recordings
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(ReplayError::Empty(names.join(", ")));
    }
    let keys = if exchanges.iter().any(|x| x.session.is_some()) {
        let secret = std::env::var(SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(ReplayError::NoSecret)?;
        Some(Keyring::single(secret.into_bytes()))
    } else {
        None
    };
    let rules = route_rules(args, config.as_ref(), &exchanges)?;
    let thresholds = config
        .as_ref()
        .map(|c| c.gate.thresholds())
        .unwrap_or_else(|| crate::config::Gate::default().thresholds());
    let concurrency = args.concurrency.max(1);
    let pool = crate::upstream::pool(
        None,
        crate::upstream::Limits {
            max_open: concurrency,
            idle_timeout: Duration::from_secs(60),
        },
    )?;
    let shared = Arc::new(Shared {
        exchanges,
        next: AtomicUsize::new(0),
        tallies: Mutex::new(BTreeMap::new()),
        first_error: Mutex::new(None),
        answered: AtomicUsize::new(0),
    });
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    let rules = Arc::new(rules);
    let url = Arc::new(url);
    let keys = Arc::new(keys);
    for _ in 0..concurrency {
        let (shared, rules, url, keys, pool) = (
            shared.clone(),
            rules.clone(),
            url.clone(),
            keys.clone(),
            pool.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = shared.next.fetch_add(1, Ordering::Relaxed);
                let Some(x) = shared.exchanges.get(i) else {
                    break;
                };
                let Some(r) = rules.get(&x.route) else {
                    continue;
                };
                let outcome = replay_one(x, &url, &pool, keys.as_ref().as_ref(), r).await;
                shared.count(x, outcome);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = shared.exchanges.len();
    if shared.answered.load(Ordering::Relaxed) == 0 {
        let first = lock(&shared.first_error).clone().unwrap_or_default();
        return Err(ReplayError::Unreachable(total, first));
    }
    let tallies = std::mem::take(&mut *lock(&shared.tallies));
    let routes: Vec<RouteReplay> = tallies
        .into_iter()
        .map(|(route, t)| {
            let th = Thresholds {
                min_samples: args.min_samples.unwrap_or(t.samples),
                ..thresholds
            };
            let verdict = crate::gate::replay_verdict(
                Evidence {
                    samples: t.samples,
                    failures: t.mismatches + t.errors,
                    errors: t.errors,
                },
                &th,
            );
            RouteReplay {
                route,
                samples: t.samples,
                mismatches: t.mismatches,
                errors: t.errors,
                verdict,
                examples: t.examples,
            }
        })
        .collect();
    Ok(ReplayReport {
        passing: routes.iter().all(|r| r.verdict.passing),
        exchanges: total,
        elapsed_secs: elapsed,
        comparisons_per_sec: if elapsed > 0.0 {
            total as f64 / elapsed
        } else {
            0.0
        },
        routes,
    })
}

/// What the replay's workers share.
struct Shared {
    exchanges: Vec<Exchange>,
    next: AtomicUsize,
    tallies: Mutex<BTreeMap<String, Tally>>,
    first_error: Mutex<Option<String>>,
    /// Exchanges the candidate answered (matching or not).
    answered: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Shared {
    fn count(&self, x: &Exchange, outcome: Outcome) {
        let request = format!("{} {}", x.request.method, x.request.uri);
        if !matches!(outcome, Outcome::Error(_)) {
            self.answered.fetch_add(1, Ordering::Relaxed);
        }
        let mut tallies = lock(&self.tallies);
        let t = tallies.entry(x.route.clone()).or_default();
        t.samples += 1;
        match outcome {
            Outcome::Match => {}
            Outcome::Mismatch(differences) => {
                t.mismatches += 1;
                if t.examples.len() < EXAMPLES_PER_ROUTE {
                    t.examples.push(Example {
                        request,
                        differences,
                        error: None,
                    });
                }
            }
            Outcome::Error(e) => {
                t.errors += 1;
                lock(&self.first_error).get_or_insert_with(|| e.clone());
                if t.examples.len() < EXAMPLES_PER_ROUTE {
                    t.examples.push(Example {
                        request,
                        differences: Vec::new(),
                        error: Some(e),
                    });
                }
            }
        }
    }
}

/// The report as `cutover gate` prints verdicts, with what failed under each failing route.
pub fn render_text(report: &ReplayReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for r in &report.routes {
        let _ = writeln!(
            out,
            "{:<40} {:<8} {}",
            r.route,
            if r.verdict.passing { "PASS" } else { "FAIL" },
            if r.verdict.passing {
                format!(
                    "{} of {} matched",
                    r.samples - r.mismatches - r.errors,
                    r.samples
                )
            } else {
                r.verdict.reason.clone()
            }
        );
        if !r.verdict.passing {
            for e in &r.examples {
                match &e.error {
                    Some(err) => {
                        let _ = writeln!(out, "    {}: candidate error: {err}", e.request);
                    }
                    None => {
                        let _ = writeln!(out, "    {}:", e.request);
                        for d in e.differences.iter().take(5) {
                            let _ = writeln!(
                                out,
                                "      {} {}: {} -> {}",
                                d.path,
                                d.kind.as_str(),
                                d.legacy.as_deref().unwrap_or("(none)"),
                                d.candidate.as_deref().unwrap_or("(none)")
                            );
                        }
                    }
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "{} exchanges replayed in {:.2} s ({:.0} comparisons/s)",
        report.exchanges, report.elapsed_secs, report.comparisons_per_sec
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordedRequest, RecordedResponse};

    fn exchange(body: &str, noise: &[&str]) -> Exchange {
        Exchange {
            v: crate::record::FORMAT_VERSION,
            at: 1,
            route: "/p".into(),
            request: RecordedRequest {
                method: "GET".into(),
                uri: "/p".into(),
                headers: vec![],
                body: None,
            },
            session: None,
            session_after: None,
            response: RecordedResponse {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: STANDARD.encode(body),
            },
            noise: noise.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn answer(body: &'static str) -> Captured {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        Captured {
            status: 200,
            headers,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    fn rules(noise: &[&str]) -> RouteRules {
        RouteRules {
            rules: Arc::new(Rules::compile(&[])),
            max_body_bytes: 1 << 20,
            timeout: Duration::from_secs(1),
            noise: noise.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn noise_learned_when_recording_is_left_out() {
        let x = exchange(r#"{"id":1,"build":"a1"}"#, &["body/build changed"]);
        let got = judge(
            &x,
            answer(r#"{"id":1,"build":"b2"}"#),
            &rules(&["body/build changed"]),
        );
        assert!(matches!(got, Outcome::Match));
        // Without the learned key the same answer is a mismatch.
        let got = judge(&x, answer(r#"{"id":1,"build":"b2"}"#), &rules(&[]));
        match got {
            Outcome::Mismatch(d) => assert_eq!(d[0].path, "body/build"),
            _ => panic!("a mismatch expected"),
        }
        // A real difference stays one.
        let got = judge(
            &x,
            answer(r#"{"id":2,"build":"b2"}"#),
            &rules(&["body/build changed"]),
        );
        assert!(matches!(got, Outcome::Mismatch(d) if d.len() == 1 && d[0].path == "body/id"));
    }

    #[test]
    fn a_route_gathers_the_noise_of_its_lines() {
        let args = ReplayArgs {
            candidate: String::new(),
            config: None,
            rules: vec![],
            min_samples: None,
            concurrency: 1,
            recordings: vec![],
        };
        let xs = [
            exchange("{}", &["body/a changed"]),
            exchange("{}", &["body/b changed"]),
        ];
        let r = route_rules(&args, None, &xs).expect("rules");
        let noise = &r["/p"].noise;
        assert!(noise.contains("body/a changed") && noise.contains("body/b changed"));
    }
}
