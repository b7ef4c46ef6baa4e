//! Changing what the proxy does while it runs: promote, rollback and reset a route (judged by
//! the gate), reload config and rules, apply the fleet's stored modes (polling the state store),
//! and roll back failing promoted routes by themselves. The admin API, SIGHUP, the state poller
//! and auto-rollback all come through here, so every change is logged as an event the same way.

use crate::api::Event;
use crate::app::App;
use crate::config::Config;
use crate::gate::{self, Verdict};
use crate::mode::Mode;
use crate::route::RouteEntry;
use std::sync::Arc;

/// Why a control action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no route {0}")]
    NoSuchRoute(String),
    /// The gate is closed; the verdict says why.
    #[error("the gate is closed: {}", .0.reason)]
    GateClosed(Verdict),
    #[error("{0}")]
    BadRequest(String),
    /// The shared state store refused or failed.
    #[error("{0}")]
    State(#[from] crate::fleet::WriteError),
}

/// A route's verdict over its own window now.
pub fn verdict_of(app: &App, e: &RouteEntry) -> Verdict {
    gate::verdict(e.stats.window_sum().evidence(), &app.thresholds())
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

/// A request to promote a route.
pub struct Promotion<'a> {
    pub route: &'a str,
    /// Share of the route's sessions the candidate serves (1..=100).
    pub percent: u8,
    /// Promote although the gate is closed (needs a reason).
    pub force: bool,
    pub reason: &'a str,
}

/// Promotes a route (or `percent` of its traffic) if its gate, judged on this proxy's own
/// counts, passes — or when forced, with a reason. A verdict a client sends along (a fleet's
/// summed counts) is a claim: it can be named in the reason of a forced promotion, never open
/// the gate by itself.
pub async fn promote(app: &App, p: Promotion<'_>) -> Result<Event, ControlError> {
    if p.percent == 0 || p.percent > 100 {
        return Err(ControlError::BadRequest(format!(
            "percent {} is not in 1..=100",
            p.percent
        )));
    }
    let e = find(app, p.route)?;
    let verdict = verdict_of(app, &e);
    if !verdict.passing && !p.force {
        return Err(ControlError::GateClosed(verdict));
    }
    if p.force && p.reason.trim().is_empty() {
        return Err(ControlError::BadRequest("force needs a reason".into()));
    }
    record_state(app, &e.label, Mode::Candidate, p.percent, p.reason).await?;
    apply_mode(app, &e, Mode::Candidate, p.percent);
    let event = Event {
        at: crate::stats::now_secs(),
        kind: if verdict.passing {
            "promote"
        } else {
            "forced_promote"
        }
        .into(),
        route: Some(e.label.clone()),
        reason: if p.reason.is_empty() {
            verdict.reason.clone()
        } else {
            p.reason.to_string()
        },
        mode: Some(Mode::Candidate.as_str().into()),
        percent: Some(p.percent),
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
    record_state(app, &e.label, Mode::Shadow, 100, reason).await?;
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
        mode: Some(Mode::Shadow.as_str().into()),
        percent: Some(100),
        verdict: Some(verdict_of(app, &e)),
    };
    app.events.push(event.clone());
    Ok(event)
}

/// Forgets a route's window, noise and samples (after a fix is deployed, say).
pub fn reset(app: &App, route: &str) -> Result<Event, ControlError> {
    let e = find(app, route)?;
    e.reset();
    let event = Event {
        at: crate::stats::now_secs(),
        kind: "reset".into(),
        route: Some(e.label.clone()),
        reason: "window, noise and samples cleared".into(),
        mode: Some(e.mode().as_str().into()),
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
    let config = app.config();
    let rate = config.gate.rollback_mismatch_rate;
    let conf = *config.gate.confidence.get_ref();
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

/// Records a mode change in the shared store (a no-op without `[state]`), conditional on the
/// version this proxy last saw.
async fn record_state(
    app: &App,
    route: &str,
    mode: Mode,
    percent: u8,
    reason: &str,
) -> Result<(), crate::fleet::WriteError> {
    let Some(fleet) = &app.fleet else {
        return Ok(());
    };
    let expected = fleet.version_of(route);
    match fleet
        .store
        .write(route, mode, percent, reason, expected)
        .await
    {
        Ok(v) => {
            fleet.set_version(route, v);
            Ok(())
        }
        Err(e) => {
            // Pick up what the other proxy wrote, so the next attempt starts from it.
            let _ = poll_state(app).await;
            Err(e)
        }
    }
}

/// Applies every stored state newer than what this proxy has.
pub async fn poll_state(app: &App) -> Result<usize, crate::fleet::StoreError> {
    let Some(fleet) = &app.fleet else {
        return Ok(0);
    };
    let all = fleet.store.load_all().await?;
    let mut applied = 0;
    for (route, s) in all {
        if s.version <= fleet.version_of(&route) {
            continue;
        }
        let Some(mode) = Mode::parse(&s.mode) else {
            continue;
        };
        fleet.set_version(&route, s.version);
        if let Some(e) = app.routes.by_label(&route) {
            if e.mode() != mode || e.percent() != s.percent {
                apply_mode(app, &e, mode, s.percent);
                app.events.push(Event {
                    at: crate::stats::now_secs(),
                    kind: "state_applied".into(),
                    route: Some(route.clone()),
                    reason: format!("version {} from the state store: {}", s.version, s.reason),
                    mode: Some(mode.as_str().into()),
                    percent: Some(s.percent),
                    verdict: None,
                });
                applied += 1;
            }
        }
    }
    Ok(applied)
}

/// Polls the store every `every` until `stop` changes.
pub async fn poll_state_loop(
    app: Arc<App>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                if let Err(e) = poll_state(&app).await {
                    tracing::warn!(error = %e, "state store poll failed; keeping the current modes");
                }
            }
            _ = stop.changed() => break,
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this proxy was not started from a config file")]
    NoFile,
    #[error("{0}")]
    Config(#[from] crate::located::ConfigError),
    #[error("samples: {0}")]
    Redact(#[from] crate::samples::RedactError),
}

/// Re-reads the config file and every rules file and applies what can change while running:
/// the route list (routes that stay keep their counts), every route's settings and rules
/// (automatic labels too, present and future), `[gate]`, `[samples]`, `[noise]` and the admin
/// token. An invalid file keeps everything as it was. What needs a restart is named.
pub fn reload(app: &App) -> Result<Event, ReloadError> {
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

fn reload_inner(app: &App) -> Result<String, ReloadError> {
    let old = app.config();
    let path = old.path.clone().ok_or(ReloadError::NoFile)?;
    let new = Config::load(&path)?;
    // Build everything first: nothing changes unless all of it is valid.
    let specs = new.route_specs()?;
    let defaults = new.default_route_settings()?;
    let mirror = crate::app::mirror_settings(&new)?;
    let restart = needs_restart(&old, &new);
    let changes = app.routes.reload(specs, defaults);
    app.mirror.set_settings(mirror);
    app.set_admin_token(std::env::var(&new.admin.token_env).ok());
    app.set_config(new);
    let mut msg =
        format!("rules, route settings, [gate], [samples] and [noise] applied; {changes}");
    if !restart.is_empty() {
        msg.push_str(&format!(
            "; changed but needs a restart: {}",
            restart.join(", ")
        ));
    }
    Ok(msg)
}

/// The sections a reload cannot apply that differ between `old` and `new`.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut restart = Vec::new();
    if old.listen.proxy != new.listen.proxy
        || old.listen.admin != new.listen.admin
        || old.listen.workers != new.listen.workers
    {
        restart.push("[listen]");
    }
    let u = |c: &Config| {
        (
            c.upstreams.legacy.clone(),
            c.upstreams.legacy_twin.clone(),
            c.upstreams.ca_file.as_ref().map(|f| f.get_ref().clone()),
            *c.upstreams.max_connections.get_ref(),
        )
    };
    if u(old) != u(new) {
        restart.push("[upstreams] legacy, legacy_twin, ca_file, max_connections");
    }
    if old.session != new.session {
        restart.push("[session]");
    }
    if (*old.mirror.concurrency.get_ref(), old.mirror.queue)
        != (*new.mirror.concurrency.get_ref(), new.mirror.queue)
    {
        restart.push("[mirror]");
    }
    if old.state != new.state {
        restart.push("[state]");
    }
    if old.record != new.record {
        restart.push("[record]");
    }
    if old.defaults.max_routes.get_ref() != new.defaults.max_routes.get_ref() {
        restart.push("defaults.max_routes");
    }
    if *old.gate.window_secs.get_ref() != *new.gate.window_secs.get_ref() {
        restart.push("gate.window_secs");
    }
    if (&old.samples.jsonl_path, old.samples.jsonl_max_bytes)
        != (&new.samples.jsonl_path, new.samples.jsonl_max_bytes)
    {
        restart.push("samples.jsonl_path");
    }
    restart
}

/// Saves every route's window beside the state (a no-op without `[state]`).
pub async fn save_windows(app: &App) -> Result<usize, crate::fleet::StoreError> {
    let Some(fleet) = &app.fleet else {
        return Ok(0);
    };
    let mut saved = crate::fleet::SavedWindows {
        proxy: app.config().proxy_id(),
        saved_at: crate::stats::now_secs(),
        routes: Default::default(),
    };
    for e in app.routes.all() {
        let w = e.stats.saved_window();
        if !w.slots.is_empty() {
            saved.routes.insert(e.label.clone(), w);
        }
    }
    let n = saved.routes.len();
    fleet.store.save_windows(&saved).await?;
    Ok(n)
}

/// Resumes the windows an earlier run of this proxy saved (slots that have left the window
/// since are dropped). Returns the routes resumed.
pub async fn restore_windows(app: &App) -> Result<usize, crate::fleet::StoreError> {
    let Some(fleet) = &app.fleet else {
        return Ok(0);
    };
    let saved = fleet.store.load_windows(&app.config().proxy_id()).await?;
    let mut n = 0;
    for (label, window) in &saved.routes {
        if let Some(e) = app.routes.entry_for_label(label) {
            e.stats.restore_window(window);
            n += 1;
        }
    }
    Ok(n)
}

/// Saves the windows every `every` until `stop` changes.
pub async fn save_windows_loop(
    app: Arc<App>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                if let Err(e) = save_windows(&app).await {
                    tracing::warn!(error = %e, "route windows not saved");
                }
            }
            _ = stop.changed() => break,
        }
    }
}
