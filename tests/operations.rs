//! Running cutover for weeks: route list changes on reload, windows that survive a restart,
//! `cutover check --probe`, causes you can see, and an ETA for a closed gate.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "ops-token";

fn env() {
    session_env();
    std::env::set_var("CUTOVER_ADMIN_TOKEN", TOKEN);
}

async fn reload(admin: SocketAddr) -> RawResponse {
    raw_request(
        admin,
        format!("POST /api/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes(),
    )
    .await
}

fn route(v: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    v["routes"]
        .as_array()?
        .iter()
        .find(|r| r["route"] == name)
        .cloned()
}

#[tokio::test]
async fn a_reload_adds_routes_and_the_old_ones_keep_their_counts() {
    env();
    let legacy = json_origin(r#"{"ok":1}"#).await;
    let dir = tempdir("ops-reload");
    let path = dir.join("cutover.toml");
    let base = format!(
        "{}[[route]]\npattern = \"/a\"\n",
        base_config(&legacy.url(), &legacy.url())
    );
    std::fs::write(&path, &base).expect("config");
    let proxy = cutover::runtime::start(cutover::config::Config::load(&path).expect("config"))
        .await
        .expect("starts");
    for _ in 0..3 {
        get(proxy.proxy_addr, "/a", &[]).await;
    }
    eventually(Duration::from_secs(5), "3 samples on /a", || async {
        route(&api(proxy.admin_addr, "/api/routes").await, "/a").is_some_and(|r| r["samples"] == 3)
    })
    .await;
    std::fs::write(&path, format!("{base}[[route]]\npattern = \"/b/{{id}}\"\n")).expect("config");
    let r = reload(proxy.admin_addr).await;
    let answer = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 200, "{answer}");
    assert!(answer.contains("added /b/{id}"), "{answer}");
    assert!(!answer.contains("needs a restart"), "{answer}");
    get(proxy.proxy_addr, "/b/7", &[]).await;
    eventually(Duration::from_secs(5), "/b/{id} counted", || async {
        route(&api(proxy.admin_addr, "/api/routes").await, "/b/{id}")
            .is_some_and(|r| r["samples"] == 1)
    })
    .await;
    let v = api(proxy.admin_addr, "/api/routes").await;
    assert_eq!(
        route(&v, "/a").expect("/a")["samples"],
        3,
        "/a kept its window"
    );
    // A changed pattern starts afresh, and the answer says so.
    std::fs::write(
        &path,
        format!("{base}[[route]]\npattern = \"/b/{{uid}}\"\n"),
    )
    .expect("config");
    let answer = String::from_utf8_lossy(&reload(proxy.admin_addr).await.body).into_owned();
    assert!(
        answer.contains("pattern /b/{id} changed to /b/{uid}: its counts start afresh"),
        "{answer}"
    );
    proxy.shutdown().await;
}

/// `cutover proxy --config` as a process, until its admin API answers.
async fn proxy_process(config: &Path, admin: SocketAddr) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["proxy", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cutover proxy");
    wait_port(admin, Duration::from_secs(20)).await;
    child
}

fn stop(mut child: std::process::Child) {
    // SAFETY: kill(2) on our own child; no memory is touched.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn windows_survive_a_restart() {
    env();
    let legacy = json_origin(r#"{"ok":1}"#).await;
    let dir = tempdir("ops-restart");
    let (proxy, admin) = (dead_addr(), dead_addr());
    let config = format!(
        "[listen]\nproxy = \"{proxy}\"\nadmin = \"{admin}\"\n[upstreams]\nlegacy = \"{0}\"\ncandidate = \"{0}\"\n[state]\nstore = \"file\"\npath = \"state.json\"\n[[route]]\npattern = \"/kept\"\n",
        legacy.url()
    );
    let path = dir.join("cutover.toml");
    std::fs::write(&path, config).expect("config");
    let child = proxy_process(&path, admin).await;
    for _ in 0..5 {
        get(proxy, "/kept", &[]).await;
        get(proxy, "/auto/1", &[]).await;
    }
    eventually(Duration::from_secs(5), "10 samples", || async {
        let v = api(admin, "/api/routes").await;
        route(&v, "/kept").is_some_and(|r| r["samples"] == 5)
            && route(&v, "/auto/{n}").is_some_and(|r| r["samples"] == 5)
    })
    .await;
    stop(child);
    assert!(
        std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".windows.")),
        "windows saved beside the state"
    );
    let child = proxy_process(&path, admin).await;
    let v = api(admin, "/api/routes").await;
    assert_eq!(route(&v, "/kept").expect("/kept")["samples"], 5, "{v}");
    assert_eq!(
        route(&v, "/auto/{n}").expect("/auto/{n}")["samples"],
        5,
        "{v}"
    );
    stop(child);
}

/// `cutover check --probe` (without blocking the runtime the test's origins run on).
async fn check_probe(config: &Path) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["check", "--probe", "--config"])
        .arg(config)
        .output()
        .await
        .expect("cutover check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn probe_names_what_does_not_answer() {
    env();
    let legacy = json_origin(r#"{"ok":1}"#).await;
    let db = dynalite().await;
    create_sessions_table(&db.url()).await;
    let dir = tempdir("ops-probe");
    let sessions = dir.join("sessions");
    std::fs::create_dir_all(&sessions).expect("sessions");
    std::fs::write(sessions.join("sess_probe0000001"), "user_id|i:5;").expect("a session");
    let good = format!(
        "{}[session]\nstore = \"files\"\n[session.files]\npath = \"{}\"\n[state]\nstore = \"dynamodb\"\ntable = \"sessions\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n",
        base_config(&legacy.url(), &legacy.url()),
        sessions.display(),
        db.url()
    );
    let path = dir.join("good.toml");
    std::fs::write(&path, &good).expect("config");
    let (code, out) = check_probe(&path).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("sess_probe0000001 decodes (1 variables)"),
        "{out}"
    );
    // A missing session folder, a dead candidate, an unreachable DynamoDB: each named.
    let dead = dead_addr();
    let bad = good
        .replace(&sessions.display().to_string(), "/nonexistent/php-sessions")
        .replacen(
            &format!("candidate = \"{}\"", legacy.url()),
            &format!("candidate = \"http://{dead}\""),
            1,
        )
        .replace(&db.url(), &format!("http://{}", dead_addr()));
    let path = dir.join("bad.toml");
    std::fs::write(&path, &bad).expect("config");
    let (code, out) = check_probe(&path).await;
    assert_eq!(code, 1, "{out}");
    let line = |part: &str| {
        out.lines()
            .find(|l| l.contains(part))
            .unwrap_or_else(|| panic!("no {part} line in:\n{out}"))
            .to_string()
    };
    assert!(line("legacy ").starts_with("ok"), "{out}");
    let c = line("candidate");
    assert!(
        c.starts_with("FAIL") && c.contains("connect refused"),
        "{c}"
    );
    let s = line("session store");
    assert!(
        s.starts_with("FAIL") && s.contains("/nonexistent/php-sessions"),
        "{s}"
    );
    let st = line("state store");
    assert!(st.starts_with("FAIL") && st.contains("sessions"), "{st}");
}

#[tokio::test]
async fn a_missing_session_folder_is_an_error_with_its_cause() {
    env();
    let legacy = json_origin(r#"{"ok":1}"#).await;
    let config = format!(
        "{}[session]\nstore = \"files\"\n[session.files]\npath = \"/nonexistent/php-sessions\"\n",
        base_config(&legacy.url(), &legacy.url())
    );
    let proxy = cutover(&config).await;
    let r = get(
        proxy.proxy_addr,
        "/page",
        &[("Cookie", "PHPSESSID=abcdef123456")],
    )
    .await;
    assert_eq!(r.status, 200, "the client is served");
    let text = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "cutover_session_resolutions_total",
            &[("store", "files"), ("outcome", "error")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "cutover_session_resolutions_total",
            &[("store", "files"), ("outcome", "absent")]
        ),
        0.0
    );
    let v = api(proxy.admin_addr, "/api/routes").await;
    let page = route(&v, "/page").expect("route");
    let cause = page["last_error"].as_str().expect("a cause").to_string();
    assert!(cause.contains("/nonexistent/php-sessions"), "{cause}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_eta_matches_the_time_the_gate_takes() {
    env();
    let legacy = json_origin(r#"{"ok":1}"#).await;
    // Gate at 200 samples; 1-second window slots.
    let config = format!(
        "{}[gate]\nmin_samples = 200\nmax_mismatch_rate = 0.05\nwindow_secs = 60\n[[route]]\npattern = \"/steady\"\n",
        base_config(&legacy.url(), &legacy.url())
    );
    let proxy = cutover(&config).await;
    // A steady 20 requests a second, each a clean sample.
    let addr = proxy.proxy_addr;
    let traffic = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            tokio::spawn(async move { get(addr, "/steady", &[]).await });
        }
    });
    let started = Instant::now();
    let steady = |v: &serde_json::Value| route(v, "/steady").unwrap_or_default();
    eventually(Duration::from_secs(10), "60 samples", || async {
        steady(&api(proxy.admin_addr, "/api/routes").await)["samples"]
            .as_u64()
            .is_some_and(|n| n >= 60)
    })
    .await;
    let v = api(proxy.admin_addr, "/api/routes").await;
    let r = steady(&v);
    let eta = r["gate"]["eta_secs"].as_u64().expect("an ETA") as f64;
    let asked_at = started.elapsed().as_secs_f64();
    eventually(Duration::from_secs(30), "the gate opens", || async {
        steady(&api(proxy.admin_addr, "/api/routes").await)["gate"]["passing"] == true
    })
    .await;
    let took = started.elapsed().as_secs_f64() - asked_at;
    traffic.abort();
    assert!(
        (eta - took).abs() <= 0.2 * took,
        "ETA {eta} s, opened after {took:.1} s"
    );
    proxy.shutdown().await;
}
