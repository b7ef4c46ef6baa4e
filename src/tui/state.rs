//! The dashboard's state and the only function that changes it, [`update`]: events in (keys,
//! data from the admin API, results of actions), commands out (fetch, promote, rollback, quit)
//! for the runner to carry out. No IO here, so every behaviour is a unit test.

use crate::api::{RouteView, RoutesView, TotalsView};

/// How the routes table is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Highest mismatch rate first (failing routes on top).
    Mismatch,
    /// Most samples first.
    Samples,
    /// By route label.
    Name,
}

impl SortBy {
    fn next(self) -> SortBy {
        match self {
            SortBy::Mismatch => SortBy::Samples,
            SortBy::Samples => SortBy::Name,
            SortBy::Name => SortBy::Mismatch,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Mismatch => "mismatch",
            SortBy::Samples => "samples",
            SortBy::Name => "name",
        }
    }
}

/// A promote, rollback or reset waiting for `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Promote(String),
    Rollback(String),
    /// Clear the route's window, noise and samples.
    Reset(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    Routes,
    /// One route: its samples, differences, diff and noise.
    Route(String),
}

/// Input to [`update`].
#[derive(Debug, Clone)]
pub enum Event {
    Key(Key),
    /// Routes from every proxy (Err: how many could not be read, and why).
    Routes {
        views: Vec<RoutesView>,
        unreachable: Vec<String>,
        at_secs: f64,
    },
    /// A route's latest mismatch samples (JSON as the admin API returns it).
    Samples {
        route: String,
        samples: Result<crate::api::MismatchesView, String>,
    },
    /// What a promote, rollback or reset answered.
    ActionDone {
        action: Action,
        result: Result<String, crate::client::ActionError>,
    },
}

/// Keys the dashboard knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    Enter,
    Esc,
    Backspace,
    Char(char),
}

/// What the runner must do after an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    FetchSamples(String),
    Run(Action),
    Quit,
}

#[derive(Debug, Clone)]
pub struct State {
    pub routes: Vec<RouteView>,
    pub totals: TotalsView,
    pub proxies: usize,
    pub reachable: usize,
    pub unreachable: Vec<String>,
    pub sort: SortBy,
    pub filter: String,
    pub editing_filter: bool,
    pub selected: usize,
    pub view: View,
    pub help: bool,
    pub confirm: Option<Action>,
    /// The last message for the status line (a refused promotion's reason, say).
    pub message: Option<String>,
    pub samples: Option<crate::api::MismatchesView>,
    /// (time, total requests) of the previous refresh, for requests/s.
    prev: Option<(f64, u64)>,
    pub requests_per_sec: f64,
    /// The routes of `unreachable` proxies are missing from the sums: say so.
    pub stale: bool,
}

impl State {
    pub fn new(proxies: usize) -> State {
        State {
            routes: Vec::new(),
            totals: TotalsView::default(),
            proxies,
            reachable: 0,
            unreachable: Vec::new(),
            sort: SortBy::Mismatch,
            filter: String::new(),
            editing_filter: false,
            selected: 0,
            view: View::Routes,
            help: false,
            confirm: None,
            message: None,
            samples: None,
            prev: None,
            requests_per_sec: 0.0,
            stale: false,
        }
    }

    /// The rows shown: filtered, then sorted.
    pub fn visible(&self) -> Vec<&RouteView> {
        let f = self.filter.to_ascii_lowercase();
        let mut v: Vec<&RouteView> = self
            .routes
            .iter()
            .filter(|r| f.is_empty() || r.route.to_ascii_lowercase().contains(&f))
            .collect();
        match self.sort {
            SortBy::Mismatch => v.sort_by(|a, b| {
                b.mismatch_rate
                    .partial_cmp(&a.mismatch_rate)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.gate.passing.cmp(&b.gate.passing))
                    .then(a.route.cmp(&b.route))
            }),
            SortBy::Samples => {
                v.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.route.cmp(&b.route)))
            }
            SortBy::Name => v.sort_by(|a, b| a.route.cmp(&b.route)),
        }
        v
    }

    pub fn selected_route(&self) -> Option<&RouteView> {
        self.visible().get(self.selected).copied()
    }

    fn clamp(&mut self) {
        let n = self.visible().len();
        if n == 0 {
            self.selected = 0;
        } else if self.selected >= n {
            self.selected = n - 1;
        }
    }

    /// The route a key acts on: the open one, or the selected row.
    fn current_route(&self) -> Option<String> {
        match &self.view {
            View::Route(r) => Some(r.clone()),
            View::Routes => self.selected_route().map(|r| r.route.clone()),
        }
    }
}

/// The one place state changes.
pub fn update(s: &mut State, e: Event) -> Vec<Command> {
    match e {
        Event::Routes {
            views,
            unreachable,
            at_secs,
        } => {
            let (routes, _) = crate::client::fleet(&views);
            let mut totals = TotalsView::default();
            for v in &views {
                if let Some(t) = &v.totals {
                    totals.requests += t.requests;
                    totals.mirrored += t.mirrored;
                    totals.shadow_dropped += t.shadow_dropped;
                    totals.session_errors += t.session_errors;
                    totals.uptime_secs = totals.uptime_secs.max(t.uptime_secs);
                }
            }
            if let Some((t0, r0)) = s.prev {
                if at_secs > t0 && totals.requests >= r0 {
                    s.requests_per_sec = (totals.requests - r0) as f64 / (at_secs - t0);
                }
            }
            s.prev = Some((at_secs, totals.requests));
            s.reachable = views.len();
            s.stale = !unreachable.is_empty();
            s.unreachable = unreachable;
            s.totals = totals;
            // Keep the same route selected across refreshes.
            let keep = s.selected_route().map(|r| r.route.clone());
            s.routes = routes;
            if let Some(k) = keep {
                if let Some(i) = s.visible().iter().position(|r| r.route == k) {
                    s.selected = i;
                }
            }
            s.clamp();
            match &s.view {
                View::Route(r) => vec![Command::FetchSamples(r.clone())],
                View::Routes => vec![],
            }
        }
        Event::Samples { route, samples } => {
            if s.view == View::Route(route) {
                match samples {
                    Ok(v) => s.samples = Some(v),
                    Err(e) => s.message = Some(format!("samples: {e}")),
                }
            }
            vec![]
        }
        Event::ActionDone { action, result } => {
            s.message = Some(match (&action, result) {
                (Action::Promote(r), Ok(m)) => format!("promoted {r}: {m}"),
                (Action::Rollback(r), Ok(_)) => format!("{r} is back in shadow mode"),
                (Action::Reset(r), Ok(_)) => format!("{r}: window, noise and samples cleared"),
                (Action::Promote(r), Err(crate::client::ActionError::Refused(why))) => {
                    format!("promotion of {r} refused: {why}")
                }
                (Action::Promote(r), Err(why)) => format!("promotion of {r} failed: {why}"),
                (Action::Rollback(r), Err(why)) => format!("rollback of {r} failed: {why}"),
                (Action::Reset(r), Err(why)) => format!("reset of {r} failed: {why}"),
            });
            vec![]
        }
        Event::Key(k) => key(s, k),
    }
}

fn key(s: &mut State, k: Key) -> Vec<Command> {
    if let Some(action) = s.confirm.clone() {
        s.confirm = None;
        return match k {
            Key::Char('y') | Key::Char('Y') => {
                s.message = Some(match &action {
                    Action::Promote(r) => format!("promoting {r}…"),
                    Action::Rollback(r) => format!("rolling back {r}…"),
                    Action::Reset(r) => format!("resetting {r}…"),
                });
                vec![Command::Run(action)]
            }
            _ => {
                s.message = Some("cancelled".into());
                vec![]
            }
        };
    }
    if s.editing_filter {
        match k {
            Key::Enter => s.editing_filter = false,
            Key::Esc => {
                s.editing_filter = false;
                s.filter.clear();
            }
            Key::Backspace => {
                s.filter.pop();
            }
            Key::Char(c) => s.filter.push(c),
            _ => {}
        }
        s.selected = 0;
        s.clamp();
        return vec![];
    }
    if s.help {
        s.help = false;
        return if k == Key::Char('q') {
            vec![Command::Quit]
        } else {
            vec![]
        };
    }
    match k {
        Key::Char('q') => return vec![Command::Quit],
        Key::Char('?') => s.help = true,
        Key::Up | Key::Char('k') if s.view == View::Routes => {
            s.selected = s.selected.saturating_sub(1)
        }
        Key::Down | Key::Char('j') if s.view == View::Routes => {
            s.selected += 1;
            s.clamp();
        }
        Key::Char('s') if s.view == View::Routes => {
            s.sort = s.sort.next();
            s.selected = 0;
        }
        Key::Char('/') if s.view == View::Routes => {
            s.editing_filter = true;
            s.filter.clear();
        }
        Key::Enter if s.view == View::Routes => {
            if let Some(r) = s.selected_route().map(|r| r.route.clone()) {
                s.view = View::Route(r.clone());
                s.samples = None;
                return vec![Command::FetchSamples(r)];
            }
        }
        Key::Esc | Key::Backspace => {
            s.view = View::Routes;
            s.samples = None;
        }
        Key::Char('p') => {
            if let Some(r) = s.current_route() {
                s.confirm = Some(Action::Promote(r));
            }
        }
        Key::Char('r') => {
            if let Some(r) = s.current_route() {
                s.confirm = Some(Action::Rollback(r));
            }
        }
        Key::Char('x') => {
            if let Some(r) = s.current_route() {
                s.confirm = Some(Action::Reset(r));
            }
        }
        _ => {}
    }
    vec![]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GateView;

    pub fn route(name: &str, samples: u64, rate: f64, passing: bool) -> RouteView {
        RouteView {
            route: name.into(),
            mode: "shadow".into(),
            samples,
            matches: samples - (samples as f64 * rate) as u64,
            mismatches: (samples as f64 * rate) as u64,
            mismatch_rate: rate,
            gate: GateView {
                passing,
                reason: if passing {
                    "passing".into()
                } else {
                    "upper bound 9.00% > 5.00%".into()
                },
                eta_secs: None,
            },
            ..Default::default()
        }
    }

    /// One proxy's refresh with these routes and request total, at `at_secs`.
    fn refresh(s: &mut State, routes: Vec<RouteView>, requests: u64, at_secs: f64) {
        let view = RoutesView {
            state_version: 0,
            uptime_secs: 0,
            routes,
            gate_thresholds: None,
            totals: Some(TotalsView {
                requests,
                ..Default::default()
            }),
        };
        update(
            s,
            Event::Routes {
                views: vec![view],
                unreachable: vec![],
                at_secs,
            },
        );
    }

    fn loaded() -> State {
        let mut s = State::new(1);
        refresh(
            &mut s,
            vec![
                route("/a", 50, 0.0, true),
                route("/b", 200, 0.5, false),
                route("/c/{id}", 10, 0.1, false),
            ],
            100,
            1.0,
        );
        s
    }

    fn names(s: &State) -> Vec<String> {
        s.visible().iter().map(|r| r.route.clone()).collect()
    }

    #[test]
    fn sorting_cycles() {
        let mut s = loaded();
        assert_eq!(names(&s), vec!["/b", "/c/{id}", "/a"], "mismatch first");
        update(&mut s, Event::Key(Key::Char('s')));
        assert_eq!(names(&s), vec!["/b", "/a", "/c/{id}"], "samples");
        update(&mut s, Event::Key(Key::Char('s')));
        assert_eq!(names(&s), vec!["/a", "/b", "/c/{id}"], "name");
    }

    #[test]
    fn filtering() {
        let mut s = loaded();
        update(&mut s, Event::Key(Key::Char('/')));
        for c in "c/".chars() {
            update(&mut s, Event::Key(Key::Char(c)));
        }
        assert_eq!(names(&s), vec!["/c/{id}"]);
        // While editing, `q` is text, not quit.
        assert!(update(&mut s, Event::Key(Key::Char('q'))).is_empty());
        assert!(names(&s).is_empty());
        update(&mut s, Event::Key(Key::Backspace));
        update(&mut s, Event::Key(Key::Enter));
        assert_eq!(names(&s), vec!["/c/{id}"]);
        assert!(!s.editing_filter);
        update(&mut s, Event::Key(Key::Char('/')));
        update(&mut s, Event::Key(Key::Esc));
        assert_eq!(names(&s).len(), 3);
    }

    #[test]
    fn selection_and_route_view() {
        let mut s = loaded();
        update(&mut s, Event::Key(Key::Down));
        update(&mut s, Event::Key(Key::Down));
        update(&mut s, Event::Key(Key::Down));
        assert_eq!(s.selected, 2, "clamped at the last row");
        update(&mut s, Event::Key(Key::Up));
        assert_eq!(
            s.selected_route().map(|r| r.route.as_str()),
            Some("/c/{id}")
        );
        let cmds = update(&mut s, Event::Key(Key::Enter));
        assert_eq!(cmds, vec![Command::FetchSamples("/c/{id}".into())]);
        assert_eq!(s.view, View::Route("/c/{id}".into()));
        // A refresh keeps the view and fetches its samples again.
        let again = update(
            &mut s,
            Event::Routes {
                views: vec![],
                unreachable: vec!["http://x".into()],
                at_secs: 2.0,
            },
        );
        assert_eq!(again, vec![Command::FetchSamples("/c/{id}".into())]);
        assert!(s.stale);
        update(&mut s, Event::Key(Key::Esc));
        assert_eq!(s.view, View::Routes);
    }

    #[test]
    fn selection_follows_the_route_across_refreshes() {
        let mut s = loaded();
        update(&mut s, Event::Key(Key::Down)); // /c/{id}
        refresh(
            &mut s,
            vec![
                route("/a", 50, 0.9, false),
                route("/b", 200, 0.5, false),
                route("/c/{id}", 10, 0.1, false),
            ],
            300,
            3.0,
        );
        assert_eq!(
            s.selected_route().map(|r| r.route.as_str()),
            Some("/c/{id}")
        );
        assert!(
            (s.requests_per_sec - 100.0).abs() < 1e-9,
            "{}",
            s.requests_per_sec
        );
    }

    #[test]
    fn confirmation_flow() {
        let mut s = loaded();
        assert!(update(&mut s, Event::Key(Key::Char('p'))).is_empty());
        assert_eq!(s.confirm, Some(Action::Promote("/b".into())));
        // Anything but y cancels.
        assert!(update(&mut s, Event::Key(Key::Char('n'))).is_empty());
        assert_eq!(s.confirm, None);
        assert_eq!(s.message.as_deref(), Some("cancelled"));
        update(&mut s, Event::Key(Key::Char('r')));
        let cmds = update(&mut s, Event::Key(Key::Char('y')));
        assert_eq!(cmds, vec![Command::Run(Action::Rollback("/b".into()))]);
    }

    #[test]
    fn refused_promotion_shows_the_reason() {
        let mut s = loaded();
        update(&mut s, Event::Key(Key::Char('p')));
        let cmds = update(&mut s, Event::Key(Key::Char('y')));
        assert_eq!(cmds, vec![Command::Run(Action::Promote("/b".into()))]);
        update(
            &mut s,
            Event::ActionDone {
                action: Action::Promote("/b".into()),
                result: Err(crate::client::ActionError::Refused(
                    "the gate is closed: upper bound 9.00% > 5.00%".into(),
                )),
            },
        );
        assert_eq!(
            s.message.as_deref(),
            Some("promotion of /b refused: the gate is closed: upper bound 9.00% > 5.00%")
        );
    }

    #[test]
    fn help_and_quit() {
        let mut s = loaded();
        update(&mut s, Event::Key(Key::Char('?')));
        assert!(s.help);
        assert!(update(&mut s, Event::Key(Key::Char('x'))).is_empty());
        assert!(!s.help);
        assert_eq!(
            update(&mut s, Event::Key(Key::Char('q'))),
            vec![Command::Quit]
        );
    }
}
