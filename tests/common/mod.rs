//! Test support: in-process origin servers on ephemeral loopback ports, a cutover started in
//! process from config text, a raw HTTP/1.1 client that shows exactly what came over the
//! wire, and readiness polling (never a bare sleep used as synchronisation).
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;
pub type Handler = Arc<
    dyn Fn(RecordedRequest) -> Pin<Box<dyn Future<Output = http::Response<OriginBody>> + Send>>
        + Send
        + Sync,
>;

/// A request as an origin saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// An origin server on 127.0.0.1:<ephemeral> that records what it received.
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<RecordedRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    /// Starts an origin whose answers come from `f`.
    pub async fn start<F, Fut>(f: F) -> Origin
    where
        F: Fn(RecordedRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::Response<OriginBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |r| Box::pin(f(r)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let rec = RecordedRequest {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().expect("lock").push(rec.clone());
                            Ok::<_, Infallible>(handler(rec).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin { addr, seen, task }
    }

    /// An origin that accepts connections and never answers (reads and holds them).
    pub async fn hanging() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await;
                held.push(stream);
            }
        });
        Origin { addr, seen, task }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An origin that answers every request with 200 and this JSON body.
pub async fn json_origin(body: &'static str) -> Origin {
    Origin::start(
        move |_r| async move { respond(200, &[("content-type", "application/json")], body) },
    )
    .await
}

/// A loopback address with nothing listening (bound, then closed).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

pub fn body(b: impl Into<Bytes>) -> OriginBody {
    Full::new(b.into()).boxed()
}

/// A response with a body and headers.
pub fn respond(
    status: u16,
    headers: &[(&str, &str)],
    b: impl Into<Bytes>,
) -> http::Response<OriginBody> {
    let mut r = http::Response::new(body(b));
    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
    for (k, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    r
}

/// Logs `user` in through the fixture app's `POST /login` (behind `proxy`) under session
/// cookie `cookie`; PHP answers 302.
pub async fn login(proxy: std::net::SocketAddr, cookie: &str, user: &str, user_id: u32) {
    let form = format!("user={user}&user_id={user_id}");
    let req = format!(
        "POST /login HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\nCookie: PHPSESSID={cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    let r = raw_request(proxy, req.as_bytes()).await;
    assert_eq!(r.status, 302, "login: {}", String::from_utf8_lossy(&r.body));
}

/// What a Rust handler answers after the equivalent of PHP's `session_start()`: `body` as JSON
/// with the no-cache headers PHP sends, a new session and its cookie for a visitor without a
/// session cookie (with one, PHP keeps the visitor's id even when nothing is stored under it),
/// and the session it leaves, `after`, declared in `x-cutover-session-write` when `declare` or
/// when a new session started.
pub fn session_page(
    r: &RecordedRequest,
    body: serde_json::Value,
    after: &cutover_session::php::Session,
    declare: bool,
) -> http::Response<OriginBody> {
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        (
            "cache-control".to_string(),
            "no-store, no-cache, must-revalidate".to_string(),
        ),
        ("pragma".to_string(), "no-cache".to_string()),
    ];
    let has_cookie = r
        .headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("PHPSESSID="));
    let new_id = (!has_cookie).then(|| format!("rust{:016x}", fastrand::u64(..)));
    if let Some(id) = &new_id {
        headers.push(("set-cookie".into(), format!("PHPSESSID={id}; path=/")));
    }
    if declare || new_id.is_some() {
        let write = cutover_session::SessionWrite::Set {
            id: new_id,
            data: after.to_json().expect("json"),
        };
        headers.push((cutover_session::WRITE_HEADER.to_string(), write.to_header()));
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    respond(200, &headers, body.to_string())
}

/// Starts cutover from config text; `{legacy}`, `{candidate}` etc. are filled in by the caller.
pub async fn cutover(config: &str) -> cutover::runtime::Running {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg =
        cutover::config::Config::from_str_at(config, "test.toml", base).expect("valid test config");
    cutover::runtime::start(cfg).await.expect("cutover starts")
}

/// The config header every test uses: ephemeral ports.
pub fn base_config(legacy: &str, candidate: &str) -> String {
    format!(
        "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[upstreams]\nlegacy = \"{legacy}\"\ncandidate = \"{candidate}\"\n"
    )
}

/// A response as raw bytes came back: status line, headers in order, decoded body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Status and headers (in order) of a response head.
pub fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        })
        .collect();
    (status, headers)
}

/// Parses one response from `buf`; returns it and how many bytes it used, or None if more is needed.
pub fn parse_response(buf: &[u8], head_request: bool) -> Option<(RawResponse, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let (status, headers) = parse_head(&buf[..end]);
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Some((
            RawResponse {
                status,
                headers,
                body: Vec::new(),
            },
            end,
        ));
    }
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut pos = end;
        let mut body = Vec::new();
        loop {
            let line_end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
            let size_text = std::str::from_utf8(&buf[pos..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                let trailer_end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
                pos = trailer_end + 2;
                return Some((
                    RawResponse {
                        status,
                        headers,
                        body,
                    },
                    pos,
                ));
            }
            if buf.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    }
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if buf.len() < end + len {
            return None;
        }
        return Some((
            RawResponse {
                status,
                headers,
                body: buf[end..end + len].to_vec(),
            },
            end + len,
        ));
    }
    None // read to close
}

/// Sends raw request bytes on a fresh connection and reads one response (to close if needed).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let head_request = request.starts_with(b"HEAD ");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some((r, _)) = parse_response(&buf, head_request) {
            return r;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("response within 20 s")
            .expect("read");
        if n == 0 {
            // Close-delimited body (or a truncated one: the caller sees what arrived).
            let end = buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a complete head")
                + 4;
            let (status, headers) = parse_head(&buf[..end]);
            return RawResponse {
                status,
                headers,
                body: buf[end..].to_vec(),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A simple GET with `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(addr, req.as_bytes()).await
}

/// The admin API's JSON.
pub async fn api(admin: SocketAddr, path: &str) -> serde_json::Value {
    let r = get(admin, path, &[]).await;
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    serde_json::from_slice(&r.body).expect("json")
}

/// The value of one series in a Prometheus text scrape (0 when absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = match series.split_once('{') {
            Some((n, r)) => (n, r.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let found: HashMap<&str, &str> = rest
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.trim_start_matches(','), v.trim_end_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| found.get(k) == Some(v)) {
            return value.parse().unwrap_or(f64::NAN);
        }
    }
    0.0
}

pub async fn scrape(admin: SocketAddr) -> String {
    String::from_utf8(get(admin, "/metrics", &[]).await.body).expect("utf8")
}

/// Polls `check` until it returns true or `within` passes (then panics with `what`).
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// A required external tool; a missing one fails the test with how to install it.
pub fn require_tool(name: &str, install: &str) -> std::path::PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = std::path::Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed; install it with: {install} (or run .ci/run, which installs everything the tests need)");
}

/// Waits until a TCP port accepts connections.
pub async fn wait_port(addr: SocketAddr, within: Duration) {
    eventually(within, &format!("{addr} accepting"), || async move {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

/// Waits until `addr` answers an HTTP request: an open port is not yet a server that answers
/// (`php -S` with workers has been seen to reset the first request made right after its port
/// opened).
pub async fn wait_http(addr: SocketAddr, within: Duration) {
    eventually(within, &format!("{addr} answering HTTP"), || async move {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return false;
        };
        if s.write_all(b"GET /__ready HTTP/1.0\r\nHost: ready\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 5];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut head)).await,
            Ok(Ok(_))
        ) && &head == b"HTTP/"
    })
    .await;
}

/// A child process (a test service) in a process group of its own, stopped with everything it
/// started on drop.
pub struct Service {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

/// Starts `cmd` as the leader of a new process group, which `Service`'s drop kills whole.
fn spawn_group(cmd: &mut std::process::Command, what: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"))
}

impl Drop for Service {
    fn drop(&mut self) {
        // The group, not just the child: `php -S` with PHP_CLI_SERVER_WORKERS forks workers
        // that outlived their parent (and every test run) when only the parent was killed.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory is
            // touched.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// `php -S` serving the fixture app on a free port, with extra `-d` settings and environment.
pub async fn php_server(ini: &[(&str, String)], env: &[(&str, String)]) -> Service {
    let php = require_tool("php", "apt-get install php-cli");
    let addr = dead_addr();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-php");
    let mut cmd = std::process::Command::new(php);
    for (k, v) in ini {
        cmd.arg("-d").arg(format!("{k}={v}"));
    }
    cmd.arg("-S")
        .arg(addr.to_string())
        .arg(root.join("router.php"))
        .current_dir(&root)
        .env("PHP_CLI_SERVER_WORKERS", "4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = spawn_group(&mut cmd, "php -S");
    let s = Service { child, addr };
    wait_http(addr, Duration::from_secs(10)).await;
    s
}

/// dynalite (npm) on a free port, tables created and deleted at once.
pub async fn dynalite() -> Service {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let local = root.join("tests/node/node_modules/.bin/dynalite");
    let bin = if local.is_file() {
        local
    } else {
        require_tool("dynalite", "npm install --prefix tests/node (see .ci/run)")
    };
    let addr = dead_addr();
    let port = addr.port().to_string();
    let args = [
        "--port",
        &port,
        "--host",
        "127.0.0.1",
        "--createTableMs",
        "0",
        "--deleteTableMs",
        "0",
    ];
    start_service(&bin, &args, addr, Duration::from_secs(15)).await
}

/// `bin args…` as a `Service` listening on `addr`, once it accepts connections.
pub async fn start_service(
    bin: &std::path::Path,
    args: &[&str],
    addr: SocketAddr,
    within: Duration,
) -> Service {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = spawn_group(&mut cmd, &bin.display().to_string());
    let s = Service { child, addr };
    wait_port(addr, within).await;
    s
}

/// redis-server on a free port, nothing persisted.
pub async fn redis_server() -> Service {
    let bin = require_tool("redis-server", "apt-get install redis-server");
    let addr = dead_addr();
    let port = addr.port().to_string();
    let args = [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    start_service(&bin, &args, addr, Duration::from_secs(10)).await
}

/// Environment every session test shares (set once per test binary, before use): the session
/// secret and dummy AWS credentials for the local DynamoDB-compatible server.
pub const SESSION_SECRET: &str = "test-secret-for-cutover";

pub fn session_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("CUTOVER_SESSION_SECRET", SESSION_SECRET);
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

/// A fresh temporary folder.
pub fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cutover-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// PHP's redis extension (phpredis) is loaded, or the test fails saying how to install it.
pub fn php_has_redis() {
    let out = std::process::Command::new(require_tool("php", "apt-get install php-cli"))
        .arg("-m")
        .output()
        .expect("php -m");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "redis"),
        "PHP's redis extension is missing: apt-get install php-redis"
    );
}

/// The `sessions` table aws-sdk-php's SessionHandler uses (hash key `id`), created on a local
/// DynamoDB-compatible server.
pub async fn create_sessions_table(endpoint: &str) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let sdk = cutover::aws::sdk_config(Some("us-east-1"), Some(endpoint)).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    client
        .create_table()
        .table_name("sessions")
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attr"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table");
    client
}

/// tmux with `args`; its standard output.
pub fn tmux(args: &[&str]) -> String {
    let out = std::process::Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wait_screen(session: &str, what: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if screen.contains(what) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "`{what}` did not appear on screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `what` has left the screen (a view closed).
pub fn wait_screen_without(session: &str, what: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if !screen.contains(what) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "`{what}` stayed on screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct TmuxSession(pub String);

impl Drop for TmuxSession {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

/// A PHP-FPM of the tests' own (Debian's php8.2-fpm) serving `document_root`, with one pool on
/// a Unix socket and one on TCP, sessions in `sessions`; stopped on drop.
pub struct PhpFpm {
    pub service: Service,
    pub socket: std::path::PathBuf,
    pub tcp: SocketAddr,
    pub dir: std::path::PathBuf,
}

impl PhpFpm {
    pub fn unix_url(&self) -> String {
        format!("fastcgi+unix://{}", self.socket.display())
    }
    pub fn tcp_url(&self) -> String {
        format!("fastcgi://{}", self.tcp)
    }
    /// What PHP-FPM logged (its workers' stderr included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("fpm.log")).unwrap_or_default()
    }
}

pub const FPM_BIN: &str = "/usr/sbin/php-fpm8.2";

/// Whether the tests run as root (PHP-FPM and nginx need telling then).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid(2) only reads the process's credentials.
    unsafe { libc::geteuid() == 0 }
}

/// Starts PHP-FPM with `ini` (`php_admin_value`s) on both pools.
pub async fn php_fpm(name: &str, ini: &[(&str, String)]) -> PhpFpm {
    if !std::path::Path::new(FPM_BIN).is_file() {
        panic!("{FPM_BIN} is not installed; install it with: apt-get install php8.2-fpm (or run .ci/run, which installs everything the tests need)");
    }
    let dir = tempdir(&format!("fpm-{name}"));
    let socket = dir.join("fpm.sock");
    let tcp = dead_addr();
    let mut values = String::new();
    for (k, v) in ini {
        values.push_str(&format!("php_admin_value[{k}] = {v}\n"));
    }
    let pool = |name: &str, listen: &str| {
        format!(
            "[{name}]\nlisten = {listen}\nlisten.mode = 0666\npm = static\npm.max_children = 4\nclear_env = no\ncatch_workers_output = yes\ndecorate_workers_output = no\nphp_admin_value[display_errors] = off\nphp_admin_value[log_errors] = on\n{values}"
        )
    };
    let conf = format!(
        "[global]\npid = {d}/fpm.pid\nerror_log = {d}/fpm.log\ndaemonize = no\n{}\n{}",
        pool("unix", &socket.display().to_string()),
        pool("tcp", &tcp.to_string()),
        d = dir.display()
    );
    let conf_path = dir.join("fpm.conf");
    std::fs::write(&conf_path, conf).expect("fpm.conf");
    let mut cmd = std::process::Command::new(FPM_BIN);
    if running_as_root() {
        cmd.arg("--allow-to-run-as-root");
    }
    cmd.arg("--nodaemonize")
        .arg("--fpm-config")
        .arg(&conf_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = spawn_group(&mut cmd, "php-fpm");
    let service = Service { child, addr: tcp };
    wait_port(tcp, Duration::from_secs(10)).await;
    let sock = socket.clone();
    eventually(Duration::from_secs(10), "PHP-FPM's Unix socket", || {
        let sock = sock.clone();
        async move { tokio::net::UnixStream::connect(&sock).await.is_ok() }
    })
    .await;
    PhpFpm {
        service,
        socket,
        tcp,
        dir,
    }
}

/// nginx (Debian's nginx-light) serving `document_root` as a PHP site is set up: files as
/// they are, `.php` scripts (with PATH_INFO) and everything else through the front controller,
/// by `fastcgi_pass` to `fastcgi` (nginx's form: `unix:/path` or `host:port`).
pub async fn nginx_fastcgi(name: &str, document_root: &std::path::Path, fastcgi: &str) -> Service {
    let bin = require_tool("nginx", "apt-get install nginx-light");
    let dir = tempdir(&format!("nginx-{name}"));
    let addr = dead_addr();
    let user = if running_as_root() {
        "user root root;\n"
    } else {
        ""
    };
    let conf = format!(
        r#"{user}daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  include /etc/nginx/mime.types;
  client_body_temp_path {d}/body;
  fastcgi_temp_path {d}/fastcgi;
  proxy_temp_path {d}/proxy;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  client_max_body_size 16m;
  upstream php {{ server {fastcgi}; keepalive 8; }}
  server {{
    listen {addr};
    root {root};
    index index.php;
    location / {{ try_files $uri /index.php$is_args$args; }}
    location ~ [^/]\.php(/|$) {{
      fastcgi_split_path_info ^(.+?\.php)(/.*)$;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
      fastcgi_param PATH_INFO $fastcgi_path_info;
      fastcgi_keep_conn on;
      fastcgi_pass php;
    }}
  }}
}}
"#,
        d = dir.display(),
        root = document_root.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let conf_arg = conf_path.display().to_string();
    let prefix = dir.display().to_string();
    start_service(
        &bin,
        &["-p", &prefix, "-c", &conf_arg],
        addr,
        Duration::from_secs(10),
    )
    .await
}

/// The PHP-FPM fixture application (a front controller over the legacy fixture app).
pub fn fpm_app() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fpm-app")
}
