//! `cutover demo`: headless with a duration (the summary), and the dashboard driven through
//! tmux like a person would (routes appear, the buggy route's diff is one key away, `q` quits
//! and the terminal is restored).

mod common;

use common::{tmux, wait_screen, wait_screen_without, TmuxSession as Session};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn headless_demo_shows_buggy_routes_failing_and_the_others_passing() {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["demo", "--headless", "--duration", "20s"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |route: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(route))
            .unwrap_or_else(|| panic!("{route} missing from:\n{stdout}"))
            .to_string()
    };
    for buggy in ["/api/products/{id}", "/products/{id}"] {
        let r = row(buggy);
        assert!(r.contains("CLOSED") && r.contains("100.00%"), "{r}");
    }
    // The login's session bug: it forgets the cart (its GET form still matches).
    let login = row("/login");
    assert!(
        login.contains("CLOSED") && !login.contains(" 0.00%"),
        "{login}"
    );
    for good in ["/", "/about", "/account", "/api/cart", "/search"] {
        let r = row(good);
        assert!(r.contains("PASS") && r.contains(" 0.00%"), "{r}");
    }
}

#[test]
fn the_dashboard_in_tmux() {
    common::require_tool("tmux", "apt-get install tmux");
    let name = format!("cutover-demo-{}", std::process::id());
    let session = Session(name.clone());
    let cmd = format!(
        "{} demo; echo DEMO_EXITED $?; sleep 60",
        env!("CARGO_BIN_EXE_cutover")
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session.0,
        "-x",
        "140",
        "-y",
        "40",
        &cmd,
    ]);
    let screen = wait_screen(&name, "/api/products/{id}", Duration::from_secs(20));
    assert!(screen.contains("proxies 1/1"), "{screen}");
    assert_eq!(
        tmux(&["display-message", "-p", "-t", &name, "#{alternate_on}"]).trim(),
        "1",
        "the dashboard uses the alternate screen"
    );
    // Filter to the buggy route and open it.
    tmux(&["send-keys", "-t", &name, "/"]);
    tmux(&["send-keys", "-t", &name, "-l", "api/prod"]);
    tmux(&["send-keys", "-t", &name, "Enter"]);
    wait_screen(&name, "filter: api/prod", Duration::from_secs(5));
    wait_screen(&name, "CLOSED", Duration::from_secs(20));
    tmux(&["send-keys", "-t", &name, "Enter"]);
    wait_screen(&name, "changed body/currency", Duration::from_secs(20));
    wait_screen(&name, r#"-  "currency": "EUR","#, Duration::from_secs(5));
    wait_screen(&name, r#"+  "currency": "eur","#, Duration::from_secs(5));
    wait_screen(
        &name,
        "noise learned from the twin",
        Duration::from_secs(20),
    );
    // The login's bug is in what it leaves in the session.
    tmux(&["send-keys", "-t", &name, "Escape"]);
    // A key sent right behind Escape would reach the terminal as one Alt+key sequence.
    wait_screen_without(&name, "Esc: back", Duration::from_secs(5));
    tmux(&["send-keys", "-t", &name, "/"]);
    tmux(&["send-keys", "-t", &name, "-l", "login"]);
    tmux(&["send-keys", "-t", &name, "Enter"]);
    wait_screen(&name, "filter: login", Duration::from_secs(5));
    tmux(&["send-keys", "-t", &name, "Enter"]);
    wait_screen(&name, "missing session/cart", Duration::from_secs(20));
    // Quit: within a second, and the terminal is back to normal.
    let started = Instant::now();
    tmux(&["send-keys", "-t", &name, "q"]);
    let after = wait_screen(&name, "DEMO_EXITED 0", Duration::from_secs(5));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "quit took {:?}",
        started.elapsed()
    );
    assert_eq!(
        tmux(&["display-message", "-p", "-t", &name, "#{alternate_on}"]).trim(),
        "0",
        "alternate screen left"
    );
    assert!(
        !after.contains("routes ──"),
        "the dashboard is gone: {after}"
    );
}

#[test]
fn sigterm_restores_the_terminal() {
    common::require_tool("tmux", "apt-get install tmux");
    let name = format!("cutover-term-{}", std::process::id());
    let _session = Session(name.clone());
    let cmd = format!(
        "{} demo & echo PID=$!; wait $!; echo DEMO_EXITED $?; sleep 60",
        env!("CARGO_BIN_EXE_cutover")
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "100",
        "-y",
        "30",
        &cmd,
    ]);
    wait_screen(&name, "/products/{id}", Duration::from_secs(20));
    // The demo runs in the background of the pane's shell; find it among the shell's children.
    let shell = tmux(&["display-message", "-p", "-t", &name, "#{pane_pid}"])
        .trim()
        .to_string();
    let children = Command::new("pgrep")
        .args(["-P", &shell])
        .output()
        .expect("pgrep");
    let pid = String::from_utf8_lossy(&children.stdout)
        .lines()
        .next()
        .map(str::to_string)
        .expect("the demo's pid");
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let after = wait_screen(&name, "DEMO_EXITED", Duration::from_secs(5));
    assert!(after.contains("DEMO_EXITED 0"), "{after}");
    assert_eq!(
        tmux(&["display-message", "-p", "-t", &name, "#{alternate_on}"]).trim(),
        "0",
        "alternate screen left"
    );
}
