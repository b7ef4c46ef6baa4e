//! The route table: the configured `[[route]]`s in file order (first match wins), then the
//! automatic template labels for everything else, capped at `max_routes` (past that: `other`).
//! Each entry carries its settings, its live mode, its compiled rules and its counters.

use crate::config::{Config, Mode, UpstreamUrl};
use crate::normalize::{RuleSet, Rules};
use crate::route::{template_label, Pattern};
use crate::stats::{Metrics, RouteStats};
use http::Method;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One route label and everything the proxy needs to serve and count it.
// Aligned so that in its `Arc` the reference counts, which every worker updates, have a cache
// line to themselves instead of sharing one with fields every request reads.
#[repr(align(128))]
pub struct RouteEntry {
    pub label: String,
    pub pattern: Option<Pattern>,
    /// The mode the config gives (what `reset` and the state store start from).
    pub config_mode: Mode,
    mode: AtomicU8,
    /// Share of requests served by the candidate in `candidate` mode (100 = all).
    percent: AtomicU8,
    pub sample: f64,
    pub mirror_methods: Vec<Method>,
    pub max_body_bytes: usize,
    pub candidate_timeout: Duration,
    pub candidate: Arc<UpstreamUrl>,
    /// Swapped whole on a reload; read by every exchange without a lock or a reference-count
    /// update (a shared lock's cache line moved between the workers' cores on every read).
    rules: arc_swap::ArcSwap<Rules>,
    pub stats: RouteStats,
    /// Difference fields already seen, to cap `cutover_differences_total` cardinality.
    pub diff_fields: Mutex<HashSet<String>>,
    evidence: Mutex<Evidence>,
    /// Totals when the route was promoted (None while not promoted): auto-rollback judges
    /// only what happened since.
    pub promoted_at: Mutex<Option<crate::stats::Totals>>,
}

/// What the comparisons of a route have taught: its noise keys and its latest mismatches.
#[derive(Default)]
pub struct Evidence {
    pub noise: crate::noise::NoiseModel,
    pub samples: crate::samples::SampleRing,
}

impl RouteEntry {
    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            0 => Mode::Legacy,
            2 => Mode::Candidate,
            _ => Mode::Shadow,
        }
    }

    pub fn percent(&self) -> u8 {
        self.percent.load(Ordering::Relaxed)
    }

    pub fn set_mode(&self, mode: Mode, percent: u8) {
        let mut base = match self.promoted_at.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        match (self.mode(), mode) {
            (Mode::Candidate, Mode::Candidate) => {}
            (_, Mode::Candidate) => *base = Some(self.stats.totals()),
            _ => *base = None,
        }
        drop(base);
        self.mode.store(mode.index() as u8, Ordering::Relaxed);
        self.percent.store(percent.min(100), Ordering::Relaxed);
    }

    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// The rules now, for use before the next `.await`.
    pub fn rules_now(&self) -> arc_swap::Guard<Arc<Rules>> {
        self.rules.load()
    }

    pub fn evidence(&self) -> std::sync::MutexGuard<'_, Evidence> {
        match self.evidence.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn set_rules(&self, rules: Arc<Rules>) {
        self.rules.store(rules);
    }
}

/// Most distinct difference fields counted per route before they fold into `other`.
pub const MAX_DIFF_FIELDS: usize = 64;

pub struct RouteTable {
    configured: Vec<Arc<RouteEntry>>,
    /// Read on every request of an automatic route, so read without a lock (a shared lock's
    /// cache line moved between the workers' cores on every request); a new label copies the
    /// map under `adding` (at most `max_routes` times).
    auto: arc_swap::ArcSwap<HashMap<String, Arc<RouteEntry>>>,
    adding: Mutex<()>,
    max_routes: usize,
    other: Arc<RouteEntry>,
    defaults: AutoDefaults,
}

struct AutoDefaults {
    mode: Mode,
    sample: f64,
    mirror_methods: Vec<Method>,
    max_body_bytes: usize,
    candidate_timeout: Duration,
    candidate: Arc<UpstreamUrl>,
    rules: Arc<Rules>,
    window_secs: u64,
    metrics_route_mode: prometheus::IntGaugeVec,
}

fn methods(list: &[toml::Spanned<String>]) -> Vec<Method> {
    list.iter()
        .filter_map(|m| Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).ok())
        .collect()
}

/// Loads the rule sets a route uses, in order: built-in, defaults, the route's own.
pub fn load_rules(
    config: &Config,
    route_rules: &[toml::Spanned<String>],
) -> Result<Rules, crate::config::ConfigError> {
    let mut sets = Vec::new();
    if config.defaults.builtin_rules {
        sets.push(Arc::new(RuleSet::builtin()?));
    }
    for r in config.defaults.rules.iter().chain(route_rules.iter()) {
        sets.push(Arc::new(RuleSet::load(&config.resolve(r.get_ref()))?));
    }
    Ok(Rules::compile(&sets))
}

impl RouteTable {
    pub fn build(config: &Config, metrics: &Metrics) -> Result<RouteTable, String> {
        let parse = |s: &str| UpstreamUrl::parse(s).map(Arc::new);
        let candidate = parse(config.upstreams.candidate.get_ref())?;
        let d = &config.defaults;
        let default_rules = Arc::new(load_rules(config, &[]).map_err(|e| e.to_string())?);
        let window_secs = *config.gate.window_secs.get_ref();
        let defaults = AutoDefaults {
            mode: d.mode,
            sample: *d.sample.get_ref(),
            mirror_methods: methods(&d.mirror_methods),
            max_body_bytes: usize::try_from(d.max_body_bytes).unwrap_or(usize::MAX),
            candidate_timeout: Duration::from_millis(d.candidate_timeout_ms),
            candidate: candidate.clone(),
            rules: default_rules,
            window_secs,
            metrics_route_mode: metrics.route_mode.clone(),
        };
        let mut configured = Vec::new();
        for r in &config.routes {
            let pattern = Pattern::parse(r.pattern.get_ref())?;
            let rules = if r.rules.is_empty() {
                defaults.rules.clone()
            } else {
                Arc::new(load_rules(config, &r.rules).map_err(|e| e.to_string())?)
            };
            let entry = RouteEntry {
                label: r.pattern.get_ref().clone(),
                pattern: Some(pattern),
                config_mode: r.mode.unwrap_or(d.mode),
                mode: AtomicU8::new(r.mode.unwrap_or(d.mode).index() as u8),
                percent: AtomicU8::new(100),
                sample: r
                    .sample
                    .as_ref()
                    .map(|s| *s.get_ref())
                    .unwrap_or(defaults.sample),
                mirror_methods: r
                    .mirror_methods
                    .as_deref()
                    .map(methods)
                    .unwrap_or_else(|| defaults.mirror_methods.clone()),
                max_body_bytes: r
                    .max_body_bytes
                    .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
                    .unwrap_or(defaults.max_body_bytes),
                candidate_timeout: r
                    .candidate_timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(defaults.candidate_timeout),
                candidate: match &r.candidate {
                    Some(c) => parse(c.get_ref())?,
                    None => candidate.clone(),
                },
                rules: arc_swap::ArcSwap::new(rules),
                stats: RouteStats::new(r.pattern.get_ref(), metrics, window_secs),
                diff_fields: Mutex::new(HashSet::new()),
                evidence: Mutex::new(Evidence::default()),
                promoted_at: Mutex::new(None),
            };
            configured.push(Arc::new(entry));
        }
        let other = Arc::new(defaults.entry("other", metrics));
        let table = RouteTable {
            configured,
            auto: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            adding: Mutex::new(()),
            max_routes: d.max_routes,
            other,
            defaults,
        };
        for e in table.configured.iter().chain(std::iter::once(&table.other)) {
            table.publish_mode(e);
        }
        Ok(table)
    }

    /// Sets `cutover_route_mode` for an entry's current mode.
    pub fn publish_mode(&self, e: &RouteEntry) {
        let current = e.mode();
        for m in Mode::ALL {
            self.defaults
                .metrics_route_mode
                .with_label_values(&[&e.label, m.as_str()])
                .set(i64::from(m == current));
        }
    }

    /// The entry for a request path.
    pub fn lookup(&self, path: &str, metrics: &Metrics) -> Arc<RouteEntry> {
        if let Some(e) = self
            .configured
            .iter()
            .find(|e| e.pattern.as_ref().is_some_and(|p| p.matches(path)))
        {
            return e.clone();
        }
        let label = template_label(path);
        {
            let auto = self.auto.load();
            if let Some(e) = auto.get(&label) {
                return e.clone();
            }
            if auto.len() >= self.max_routes {
                return self.other.clone();
            }
        }
        let _adding = match self.adding.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        let auto = self.auto.load_full();
        if let Some(e) = auto.get(&label) {
            return e.clone();
        }
        if auto.len() >= self.max_routes {
            return self.other.clone();
        }
        let e = Arc::new(self.defaults.entry(&label, metrics));
        self.publish_mode(&e);
        let mut next = HashMap::clone(&auto);
        next.insert(label, e.clone());
        self.auto.store(Arc::new(next));
        e
    }

    /// Every entry: configured first (file order), then automatic ones by label, then `other`.
    pub fn all(&self) -> Vec<Arc<RouteEntry>> {
        let mut v: Vec<Arc<RouteEntry>> = self.configured.clone();
        let auto = self.auto.load();
        let mut autos: Vec<Arc<RouteEntry>> = auto.values().cloned().collect();
        autos.sort_by(|a, b| a.label.cmp(&b.label));
        v.extend(autos);
        v.push(self.other.clone());
        v
    }

    /// The entry with this label (a configured pattern or an automatic label).
    pub fn by_label(&self, label: &str) -> Option<Arc<RouteEntry>> {
        self.all().into_iter().find(|e| e.label == label)
    }

    pub fn auto_count(&self) -> usize {
        self.auto.load().len()
    }
}

impl AutoDefaults {
    fn entry(&self, label: &str, metrics: &Metrics) -> RouteEntry {
        RouteEntry {
            label: label.to_string(),
            pattern: None,
            config_mode: self.mode,
            mode: AtomicU8::new(self.mode.index() as u8),
            percent: AtomicU8::new(100),
            sample: self.sample,
            mirror_methods: self.mirror_methods.clone(),
            max_body_bytes: self.max_body_bytes,
            candidate_timeout: self.candidate_timeout,
            candidate: self.candidate.clone(),
            rules: arc_swap::ArcSwap::new(self.rules.clone()),
            stats: RouteStats::new(label, metrics, self.window_secs),
            diff_fields: Mutex::new(HashSet::new()),
            evidence: Mutex::new(Evidence::default()),
            promoted_at: Mutex::new(None),
        }
    }
}
