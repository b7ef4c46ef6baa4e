//! The shadowing proxy: accepts client connections (HTTP/1.1, keep-alive, a 64 KiB head limit
//! answered with 431, a 10 s head timeout), picks the route, serves the client from the legacy
//! app (or the candidate once promoted) by streaming, and hands eligible requests to the
//! [`crate::mirror`] without ever waiting for it.

pub mod body;
pub mod detach;
pub mod pool;
pub mod table;
pub mod upstream;

use crate::config::{Config, Mode, UpstreamUrl};
use crate::mirror::{self, Dispatcher, LegacyHead};
use crate::stats::{DropReason, Metrics, Side};
use body::{full, ProxyBody, ReplayBody, TeeBody};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use pool::{UpstreamBody, UpstreamError};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use table::{RouteEntry, RouteTable};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

/// Largest request head accepted (request line plus headers); larger gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client must finish sending its head within this time.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request needs, shared by all connections.
// Aligned so that in its `Arc` the reference counts, which every worker updates, have a cache
// line to themselves instead of sharing one with fields every request reads.
#[repr(align(128))]
pub struct App {
    pub config: Config,
    pub legacy: UpstreamUrl,
    pub twin: Option<UpstreamUrl>,
    pub client: upstream::UpstreamClient,
    pub routes: RouteTable,
    pub metrics: Metrics,
    pub dispatcher: Dispatcher,
    pub session_cookie: String,
    /// Redaction applied to every stored mismatch sample.
    pub redactor: crate::samples::Redactor,
    /// The optional JSONL file of samples.
    pub samples_sink: Option<crate::samples::JsonlSink>,
    /// Promotions, rollbacks, reloads: `GET /api/events`.
    pub events: crate::control::Events,
    /// The config file, for reload.
    pub config_path: Option<std::path::PathBuf>,
    admin_token: std::sync::RwLock<Option<String>>,
    /// The fleet's shared route modes (None without `[state]`).
    pub state: Option<crate::state::Store>,
    state_versions: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// The session store and header signer (None with `store = "none"`).
    pub session: Option<crate::session::resolve::Resolver>,
    pub started: Instant,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

impl App {
    pub async fn new(config: Config) -> Result<App, StartError> {
        let metrics = Metrics::register()
            .map_err(|e| StartError::Setup(format!("metrics: {e}")))?
            .for_workers(workers_of(&config));
        let legacy =
            UpstreamUrl::parse(config.upstreams.legacy.get_ref()).map_err(StartError::Setup)?;
        let twin = match &config.upstreams.legacy_twin {
            Some(t) => Some(UpstreamUrl::parse(t.get_ref()).map_err(StartError::Setup)?),
            None => None,
        };
        let ca = config
            .upstreams
            .ca_file
            .as_ref()
            .map(|c| config.resolve(c.get_ref()));
        let client =
            upstream::client(ca.as_deref(), pool_limits(&config, 1)).map_err(StartError::Setup)?;
        let routes = RouteTable::build(&config, &metrics).map_err(StartError::Setup)?;
        let s = &config.samples;
        let redactor = crate::samples::Redactor::new(
            &s.redact_headers,
            &s.redact_pointers,
            &s.redact_patterns,
        )
        .map_err(StartError::Setup)?;
        let samples_sink = if s.jsonl_path.is_empty() {
            None
        } else {
            Some(
                crate::samples::JsonlSink::start(config.resolve(&s.jsonl_path), s.jsonl_max_bytes)
                    .map_err(|e| StartError::Setup(format!("samples.jsonl_path: {e}")))?,
            )
        };
        let state = match &config.state {
            Some(s) => Some(
                crate::state::Store::open(s, &config.base_dir)
                    .await
                    .map_err(|e| StartError::Setup(format!("state: {e}")))?,
            ),
            None => None,
        };
        let admin_token = std::env::var(&config.admin.token_env)
            .ok()
            .filter(|t| !t.is_empty());
        let config_path = config.path.clone();
        let session = crate::session::resolve::Resolver::start(&config.session, &metrics)
            .await
            .map_err(|e| StartError::Setup(e.to_string()))?;
        let dispatcher = Dispatcher::new(config.mirror.concurrency, config.mirror.queue);
        let session_cookie = config.session.cookie.clone();
        Ok(App {
            config,
            legacy,
            twin,
            client,
            routes,
            metrics,
            dispatcher,
            session_cookie,
            redactor,
            samples_sink,
            events: crate::control::Events::default(),
            config_path,
            admin_token: std::sync::RwLock::new(admin_token),
            state,
            state_versions: std::sync::Mutex::new(std::collections::HashMap::new()),
            session,
            started: Instant::now(),
        })
    }
}

impl App {
    /// The bearer token POSTs and samples need (None: they are refused).
    pub fn admin_token(&self) -> Option<String> {
        match self.admin_token.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set_admin_token(&self, token: Option<String>) {
        let token = token.filter(|t| !t.is_empty());
        match self.admin_token.write() {
            Ok(mut t) => *t = token,
            Err(p) => *p.into_inner() = token,
        }
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u64>> {
        match self.state_versions.lock() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        }
    }

    /// The state-store version of a route this proxy has applied (0: none).
    pub fn state_version_of(&self, route: &str) -> u64 {
        self.versions().get(route).copied().unwrap_or(0)
    }

    pub fn set_state_version(&self, route: &str, v: u64) {
        self.versions().insert(route.to_string(), v);
    }

    /// The sum of every route's state version: changes whenever any route's stored mode does.
    pub fn state_version(&self) -> u64 {
        self.versions().values().sum()
    }
}

/// A running proxy: its bound addresses and a way to stop it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to 30 s), then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Runs until Ctrl-C or SIGTERM, then shuts down gracefully; SIGHUP reloads config and rules.
    pub async fn until_signal(self) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut hup) = signal(SignalKind::hangup()) {
                let app = self.app.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        match crate::control::reload(&app) {
                            Ok(ev) => info!(reason = %ev.reason, "reloaded on SIGHUP"),
                            Err(why) => {
                                warn!(%why, "SIGHUP reload failed; the old config and rules stay")
                            }
                        }
                    }
                });
            }
        }
        wait_for_signal().await;
        info!("shutting down: finishing in-flight requests");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Binds both listeners (nothing is bound if either fails) and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let proxy_at = config.listen.proxy.get_ref().clone();
    let admin_at = config.listen.admin.get_ref().clone();
    let app = Arc::new(App::new(config).await?);
    let bind_err = |source| StartError::Bind {
        what: "listen.proxy",
        addr: proxy_at.clone(),
        source,
    };
    let first_addr: SocketAddr = proxy_at
        .parse()
        .map_err(|_| StartError::Setup(format!("listen.proxy `{proxy_at}` is not an address")))?;
    // One listener per worker on the same port (SO_REUSEPORT): the kernel spreads connections.
    let workers = app.worker_count();
    let mut listeners = vec![bind_reuseport(first_addr).map_err(bind_err)?];
    let proxy_addr = listeners[0]
        .local_addr()
        .map_err(|e| StartError::Setup(e.to_string()))?;
    for _ in 1..workers {
        listeners.push(bind_reuseport(proxy_addr).map_err(bind_err)?);
    }
    let admin_listener = TcpListener::bind(&admin_at)
        .await
        .map_err(|source| StartError::Bind {
            what: "listen.admin",
            addr: admin_at.clone(),
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| StartError::Setup(e.to_string()))?;
    // Pick up the fleet's current modes before the first request.
    if let Err(e) = crate::state::poll_once(&app).await {
        tracing::warn!(error = %e, "state store not readable at start-up; starting from the config's modes");
    }
    let (tx, rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(crate::admin::serve(
        app.clone(),
        admin_listener,
        rx.clone(),
    ))];
    for (i, listener) in listeners.into_iter().enumerate() {
        let handle = spawn_worker(i, app.clone(), listener, rx.clone())
            .map_err(|e| StartError::Setup(format!("worker thread: {e}")))?;
        tasks.push(tokio::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }));
    }
    start_memory_trimmer();
    tasks.push(tokio::spawn(crate::control::auto_rollback_loop(
        app.clone(),
        rx.clone(),
    )));
    if let Some(s) = &app.config.state {
        let every = Duration::from_millis(s.poll_ms.max(50));
        tasks.push(tokio::spawn(crate::state::poll_loop(
            app.clone(),
            every,
            rx.clone(),
        )));
    }
    info!(%proxy_addr, %admin_addr, "cutover listening");
    Ok(Running {
        proxy_addr,
        admin_addr,
        app,
        shutdown: tx,
        tasks,
    })
}

/// Hands memory freed by connections and exchanges back to the system every two seconds.
/// glibc keeps freed chunks in each thread's arena and returns only the top of a heap: after a
/// burst of a thousand connections the workers' arenas stayed at 32 MB each with 6-8 MB in use,
/// and RSS climbed a little with every burst. `malloc_trim` releases the free pages in all
/// arenas (it takes each arena's lock briefly; on an idle arena it costs microseconds).
fn start_memory_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("cutover-trim".into())
                .spawn(|| loop {
                    std::thread::sleep(Duration::from_secs(2));
                    // SAFETY: malloc_trim only reads and updates the allocator's own state
                    // under its own locks; any pad value is valid.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                });
            if let Err(e) = spawned {
                warn!(error = %e, "memory trimmer not started");
            }
        });
    }
}

/// A listening socket with SO_REUSEADDR and SO_REUSEPORT, non-blocking, for a worker's runtime.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    #[cfg(unix)]
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

thread_local! {
    /// The upstream client of the worker thread this code runs on: connections, their pool and
    /// their tasks stay on one thread, so a request never wakes another core.
    static WORKER_CLIENT: std::cell::RefCell<Option<upstream::UpstreamClient>> = const { std::cell::RefCell::new(None) };
}

impl App {
    /// The upstream client for the current thread (the worker's own, else the shared one).
    pub fn client(&self) -> upstream::UpstreamClient {
        WORKER_CLIENT
            .with(|c| c.borrow().clone())
            .unwrap_or_else(|| self.client.clone())
    }

    /// Proxy worker threads: `listen.workers`, or one per core.
    pub fn worker_count(&self) -> usize {
        workers_of(&self.config)
    }
}

/// The connection limits of one of `workers` pools: `upstreams.max_connections` spread over
/// them (rounded up), idle ones closed after a minute.
fn pool_limits(config: &Config, workers: usize) -> pool::Limits {
    let max_open = config
        .upstreams
        .max_connections
        .get_ref()
        .div_ceil(workers.max(1));
    pool::Limits {
        max_open,
        idle_timeout: Duration::from_secs(60),
    }
}

/// Proxy worker threads: `listen.workers`, or one per core when 0.
fn workers_of(config: &Config) -> usize {
    match config.listen.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    }
}

/// A worker: a thread with its own single-threaded runtime, listener and upstream client
/// (thread per core, as nginx runs a process per core). It returns after a graceful shutdown.
fn spawn_worker(
    i: usize,
    app: Arc<App>,
    listener: std::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("cutover-worker-{i}"))
        .stack_size(crate::session::php::STACK_BYTES)
        .spawn(move || {
            crate::stats::set_worker_shard(i);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "worker runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let ca = app
                    .config
                    .upstreams
                    .ca_file
                    .as_ref()
                    .map(|c| app.config.resolve(c.get_ref()));
                let limits = pool_limits(&app.config, app.worker_count());
                match upstream::client(ca.as_deref(), limits) {
                    Ok(c) => WORKER_CLIENT.with(|w| *w.borrow_mut() = Some(c)),
                    Err(e) => tracing::warn!(error = %e, "worker client; using the shared one"),
                }
                match TcpListener::from_std(listener) {
                    Ok(l) => serve_proxy(app, l, stop).await,
                    Err(e) => tracing::error!(error = %e, "worker listener"),
                }
            });
            // Mirrors still running are not waited for beyond this.
            rt.shutdown_timeout(Duration::from_millis(100));
        })
}

async fn serve_proxy(app: Arc<App>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
                let client_ip = upstream::client_ip_header(remote);
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    let client_ip = client_ip.clone();
                    async move { Ok::<_, Infallible>(handle(app, req, client_ip).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, %remote, "client connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
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

fn upstream_response(resp: Response<UpstreamBody>) -> (http::response::Parts, UpstreamBody) {
    let (mut parts, body) = resp.into_parts();
    upstream::strip_hop_by_hop(&mut parts.headers);
    (parts, body)
}

/// Whether this request is in the sample: sticky per session cookie (a hash of its value, the
/// same on every proxy of a fleet), random without one.
pub fn sampled(rate: f64, session: Option<&str>) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let x = match session {
        Some(id) => {
            // FNV-1a: stable across processes and versions, unlike std's hasher.
            let mut h: u64 = 0xcbf29ce484222325;
            for b in id.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
            // FNV's high bits barely move when only the last bytes differ (session ids that
            // share a prefix): mix them (MurmurHash3's finaliser) before taking a fraction.
            h ^= h >> 33;
            h = h.wrapping_mul(0xff51afd7ed558ccd);
            h ^= h >> 33;
            h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
            h ^= h >> 33;
            (h >> 11) as f64 / (1u64 << 53) as f64
        }
        None => fastrand::f64(),
    };
    x < rate
}

fn session_id_of(headers: &http::HeaderMap, cookie: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| crate::session::cookie_value(v, cookie).map(str::to_string))
}

/// What happened to the request body before forwarding.
enum RequestBody {
    /// Read whole (within the cap): can be sent to both sides.
    Buffered(Bytes),
    /// Too large or unknown: streamed to the legacy app only.
    Streamed(ProxyBody),
}

/// Reads a request body up to `cap`; past that, returns a body replaying what was read and
/// then the rest, so the legacy app still gets every byte.
async fn read_body_capped(
    body: Incoming,
    cap: usize,
    declared: Option<u64>,
) -> Result<RequestBody, hyper::Error> {
    if body.is_end_stream() {
        return Ok(RequestBody::Buffered(Bytes::new()));
    }
    if declared.is_some_and(|n| n > cap as u64) {
        return Ok(RequestBody::Streamed(body::boxed(body)));
    }
    let mut body = body;
    let mut chunks = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            len += data.len();
            chunks.push(data);
            if len > cap {
                return Ok(RequestBody::Streamed(body::boxed(ReplayBody::new(
                    chunks, body, declared,
                ))));
            }
        }
    }
    Ok(RequestBody::Buffered(body::concat(chunks)))
}

/// Serves one client request; `client_ip` is its connection's `upstream::client_ip_header`.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    client_ip: HeaderValue,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    if head_size(&parts) > MAX_HEAD_BYTES {
        // hyper's read buffer limit is not an exact head limit: a head that arrives in one
        // read can pass it. This is the exact one.
        return plain(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "cutover: request head too large\n",
        );
    }
    if parts.method == Method::CONNECT {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "cutover: CONNECT is not proxied\n",
        );
    }
    // Kept (for the log, the exchange) while the upstream answers: not as a slice of hyper's
    // read buffer (see `detach`).
    parts.uri = detach::uri(&parts.uri);
    let entry = app.routes.lookup(parts.uri.path(), &app.metrics);
    if parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
        // hyper framed the body by Transfer-Encoding (and will close the connection after); a
        // Content-Length sent alongside must not reach the upstream, or it would read the body
        // differently (request smuggling).
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    upstream::strip_hop_by_hop(&mut parts.headers);
    upstream::strip_cutover_headers(&mut parts.headers);
    upstream::add_forwarded(&mut parts.headers, &client_ip);
    let mode = entry.mode();
    if mode == Mode::Legacy {
        return serve_plain(&app, &entry, mode, parts, body::boxed(body), started).await;
    }
    // Only the mirrored and promoted paths need the session cookie (sampling, the snapshot).
    let session = session_id_of(&parts.headers, &app.session_cookie);
    match mode {
        Mode::Legacy => serve_plain(&app, &entry, mode, parts, body::boxed(body), started).await,
        Mode::Shadow => serve_shadow(&app, &entry, parts, body, session, started).await,
        Mode::Candidate => {
            if entry.percent() >= 100
                || sampled(f64::from(entry.percent()) / 100.0, session.as_deref())
            {
                match resolve_session(&app, &parts, session.as_deref()).await {
                    // Boxed to keep every request's future small (see resolve_session).
                    Ok(h) => {
                        Box::pin(serve_candidate(
                            &app,
                            &entry,
                            parts,
                            body,
                            h,
                            session.as_deref(),
                            started,
                        ))
                        .await
                    }
                    // Without the user's session the candidate would answer a logged-out page.
                    Err(()) => {
                        serve_plain(&app, &entry, mode, parts, body::boxed(body), started).await
                    }
                }
            } else {
                serve_shadow(&app, &entry, parts, body, session, started).await
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

/// The request to send upstream for the client's `parts`: its method, its path and query behind
/// the upstream's base path, and `headers` — a copy of `parts.headers`, or the headers themselves
/// (`std::mem::take`) for the last request built from them.
pub(crate) fn forward_request(
    url: &UpstreamUrl,
    parts: &http::request::Parts,
    headers: http::HeaderMap,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, http::Error> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = url.origin_form(parts.uri.path_and_query())?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Sends to the legacy app and streams its answer back; nothing else.
async fn serve_plain(
    app: &App,
    entry: &RouteEntry,
    mode: Mode,
    mut parts: http::request::Parts,
    body: ProxyBody,
    started: Instant,
) -> Response<ProxyBody> {
    let headers = std::mem::take(&mut parts.headers);
    let resp = match forward_request(&app.legacy, &parts, headers, body) {
        Ok(req) => app.client().send(&app.legacy, req).await,
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
            entry.stats.request(mode, parts_out.status.as_u16(), false);
            access_log(
                entry,
                mode,
                "legacy",
                &parts,
                Some(parts_out.status.as_u16()),
                Some(elapsed),
                None,
                None,
                "not_mirrored",
            );
            Response::from_parts(parts_out, body::boxed(body))
        }
        Err(e) => legacy_failed(entry, mode, &parts, e, elapsed),
    }
}

fn legacy_failed(
    entry: &RouteEntry,
    mode: Mode,
    parts: &http::request::Parts,
    e: UpstreamError,
    elapsed: Duration,
) -> Response<ProxyBody> {
    warn!(route = %entry.label, error = %e, "legacy upstream failed");
    entry.stats.upstream_error(Side::Legacy);
    entry.stats.request(mode, 502, false);
    access_log(
        entry,
        mode,
        "proxy",
        parts,
        Some(502),
        Some(elapsed),
        None,
        None,
        "legacy_error",
    );
    plain(
        StatusCode::BAD_GATEWAY,
        "cutover: the legacy upstream is unavailable\n",
    )
}

async fn serve_shadow(
    app: &Arc<App>,
    entry: &Arc<RouteEntry>,
    mut parts: http::request::Parts,
    body: Incoming,
    session: Option<String>,
    started: Instant,
) -> Response<ProxyBody> {
    let mode = Mode::Shadow;
    if !entry.mirror_methods.contains(&parts.method) {
        app.metrics.dropped(DropReason::Method);
        return serve_plain(app, entry, mode, parts, body::boxed(body), started).await;
    }
    if !sampled(entry.sample, session.as_deref()) {
        app.metrics.dropped(DropReason::SampledOut);
        return serve_plain(app, entry, mode, parts, body::boxed(body), started).await;
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let request_body = match read_body_capped(body, entry.max_body_bytes, declared).await {
        Ok(b) => b,
        Err(e) => {
            debug!(error = %e, "client request body failed");
            return plain(
                StatusCode::BAD_REQUEST,
                "cutover: the request body could not be read\n",
            );
        }
    };
    let bytes = match request_body {
        RequestBody::Streamed(b) => {
            app.metrics.dropped(DropReason::BodyTooLarge);
            return serve_plain(app, entry, mode, parts, b, started).await;
        }
        RequestBody::Buffered(b) => b,
    };
    let session_header = match resolve_session(app, &parts, session.as_deref()).await {
        Ok(h) => h,
        Err(()) => {
            // The store failed: serve as if cutover were not there, and skip the comparison.
            entry
                .stats
                .outcome(crate::stats::Outcome::Skipped, None, None);
            return serve_plain(app, entry, mode, parts, body::full(bytes), started).await;
        }
    };
    let Some(slot) = app.dispatcher.try_reserve() else {
        app.metrics.dropped(DropReason::QueueFull);
        return serve_plain(app, entry, mode, parts, body::full(bytes), started).await;
    };
    let (head_tx, head_rx) = oneshot::channel::<LegacyHead>();
    mirror::spawn_exchange(
        app.clone(),
        entry.clone(),
        slot,
        mirror::ShadowRequest {
            parts: parts.clone(),
            body: bytes.clone(),
            session_header,
            reverse: false,
        },
        head_rx,
    );
    let headers = std::mem::take(&mut parts.headers);
    let resp = match forward_request(&app.legacy, &parts, headers, body::full(bytes)) {
        Ok(req) => app.client().send(&app.legacy, req).await,
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
            tee_to_exchange(head_tx, parts_out, body, elapsed, entry.max_body_bytes)
        }
        Err(e) => legacy_failed(entry, mode, &parts, e, elapsed),
    }
}

/// The session snapshot header for this request: Ok(None) without a session, Err(()) when the
/// store failed (the caller then serves without the candidate's comparison).
async fn resolve_session(
    app: &App,
    parts: &http::request::Parts,
    cookie: Option<&str>,
) -> Result<Option<HeaderValue>, ()> {
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
    match Box::pin(resolver.resolve(cookie, format!("{} {pq}", parts.method))).await {
        crate::session::resolve::Resolution::None => Ok(None),
        crate::session::resolve::Resolution::Header(h) => Ok(Some(h)),
        crate::session::resolve::Resolution::Failed => Err(()),
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

/// Safe methods may be retried on the legacy app when the candidate cannot answer.
pub(crate) fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
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
    let bodiless = body.is_end_stream();
    let retry_on_legacy = is_safe(&parts.method) && bodiless;
    // verify_after_promotion: safe, bodiless, eligible requests are also sent to the legacy app
    // and compared, the other way round. Unsafe ones never are: PHP would commit them twice.
    let verify = app.config.gate.verify_after_promotion
        && retry_on_legacy
        && entry.mirror_methods.contains(&parts.method)
        && sampled(entry.sample, cookie);
    let slot = if verify {
        app.dispatcher.try_reserve()
    } else {
        None
    };
    if verify && slot.is_none() {
        app.metrics.dropped(DropReason::QueueFull);
    }
    // A copy: PHP may still get these headers if the candidate cannot answer.
    let headers = parts.headers.clone();
    let mut req = match forward_request(&entry.candidate, &parts, headers, body::boxed(body)) {
        Ok(r) => r,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "cutover: bad request target\n"),
    };
    if let Some(h) = &session_header {
        req.headers_mut()
            .insert(crate::session::header::HEADER, h.clone());
    }
    let head_tx = slot.map(|slot| {
        let (tx, rx) = oneshot::channel::<LegacyHead>();
        mirror::spawn_exchange(
            app.clone(),
            entry.clone(),
            slot,
            mirror::ShadowRequest {
                parts: parts.clone(),
                body: Bytes::new(),
                session_header: None,
                reverse: true,
            },
            rx,
        );
        tx
    });
    let result = tokio::time::timeout(
        entry.candidate_timeout,
        app.client().send(&entry.candidate, req),
    )
    .await;
    let elapsed = started.elapsed();
    match result {
        Ok(Ok(resp)) => {
            entry.stats.duration(Side::Candidate, elapsed);
            let (parts_out, body) = upstream_response(resp);
            let status = parts_out.status.as_u16();
            entry.stats.request(mode, status, head_tx.is_some());
            entry.stats.promoted_answer(status);
            access_log(
                entry,
                mode,
                "candidate",
                &parts,
                None,
                None,
                Some(status),
                Some(elapsed),
                "promoted",
            );
            match head_tx {
                Some(tx) => tee_to_exchange(tx, parts_out, body, elapsed, entry.max_body_bytes),
                None => Response::from_parts(parts_out, body::boxed(body)),
            }
        }
        failed => {
            entry.stats.upstream_error(Side::Candidate);
            entry.stats.promoted_answer(502);
            match failed {
                Err(_) => warn!(route = %entry.label, "candidate timed out in candidate mode"),
                Ok(Err(e)) => {
                    warn!(route = %entry.label, error = %e, "candidate failed in candidate mode")
                }
                Ok(Ok(_)) => {}
            }
            if retry_on_legacy {
                app.metrics.candidate_fallbacks.inc();
                serve_plain(app, entry, mode, parts, body::empty(), Instant::now()).await
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

/// One JSON line per request on the `cutover::access` target.
#[allow(clippy::too_many_arguments)]
pub fn access_log(
    entry: &RouteEntry,
    mode: Mode,
    served_by: &str,
    parts: &http::request::Parts,
    legacy_status: Option<u16>,
    legacy_time: Option<Duration>,
    candidate_status: Option<u16>,
    candidate_time: Option<Duration>,
    outcome: &str,
) {
    tracing::info!(
        target: "cutover::access",
        route = %entry.label,
        mode = mode.as_str(),
        served_by,
        method = %parts.method,
        path = parts.uri.path(),
        legacy_status,
        legacy_ms = legacy_time.map(|d| d.as_secs_f64() * 1000.0),
        candidate_status,
        candidate_ms = candidate_time.map(|d| d.as_secs_f64() * 1000.0),
        outcome,
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn sticky_sampling_is_spread_and_stable() {
        let ids: Vec<String> = (0..2000).map(|i| format!("user{i:05}")).collect();
        let share = ids
            .iter()
            .filter(|id| super::sampled(0.3, Some(id)))
            .count() as f64
            / 2000.0;
        assert!((0.25..0.35).contains(&share), "{share}");
        for id in &ids {
            assert_eq!(super::sampled(0.3, Some(id)), super::sampled(0.3, Some(id)));
        }
        // Nested shares: a session in the 10% sample is in the 30% sample too.
        assert!(ids
            .iter()
            .filter(|id| super::sampled(0.1, Some(id)))
            .all(|id| super::sampled(0.3, Some(id))));
    }
}
