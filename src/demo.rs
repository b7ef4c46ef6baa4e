//! `cutover demo`: the whole idea in one command, with nothing to set up. In this process it
//! starts a PHP-like legacy app (HTML pages with a CSRF token and a timestamp, JSON APIs, a login
//! that writes a PHP-format session into a temporary `files` store), a twin of it (for noise,
//! on its own copy of the sessions), a Rust candidate that reads the session through the signed
//! header and matches on most routes but has three realistic bugs (a wrong JSON field on
//! `/api/products/{id}`, a missing element on `/products/{id}`, a login that forgets to put the
//! cart in the session), a traffic generator with a few logged-in users, the proxy, and the TUI.

use bytes::Bytes;
use cutover_session::header::{verify, Keyring};
use cutover_session::php::{self, Serializer, Value};
use cutover_session::SessionWrite;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The demo's session secret (the demo's own processes only).
const SECRET_ENV: &str = "CUTOVER_DEMO_SESSION_SECRET";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Legacy,
    Candidate,
}

struct AppCtx {
    kind: Kind,
    sessions: PathBuf,
    keys: Keyring,
}

const PRODUCTS: &[(&str, f64)] = &[
    ("Teapot", 19.99),
    ("Kettle", 34.5),
    ("Mug", 7.25),
    ("Tray", 12.0),
    ("Spoon", 2.99),
];
const USERS: &[&str] = &["ada", "grace", "linus", "barbara"];

fn token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn epoch() -> u64 {
    crate::stats::now_secs()
}

fn micro_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn html(title: &str, body: &str) -> Response<Full<Bytes>> {
    let page = format!(
        "<!DOCTYPE html>\n<html><head><title>{title}</title></head>\n<body>\n<nav><a href=\"/\">Home</a> <a href=\"/account\">Account</a></nav>\n<form method=\"post\" action=\"/search\"><input type=\"hidden\" name=\"_token\" value=\"{}\"></form>\n{body}\n<footer>generated at {}</footer>\n</body></html>\n",
        token(),
        epoch()
    );
    let mut r = Response::new(Full::new(Bytes::from(page)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    r
}

fn json(v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The session as each side sees it: PHP reads its files store; the candidate reads the header.
fn session_of(ctx: &AppCtx, req: &Request<Incoming>) -> Option<php::Session> {
    match ctx.kind {
        Kind::Legacy => {
            let cookie = req.headers().get(http::header::COOKIE)?.to_str().ok()?;
            let id = cutover_session::valid_session_id(cutover_session::cookie_value(
                cookie,
                "PHPSESSID",
            )?)?;
            let raw = std::fs::read(ctx.sessions.join(format!("sess_{id}"))).ok()?;
            php::decode_session(&raw, Serializer::Php, php::DEFAULT_MAX_BYTES).ok()
        }
        Kind::Candidate => {
            let h = req
                .headers()
                .get(cutover_session::HEADER)
                .and_then(|v| v.to_str().ok());
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            verify(h, &ctx.keys, 60, epoch(), req.method().as_str(), pq)
                .ok()
                .map(|s| s.session)
        }
    }
}

fn handle(ctx: &AppCtx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let session = session_of(ctx, &req);
    let user = session
        .as_ref()
        .and_then(|s| s.get("name").and_then(Value::as_str).map(str::to_string));
    let user_id = session
        .as_ref()
        .and_then(|s| s.get("user_id").and_then(Value::as_i64));
    let segments: Vec<&str> = path.split('/').collect();
    match (req.method().as_str(), segments.as_slice()) {
        ("GET", ["", ""]) => html("Home", "<h1>Tea shop</h1><ul><li><a href=\"/products/1\">Teapot</a></li></ul>"),
        ("GET", ["", "about"]) => html("About", "<h1>About us</h1><p>Since 1999.</p>"),
        ("GET", ["", "login"]) => html("Log in", "<form method=\"post\" action=\"/login\"><input name=\"user\"><button>Log in</button></form>"),
        ("POST", ["", "login"]) => {
            // PHP's session_start() + $_SESSION writes, as the files handler stores them; the
            // candidate declares the session it would leave instead (shadow mode).
            let name = req.uri().query().and_then(|q| q.strip_prefix("user=")).unwrap_or("guest").to_string();
            let id = token();
            let mut s = php::Session::new(Serializer::Php);
            s.set("user_id", Value::Int(100 + USERS.iter().position(|u| *u == name).unwrap_or(9) as i64));
            s.set("name", Value::Str(name.into_bytes()));
            let mut r = Response::new(Full::new(Bytes::new()));
            match ctx.kind {
                Kind::Legacy => {
                    s.set("cart", Value::Array(vec![(php::Key::Int(0), Value::Int(1)), (php::Key::Int(1), Value::Int(3))]));
                    if let Ok(bytes) = s.encode() {
                        let _ = std::fs::write(ctx.sessions.join(format!("sess_{id}")), bytes);
                    }
                }
                // The candidate's session bug: the login forgets the cart.
                Kind::Candidate => {
                    if let Ok(data) = s.to_json() {
                        let write = SessionWrite::Set { id: Some(id.clone()), data };
                        if let Ok(v) = http::HeaderValue::from_str(&write.to_header()) {
                            r.headers_mut().insert(cutover_session::WRITE_HEADER, v);
                        }
                    }
                }
            }
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut().insert(http::header::LOCATION, http::HeaderValue::from_static("/account"));
            if let Ok(v) = http::HeaderValue::from_str(&format!("PHPSESSID={id}; path=/; HttpOnly")) {
                r.headers_mut().insert(http::header::SET_COOKIE, v);
            }
            r
        }
        ("GET", ["", "account"]) => match &user {
            Some(u) => html("Account", &format!("<h1>Hello {u}</h1><p id=\"user\">#{}</p><p>Request {}</p>", user_id.unwrap_or(0), token())),
            None => html("Account", "<p>Please log in.</p>"),
        },
        ("GET", ["", "api", "cart"]) => {
            let items: Vec<serde_json::Value> = session
                .as_ref()
                .and_then(|s| s.to_json().ok())
                .and_then(|j| j["cart"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|i| i.as_u64())
                .filter_map(|i| PRODUCTS.get(i as usize).map(|(n, p)| serde_json::json!({"sku": i, "name": n, "price": p})))
                .collect();
            json(serde_json::json!({"user_id": user_id, "items": items, "meta": {"request_id": token(), "generated_at": micro_epoch()}}))
        }
        ("GET", ["", "api", "products", id]) => match id.parse::<usize>().ok().and_then(|i| PRODUCTS.get(i % PRODUCTS.len()).map(|p| (i, p))) {
            Some((i, (name, price))) => {
                // The candidate's bug: the currency code in lower case.
                let currency = if ctx.kind == Kind::Candidate { "eur" } else { "EUR" };
                json(serde_json::json!({"id": i, "name": name, "price": price, "currency": currency, "in_stock": i % 3 != 0,
                    "meta": {"request_id": token(), "generated_at": micro_epoch()}}))
            }
            None => {
                let mut r = json(serde_json::json!({"error": "not found"}));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        },
        ("GET", ["", "products", id]) => {
            let i = id.parse::<usize>().unwrap_or(0);
            let (name, price) = PRODUCTS[i % PRODUCTS.len()];
            // The candidate's bug: the stock line is missing.
            let stock = if ctx.kind == Kind::Candidate { String::new() } else { "<span class=\"stock\">In stock</span>".to_string() };
            html(name, &format!("<h1>{name}</h1><p class=\"price\">{price:.2} EUR</p>{stock}<p>Request {}</p>", token()))
        }
        ("GET", ["", "search"]) => {
            let q = req.uri().query().and_then(|q| q.strip_prefix("q=")).unwrap_or("").to_ascii_lowercase();
            let hits: Vec<&str> = PRODUCTS.iter().map(|(n, _)| *n).filter(|n| n.to_ascii_lowercase().contains(&q)).collect();
            json(serde_json::json!({"query": q, "results": hits, "meta": {"request_id": token()}}))
        }
        _ => {
            let mut r = html("Not found", "<p>No such page.</p>");
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

async fn serve(ctx: Arc<AppCtx>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move {
                        // A little work, as PHP would do (the candidate is faster).
                        let delay = if ctx.kind == Kind::Legacy { 2 } else { 1 };
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        Ok::<_, Infallible>(handle(&ctx, req))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

type DemoClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Logs `user` in through the proxy; the session cookie it got.
async fn login(client: &DemoClient, base: &str, user: &str) -> Option<String> {
    let req = Request::post(format!("{base}/login?user={user}"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = client.request(req).await.ok()?;
    let c = resp
        .headers()
        .get(http::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())?;
    Some(c.split(';').next().unwrap_or("").to_string())
}

/// Logged-in users browsing the shop until `stop` turns true.
async fn traffic(proxy: SocketAddr, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    let client: DemoClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(http);
    let base = format!("http://{proxy}");
    let mut cookies: Vec<String> = Vec::new();
    for u in USERS {
        if let Some(c) = login(&client, &base, u).await {
            cookies.push(c);
        }
    }
    let paths = [
        "/",
        "/about",
        "/account",
        "/api/cart",
        "/api/products/",
        "/products/",
        "/search?q=t",
        "/login",
    ];
    let mut tick = tokio::time::interval(Duration::from_millis(8));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        // Now and then a user logs in again (a new session, as after a logout).
        if n.is_multiple_of(25) && !cookies.is_empty() {
            let i = fastrand::usize(..cookies.len());
            if let Some(c) = login(&client, &base, USERS[i % USERS.len()]).await {
                cookies[i] = c;
            }
            continue;
        }
        let path = paths[fastrand::usize(..paths.len())];
        let path = if path.ends_with('/') && path.len() > 1 {
            format!("{path}{}", fastrand::usize(1..40))
        } else {
            path.to_string()
        };
        let mut req = Request::get(format!("{base}{path}"));
        if let Some(c) = cookies.get(fastrand::usize(..cookies.len().max(1))) {
            req = req.header(http::header::COOKIE, c.as_str());
        }
        let Ok(req) = req.body(Full::new(Bytes::new())) else {
            continue;
        };
        let client = client.clone();
        tokio::spawn(async move {
            if let Ok(resp) = client.request(req).await {
                let _ = resp.into_body().collect().await;
            }
        });
    }
}

fn config(
    dir: &Path,
    twin_dir: &Path,
    legacy: SocketAddr,
    twin: SocketAddr,
    candidate: SocketAddr,
) -> String {
    format!(
        r#"[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"

[upstreams]
legacy = "http://{legacy}"
candidate = "http://{candidate}"
legacy_twin = "http://{twin}"

[session]
store = "files"
secret_env = "{SECRET_ENV}"
timeout_ms = 100
[session.files]
path = "{}"
[session.twin]
path = "{}"

[defaults]
candidate_timeout_ms = 2000

# The demo's own thresholds, so that gates can open within a minute.
[gate]
min_samples = 100
max_mismatch_rate = 0.05
window_secs = 600

[admin]
token_env = "CUTOVER_DEMO_ADMIN_TOKEN"

[[route]]
pattern = "/"
[[route]]
pattern = "/about"
[[route]]
pattern = "/login"
mirror_methods = ["GET", "POST"]
[[route]]
pattern = "/account"
[[route]]
pattern = "/api/cart"
[[route]]
pattern = "/api/products/{{id}}"
[[route]]
pattern = "/products/{{id}}"
[[route]]
pattern = "/search"
"#,
        dir.display(),
        twin_dir.display()
    )
}

/// A `--duration` that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration like 20s")]
    NotANumber(String),
    #[error("`{text}`: unknown unit `{unit}` (ms, s, m, h)")]
    Unit { text: String, unit: String },
}

/// `30s`, `2m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_string()))?;
    if !n.is_finite() || n < 0.0 {
        return Err(DurationError::NotANumber(s.to_string()));
    }
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(DurationError::Unit {
                text: s.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0} is not set")]
    NoSecret(&'static str),
    #[error("the demo's config: {0}")]
    Config(#[from] crate::located::ConfigError),
    #[error("{0}")]
    Start(#[from] crate::runtime::StartError),
    #[error("terminal: {0}")]
    Terminal(std::io::Error),
}

/// The summary table `--headless` prints: one row per route with its mismatch %.
pub fn summary(routes: &[crate::api::RouteView]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:>8} {:>10}  {}\n",
        "route", "mode", "samples", "mismatch", "gate"
    );
    for r in routes {
        out.push_str(&format!(
            "{:<24} {:<10} {:>8} {:>9.2}%  {}\n",
            r.route,
            r.mode,
            r.samples,
            r.mismatch_rate * 100.0,
            if r.gate.passing {
                "PASS".to_string()
            } else {
                format!("CLOSED ({})", r.gate.reason)
            }
        ));
    }
    out
}

/// Runs the demo; the CLI has set the session secret in the environment.
pub async fn run(headless: bool, duration: Option<Duration>) -> Result<(), DemoError> {
    let dir = std::env::temp_dir().join(format!("cutover-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let secret = std::env::var(SECRET_ENV).map_err(|_| DemoError::NoSecret(SECRET_ENV))?;
    let keys = Keyring::single(secret.into_bytes());
    // The twin PHP keeps its sessions in a folder of its own, which cutover fills with a copy
    // of each request's session before the twin sees it.
    let twin_dir = dir.join("twin");
    std::fs::create_dir_all(&twin_dir)?;
    let app = |kind, sessions: &Path| {
        Arc::new(AppCtx {
            kind,
            sessions: sessions.to_path_buf(),
            keys: keys.clone(),
        })
    };
    let legacy = serve(app(Kind::Legacy, &dir)).await?;
    let twin = serve(app(Kind::Legacy, &twin_dir)).await?;
    let candidate = serve(app(Kind::Candidate, &dir)).await?;
    let cfg = crate::config::Config::from_str_at(
        &config(&dir, &twin_dir, legacy, twin, candidate),
        "demo.toml",
        &dir,
    )?;
    let running = crate::runtime::start(cfg).await?;
    let admin_token = token();
    running.app.set_admin_token(Some(admin_token.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic_task = tokio::spawn(traffic(running.proxy_addr, stop_rx.clone()));
    let started = Instant::now();
    if let Some(d) = duration {
        let tx = stop_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = tx.send(true);
        });
    }
    if headless {
        eprintln!(
            "cutover demo: proxy http://{}  admin http://{}  (legacy {legacy}, twin {twin}, candidate {candidate})",
            running.proxy_addr, running.admin_addr
        );
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        let admin = format!("http://{}", running.admin_addr);
        crate::tui::run(vec![admin], Some(admin_token), Some(stop_rx.clone()))
            .await
            .map_err(DemoError::Terminal)?;
    }
    let _ = stop_tx.send(true);
    traffic_task.abort();
    let view = crate::admin::routes_view(&running.app);
    // Quit promptly: in-flight mirrors are not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(1), running.shutdown()).await;
    let _ = std::fs::remove_dir_all(&dir);
    if headless {
        println!(
            "cutover demo: {:.0} s of traffic",
            started.elapsed().as_secs_f64()
        );
        print!("{}", summary(&view.routes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7 weeks").is_err());
    }
}
