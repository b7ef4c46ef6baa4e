//! The route table: the configured routes in file order (first match wins), then the automatic
//! template labels for everything else, capped at `max_routes` (past that: `other`). Each entry
//! carries its settings, its live mode, its counters and what its comparisons taught. A reload
//! swaps the configured list and every entry's settings; entries whose pattern stays keep their
//! counters.

use super::label::template_label;
use super::pattern::Pattern;
use crate::mode::Mode;
use crate::normalize::Rules;
use crate::stats::{Metrics, RouteStats};
use crate::upstream::UpstreamUrl;
use arc_swap::{ArcSwap, Guard};
use http::Method;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What a route does with a request, as the config gives it; swapped whole on a reload.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// The mode the config gives (what a reset and the state store start from).
    pub mode: Mode,
    pub sample: f64,
    pub mirror_methods: Vec<Method>,
    pub max_body_bytes: usize,
    pub candidate_timeout: Duration,
    pub candidate: Arc<UpstreamUrl>,
    pub rules: Arc<Rules>,
}

/// A configured route: its label (the pattern as written), the compiled pattern, its settings.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub label: String,
    pub pattern: Pattern,
    pub settings: RouteSettings,
}

/// What a route's comparisons have taught: its noise keys and its latest mismatches.
#[derive(Default)]
pub struct Findings {
    pub noise: crate::noise::NoiseModel,
    pub samples: crate::samples::SampleRing,
}

/// One route label and everything the proxy needs to serve and count it.
// Aligned so that in its `Arc` the reference counts, which every worker updates, have a cache
// line to themselves instead of sharing one with fields every request reads.
#[repr(align(128))]
pub struct RouteEntry {
    pub label: String,
    pub pattern: Option<Pattern>,
    mode: AtomicU8,
    /// Share of requests served by the candidate in `candidate` mode (100 = all).
    percent: AtomicU8,
    /// Read by every request without a lock or a reference-count update (a shared lock's
    /// cache line moved between the workers' cores on every read).
    settings: ArcSwap<RouteSettings>,
    pub stats: RouteStats,
    /// Difference fields already seen, to cap `cutover_differences_total` cardinality.
    pub diff_fields: Mutex<HashSet<String>>,
    findings: Mutex<Findings>,
    /// Totals when the route was promoted (None while not promoted): auto-rollback judges
    /// only what happened since.
    pub promoted_at: Mutex<Option<crate::stats::Totals>>,
    /// The latest candidate or session error with its cause, and when (unix seconds).
    last_error: Mutex<Option<(u64, String)>>,
    /// A request of this route could be mirrored (its method is mirrored), at least once.
    mirror_eligible: AtomicBool,
}

/// A poisoned lock only means a panic elsewhere mid-update; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl RouteEntry {
    fn new(
        label: &str,
        pattern: Option<Pattern>,
        settings: RouteSettings,
        metrics: &Metrics,
        window_secs: u64,
    ) -> RouteEntry {
        RouteEntry {
            label: label.to_string(),
            pattern,
            mode: AtomicU8::new(settings.mode.index() as u8),
            percent: AtomicU8::new(100),
            settings: ArcSwap::from_pointee(settings),
            stats: RouteStats::new(label, metrics, window_secs),
            diff_fields: Mutex::new(HashSet::new()),
            findings: Mutex::new(Findings::default()),
            promoted_at: Mutex::new(None),
            last_error: Mutex::new(None),
            mirror_eligible: AtomicBool::new(false),
        }
    }

    pub fn mode(&self) -> Mode {
        Mode::from_index(self.mode.load(Ordering::Relaxed))
    }

    pub fn percent(&self) -> u8 {
        self.percent.load(Ordering::Relaxed)
    }

    pub fn set_mode(&self, mode: Mode, percent: u8) {
        let mut base = lock(&self.promoted_at);
        match (self.mode(), mode) {
            (Mode::Candidate, Mode::Candidate) => {}
            (_, Mode::Candidate) => *base = Some(self.stats.totals()),
            _ => *base = None,
        }
        drop(base);
        self.mode.store(mode.index() as u8, Ordering::Relaxed);
        self.percent.store(percent.min(100), Ordering::Relaxed);
    }

    /// The settings now, for use before the next `.await`.
    pub fn settings(&self) -> Guard<Arc<RouteSettings>> {
        self.settings.load()
    }

    /// The settings, to keep across an `.await`.
    pub fn settings_owned(&self) -> Arc<RouteSettings> {
        self.settings.load_full()
    }

    pub fn set_settings(&self, settings: Arc<RouteSettings>) {
        self.settings.store(settings);
    }

    /// The mode the config gives this route.
    pub fn config_mode(&self) -> Mode {
        self.settings.load().mode
    }

    pub fn findings(&self) -> MutexGuard<'_, Findings> {
        lock(&self.findings)
    }

    /// Records a candidate or session error's cause for `/api/routes` (`last_error`).
    pub fn record_error(&self, cause: String, at: u64) {
        *lock(&self.last_error) = Some((at, cause));
    }

    pub fn last_error(&self) -> Option<(u64, String)> {
        lock(&self.last_error).clone()
    }

    /// Notes that a request of this route could be mirrored. Written once: afterwards a read.
    pub fn note_mirror_eligible(&self) {
        if !self.mirror_eligible.load(Ordering::Relaxed) {
            self.mirror_eligible.store(true, Ordering::Relaxed);
        }
    }

    /// Whether this route's comparisons can ever say anything: not `legacy`, and some request
    /// of it could be mirrored.
    pub fn mirrorable(&self) -> bool {
        self.mode() != Mode::Legacy && self.mirror_eligible.load(Ordering::Relaxed)
    }

    /// Forgets the window, the noise, the samples and the last error (after a fix is deployed).
    pub fn reset(&self) {
        self.stats.reset_window();
        let mut f = self.findings();
        f.noise.clear();
        f.samples.clear();
        drop(f);
        *lock(&self.last_error) = None;
    }
}

/// Most distinct difference fields counted per route before they fold into `other`.
pub const MAX_DIFF_FIELDS: usize = 64;

pub struct RouteTable {
    configured: ArcSwap<Vec<Arc<RouteEntry>>>,
    /// Read on every request of an automatic route, so read without a lock (a shared lock's
    /// cache line moved between the workers' cores on every request); a new label copies the
    /// map under `adding` (at most `max_routes` times).
    auto: ArcSwap<HashMap<String, Arc<RouteEntry>>>,
    adding: Mutex<()>,
    max_routes: usize,
    other: Arc<RouteEntry>,
    /// The settings automatic labels get, present and future.
    defaults: ArcSwap<RouteSettings>,
    window_secs: u64,
    metrics: Arc<Metrics>,
}

/// What a reload changed in the route list.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// `(old, new)` patterns at the same place in the file: the route starts afresh.
    pub repatterned: Vec<(String, String)>,
    pub kept: usize,
}

impl RouteChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.repatterned.is_empty()
    }
}

impl std::fmt::Display for RouteChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("added {}", self.added.join(", ")));
        }
        if !self.removed.is_empty() {
            parts.push(format!("removed {}", self.removed.join(", ")));
        }
        for (old, new) in &self.repatterned {
            parts.push(format!(
                "pattern {old} changed to {new}: its counts start afresh"
            ));
        }
        if parts.is_empty() {
            write!(f, "route list unchanged ({} routes)", self.kept)
        } else {
            write!(
                f,
                "routes: {}; {} kept their counts",
                parts.join("; "),
                self.kept
            )
        }
    }
}

impl RouteTable {
    pub fn new(
        configured: Vec<RouteSpec>,
        defaults: RouteSettings,
        max_routes: usize,
        window_secs: u64,
        metrics: Arc<Metrics>,
    ) -> RouteTable {
        let entries = configured
            .into_iter()
            .map(|r| {
                Arc::new(RouteEntry::new(
                    &r.label,
                    Some(r.pattern),
                    r.settings,
                    &metrics,
                    window_secs,
                ))
            })
            .collect();
        let other = Arc::new(RouteEntry::new(
            "other",
            None,
            defaults.clone(),
            &metrics,
            window_secs,
        ));
        let table = RouteTable {
            configured: ArcSwap::from_pointee(entries),
            auto: ArcSwap::from_pointee(HashMap::new()),
            adding: Mutex::new(()),
            max_routes,
            other,
            defaults: ArcSwap::from_pointee(defaults),
            window_secs,
            metrics,
        };
        for e in table.all() {
            table.publish_mode(&e);
        }
        table
    }

    /// Sets `cutover_route_mode` for an entry's current mode.
    pub fn publish_mode(&self, e: &RouteEntry) {
        let current = e.mode();
        for m in Mode::ALL {
            self.metrics
                .route_mode
                .with_label_values(&[&e.label, m.as_str()])
                .set(i64::from(m == current));
        }
    }

    /// The entry for a request path.
    pub fn lookup(&self, path: &str) -> Arc<RouteEntry> {
        if let Some(e) = self
            .configured
            .load()
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
        let _adding = lock(&self.adding);
        let auto = self.auto.load_full();
        if let Some(e) = auto.get(&label) {
            return e.clone();
        }
        if auto.len() >= self.max_routes {
            return self.other.clone();
        }
        let e = Arc::new(RouteEntry::new(
            &label,
            None,
            RouteSettings::clone(&self.defaults.load()),
            &self.metrics,
            self.window_secs,
        ));
        self.publish_mode(&e);
        let mut next = HashMap::clone(&auto);
        next.insert(label, e.clone());
        self.auto.store(Arc::new(next));
        e
    }

    /// Every entry: configured first (file order), then automatic ones by label, then `other`.
    pub fn all(&self) -> Vec<Arc<RouteEntry>> {
        let mut v: Vec<Arc<RouteEntry>> = self.configured.load().iter().cloned().collect();
        let auto = self.auto.load();
        let mut autos: Vec<Arc<RouteEntry>> = auto.values().cloned().collect();
        autos.sort_by(|a, b| a.label.cmp(&b.label));
        v.extend(autos);
        v.push(self.other.clone());
        v
    }

    /// The entry with this label (a configured pattern or an automatic label).
    pub fn by_label(&self, label: &str) -> Option<Arc<RouteEntry>> {
        if label == "other" {
            return Some(self.other.clone());
        }
        if let Some(e) = self.configured.load().iter().find(|e| e.label == label) {
            return Some(e.clone());
        }
        self.auto.load().get(label).cloned()
    }

    /// The entry with this label, made as an automatic one if there is none yet (for windows
    /// saved by an earlier run); None past `max_routes`.
    pub fn entry_for_label(&self, label: &str) -> Option<Arc<RouteEntry>> {
        if let Some(e) = self.by_label(label) {
            return Some(e);
        }
        let _adding = lock(&self.adding);
        let auto = self.auto.load_full();
        if let Some(e) = auto.get(label) {
            return Some(e.clone());
        }
        if auto.len() >= self.max_routes {
            return None;
        }
        let e = Arc::new(RouteEntry::new(
            label,
            None,
            RouteSettings::clone(&self.defaults.load()),
            &self.metrics,
            self.window_secs,
        ));
        self.publish_mode(&e);
        let mut next = HashMap::clone(&auto);
        next.insert(label.to_string(), e.clone());
        self.auto.store(Arc::new(next));
        Some(e)
    }

    pub fn auto_count(&self) -> usize {
        self.auto.load().len()
    }

    /// Applies a reloaded route list and defaults. Routes whose pattern stays keep their entry
    /// (counts, noise, samples, live mode) with the new settings — and the config's mode, if
    /// the config changed it; new patterns start counting; removed ones stop; automatic labels,
    /// present and future, take the new defaults.
    pub fn reload(&self, configured: Vec<RouteSpec>, defaults: RouteSettings) -> RouteChanges {
        let old = self.configured.load_full();
        let mut changes = RouteChanges::default();
        let mut next = Vec::with_capacity(configured.len());
        for (i, spec) in configured.into_iter().enumerate() {
            match old.iter().find(|e| e.label == spec.label) {
                Some(e) => {
                    let config_mode_changed = e.config_mode() != spec.settings.mode;
                    let mode = spec.settings.mode;
                    e.set_settings(Arc::new(spec.settings));
                    if config_mode_changed {
                        e.set_mode(mode, 100);
                        self.publish_mode(e);
                    }
                    changes.kept += 1;
                    next.push(e.clone());
                }
                None => {
                    let label = spec.label.clone();
                    match old.get(i) {
                        Some(was) if !configured_has(&next, &was.label) => {
                            // Filled in below when the old one turns out to be gone.
                            changes.repatterned.push((was.label.clone(), label.clone()));
                        }
                        _ => changes.added.push(label.clone()),
                    }
                    let e = Arc::new(RouteEntry::new(
                        &label,
                        Some(spec.pattern),
                        spec.settings,
                        &self.metrics,
                        self.window_secs,
                    ));
                    self.publish_mode(&e);
                    next.push(e);
                }
            }
        }
        // An "old pattern replaced at the same place" is only that if the old pattern is gone.
        let (real, moved): (Vec<_>, Vec<_>) = changes
            .repatterned
            .drain(..)
            .partition(|(old_label, _)| !configured_has(&next, old_label));
        changes.repatterned = real;
        changes.added.extend(moved.into_iter().map(|(_, new)| new));
        for e in old.iter() {
            let replaced = changes.repatterned.iter().any(|(o, _)| *o == e.label);
            if !configured_has(&next, &e.label) && !replaced {
                changes.removed.push(e.label.clone());
            }
        }
        self.configured.store(Arc::new(next));
        let defaults = Arc::new(defaults);
        for e in self.auto.load().values() {
            e.set_settings(defaults.clone());
        }
        self.other.set_settings(defaults.clone());
        self.defaults.store(defaults);
        changes
    }
}

fn configured_has(list: &[Arc<RouteEntry>], label: &str) -> bool {
    list.iter().any(|e| e.label == label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: Mode) -> RouteSettings {
        RouteSettings {
            mode,
            sample: 1.0,
            mirror_methods: vec![Method::GET],
            max_body_bytes: 1024,
            candidate_timeout: Duration::from_secs(1),
            candidate: Arc::new(UpstreamUrl::parse("http://127.0.0.1:1").expect("url")),
            rules: Arc::new(Rules::default()),
        }
    }

    fn spec(p: &str, mode: Mode) -> RouteSpec {
        RouteSpec {
            label: p.into(),
            pattern: Pattern::parse(p).expect("pattern"),
            settings: settings(mode),
        }
    }

    #[test]
    fn reload_keeps_the_counts_of_routes_that_stay() {
        let metrics = Arc::new(Metrics::register().expect("metrics"));
        let t = RouteTable::new(
            vec![spec("/a", Mode::Shadow), spec("/b/{id}", Mode::Shadow)],
            settings(Mode::Shadow),
            10,
            3600,
            metrics,
        );
        let a = t.lookup("/a");
        a.stats.request(Mode::Shadow, 200, true);
        let auto = t.lookup("/zzz/12");
        assert_eq!(auto.label, "/zzz/{n}");
        let changes = t.reload(
            vec![
                spec("/a", Mode::Shadow),
                spec("/b/{uid}", Mode::Shadow),
                spec("/c", Mode::Legacy),
            ],
            settings(Mode::Legacy),
        );
        assert_eq!(changes.added, vec!["/c".to_string()]);
        assert_eq!(
            changes.repatterned,
            vec![("/b/{id}".to_string(), "/b/{uid}".to_string())]
        );
        assert!(changes.removed.is_empty());
        assert_eq!(changes.kept, 1);
        assert!(Arc::ptr_eq(&t.lookup("/a"), &a), "the same entry");
        assert_eq!(t.lookup("/a").stats.window_sum().requests, 1);
        assert_eq!(t.lookup("/c").mode(), Mode::Legacy);
        // Automatic labels, present and future, take the new defaults.
        assert_eq!(auto.config_mode(), Mode::Legacy);
        assert_eq!(t.lookup("/new/label").config_mode(), Mode::Legacy);
        let gone = t.reload(vec![spec("/c", Mode::Legacy)], settings(Mode::Legacy));
        assert_eq!(gone.removed, vec!["/a".to_string(), "/b/{uid}".to_string()]);
        assert_eq!(t.lookup("/a").label, "/a", "an automatic label now");
        assert!(t.lookup("/a").pattern.is_none());
    }
}
