//! Configuration: the TOML file of the contract, parsed with serde (`deny_unknown_fields`) and
//! validated before anything binds. Every error names the file, the line and the key, so a
//! mistake in a 200-line config is found at once; the CLI maps [`ConfigError`] to exit 64.
//!
//! Fields whose values need checking beyond their type are kept as [`toml::Spanned`] so a
//! validation error can point at the line where the value was written.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A configuration mistake, located.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: key `{key}`: {message}")]
pub struct ConfigError {
    pub file: String,
    /// 1-based line; 0 when the problem is not at one place (for example an unreadable file).
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// Route and default modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// PHP only.
    Legacy,
    /// PHP serves, the candidate is mirrored and compared.
    Shadow,
    /// The candidate serves.
    Candidate,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Legacy, Mode::Shadow, Mode::Candidate];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::Shadow => "shadow",
            Mode::Candidate => "candidate",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "default_proxy_addr")]
    pub proxy: Spanned<String>,
    #[serde(default = "default_admin_addr")]
    pub admin: Spanned<String>,
    /// Addition: proxy worker threads (0: one per core).
    #[serde(default)]
    pub workers: usize,
}

fn default_proxy_addr() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".to_string())
}
fn default_admin_addr() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9090".to_string())
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            proxy: default_proxy_addr(),
            admin: default_admin_addr(),
            workers: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    pub legacy: Spanned<String>,
    pub candidate: Spanned<String>,
    #[serde(default)]
    pub legacy_twin: Option<Spanned<String>>,
    /// Extra PEM file of CA certificates trusted for `https://` upstreams (system roots always are).
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// Connections open to each upstream at once, per proxy (spread over its workers); more
    /// requests wait for one (an addition to the contract).
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<usize>,
}

fn default_max_connections() -> Spanned<usize> {
    Spanned::new(0..0, 256)
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

#[derive(Debug, Clone, Deserialize)]
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
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFiles {
    pub path: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionDynamo {
    #[serde(default = "default_sessions_table")]
    pub table: String,
    #[serde(default = "default_hash_key")]
    pub hash_key: String,
    #[serde(default = "default_data_attribute")]
    pub data_attribute: String,
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
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

#[derive(Debug, Clone, Deserialize)]
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
    pub mirror_methods: Vec<Spanned<String>>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    #[serde(default = "default_candidate_timeout")]
    pub candidate_timeout_ms: u64,
    #[serde(default)]
    pub rules: Vec<Spanned<String>>,
    #[serde(default = "default_true")]
    pub builtin_rules: bool,
    #[serde(default = "default_max_routes")]
    pub max_routes: usize,
}

fn default_mode() -> Mode {
    Mode::Shadow
}
fn default_sample() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}
fn default_mirror_methods() -> Vec<Spanned<String>> {
    ["GET", "HEAD"]
        .iter()
        .map(|m| Spanned::new(0..0, m.to_string()))
        .collect()
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
fn default_max_routes() -> usize {
    500
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

/// Bounds of the mirror dispatcher (an addition to the contract: `[mirror]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Candidate calls in flight at once, over all routes.
    #[serde(default = "default_mirror_concurrency")]
    pub concurrency: usize,
    /// Mirrors waiting for a slot; past this they are dropped (`reason="queue_full"`).
    #[serde(default = "default_mirror_queue")]
    pub queue: usize,
}

fn default_mirror_concurrency() -> usize {
    256
}
fn default_mirror_queue() -> usize {
    1024
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror {
            concurrency: default_mirror_concurrency(),
            queue: default_mirror_queue(),
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Samples {
    #[serde(default = "default_per_route")]
    pub per_route: usize,
    #[serde(default = "default_redact_headers")]
    pub redact_headers: Vec<String>,
    #[serde(default)]
    pub jsonl_path: String,
    /// Addition: the JSONL file is rotated to `<path>.1` past this size.
    #[serde(default = "default_jsonl_max")]
    pub jsonl_max_bytes: u64,
    /// Addition: JSON pointers (with `*`) whose values are redacted in samples.
    #[serde(default)]
    pub redact_pointers: Vec<String>,
    /// Addition: regexes whose matches are redacted in samples.
    #[serde(default)]
    pub redact_patterns: Vec<String>,
    /// Addition: keep (redacted) request bodies in samples; off by default, they hold user data.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateStoreKind {
    File,
    Dynamodb,
}

#[derive(Debug, Clone, Deserialize)]
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
    pub pattern: Spanned<String>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub rules: Vec<Spanned<String>>,
    #[serde(default)]
    pub mirror_methods: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub candidate: Option<Spanned<String>>,
    #[serde(default)]
    pub sample: Option<Spanned<f64>>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub candidate_timeout_ms: Option<u64>,
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

/// A validated `http://` or `https://` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix prepended to the request path (without a trailing slash).
    pub base_path: String,
}

impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("`{s}` has no scheme (use http:// or https://)"))?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!(
                "`{s}`: only http:// and https:// upstreams are supported"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{s}` has no host"))?;
        if uri.query().is_some() {
            return Err(format!("`{s}`: an upstream URL cannot have a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(UpstreamUrl {
            scheme,
            authority,
            base_path,
        })
    }

    /// The origin-form URI (path and query) of a request to this upstream, for the path and
    /// query of the client's request: the upstream's base path, if any, goes in front.
    pub fn origin_form(
        &self,
        path_and_query: Option<&http::uri::PathAndQuery>,
    ) -> Result<http::Uri, http::Error> {
        match path_and_query {
            // The common case: the client's path as it came, without copying it.
            Some(pq) if self.base_path.is_empty() => Ok(http::Uri::from(pq.clone())),
            pq => {
                let pq = pq.map_or("/", |p| p.as_str());
                let mut joined = String::with_capacity(self.base_path.len() + pq.len());
                joined.push_str(&self.base_path);
                joined.push_str(pq);
                Ok(http::Uri::try_from(joined)?)
            }
        }
    }
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
        Ok(config)
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

    fn err<T>(
        &self,
        text: &str,
        span: std::ops::Range<usize>,
        key: &str,
        message: String,
    ) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self.source_name.clone(),
            line: line_of(text, span.start, span.end),
            key: key.to_string(),
            message,
        })
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let max_conns = &self.upstreams.max_connections;
        if *max_conns.get_ref() == 0 {
            return self.err(
                text,
                max_conns.span(),
                "upstreams.max_connections",
                "must be at least 1".to_string(),
            );
        }
        for (key, addr) in [
            ("listen.proxy", &self.listen.proxy),
            ("listen.admin", &self.listen.admin),
        ] {
            if addr.get_ref().parse::<SocketAddr>().is_err() {
                return self.err(
                    text,
                    addr.span(),
                    key,
                    format!("`{}` is not an address like 127.0.0.1:8080", addr.get_ref()),
                );
            }
        }
        let mut urls = vec![
            ("upstreams.legacy", &self.upstreams.legacy),
            ("upstreams.candidate", &self.upstreams.candidate),
        ];
        if let Some(twin) = &self.upstreams.legacy_twin {
            urls.push(("upstreams.legacy_twin", twin));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(c) = &r.candidate {
                // The key names are built below for the message; keep the borrow simple here.
                if let Err(m) = UpstreamUrl::parse(c.get_ref()) {
                    return self.err(text, c.span(), &format!("route[{i}].candidate"), m);
                }
            }
        }
        for (key, url) in urls {
            if let Err(m) = UpstreamUrl::parse(url.get_ref()) {
                return self.err(text, url.span(), key, m);
            }
        }
        if let Some(ca) = &self.upstreams.ca_file {
            let path = self.resolve(ca.get_ref());
            if !path.is_file() {
                return self.err(
                    text,
                    ca.span(),
                    "upstreams.ca_file",
                    format!("{} does not exist", path.display()),
                );
            }
        }
        check_fraction(self, text, &self.defaults.sample, "defaults.sample")?;
        check_methods(
            self,
            text,
            &self.defaults.mirror_methods,
            "defaults.mirror_methods",
        )?;
        check_rules(self, text, &self.defaults.rules, "defaults.rules")?;
        if self.defaults.max_routes == 0 {
            return self.err(
                text,
                0..0,
                "defaults.max_routes",
                "must be at least 1".into(),
            );
        }
        if self.mirror.concurrency == 0 {
            return self.err(
                text,
                0..0,
                "mirror.concurrency",
                "must be at least 1".into(),
            );
        }
        let mut seen = BTreeMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("route[{i}].pattern");
            if let Err(m) = crate::route::Pattern::parse(r.pattern.get_ref()) {
                return self.err(text, r.pattern.span(), &key, m);
            }
            if let Some(prev) = seen.insert(r.pattern.get_ref().clone(), i) {
                return self.err(
                    text,
                    r.pattern.span(),
                    &key,
                    format!("the same pattern as route[{prev}]; the second can never match"),
                );
            }
            if let Some(s) = &r.sample {
                check_fraction(self, text, s, &format!("route[{i}].sample"))?;
            }
            if let Some(m) = &r.mirror_methods {
                check_methods(self, text, m, &format!("route[{i}].mirror_methods"))?;
            }
            check_rules(self, text, &r.rules, &format!("route[{i}].rules"))?;
        }
        let g = &self.gate;
        let rate = *g.max_mismatch_rate.get_ref();
        if !(0.0..1.0).contains(&rate) {
            return self.err(
                text,
                g.max_mismatch_rate.span(),
                "gate.max_mismatch_rate",
                format!("{rate} is not in [0, 1)"),
            );
        }
        let conf = *g.confidence.get_ref();
        if !(conf > 0.5 && conf < 1.0) {
            return self.err(
                text,
                g.confidence.span(),
                "gate.confidence",
                format!("{conf} is not in (0.5, 1)"),
            );
        }
        if *g.window_secs.get_ref() < 60 {
            return self.err(
                text,
                g.window_secs.span(),
                "gate.window_secs",
                "must be at least 60".into(),
            );
        }
        match self.session.store {
            StoreKind::Files if self.session.files.is_none() => {
                return self.err(
                    text,
                    0..0,
                    "session.files.path",
                    "store = \"files\" needs [session.files] path".into(),
                )
            }
            StoreKind::Redis if self.session.redis.is_none() => {
                return self.err(
                    text,
                    0..0,
                    "session.redis.url",
                    "store = \"redis\" needs [session.redis] url".into(),
                )
            }
            _ => {}
        }
        if let Err(m) = crate::samples::Redactor::new(
            &self.samples.redact_headers,
            &self.samples.redact_pointers,
            &self.samples.redact_patterns,
        ) {
            return self.err(text, 0..0, "samples.redact_patterns", m);
        }
        if let Some(f) = &self.session.files {
            if crate::session::files::SavePath::parse(f.path.get_ref()).is_err() {
                return self.err(
                    text,
                    f.path.span(),
                    "session.files.path",
                    format!("`{}` is not a session.save_path", f.path.get_ref()),
                );
            }
        }
        Ok(())
    }
}

fn check_fraction(c: &Config, text: &str, v: &Spanned<f64>, key: &str) -> Result<(), ConfigError> {
    let x = *v.get_ref();
    if !(0.0..=1.0).contains(&x) {
        return c.err(text, v.span(), key, format!("{x} is not between 0 and 1"));
    }
    Ok(())
}

fn check_methods(
    c: &Config,
    text: &str,
    methods: &[Spanned<String>],
    key: &str,
) -> Result<(), ConfigError> {
    for m in methods {
        if http::Method::from_bytes(m.get_ref().as_bytes()).is_err() || m.get_ref().is_empty() {
            return c.err(
                text,
                m.span(),
                key,
                format!("`{}` is not an HTTP method", m.get_ref()),
            );
        }
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
        if let Err(e) = crate::normalize::RuleSet::load(&path) {
            return c.err(
                text,
                r.span(),
                key,
                format!("rules file {}: {e}", path.display()),
            );
        }
    }
    Ok(())
}

/// A config or rules file's name (for errors) and text.
pub fn read_file(path: &Path) -> Result<(String, String), ConfigError> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((name, text)),
        Err(e) => Err(ConfigError {
            file: name,
            line: 0,
            key: "-".into(),
            message: format!("cannot read the file: {e}"),
        }),
    }
}

/// 1-based line of a byte offset; 0 for a default value that has no place in the file.
pub fn line_of(text: &str, start: usize, end: usize) -> usize {
    if start == 0 && end == 0 {
        return 0;
    }
    let start = start.min(text.len());
    text.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key written at byte `offset` (`defaults.sample`, `route[2].mode`), from the
/// `key = value` on that line and the table header above it.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let before = &text[..line_start];
    let header = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    let table = match header {
        None => return Some(key.to_string()),
        Some(h) if h.starts_with("[[") => {
            let name = h
                .trim_start_matches("[[")
                .split("]]")
                .next()
                .unwrap_or("")
                .trim();
            let index = before
                .lines()
                .filter(|l| l.trim() == h)
                .count()
                .saturating_sub(1);
            format!("{name}[{index}]")
        }
        Some(h) => h
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
    };
    Some(format!("{table}.{key}"))
}

/// Turns a toml/serde error into a located [`ConfigError`]: the key is the dotted key at the
/// error's place, or the text there when it is not on a `key = value` line.
pub fn toml_error(name: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, key) = match e.span() {
        Some(span) => {
            let key = key_at(text, span.start).unwrap_or_else(|| {
                let snippet = text.get(span.clone()).unwrap_or("").trim();
                snippet
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(60)
                    .collect()
            });
            (line_of(text, span.start.max(1), span.end), key)
        }
        None => (0, String::new()),
    };
    let key = if key.is_empty() { "-".to_string() } else { key };
    ConfigError {
        file: name.to_string(),
        line,
        key,
        message: e.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_with_their_table() {
        let t =
            "a = 1\n[defaults]\nsample = 2\n[[route]]\npattern = \"/a\"\n[[route]]\nmode = \"x\"\n";
        assert_eq!(key_at(t, 2).as_deref(), Some("a"));
        assert_eq!(
            key_at(t, t.find("sample").expect("in text") + 9).as_deref(),
            Some("defaults.sample")
        );
        assert_eq!(
            key_at(t, t.find("mode").expect("in text")).as_deref(),
            Some("route[1].mode")
        );
        assert_eq!(key_at(t, t.find("[defaults]").expect("in text")), None);
    }

    #[test]
    fn defaults_of_the_contract() {
        let c = Config::from_str_at(
            "[upstreams]\nlegacy = \"http://a\"\ncandidate = \"http://b\"\n",
            "t",
            Path::new("."),
        )
        .expect("minimal config");
        assert_eq!(c.listen.proxy.get_ref(), "127.0.0.1:8080");
        assert_eq!(c.listen.admin.get_ref(), "127.0.0.1:9090");
        assert_eq!(c.defaults.mode, Mode::Shadow);
        assert_eq!(c.defaults.max_body_bytes, 4_194_304);
        assert_eq!(c.defaults.max_routes, 500);
        assert_eq!(c.gate.min_samples, 1000);
        assert_eq!(c.session.store, StoreKind::None);
        assert_eq!(c.samples.per_route, 20);
    }
}
