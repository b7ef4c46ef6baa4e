//! Drawing: functions from [`State`] to a frame. They only read state. Colour is used only where
//! it carries meaning (a closed gate, diff lines); every colour has a text twin (`CLOSED`,
//! `+`/`-`), so a monochrome terminal reads the same.

use super::state::{Action, State, View};
use crate::api::RouteView;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A text sparkline of rates in 0..=1 (a blank where there were no samples).
pub fn sparkline(series: &[Option<f64>], width: usize) -> String {
    let start = series.len().saturating_sub(width);
    series[start..]
        .iter()
        .map(|x| match x {
            None => ' ',
            Some(r) => BARS[((r.clamp(0.0, 1.0) * 7.0).round() as usize).min(7)],
        })
        .collect()
}

fn ms(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

pub fn draw(f: &mut Frame, s: &State) {
    let area = f.area();
    let [header, body, status] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, s, header);
    match &s.view {
        View::Routes => draw_routes(f, s, body),
        View::Route(r) => draw_route(f, s, r, body),
    }
    draw_status(f, s, status);
    if s.help {
        draw_help(f, area);
    }
}

fn draw_header(f: &mut Frame, s: &State, area: Rect) {
    let t = &s.totals;
    let mirrored = if t.requests > 0 {
        t.mirrored as f64 / t.requests as f64
    } else {
        0.0
    };
    let mut first = vec![
        Span::styled("cutover", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  proxies {}/{}  {:.1} req/s  mirrored {:.0}%  shadow drops {}  session errors {}",
            s.reachable,
            s.proxies,
            s.requests_per_sec,
            mirrored * 100.0,
            t.shadow_dropped,
            t.session_errors
        )),
    ];
    if s.stale {
        first.push(Span::styled(
            format!("  unreachable: {}", s.unreachable.join(", ")),
            Style::default().fg(Color::Red),
        ));
    }
    let second = Line::from(format!(
        "sort: {} (s)   filter: {}{}   ? help   q quit",
        s.sort.label(),
        if s.filter.is_empty() && !s.editing_filter {
            "none (/)".to_string()
        } else {
            s.filter.clone()
        },
        if s.editing_filter { "▏" } else { "" }
    ));
    f.render_widget(Paragraph::new(vec![Line::from(first), second]), area);
}

/// A duration in the largest unit that keeps it short (`45s`, `12m`, `3h`, `2d`).
pub fn short_duration(secs: u64) -> String {
    match secs {
        0..=99 => format!("{secs}s"),
        100..=5999 => format!("{}m", secs.div_ceil(60)),
        6000..=172_799 => format!("{}h", secs.div_ceil(3600)),
        _ => format!("{}d", secs.div_ceil(86_400)),
    }
}

fn gate_text(r: &RouteView) -> String {
    if r.gate.passing {
        "PASS".into()
    } else {
        match r.gate.eta_secs {
            Some(eta) => format!(
                "CLOSED (opens in ~{}) {}",
                short_duration(eta),
                r.gate.reason
            ),
            None => format!("CLOSED {}", r.gate.reason),
        }
    }
}

fn draw_routes(f: &mut Frame, s: &State, area: Rect) {
    let wide = area.width >= 120;
    let rows: Vec<Row> = s
        .visible()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let gate_style = if r.gate.passing {
                Style::default()
            } else {
                Style::default().fg(Color::Red)
            };
            let mut cells = vec![
                Cell::from(format!(
                    "{} {}",
                    if i == s.selected { '>' } else { ' ' },
                    r.route
                )),
                Cell::from(if r.mode == "candidate" && r.percent < 100 {
                    format!("cand {}%", r.percent)
                } else {
                    r.mode.clone()
                }),
                Cell::from(r.samples.to_string()),
                Cell::from(pct(r.mismatch_rate)),
                Cell::from(r.errors.to_string()).style(if r.errors > 0 {
                    Style::default().fg(Color::Yellow)
                } else {
                    Style::default()
                }),
                Cell::from(pct(r.mismatch_upper_bound)),
                Cell::from(gate_text(r)).style(gate_style),
            ];
            if wide {
                cells.push(Cell::from(format!(
                    "{}/{}",
                    ms(r.legacy_p50_ms),
                    ms(r.legacy_p99_ms)
                )));
                cells.push(Cell::from(format!(
                    "{}/{}",
                    ms(r.candidate_p50_ms),
                    ms(r.candidate_p99_ms)
                )));
                cells.push(Cell::from(sparkline(&r.sparkline, 20)));
            }
            let row = Row::new(cells);
            if i == s.selected {
                row.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    let mut header = vec![
        "  route", "mode", "samples", "mismatch", "err", "bound", "gate",
    ];
    let mut widths = vec![
        Constraint::Min(21),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Min(10),
    ];
    if wide {
        header.extend(["legacy p50/p99", "cand p50/p99", "mismatch trend"]);
        widths.extend([
            Constraint::Length(14),
            Constraint::Length(13),
            Constraint::Length(20),
        ]);
    }
    let empty = rows.is_empty();
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::default().borders(Borders::TOP).title(" routes "));
    f.render_widget(table, area);
    if empty {
        let msg = if s.reachable == 0 {
            "waiting for the proxies' admin API…"
        } else {
            "no routes yet: waiting for traffic"
        };
        let inner = Rect {
            y: area.y + 2,
            height: area.height.saturating_sub(2),
            ..area
        };
        f.render_widget(Paragraph::new(msg), inner);
    }
}

fn draw_route(f: &mut Frame, s: &State, route: &str, area: Rect) {
    let r = s.routes.iter().find(|r| r.route == route);
    let mut lines: Vec<Line> = Vec::new();
    if let Some(r) = r {
        lines.push(Line::from(vec![
            Span::styled(
                format!("{route}  "),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                "mode {}  samples {}  mismatch {}  bound {}  ",
                r.mode,
                r.samples,
                pct(r.mismatch_rate),
                pct(r.mismatch_upper_bound)
            )),
            Span::styled(
                gate_text(r),
                if r.gate.passing {
                    Style::default()
                } else {
                    Style::default().fg(Color::Red)
                },
            ),
        ]));
        if let Some(cause) = &r.last_error {
            let ago = r
                .last_error_at
                .map(|at| crate::stats::now_secs().saturating_sub(at))
                .map_or(String::new(), |a| format!(" ({} ago)", short_duration(a)));
            lines.push(Line::from(Span::styled(
                format!(
                    "{} candidate errors in the window; last error: {cause}{ago}",
                    r.errors
                ),
                Style::default().fg(Color::Yellow),
            )));
        }
        if !r.noise.is_empty() {
            lines.push(Line::from(Span::styled(
                "noise learned from the twin (suggested rules):",
                Style::default().add_modifier(Modifier::BOLD),
            )));
            for n in r.noise.iter().take(6) {
                lines.push(Line::from(format!(
                    "  {}  (raw {}, twin {})",
                    n.key, n.raw, n.noise
                )));
                for l in n.suggested_rule.lines() {
                    lines.push(Line::from(format!("      {l}")));
                }
            }
        }
    }
    let samples: &[crate::samples::Sample] = s.samples.as_ref().map_or(&[], |v| &v.samples);
    match samples.first() {
        None => lines.push(Line::from(if s.samples.is_some() {
            "no mismatch samples"
        } else {
            "loading samples… (needs the admin token)"
        })),
        Some(latest) => {
            lines.push(Line::from(Span::styled(
                format!(
                    "latest of {} mismatches: {}  legacy {}  candidate {}",
                    samples.len(),
                    latest.request,
                    latest.legacy_status,
                    latest.candidate_status
                ),
                Style::default().add_modifier(Modifier::BOLD),
            )));
            for d in latest.differences.iter().take(8) {
                lines.push(Line::from(format!(
                    "  {} {}  legacy: {}  candidate: {}",
                    d.kind.as_str(),
                    d.path,
                    d.legacy.as_deref().unwrap_or("-"),
                    d.candidate.as_deref().unwrap_or("-")
                )));
            }
            for l in latest.unified_diff.lines() {
                let style = if l.starts_with('+') && !l.starts_with("+++") {
                    Style::default().fg(Color::Green)
                } else if l.starts_with('-') && !l.starts_with("---") {
                    Style::default().fg(Color::Red)
                } else {
                    Style::default()
                };
                lines.push(Line::from(Span::styled(l.to_string(), style)));
            }
        }
    }
    let p = Paragraph::new(lines).wrap(Wrap { trim: false }).block(
        Block::default()
            .borders(Borders::TOP)
            .title(" route (Esc: back, p promote, r rollback) "),
    );
    f.render_widget(p, area);
}

fn draw_status(f: &mut Frame, s: &State, area: Rect) {
    let line = match &s.confirm {
        Some(Action::Promote(r)) => Line::from(Span::styled(
            format!("promote {r} to the candidate? y/n"),
            Style::default().add_modifier(Modifier::BOLD),
        )),
        Some(Action::Rollback(r)) => Line::from(Span::styled(
            format!("roll {r} back to shadow? y/n"),
            Style::default().add_modifier(Modifier::BOLD),
        )),
        Some(Action::Reset(r)) => Line::from(Span::styled(
            format!("clear {r}'s window, noise and samples on every proxy? y/n"),
            Style::default().add_modifier(Modifier::BOLD),
        )),
        None => match &s.message {
            Some(m) => Line::from(m.clone()),
            None => Line::from(
                "↑↓ select  Enter open  s sort  / filter  p promote  r rollback  x reset  ? help  q quit",
            ),
        },
    };
    f.render_widget(Paragraph::new(line), area);
}

fn draw_help(f: &mut Frame, area: Rect) {
    let w = area.width.min(60);
    let h = area.height.min(15);
    let rect = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let text = vec![
        Line::from("↑ ↓ / k j   select a route"),
        Line::from("Enter       open it: samples, differences, diff, noise"),
        Line::from("Esc         back to the routes"),
        Line::from("s           sort by mismatch, samples, name"),
        Line::from("/           filter routes (Enter keeps, Esc clears)"),
        Line::from("p           promote the route (asks y/n; the gate decides)"),
        Line::from("r           roll the route back to shadow (asks y/n)"),
        Line::from("x           reset: clear its window, noise, samples (y/n)"),
        Line::from("q           quit"),
        Line::from(""),
        Line::from("p, r and x act on every proxy shown; they use the admin token"),
    ];
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(text).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" help (any key closes) "),
        ),
        rect,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GateView, RoutesView, TotalsView};
    use crate::noise::NoiseKey;
    use crate::tui::state::{update, Event, Key, State};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn route(name: &str, samples: u64, rate: f64, passing: bool) -> RouteView {
        RouteView {
            route: name.into(),
            mode: "shadow".into(),
            samples,
            mismatch_rate: rate,
            mismatch_upper_bound: rate + 0.01,
            gate: GateView {
                passing,
                reason: if passing {
                    "passing".into()
                } else {
                    "upper bound 31.00% > 5.00%".into()
                },
                eta_secs: None,
            },
            legacy_p50_ms: Some(1.2),
            legacy_p99_ms: Some(8.0),
            candidate_p50_ms: Some(0.9),
            candidate_p99_ms: Some(3.0),
            sparkline: vec![Some(0.0), Some(0.5), None, Some(1.0)],
            noise: vec![NoiseKey {
                key: "body/html/body/form/input changed".into(),
                raw: 40,
                noise: 41,
                suggested_rule: "[html]\nignore_elements = ['input[name=_token]']".into(),
            }],
            ..Default::default()
        }
    }

    fn state() -> State {
        let mut s = State::new(2);
        let view = RoutesView {
            state_version: 0,
            uptime_secs: 0,
            routes: vec![
                route("/api/products/{id}", 400, 0.3, false),
                route("/account", 900, 0.0, true),
            ],
            gate_thresholds: None,
            totals: Some(TotalsView {
                requests: 1000,
                mirrored: 990,
                shadow_dropped: 3,
                session_errors: 1,
                uptime_secs: 10,
            }),
        };
        update(
            &mut s,
            Event::Routes {
                views: vec![view],
                unreachable: vec!["http://127.0.0.1:9999".into()],
                at_secs: 1.0,
            },
        );
        s
    }

    fn render(s: &State, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        t.draw(|f| draw(f, s)).expect("draw");
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    fn find<'a>(lines: &'a [String], needle: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .map(String::as_str)
            .unwrap_or_else(|| panic!("`{needle}` not on screen:\n{}", lines.join("\n")))
    }

    #[test]
    fn routes_table_narrow() {
        let lines = render(&state(), 80, 24);
        let header = find(&lines, "proxies 1/2");
        assert!(
            header.contains("shadow drops 3") && header.contains("session errors 1"),
            "{header}"
        );
        let failing = find(&lines, "/api/products/{id}");
        assert!(
            failing.contains("CLOSED") && failing.contains("30.00%"),
            "{failing}"
        );
        assert!(failing.starts_with("> "), "selected first: {failing}");
        let passing = find(&lines, "/account");
        assert!(
            passing.contains("PASS") && passing.contains("900"),
            "{passing}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("legacy p50/p99")),
            "latency columns need a wide terminal"
        );
        assert!(lines.iter().all(|l| l.chars().count() == 80));
    }

    #[test]
    fn routes_table_wide() {
        let lines = render(&state(), 160, 40);
        find(&lines, "legacy p50/p99");
        let row = find(&lines, "/account");
        assert!(row.contains("1.2/8.0") && row.contains("0.9/3.0"), "{row}");
        assert!(row.contains("▁▅ █"), "sparkline: {row}");
    }

    #[test]
    fn route_view_shows_samples_diff_and_noise() {
        let mut s = state();
        update(&mut s, Event::Key(Key::Enter));
        let samples: crate::api::MismatchesView = serde_json::from_value(serde_json::json!({
            "route": "/api/products/{id}",
            "samples": [{
                "at": 1, "route": "/api/products/{id}", "request_headers": [],
                "request": "GET /api/products/7", "legacy_status": 200, "candidate_status": 200,
                "differences": [{"path": "body/price", "kind": "changed", "legacy": "9.99", "candidate": "9.9"}],
                "unified_diff": "--- legacy\n+++ candidate\n@@ -1 +1 @@\n-  \"price\": 9.99\n+  \"price\": 9.9\n"
            }]
        }))
        .expect("wire form");
        update(
            &mut s,
            Event::Samples {
                route: "/api/products/{id}".into(),
                samples: Ok(samples),
            },
        );
        let lines = render(&s, 100, 30);
        find(&lines, "latest of 1 mismatches: GET /api/products/7");
        find(&lines, "changed body/price  legacy: 9.99  candidate: 9.9");
        find(&lines, "+  \"price\": 9.9");
        find(&lines, "ignore_elements = ['input[name=_token]']");
        // Diff lines carry colour; the text is there for monochrome terminals too.
        let mut t = Terminal::new(TestBackend::new(100, 30)).expect("terminal");
        t.draw(|f| draw(f, &s)).expect("draw");
        let buf = t.backend().buffer().clone();
        let y = lines
            .iter()
            .position(|l| l.starts_with("+  \"price\""))
            .expect("plus line") as u16;
        assert_eq!(buf[(0, y)].fg, Color::Green);
    }

    #[test]
    fn help_and_confirmation_lines() {
        let mut s = state();
        update(&mut s, Event::Key(Key::Char('?')));
        let lines = render(&s, 80, 24);
        find(&lines, "help (any key closes)");
        find(&lines, "promote the route");
        update(&mut s, Event::Key(Key::Char('x')));
        update(&mut s, Event::Key(Key::Char('p')));
        let lines = render(&s, 80, 24);
        find(&lines, "promote /api/products/{id} to the candidate? y/n");
    }

    #[test]
    fn sparkline_text() {
        assert_eq!(sparkline(&[Some(0.0), Some(1.0), None], 10), "▁█ ");
        assert_eq!(sparkline(&[Some(0.5); 30], 5).chars().count(), 5);
    }
}
