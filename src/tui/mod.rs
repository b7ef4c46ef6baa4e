//! The dashboard (ratatui): the state and its `update` ([`state`]), drawing that only reads
//! state ([`draw`]), and this runner, which feeds events over a channel — keys from a reader
//! thread, routes from the admin APIs once a second, results of actions — and carries out the
//! commands `update` returns. It sees proxies only through their admin API, so it works
//! remotely and for a fleet. The terminal is restored on quit, on panic and on SIGTERM.

pub mod draw;
pub mod state;

use crate::client::{ActionError, AdminClient, PromoteRequest, RouteAction};
use state::{Action, Command, Event, Key, State};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Restores the terminal when dropped, whatever way the dashboard ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn map_key(k: ratatui::crossterm::event::KeyEvent) -> Option<Key> {
    use ratatui::crossterm::event::{KeyCode, KeyEventKind, KeyModifiers};
    if k.kind != KeyEventKind::Press {
        return None;
    }
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Some(Key::Char('q'));
    }
    Some(match k.code {
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Char(c) => Key::Char(c),
        _ => return None,
    })
}

fn now_secs_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reads every proxy once and sends the result as one event.
async fn refresh(client: AdminClient, admins: Arc<Vec<String>>, tx: mpsc::UnboundedSender<Event>) {
    let mut views = Vec::new();
    let mut unreachable = Vec::new();
    for a in admins.iter() {
        match client.routes(a).await {
            Ok(v) => views.push(v),
            Err(_) => unreachable.push(a.clone()),
        }
    }
    let _ = tx.send(Event::Routes {
        views,
        unreachable,
        at_secs: now_secs_f64(),
    });
}

/// Carries out a confirmed key on the whole fleet the dashboard shows, as the CLI does: a
/// promotion judged on the fleet's summed counts, a rollback or reset on every proxy.
async fn run_action(
    client: &AdminClient,
    admins: &[String],
    action: &Action,
) -> Result<String, ActionError> {
    let (route, kind) = match action {
        Action::Promote(r) => {
            let req = PromoteRequest {
                route: r.clone(),
                percent: None,
                force: false,
                reason: None,
            };
            return crate::client::promote(client, admins, &req)
                .await
                .map(|ev| ev.reason);
        }
        Action::Rollback(r) => (r, RouteAction::Rollback),
        Action::Reset(r) => (r, RouteAction::Reset),
    };
    let results = crate::client::on_every_proxy(client, admins, route, kind, None).await;
    let done = results.iter().filter(|(_, r)| r.is_ok()).count();
    match results.into_iter().find_map(|(_, r)| r.err()) {
        Some(e) => Err(ActionError::Client(e)),
        None => Ok(format!("done on {done} proxies")),
    }
}

/// Runs the dashboard until `q` (or SIGTERM, or `stop` turning true).
pub async fn run(
    admins: Vec<String>,
    token: Option<String>,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let quit_keys = Arc::new(AtomicBool::new(false));
    {
        let tx = tx.clone();
        let quit = quit_keys.clone();
        std::thread::Builder::new()
            .name("cutover-keys".into())
            .spawn(move || {
                use ratatui::crossterm::event;
                while !quit.load(Ordering::Relaxed) {
                    // Poll with a timeout so the thread notices the end within 100 ms.
                    match event::poll(Duration::from_millis(100)) {
                        Ok(true) => {
                            if let Ok(event::Event::Key(k)) = event::read() {
                                if let Some(k) = map_key(k) {
                                    if tx.send(Event::Key(k)).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        Ok(false) => {}
                        Err(_) => return,
                    }
                }
            })?;
    }
    let admins = Arc::new(admins);
    let client = AdminClient::new(token);
    let mut state = State::new(admins.len());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stop = stop;
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        terminal.draw(|f| draw::draw(f, &state))?;
        let stop_changed = async {
            match stop.as_mut() {
                Some(s) => {
                    let _ = s.changed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(unix)]
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let sigterm = std::future::pending::<()>();
        let event = tokio::select! {
            _ = tick.tick() => {
                tokio::spawn(refresh(client.clone(), admins.clone(), tx.clone()));
                continue;
            }
            e = rx.recv() => match e { Some(e) => e, None => break },
            _ = stop_changed => break,
            _ = sigterm => break,
        };
        let mut quit = false;
        for cmd in state::update(&mut state, event) {
            match cmd {
                Command::Quit => quit = true,
                Command::FetchSamples(route) => {
                    let (client, admins, tx) = (client.clone(), admins.clone(), tx.clone());
                    tokio::spawn(async move {
                        // Samples live on each proxy; show the first proxy that has any.
                        let mut result = Err("no proxy answered".to_string());
                        for a in admins.iter() {
                            let url = format!(
                                "{}/api/routes/mismatches?route={}",
                                a.trim_end_matches('/'),
                                crate::client::q(&route)
                            );
                            match client.get_json::<crate::api::MismatchesView>(&url).await {
                                Ok(v) => {
                                    let has = !v.samples.is_empty();
                                    result = Ok(v);
                                    if has {
                                        break;
                                    }
                                }
                                Err(e) => result = Err(e.reason()),
                            }
                        }
                        let _ = tx.send(Event::Samples {
                            route,
                            samples: result,
                        });
                    });
                }
                Command::Run(action) => {
                    let (client, admins, tx) = (client.clone(), admins.clone(), tx.clone());
                    tokio::spawn(async move {
                        let result = run_action(&client, &admins, &action).await;
                        let _ = tx.send(Event::ActionDone { action, result });
                    });
                }
            }
        }
        if quit {
            break;
        }
    }
    quit_keys.store(true, Ordering::Relaxed);
    Ok(())
}
