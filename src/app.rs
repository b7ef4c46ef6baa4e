//! The proxy's shared state and its construction: the config in force, the route table, the
//! counters, the mirror, the session resolver, the fleet store, the admin token and the event
//! log. Built once from a validated config (nothing is bound here); the runtime starts serving
//! it, the proxy reads it per request, control and admin change it.

use crate::api::Event;
use crate::config::Config;
use crate::fleet::Fleet;
use crate::mirror::{Mirror, MirrorParts, MirrorSettings};
use crate::route::RouteTable;
use crate::stats::Metrics;
use crate::upstream::{Limits, Pool, UpstreamUrl};
use arc_swap::ArcSwap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Events kept in memory (the oldest are dropped).
pub const MAX_EVENTS: usize = 1000;

/// Promotions, rollbacks, resets and reloads, newest last: `GET /api/events`.
#[derive(Default)]
pub struct Events {
    list: Mutex<VecDeque<Event>>,
}

impl Events {
    pub fn push(&self, e: Event) {
        tracing::info!(target: "cutover::events", kind = %e.kind, route = ?e.route, reason = %e.reason, "event");
        let mut l = match self.list.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        if l.len() >= MAX_EVENTS {
            l.pop_front();
        }
        l.push_back(e);
    }

    /// Oldest first.
    pub fn all(&self) -> Vec<Event> {
        match self.list.lock() {
            Ok(l) => l.iter().cloned().collect(),
            Err(p) => p.into_inner().iter().cloned().collect(),
        }
    }
}

/// Everything a request needs, shared by all connections.
// Aligned so that in its `Arc` the reference counts, which every worker updates, have a cache
// line to themselves instead of sharing one with fields every request reads.
#[repr(align(128))]
pub struct App {
    /// The config in force: swapped by a reload for the sections a reload applies.
    config: ArcSwap<Config>,
    pub legacy: UpstreamUrl,
    /// The pool of threads that are not proxy workers (each worker has its own).
    pool: Pool,
    pub routes: RouteTable,
    pub metrics: Arc<Metrics>,
    pub mirror: Arc<Mirror>,
    /// The session cookie's name (`session_name()`).
    pub session_cookie: String,
    /// The session store and header signer (None with `store = "none"`).
    pub session: Option<Arc<crate::session::Resolver>>,
    /// The fleet's shared route modes (None without `[state]`).
    pub fleet: Option<Fleet>,
    pub events: Events,
    admin_token: std::sync::RwLock<Option<String>>,
    /// What client requests are held to (`[listen]`, `upstreams.legacy_timeout_ms`).
    pub limits: RequestLimits,
    pub started: Instant,
}

/// What client requests are held to; set at start-up.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Longest gap between two reads of a request body.
    pub body_idle: Duration,
    /// Largest request body.
    pub max_body: u64,
    /// Where large request bodies wait until complete.
    pub spool_dir: std::path::PathBuf,
    /// Longest wait for the legacy app's response head.
    pub legacy_timeout: Duration,
    /// Clients whose `X-Forwarded-*` headers are kept.
    pub trusted_proxies: Vec<crate::upstream::headers::IpBlock>,
}

impl RequestLimits {
    pub fn of(config: &Config) -> RequestLimits {
        RequestLimits {
            body_idle: Duration::from_millis(config.listen.body_timeout_ms.max(1)),
            max_body: config.listen.max_request_body_bytes,
            spool_dir: config
                .listen
                .spool_dir
                .as_deref()
                .map_or_else(std::env::temp_dir, |d| config.resolve(d)),
            legacy_timeout: Duration::from_millis(config.upstreams.legacy_timeout_ms.max(1)),
            trusted_proxies: config.listen.trusted_proxies.clone(),
        }
    }
}

/// Why the proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("config: {0}")]
    Config(#[from] crate::located::ConfigError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("upstreams: {0}")]
    Tls(#[from] crate::upstream::TlsError),
    #[error("samples.jsonl_path: {0}")]
    Sink(#[from] crate::samples::SinkError),
    #[error("record.path: {0}")]
    Record(crate::samples::SinkError),
    #[error("samples: {0}")]
    Redact(#[from] crate::samples::RedactError),
    #[error("state: {0}")]
    Fleet(#[from] crate::fleet::StoreError),
    #[error("{0}")]
    Session(#[from] crate::session::SetupError),
}

/// The connection limits of one of `workers` pools: `upstreams.max_connections` spread over
/// them (rounded up), idle ones closed after a minute.
pub fn pool_limits(config: &Config, workers: usize) -> Limits {
    Limits {
        max_open: config
            .upstreams
            .max_connections
            .get_ref()
            .div_ceil(workers.max(1)),
        idle_timeout: Duration::from_millis(config.upstreams.idle_timeout_ms.max(1)),
    }
}

/// The mirror's settings from a config.
pub fn mirror_settings(config: &Config) -> Result<MirrorSettings, crate::samples::RedactError> {
    Ok(MirrorSettings {
        redactor: config.samples.redactor()?,
        samples_per_route: config.samples.per_route,
        keep_request_bodies: config.samples.keep_request_bodies,
        noise: config.noise.thresholds(),
    })
}

impl App {
    pub async fn new(config: Config) -> Result<App, SetupError> {
        let metrics = Arc::new(Metrics::register()?.for_workers(config.workers()));
        let pool = crate::upstream::pool(config.ca_file().as_deref(), pool_limits(&config, 1))?;
        let routes = RouteTable::new(
            config.route_specs()?,
            config.default_route_settings()?,
            *config.defaults.max_routes.get_ref(),
            *config.gate.window_secs.get_ref(),
            metrics.clone(),
        );
        let s = &config.samples;
        let sink = if s.jsonl_path.is_empty() {
            None
        } else {
            Some(crate::samples::JsonlSink::start(
                config.resolve(&s.jsonl_path),
                s.jsonl_max_bytes,
                1024,
            )?)
        };
        let fleet = match &config.state {
            Some(s) => Some(Fleet::new(
                crate::fleet::Store::open(s, &config.base_dir).await?,
            )),
            None => None,
        };
        let admin_token = std::env::var(&config.admin.token_env)
            .ok()
            .filter(|t| !t.is_empty());
        let session = crate::session::Resolver::start(&config.session, &metrics)
            .await?
            .map(Arc::new);
        let recorder = match &config.record {
            Some(r) => Some(
                crate::record::Recorder::start(
                    config.resolve(r.path.get_ref()),
                    *r.sample.get_ref(),
                    r.max_bytes,
                    crate::record::Redaction {
                        redactor: config.samples.redactor()?,
                        cookie: config.session.cookie.clone(),
                    },
                    &metrics,
                )
                .map_err(SetupError::Record)?,
            ),
            None => None,
        };
        let mirror = Arc::new(Mirror::new(MirrorParts {
            concurrency: *config.mirror.concurrency.get_ref(),
            queue: config.mirror.queue,
            max_buffered_bytes: usize::try_from(config.mirror.max_buffered_bytes)
                .unwrap_or(usize::MAX),
            legacy: config.upstreams.legacy.get_ref().clone(),
            twin: config
                .upstreams
                .legacy_twin
                .as_ref()
                .map(|t| t.get_ref().clone()),
            shared_pool: pool.clone(),
            metrics: metrics.clone(),
            settings: mirror_settings(&config)?,
            sink,
            session: session.clone(),
            recorder,
        }));
        pool.start_reaper();
        Ok(App {
            limits: RequestLimits::of(&config),
            legacy: config.upstreams.legacy.get_ref().clone(),
            session_cookie: config.session.cookie.clone(),
            config: ArcSwap::from_pointee(config),
            pool,
            routes,
            metrics,
            mirror,
            session,
            fleet,
            events: Events::default(),
            admin_token: std::sync::RwLock::new(admin_token),
            started: Instant::now(),
        })
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts a reloaded config in force (the sections a reload applies read it from here).
    pub fn set_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// The gate's thresholds in force.
    pub fn thresholds(&self) -> crate::gate::Thresholds {
        self.config.load().gate.thresholds()
    }

    /// The upstream pool for the calling thread (the worker's own, else the shared one).
    pub fn pool(&self) -> Pool {
        crate::upstream::pool_for_this_thread(&self.pool)
    }

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

    /// The state-store version of a route this proxy has applied (0: none).
    pub fn state_version_of(&self, route: &str) -> u64 {
        self.fleet.as_ref().map_or(0, |f| f.version_of(route))
    }

    /// The sum of every route's state version.
    pub fn state_version(&self) -> u64 {
        self.fleet.as_ref().map_or(0, Fleet::state_version)
    }
}
