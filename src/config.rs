//! Configuration: the TOML file, parsed with serde (`deny_unknown_fields`) and validated before
//! anything binds (`from_str` → `validate()`). Addresses, upstream URLs and patterns are parsed
//! once, here. Every error names the file, the line and the key, so a mistake in a 200-line
//! config is found at once; the CLI maps [`ConfigError`] to exit 64.
//!
//! Fields whose values need checking beyond their type are kept as [`toml::Spanned`] so a
//! validation error can point at the line where the value was written.

pub use crate::located::ConfigError;
use crate::located::{line_of, read_file, toml_error};
use crate::mode::Mode;
use crate::normalize::{RuleSet, Rules};
use crate::route::{Pattern, RouteSettings, RouteSpec};
use crate::upstream::fastcgi::FastCgiApp;
use crate::upstream::{Protocol, UpstreamUrl};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// A listening address, parsed when the config loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(ListenAddr).map_err(|_| {
            serde::de::Error::custom(format!("`{s}` is not an address like 127.0.0.1:8080"))
        })
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UpstreamUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An HTTP method, checked when the config loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodName(pub http::Method);

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match http::Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
            Ok(m) if !s.is_empty() => Ok(MethodName(m)),
            _ => Err(serde::de::Error::custom(format!(
                "`{s}` is not an HTTP method"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for crate::upstream::headers::IpBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Client traffic.
    #[serde(default = "default_proxy_addr")]
    pub proxy: ListenAddr,
    /// `/metrics`, `/api/*`, `/healthz`; loopback by default.
    #[serde(default = "default_admin_addr")]
    pub admin: ListenAddr,
    /// Proxy worker threads (0: one per core).
    #[serde(default)]
    pub workers: usize,
    /// Clients whose `X-Forwarded-For/-Proto/-Host` are kept (appended to, for `-For`):
    /// addresses or blocks such as `10.0.0.0/8`. Anyone else's are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<crate::upstream::headers::IpBlock>,
    /// Longest gap between two reads of a request body; past it the client gets 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// Largest request body accepted; larger ones get 413 (nginx's client_max_body_size).
    #[serde(default = "default_max_request_body")]
    pub max_request_body_bytes: u64,
    /// Where request bodies too large to keep in memory wait until they are complete, before
    /// an upstream connection is taken for them (default: the system's temporary folder).
    #[serde(default)]
    pub spool_dir: Option<String>,
}

fn default_body_timeout() -> u64 {
    60_000
}
fn default_max_request_body() -> u64 {
    128 * 1024 * 1024
}

fn default_proxy_addr() -> ListenAddr {
    ListenAddr(SocketAddr::from(([127, 0, 0, 1], 8080)))
}
fn default_admin_addr() -> ListenAddr {
    ListenAddr(SocketAddr::from(([127, 0, 0, 1], 9090)))
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            proxy: default_proxy_addr(),
            admin: default_admin_addr(),
            workers: 0,
            trusted_proxies: Vec::new(),
            body_timeout_ms: default_body_timeout(),
            max_request_body_bytes: default_max_request_body(),
            spool_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    pub legacy: Spanned<UpstreamUrl>,
    pub candidate: Spanned<UpstreamUrl>,
    #[serde(default)]
    pub legacy_twin: Option<Spanned<UpstreamUrl>>,
    /// The PHP application behind a `fastcgi://` legacy (or twin).
    #[serde(default)]
    pub fastcgi: Option<FastCgiSection>,
    /// Extra PEM file of CA certificates trusted for `https://` upstreams (system roots always are).
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// Connections open to each upstream at once, per proxy (spread over its workers); more
    /// requests wait for one.
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<usize>,
    /// Longest wait for the legacy app's response head; past it the client gets 504.
    #[serde(default = "default_legacy_timeout")]
    pub legacy_timeout_ms: u64,
    /// Idle upstream connections older than this are closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
}

/// `[upstreams.fastcgi]`: what nginx's `root` and `index` say for `fastcgi_pass`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastCgiSection {
    /// SCRIPT_FILENAME = document_root + script; non-PHP files under it are served from disk.
    pub document_root: Spanned<String>,
    /// The front controller: paths that are neither a .php file nor a file run it.
    #[serde(default = "default_index")]
    pub index: Spanned<String>,
    /// Connections kept open to PHP-FPM between requests, per proxy (`FCGI_KEEP_CONN`). PHP-FPM
    /// gives each kept connection a worker of its own until it closes, so this must stay
    /// under the pool's `pm.max_children`; 0 opens a connection per request (nginx's default).
    #[serde(default)]
    pub keep_connections: usize,
}

fn default_index() -> Spanned<String> {
    Spanned::new(0..0, "index.php".into())
}

fn default_max_connections() -> Spanned<usize> {
    Spanned::new(0..0, 256)
}
fn default_legacy_timeout() -> u64 {
    60_000
}
fn default_idle_timeout() -> u64 {
    60_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    None,
    Files,
    Dynamodb,
    Redis,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::None => "none",
            StoreKind::Files => "files",
            StoreKind::Dynamodb => "dynamodb",
            StoreKind::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerializerKind {
    Php,
    PhpSerialize,
    PhpBinary,
}

impl SerializerKind {
    pub fn serializer(self) -> cutover_session::php::Serializer {
        use cutover_session::php::Serializer;
        match self {
            SerializerKind::Php => Serializer::Php,
            SerializerKind::PhpBinary => Serializer::PhpBinary,
            SerializerKind::PhpSerialize => Serializer::PhpSerialize,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    #[serde(default = "default_cookie")]
    pub cookie: String,
    #[serde(default = "default_store")]
    pub store: StoreKind,
    #[serde(default = "default_serializer")]
    pub serializer: SerializerKind,
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    #[serde(default = "default_session_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_header_max_age")]
    pub header_max_age_secs: u64,
    #[serde(default)]
    pub files: Option<SessionFiles>,
    #[serde(default)]
    pub dynamodb: Option<SessionDynamo>,
    #[serde(default)]
    pub redis: Option<SessionRedis>,
    /// How long the read of the session after PHP's response waits for PHP's lock.
    #[serde(default = "default_after_wait")]
    pub after_read_wait_ms: u64,
    /// The twin's own copy of the store: required with `upstreams.legacy_twin` and a store.
    #[serde(default)]
    pub twin: Option<SessionTwin>,
}

/// Where the twin PHP keeps its sessions: the same kind of store as the live one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionTwin {
    /// files: the twin PHP's `session.save_path`.
    #[serde(default)]
    pub path: Option<String>,
    /// redis: the twin PHP's phpredis key prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// dynamodb: the twin's table, same layout as the live one.
    #[serde(default)]
    pub table: Option<String>,
}

fn default_after_wait() -> u64 {
    5000
}

fn default_cookie() -> String {
    "PHPSESSID".into()
}
fn default_store() -> StoreKind {
    StoreKind::None
}
fn default_serializer() -> SerializerKind {
    SerializerKind::Php
}
fn default_secret_env() -> String {
    "CUTOVER_SESSION_SECRET".into()
}
fn default_session_timeout() -> u64 {
    50
}
fn default_header_max_age() -> u64 {
    60
}

impl Default for Session {
    fn default() -> Self {
        Session {
            cookie: default_cookie(),
            store: StoreKind::None,
            serializer: SerializerKind::Php,
            secret_env: default_secret_env(),
            timeout_ms: default_session_timeout(),
            header_max_age_secs: default_header_max_age(),
            files: None,
            dynamodb: None,
            redis: None,
            after_read_wait_ms: default_after_wait(),
            twin: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFiles {
    pub path: Spanned<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionDynamo {
    #[serde(default = "default_sessions_table")]
    pub table: String,
    #[serde(default = "default_hash_key")]
    pub hash_key: String,
    #[serde(default = "default_data_attribute")]
    pub data_attribute: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

fn default_sessions_table() -> String {
    "sessions".into()
}
fn default_hash_key() -> String {
    "id".into()
}
fn default_data_attribute() -> String {
    "data".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRedis {
    pub url: Spanned<String>,
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
}

fn default_redis_prefix() -> String {
    "PHPREDIS_SESSION:".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default = "default_sample")]
    pub sample: Spanned<f64>,
    #[serde(default = "default_mirror_methods")]
    pub mirror_methods: Vec<MethodName>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    #[serde(default = "default_candidate_timeout")]
    pub candidate_timeout_ms: u64,
    #[serde(default)]
    pub rules: Vec<Spanned<String>>,
    #[serde(default = "default_true")]
    pub builtin_rules: bool,
    #[serde(default = "default_max_routes")]
    pub max_routes: Spanned<usize>,
}

fn default_mode() -> Mode {
    Mode::Shadow
}
fn default_sample() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}
fn default_mirror_methods() -> Vec<MethodName> {
    vec![
        MethodName(http::Method::GET),
        MethodName(http::Method::HEAD),
    ]
}
fn default_max_body() -> u64 {
    4 * 1024 * 1024
}
fn default_candidate_timeout() -> u64 {
    5000
}
fn default_true() -> bool {
    true
}
fn default_max_routes() -> Spanned<usize> {
    Spanned::new(0..0, 500)
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            mode: default_mode(),
            sample: default_sample(),
            mirror_methods: default_mirror_methods(),
            max_body_bytes: default_max_body(),
            candidate_timeout_ms: default_candidate_timeout(),
            rules: Vec::new(),
            builtin_rules: true,
            max_routes: default_max_routes(),
        }
    }
}

/// Bounds of the mirror dispatcher (`[mirror]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Candidate calls in flight at once, over all routes.
    #[serde(default = "default_mirror_concurrency")]
    pub concurrency: Spanned<usize>,
    /// Mirrors waiting for a slot; past this they are dropped (`reason="queue_full"`).
    #[serde(default = "default_mirror_queue")]
    pub queue: usize,
    /// Request bodies kept in memory for mirroring, over all requests at once; past it a
    /// request is served but not mirrored (`reason="buffers_full"`).
    #[serde(default = "default_max_buffered")]
    pub max_buffered_bytes: u64,
}

fn default_mirror_concurrency() -> Spanned<usize> {
    Spanned::new(0..0, 256)
}
fn default_max_buffered() -> u64 {
    64 * 1024 * 1024
}
fn default_mirror_queue() -> usize {
    1024
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror {
            concurrency: default_mirror_concurrency(),
            queue: default_mirror_queue(),
            max_buffered_bytes: default_max_buffered(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noise {
    #[serde(default = "default_relative")]
    pub relative_threshold: f64,
    #[serde(default = "default_absolute")]
    pub absolute_threshold: f64,
}

fn default_relative() -> f64 {
    0.20
}
fn default_absolute() -> f64 {
    0.0003
}

impl Default for Noise {
    fn default() -> Self {
        Noise {
            relative_threshold: default_relative(),
            absolute_threshold: default_absolute(),
        }
    }
}

impl Noise {
    pub fn thresholds(&self) -> crate::noise::Thresholds {
        crate::noise::Thresholds {
            relative: self.relative_threshold,
            absolute: self.absolute_threshold,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Samples {
    #[serde(default = "default_per_route")]
    pub per_route: usize,
    /// Header names whose values are redacted, on top of the built-in credential list.
    #[serde(default = "default_redact_headers")]
    pub redact_headers: Vec<String>,
    #[serde(default)]
    pub jsonl_path: String,
    /// The JSONL file is rotated to `<path>.1` past this size.
    #[serde(default = "default_jsonl_max")]
    pub jsonl_max_bytes: u64,
    /// JSON pointers (with `*`) whose values are redacted in samples.
    #[serde(default)]
    pub redact_pointers: Vec<String>,
    /// Regexes whose matches are redacted in samples.
    #[serde(default)]
    pub redact_patterns: Vec<Spanned<String>>,
    /// Keep (redacted) request bodies in samples; off by default, they hold user data.
    #[serde(default)]
    pub keep_request_bodies: bool,
}

fn default_jsonl_max() -> u64 {
    64 * 1024 * 1024
}

fn default_per_route() -> usize {
    20
}
fn default_redact_headers() -> Vec<String> {
    vec!["cookie".into(), "set-cookie".into(), "authorization".into()]
}

impl Default for Samples {
    fn default() -> Self {
        Samples {
            per_route: default_per_route(),
            redact_headers: default_redact_headers(),
            jsonl_path: String::new(),
            jsonl_max_bytes: default_jsonl_max(),
            redact_pointers: Vec::new(),
            redact_patterns: Vec::new(),
            keep_request_bodies: false,
        }
    }
}

impl Samples {
    /// The redactor these settings describe (validated when the config loads).
    pub fn redactor(&self) -> Result<crate::samples::Redactor, crate::samples::RedactError> {
        let patterns: Vec<String> = self
            .redact_patterns
            .iter()
            .map(|p| p.get_ref().clone())
            .collect();
        crate::samples::Redactor::new(&self.redact_headers, &self.redact_pointers, &patterns)
    }
}

/// `[record]`: a share of the mirrored exchanges written to a JSONL file, for `cutover replay`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub path: Spanned<String>,
    /// Share of mirrored requests recorded, sticky per session.
    #[serde(default = "default_record_sample")]
    pub sample: Spanned<f64>,
    /// The file is rotated to `<path>.1` past this size.
    #[serde(default = "default_record_max")]
    pub max_bytes: u64,
}

fn default_record_sample() -> Spanned<f64> {
    Spanned::new(0..0, 0.01)
}
fn default_record_max() -> u64 {
    1 << 30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    #[serde(default = "default_max_mismatch")]
    pub max_mismatch_rate: Spanned<f64>,
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    #[serde(default = "default_confidence")]
    pub confidence: Spanned<f64>,
    #[serde(default = "default_window")]
    pub window_secs: Spanned<u64>,
    #[serde(default = "default_true")]
    pub verify_after_promotion: bool,
    #[serde(default = "default_rollback_rate")]
    pub rollback_mismatch_rate: f64,
}

fn default_max_mismatch() -> Spanned<f64> {
    Spanned::new(0..0, 0.001)
}
fn default_min_samples() -> u64 {
    1000
}
fn default_confidence() -> Spanned<f64> {
    Spanned::new(0..0, 0.95)
}
fn default_window() -> Spanned<u64> {
    Spanned::new(0..0, 3600)
}
fn default_rollback_rate() -> f64 {
    0.01
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            max_mismatch_rate: default_max_mismatch(),
            min_samples: default_min_samples(),
            confidence: default_confidence(),
            window_secs: default_window(),
            verify_after_promotion: true,
            rollback_mismatch_rate: default_rollback_rate(),
        }
    }
}

impl Gate {
    pub fn thresholds(&self) -> crate::gate::Thresholds {
        crate::gate::Thresholds {
            min_samples: self.min_samples,
            max_mismatch_rate: *self.max_mismatch_rate.get_ref(),
            confidence: *self.confidence.get_ref(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateStoreKind {
    File,
    Dynamodb,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub store: StateStoreKind,
    #[serde(default = "default_state_path")]
    pub path: String,
    #[serde(default = "default_state_table")]
    pub table: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// How often this proxy saves its route windows beside the state (and at shutdown), so a
    /// restart resumes them.
    #[serde(default = "default_save_windows")]
    pub save_windows_secs: u64,
    /// This proxy's name in the saved windows (default: host name and proxy port).
    #[serde(default)]
    pub proxy_id: Option<String>,
}

fn default_save_windows() -> u64 {
    60
}

fn default_state_path() -> String {
    "cutover-state.json".into()
}
fn default_state_table() -> String {
    "cutover_routes".into()
}
fn default_poll_ms() -> u64 {
    2000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_token_env")]
    pub token_env: String,
}

fn default_token_env() -> String {
    "CUTOVER_ADMIN_TOKEN".into()
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            token_env: default_token_env(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub pattern: Spanned<Pattern>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub rules: Vec<Spanned<String>>,
    #[serde(default)]
    pub mirror_methods: Option<Vec<MethodName>>,
    #[serde(default)]
    pub candidate: Option<Spanned<UpstreamUrl>>,
    #[serde(default)]
    pub sample: Option<Spanned<f64>>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub candidate_timeout_ms: Option<u64>,
}

impl Route {
    /// The pattern as written: the route's label.
    pub fn label(&self) -> &str {
        self.pattern.get_ref().as_str()
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    pub upstreams: Upstreams,
    #[serde(default)]
    pub session: Session,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub mirror: Mirror,
    #[serde(default)]
    pub noise: Noise,
    #[serde(default)]
    pub samples: Samples,
    #[serde(default)]
    pub gate: Gate,
    #[serde(default)]
    pub state: Option<State>,
    #[serde(default)]
    pub record: Option<Record>,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    /// The folder relative paths resolve against (the config file's folder).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where the config came from, for error messages.
    #[serde(skip)]
    pub source_name: String,
    /// The file it was loaded from (None when made from a string): what reload re-reads.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (name, text) = read_file(path)?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut c = Config::from_str_at(&text, &name, &base)?;
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses and validates config text; `name` is used in errors, `base_dir` resolves paths.
    pub fn from_str_at(text: &str, name: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| toml_error(name, text, &e))?;
        config.base_dir = base_dir.to_path_buf();
        config.source_name = name.to_string();
        config.validate(text)?;
        config.attach_fastcgi();
        Ok(config)
    }

    /// Gives the `fastcgi://` upstreams the application behind them (validated before).
    fn attach_fastcgi(&mut self) {
        let Some(f) = &self.upstreams.fastcgi else {
            return;
        };
        let app = Arc::new(FastCgiApp {
            document_root: self.resolve(f.document_root.get_ref()),
            index: f.index.get_ref().trim_start_matches('/').to_string(),
            // Each worker keeps its share (rounded up: at least one each when asked for).
            keep_connections: f.keep_connections.div_ceil(self.workers()),
        });
        let legacy = self.upstreams.legacy.get_mut();
        if legacy.protocol == Protocol::FastCgi {
            legacy.fastcgi = Some(app.clone());
        }
        if let Some(t) = self.upstreams.legacy_twin.as_mut() {
            let t = t.get_mut();
            if t.protocol == Protocol::FastCgi {
                t.fastcgi = Some(app);
            }
        }
    }

    /// Resolves a path written in the config against the config's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// This proxy's name among a fleet's saved windows: `state.proxy_id`, else the host name and
    /// the proxy port (distinct for proxies sharing one state file on a machine).
    pub fn proxy_id(&self) -> String {
        if let Some(id) = self.state.as_ref().and_then(|s| s.proxy_id.clone()) {
            return id;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", self.listen.proxy.0.port())
    }

    /// Proxy worker threads: `listen.workers`, or one per core when 0.
    pub fn workers(&self) -> usize {
        match self.listen.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    /// The `ca_file` for `https://` upstreams, resolved.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.upstreams
            .ca_file
            .as_ref()
            .map(|c| self.resolve(c.get_ref()))
    }

    fn located(
        &self,
        text: &str,
        span: std::ops::Range<usize>,
        key: &str,
        message: String,
    ) -> ConfigError {
        ConfigError {
            file: self.source_name.clone(),
            line: line_of(text, span.start, span.end),
            key: key.to_string(),
            message,
        }
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let err = |span: std::ops::Range<usize>, key: &str, message: String| {
            Err(self.located(text, span, key, message))
        };
        let at_least_one = [
            ("upstreams.max_connections", &self.upstreams.max_connections),
            ("defaults.max_routes", &self.defaults.max_routes),
            ("mirror.concurrency", &self.mirror.concurrency),
        ];
        for (key, v) in at_least_one {
            if *v.get_ref() == 0 {
                return err(v.span(), key, "must be at least 1".into());
            }
        }
        if let Some(ca) = &self.upstreams.ca_file {
            let path = self.resolve(ca.get_ref());
            if !path.is_file() {
                return err(
                    ca.span(),
                    "upstreams.ca_file",
                    format!("{} does not exist", path.display()),
                );
            }
        }
        check_fraction(self, text, &self.defaults.sample, "defaults.sample")?;
        if let Some(r) = &self.record {
            if r.path.get_ref().is_empty() {
                return err(r.path.span(), "record.path", "must name a file".into());
            }
            check_fraction(self, text, &r.sample, "record.sample")?;
        }
        check_rules(self, text, &self.defaults.rules, "defaults.rules")?;
        let mut seen = BTreeMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(prev) = seen.insert(r.label().to_string(), i) {
                return err(
                    r.pattern.span(),
                    &format!("route[{i}].pattern"),
                    format!("the same pattern as route[{prev}]; the second can never match"),
                );
            }
            if let Some(s) = &r.sample {
                check_fraction(self, text, s, &format!("route[{i}].sample"))?;
            }
            check_rules(self, text, &r.rules, &format!("route[{i}].rules"))?;
        }
        let g = &self.gate;
        let rate = *g.max_mismatch_rate.get_ref();
        if !(0.0..1.0).contains(&rate) {
            return err(
                g.max_mismatch_rate.span(),
                "gate.max_mismatch_rate",
                format!("{rate} is not in [0, 1)"),
            );
        }
        let conf = *g.confidence.get_ref();
        if !(conf > 0.5 && conf < 1.0) {
            return err(
                g.confidence.span(),
                "gate.confidence",
                format!("{conf} is not in (0.5, 1)"),
            );
        }
        if *g.window_secs.get_ref() < 60 {
            return err(
                g.window_secs.span(),
                "gate.window_secs",
                "must be at least 60".into(),
            );
        }
        match self.session.store {
            StoreKind::Files if self.session.files.is_none() => {
                return err(
                    0..0,
                    "session.files.path",
                    "store = \"files\" needs [session.files] path".into(),
                )
            }
            StoreKind::Redis if self.session.redis.is_none() => {
                return err(
                    0..0,
                    "session.redis.url",
                    "store = \"redis\" needs [session.redis] url".into(),
                )
            }
            _ => {}
        }
        for (i, p) in self.samples.redact_patterns.iter().enumerate() {
            if let Err(e) = regex::Regex::new(p.get_ref()) {
                return err(
                    p.span(),
                    &format!("samples.redact_patterns[{i}]"),
                    format!("not a regex: {e}"),
                );
            }
        }
        if let Some(f) = &self.session.files {
            if let Err(e) = cutover_session::files::SavePath::parse(f.path.get_ref()) {
                return err(
                    f.path.span(),
                    "session.files.path",
                    format!("`{}` is not a session.save_path: {e}", f.path.get_ref()),
                );
            }
        }
        self.validate_fastcgi(text)?;
        if self.upstreams.legacy_twin.is_some() && self.session.store != StoreKind::None {
            let (key, present) = match (self.session.store, &self.session.twin) {
                (_, None) => ("session.twin", false),
                (StoreKind::Files, Some(t)) => ("session.twin.path", t.path.is_some()),
                (StoreKind::Redis, Some(t)) => ("session.twin.prefix", t.prefix.is_some()),
                (StoreKind::Dynamodb, Some(t)) => ("session.twin.table", t.table.is_some()),
                (StoreKind::None, Some(_)) => ("session.twin", true),
            };
            if !present {
                return err(
                    0..0,
                    key,
                    format!(
                        "a twin (upstreams.legacy_twin) with a session store needs its own copy of the store, or it writes into real users' sessions: set {key}"
                    ),
                );
            }
        }
        if let Some(t) = self.session.twin.as_ref().and_then(|t| t.path.as_ref()) {
            if let Err(e) = cutover_session::files::SavePath::parse(t) {
                return err(
                    0..0,
                    "session.twin.path",
                    format!("`{t}` is not a session.save_path: {e}"),
                );
            }
        }
        if let Some(r) = &self.session.redis {
            if let Err(e) = redis::Client::open(r.url.get_ref().as_str()) {
                return err(r.url.span(), "session.redis.url", e.to_string());
            }
        }
        Ok(())
    }

    /// FastCGI is how PHP is reached (legacy, twin), with `[upstreams.fastcgi]` saying where
    /// the application is; a candidate speaks HTTP.
    fn validate_fastcgi(&self, text: &str) -> Result<(), ConfigError> {
        let u = &self.upstreams;
        let php_side = std::iter::once(("upstreams.legacy", &u.legacy))
            .chain(u.legacy_twin.iter().map(|t| ("upstreams.legacy_twin", t)));
        for (key, url) in php_side {
            if url.get_ref().protocol == Protocol::FastCgi && u.fastcgi.is_none() {
                return Err(self.located(
                    text,
                    url.span(),
                    key,
                    format!(
                        "`{}` is a FastCGI upstream: add [upstreams.fastcgi] with document_root (and index, default index.php)",
                        url.get_ref()
                    ),
                ));
            }
        }
        let candidates = std::iter::once(("upstreams.candidate".to_string(), &u.candidate)).chain(
            self.routes.iter().enumerate().filter_map(|(i, r)| {
                r.candidate
                    .as_ref()
                    .map(|c| (format!("route[{i}].candidate"), c))
            }),
        );
        for (key, url) in candidates {
            if url.get_ref().protocol == Protocol::FastCgi {
                return Err(self.located(
                    text,
                    url.span(),
                    &key,
                    format!(
                        "`{}`: a candidate speaks HTTP (http://, https:// or http+unix://); FastCGI is for legacy and legacy_twin",
                        url.get_ref()
                    ),
                ));
            }
        }
        if let Some(f) = &u.fastcgi {
            let index = f.index.get_ref();
            if index.trim_start_matches('/').is_empty() || index.split('/').any(|s| s == "..") {
                return Err(self.located(
                    text,
                    f.index.span(),
                    "upstreams.fastcgi.index",
                    format!("`{index}` is not a script under document_root"),
                ));
            }
            if f.document_root.get_ref().is_empty() {
                return Err(self.located(
                    text,
                    f.document_root.span(),
                    "upstreams.fastcgi.document_root",
                    "is empty".into(),
                ));
            }
        }
        Ok(())
    }

    /// The compiled rules of a route: the built-in ones, the defaults' list, then `route_rules`.
    pub fn rules_for(&self, route_rules: &[Spanned<String>]) -> Result<Rules, ConfigError> {
        Ok(Rules::compile(&self.rule_sets_for(route_rules)?))
    }

    /// The rule sets a route's rules are compiled from, in order.
    pub fn rule_sets_for(
        &self,
        route_rules: &[Spanned<String>],
    ) -> Result<Vec<Arc<RuleSet>>, ConfigError> {
        let mut sets = Vec::new();
        if self.defaults.builtin_rules {
            sets.push(Arc::new(RuleSet::builtin()?));
        }
        for r in self.defaults.rules.iter().chain(route_rules.iter()) {
            sets.push(Arc::new(RuleSet::load(&self.resolve(r.get_ref()))?));
        }
        Ok(sets)
    }

    /// What automatic route labels get: the defaults, with the defaults' rules.
    pub fn default_route_settings(&self) -> Result<RouteSettings, ConfigError> {
        let d = &self.defaults;
        Ok(RouteSettings {
            mode: d.mode,
            sample: *d.sample.get_ref(),
            mirror_methods: d.mirror_methods.iter().map(|m| m.0.clone()).collect(),
            max_body_bytes: usize::try_from(d.max_body_bytes).unwrap_or(usize::MAX),
            candidate_timeout: Duration::from_millis(d.candidate_timeout_ms),
            candidate: Arc::new(self.upstreams.candidate.get_ref().clone()),
            rules: Arc::new(self.rules_for(&[])?),
        })
    }

    /// Every configured route with its settings (the defaults' where it says nothing).
    pub fn route_specs(&self) -> Result<Vec<RouteSpec>, ConfigError> {
        let defaults = self.default_route_settings()?;
        let mut out = Vec::with_capacity(self.routes.len());
        for r in &self.routes {
            let rules = if r.rules.is_empty() {
                defaults.rules.clone()
            } else {
                Arc::new(self.rules_for(&r.rules)?)
            };
            out.push(RouteSpec {
                label: r.label().to_string(),
                pattern: r.pattern.get_ref().clone(),
                settings: RouteSettings {
                    mode: r.mode.unwrap_or(defaults.mode),
                    sample: r.sample.as_ref().map_or(defaults.sample, |s| *s.get_ref()),
                    mirror_methods: r.mirror_methods.as_ref().map_or_else(
                        || defaults.mirror_methods.clone(),
                        |m| m.iter().map(|m| m.0.clone()).collect(),
                    ),
                    max_body_bytes: r.max_body_bytes.map_or(defaults.max_body_bytes, |b| {
                        usize::try_from(b).unwrap_or(usize::MAX)
                    }),
                    candidate_timeout: r
                        .candidate_timeout_ms
                        .map_or(defaults.candidate_timeout, Duration::from_millis),
                    candidate: r.candidate.as_ref().map_or_else(
                        || defaults.candidate.clone(),
                        |c| Arc::new(c.get_ref().clone()),
                    ),
                    rules,
                },
            });
        }
        Ok(out)
    }
}

fn check_fraction(c: &Config, text: &str, v: &Spanned<f64>, key: &str) -> Result<(), ConfigError> {
    let x = *v.get_ref();
    if !(0.0..=1.0).contains(&x) {
        return Err(c.located(text, v.span(), key, format!("{x} is not between 0 and 1")));
    }
    Ok(())
}

fn check_rules(
    c: &Config,
    text: &str,
    rules: &[Spanned<String>],
    key: &str,
) -> Result<(), ConfigError> {
    for r in rules {
        let path = c.resolve(r.get_ref());
        if let Err(e) = RuleSet::load(&path) {
            return Err(c.located(
                text,
                r.span(),
                key,
                format!("rules file {}: {e}", path.display()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_of_the_contract() {
        let c = Config::from_str_at(
            "[upstreams]\nlegacy = \"http://a\"\ncandidate = \"http://b\"\n",
            "t",
            Path::new("."),
        )
        .expect("minimal config");
        assert_eq!(c.listen.proxy.0.to_string(), "127.0.0.1:8080");
        assert_eq!(c.listen.admin.0.to_string(), "127.0.0.1:9090");
        assert_eq!(c.defaults.mode, Mode::Shadow);
        assert_eq!(c.defaults.max_body_bytes, 4_194_304);
        assert_eq!(*c.defaults.max_routes.get_ref(), 500);
        assert_eq!(c.gate.min_samples, 1000);
        assert_eq!(c.session.store, StoreKind::None);
        assert_eq!(c.samples.per_route, 20);
        assert_eq!(c.upstreams.legacy.get_ref().authority.as_str(), "a");
    }
}
