//! Start-up and shutdown: binds the listeners (one per worker on the proxy port, with
//! SO_REUSEPORT, and the admin port — nothing is bound if either fails), starts a thread per
//! worker with its own single-threaded runtime and upstream pool, the admin API, the control
//! loops (state polling, auto-rollback) and the memory trimmer; stops on a signal, letting
//! in-flight requests finish; reloads on SIGHUP.

use crate::app::App;
use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(#[from] crate::app::SetupError),
    #[error("worker thread: {0}")]
    Thread(std::io::Error),
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
    /// Stops accepting, lets in-flight requests finish (up to 30 s), saves the route windows
    /// (with `[state]`), then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        match crate::control::save_windows(&self.app).await {
            Ok(n) if n > 0 => info!(routes = n, "route windows saved"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "route windows not saved at shutdown"),
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

/// Sets up the shared state, binds both listeners (nothing is bound if either fails) and
/// starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let proxy_at = config.listen.proxy.0;
    let admin_at = config.listen.admin.0;
    let app = Arc::new(App::new(config).await?);
    let bind_err = |what, addr| move |source| StartError::Bind { what, addr, source };
    // One listener per worker on the same port (SO_REUSEPORT): the kernel spreads connections.
    let workers = app.config().workers();
    let mut listeners = vec![bind_reuseport(proxy_at).map_err(bind_err("listen.proxy", proxy_at))?];
    let proxy_addr = listeners[0]
        .local_addr()
        .map_err(bind_err("listen.proxy", proxy_at))?;
    for _ in 1..workers {
        listeners.push(bind_reuseport(proxy_addr).map_err(bind_err("listen.proxy", proxy_addr))?);
    }
    let admin_listener = TcpListener::bind(admin_at)
        .await
        .map_err(bind_err("listen.admin", admin_at))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(bind_err("listen.admin", admin_at))?;
    // Pick up the fleet's current modes, and this proxy's windows, before the first request.
    if let Err(e) = crate::control::poll_state(&app).await {
        warn!(error = %e, "state store not readable at start-up; starting from the config's modes");
    }
    match crate::control::restore_windows(&app).await {
        Ok(n) if n > 0 => info!(routes = n, "route windows resumed"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "saved route windows not readable; starting from empty ones"),
    }
    let (tx, rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(crate::admin::serve(
        app.clone(),
        admin_listener,
        rx.clone(),
    ))];
    for (i, listener) in listeners.into_iter().enumerate() {
        let handle =
            spawn_worker(i, app.clone(), listener, rx.clone()).map_err(StartError::Thread)?;
        tasks.push(tokio::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }));
    }
    start_memory_trimmer();
    tasks.push(tokio::spawn(crate::control::auto_rollback_loop(
        app.clone(),
        rx.clone(),
    )));
    if let Some(s) = &app.config().state {
        let every = Duration::from_millis(s.poll_ms.max(50));
        tasks.push(tokio::spawn(crate::control::poll_state_loop(
            app.clone(),
            every,
            rx.clone(),
        )));
        let every = Duration::from_secs(s.save_windows_secs.max(1));
        tasks.push(tokio::spawn(crate::control::save_windows_loop(
            app.clone(),
            every,
            rx.clone(),
        )));
    }
    // What `cutover check --probe` would say, as warnings: a wrong session folder or a dead
    // candidate shows in the log at once, not as mismatches later.
    let config = app.config();
    tokio::spawn(async move {
        for f in crate::probe::probe(&config, crate::probe::Reach::Connect).await {
            if let crate::probe::Status::Failed(cause) = &f.status {
                warn!(part = %f.part, target = %f.target, %cause, "start-up probe failed");
            }
        }
    });
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

/// A worker: a thread with its own single-threaded runtime, listener and upstream pool (thread
/// per core, as nginx runs a process per core). It returns after a graceful shutdown.
fn spawn_worker(
    i: usize,
    app: Arc<App>,
    listener: std::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("cutover-worker-{i}"))
        .stack_size(cutover_session::php::STACK_BYTES)
        .spawn(move || {
            crate::stats::set_worker_shard(i);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Large sessions are decoded on the blocking pool; PHP allows 4096 levels.
                .thread_stack_size(cutover_session::php::STACK_BYTES)
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "worker runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let config = app.config();
                let limits = crate::app::pool_limits(&config, config.workers());
                match crate::upstream::pool(config.ca_file().as_deref(), limits) {
                    Ok(p) => {
                        p.start_reaper();
                        crate::upstream::set_worker_pool(p)
                    }
                    Err(e) => tracing::warn!(error = %e, "worker pool; using the shared one"),
                }
                match TcpListener::from_std(listener) {
                    Ok(l) => crate::proxy::serve(app, l, stop).await,
                    Err(e) => tracing::error!(error = %e, "worker listener"),
                }
            });
            // Mirrors still running are not waited for beyond this.
            rt.shutdown_timeout(Duration::from_millis(100));
        })
}
