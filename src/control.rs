//! Changing what the proxy does while it runs: promote, rollback and reset a route (judged by
//! the gate), reload config and rules, and the event log of all of those. The admin API, the
//! state poller and auto-rollback all come through here, so every change is logged the same way.

use crate::config::{Config, Mode};
use crate::gate::{self, Verdict};
use crate::proxy::table::{load_rules, RouteEntry};
use crate::proxy::App;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Events kept in memory (the oldest are dropped).
pub const MAX_EVENTS: usize = 1000;

/// One entry of `GET /api/events`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at: u64,
    /// `promote`, `forced_promote`, `rollback`, `auto_rollback`, `reset`, `reload`,
    /// `reload_failed`, `state_applied`.
    pub kind: String,
    pub route: Option<String>,
    pub reason: String,
    pub mode: Option<&'static str>,
    pub percent: Option<u8>,
    /// The route's verdict at that moment.
    pub verdict: Option<Verdict>,
}

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

/// Why a control action was refused.
#[derive(Debug)]
pub enum ControlError {
    NoSuchRoute(String),
    /// The gate is closed; the verdict says why.
    GateClosed(Verdict),
    BadRequest(String),
    /// The shared state store refused or failed.
    State(String),
}

pub fn verdict_of(app: &App, e: &RouteEntry) -> Verdict {
    let c = e.stats.window_sum();
    gate::verdict(crate::admin::evidence(&c), &crate::admin::thresholds(app))
}

fn find(app: &App, route: &str) -> Result<Arc<RouteEntry>, ControlError> {
    app.routes
        .by_label(route)
        .ok_or_else(|| ControlError::NoSuchRoute(route.to_string()))
}

/// Applies a mode to an entry and publishes it in the metrics.
pub fn apply_mode(app: &App, e: &RouteEntry, mode: Mode, percent: u8) {
    e.set_mode(mode, percent);
    app.routes.publish_mode(e);
}

/// Promotes a route (or `percent` of its traffic). `judged` is a verdict made elsewhere (a
/// fleet's summed counts); without it the route's own window is judged.
pub async fn promote(
    app: &App,
    route: &str,
    percent: u8,
    force: bool,
    reason: &str,
    judged: Option<Verdict>,
) -> Result<Event, ControlError> {
    if percent == 0 || percent > 100 {
        return Err(ControlError::BadRequest(format!(
            "percent {percent} is not in 1..=100"
        )));
    }
    let e = find(app, route)?;
    let verdict = judged.unwrap_or_else(|| verdict_of(app, &e));
    if !verdict.passing && !force {
        return Err(ControlError::GateClosed(verdict));
    }
    if force && reason.trim().is_empty() {
        return Err(ControlError::BadRequest("force needs a reason".into()));
    }
    crate::state::record(app, &e.label, Mode::Candidate, percent, reason)
        .await
        .map_err(ControlError::State)?;
    apply_mode(app, &e, Mode::Candidate, percent);
    let event = Event {
        at: crate::stats::now_secs(),
        kind: if verdict.passing {
            "promote"
        } else {
            "forced_promote"
        }
        .into(),
        route: Some(e.label.clone()),
        reason: if reason.is_empty() {
            verdict.reason.clone()
        } else {
            reason.to_string()
        },
        mode: Some(Mode::Candidate.as_str()),
        percent: Some(percent),
        verdict: Some(verdict),
    };
    app.events.push(event.clone());
    Ok(event)
}

/// Sends a route back to `shadow`. `automatic`: done by auto-rollback, with its reason.
pub async fn rollback(
    app: &App,
    route: &str,
    reason: &str,
    automatic: bool,
) -> Result<Event, ControlError> {
    let e = find(app, route)?;
    crate::state::record(app, &e.label, Mode::Shadow, 100, reason)
        .await
        .map_err(ControlError::State)?;
    apply_mode(app, &e, Mode::Shadow, 100);
    if automatic {
        app.metrics.auto_rollbacks.inc();
    }
    let event = Event {
        at: crate::stats::now_secs(),
        kind: if automatic {
            "auto_rollback"
        } else {
            "rollback"
        }
        .into(),
        route: Some(e.label.clone()),
        reason: if reason.is_empty() {
            "requested".into()
        } else {
            reason.to_string()
        },
        mode: Some(Mode::Shadow.as_str()),
        percent: Some(100),
        verdict: Some(verdict_of(app, &e)),
    };
    app.events.push(event.clone());
    Ok(event)
}

/// Forgets a route's window, noise and samples (after a fix is deployed, say).
pub fn reset(app: &App, route: &str) -> Result<Event, ControlError> {
    let e = find(app, route)?;
    e.stats.reset_window();
    {
        let mut ev = e.evidence();
        ev.noise.clear();
        ev.samples.clear();
    }
    let event = Event {
        at: crate::stats::now_secs(),
        kind: "reset".into(),
        route: Some(e.label.clone()),
        reason: "window, noise and samples cleared".into(),
        mode: Some(e.mode().as_str()),
        percent: Some(e.percent()),
        verdict: None,
    };
    app.events.push(event.clone());
    Ok(event)
}

/// Fewest post-promotion answers or comparisons auto-rollback judges.
pub const ROLLBACK_MIN_SAMPLES: u64 = 10;

/// One auto-rollback pass: every promoted route whose candidate 5xx rate, or mismatch rate
/// since the promotion, is confidently above `gate.rollback_mismatch_rate` goes back to shadow.
pub async fn auto_rollback_once(app: &App) -> Vec<String> {
    let rate = app.config.gate.rollback_mismatch_rate;
    let conf = *app.config.gate.confidence.get_ref();
    let mut rolled = Vec::new();
    for e in app.routes.all() {
        if e.mode() != Mode::Candidate {
            continue;
        }
        let base = match e.promoted_at.lock() {
            Ok(b) => *b,
            Err(p) => *p.into_inner(),
        };
        let Some(base) = base else { continue };
        let d = e.stats.totals().since(&base);
        let compared = d.matches + d.mismatches + d.errors;
        let reason = if gate::should_roll_back(
            d.server_errors,
            d.served,
            rate,
            conf,
            ROLLBACK_MIN_SAMPLES,
        ) {
            Some(format!("candidate answered {} of {} requests with 5xx or not at all since the promotion (> {:.2}%)", d.server_errors, d.served, rate * 100.0))
        } else if gate::should_roll_back(
            d.mismatches + d.errors,
            compared,
            rate,
            conf,
            ROLLBACK_MIN_SAMPLES,
        ) {
            Some(format!(
                "{} of {} comparisons since the promotion differ (> {:.2}%)",
                d.mismatches + d.errors,
                compared,
                rate * 100.0
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            tracing::warn!(route = %e.label, %reason, "auto-rollback");
            if rollback(app, &e.label, &reason, true).await.is_ok() {
                rolled.push(e.label.clone());
            }
        }
    }
    rolled
}

/// Runs auto-rollback every second until `stop` changes.
pub async fn auto_rollback_loop(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => { auto_rollback_once(&app).await; }
            _ = stop.changed() => break,
        }
    }
}

/// Re-reads the config file and every rules file; applies the rules and the admin token. An
/// invalid file keeps everything as it was. Other changes need a restart and are named.
pub fn reload(app: &App) -> Result<Event, String> {
    let result = reload_inner(app);
    let event = Event {
        at: crate::stats::now_secs(),
        kind: if result.is_ok() {
            "reload"
        } else {
            "reload_failed"
        }
        .into(),
        route: None,
        reason: match &result {
            Ok(r) => r.clone(),
            Err(e) => format!("kept the old config and rules: {e}"),
        },
        mode: None,
        percent: None,
        verdict: None,
    };
    if result.is_err() {
        tracing::warn!(reason = %event.reason, "reload failed");
    }
    app.events.push(event.clone());
    result.map(|_| event)
}

fn reload_inner(app: &App) -> Result<String, String> {
    let Some(path) = &app.config_path else {
        return Err("this proxy was not started from a config file".into());
    };
    let new = Config::load(path).map_err(|e| e.to_string())?;
    // Compile everything first: nothing changes unless every route's rules load.
    let mut compiled = Vec::new();
    for e in app.routes.all() {
        let route_rules = match &e.pattern {
            Some(_) => new
                .routes
                .iter()
                .find(|r| r.pattern.get_ref() == &e.label)
                .map(|r| r.rules.clone())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let rules = load_rules(&new, &route_rules).map_err(|e| e.to_string())?;
        compiled.push((e, Arc::new(rules)));
    }
    let n = compiled.len();
    for (e, rules) in compiled {
        e.set_rules(rules);
    }
    app.set_admin_token(std::env::var(&new.admin.token_env).ok());
    let mut restart = Vec::new();
    let old = &app.config;
    if old.listen.proxy.get_ref() != new.listen.proxy.get_ref()
        || old.listen.admin.get_ref() != new.listen.admin.get_ref()
    {
        restart.push("listen");
    }
    if old.upstreams.legacy.get_ref() != new.upstreams.legacy.get_ref()
        || old.upstreams.candidate.get_ref() != new.upstreams.candidate.get_ref()
        || old.upstreams.legacy_twin.as_ref().map(|t| t.get_ref())
            != new.upstreams.legacy_twin.as_ref().map(|t| t.get_ref())
    {
        restart.push("upstreams");
    }
    let patterns = |c: &Config| {
        c.routes
            .iter()
            .map(|r| r.pattern.get_ref().clone())
            .collect::<Vec<_>>()
    };
    if patterns(old) != patterns(&new) {
        restart.push("route list");
    }
    let mut msg = format!("rules reloaded for {n} routes");
    if !restart.is_empty() {
        msg.push_str(&format!(
            "; changed but needs a restart: {}",
            restart.join(", ")
        ));
    }
    Ok(msg)
}
