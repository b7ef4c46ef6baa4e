//! Record and replay, end to end: logged-in users of the real PHP fixture app (files sessions)
//! go through a proxy that records every mirrored exchange; `cutover replay` (the binary) then
//! sends the recording to a faithful candidate (every route passes, exit 0) and to one with a
//! planted bug (its route named, exit 1), and the candidate verifies every replayed session
//! header itself.

mod common;

use common::*;
use cutover_session::header::{verify, Keyring};
use cutover_session::php::{self, Serializer, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the candidate's session headers went.
#[derive(Default)]
struct HeaderChecks {
    verified: AtomicUsize,
    refused: AtomicUsize,
}

/// Rust handlers for /whoami, /counter and /api/users/{id}, reading the session from the
/// verified header only. `bug`: /counter counts by two.
async fn candidate(bug: bool, checks: Arc<HeaderChecks>) -> Origin {
    Origin::start(move |r: RecordedRequest| {
        let checks = checks.clone();
        async move {
            let pq = r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let header = r
                .headers
                .get(cutover_session::HEADER)
                .and_then(|v| v.to_str().ok());
            let s = match header {
                None => None,
                Some(h) => {
                    let keys = Keyring::single(SESSION_SECRET.as_bytes().to_vec());
                    match verify(
                        Some(h),
                        &keys,
                        60,
                        cutover::stats::now_secs(),
                        r.method.as_str(),
                        pq,
                    ) {
                        Ok(s) => {
                            checks.verified.fetch_add(1, Ordering::Relaxed);
                            Some(s)
                        }
                        Err(_) => {
                            checks.refused.fetch_add(1, Ordering::Relaxed);
                            return respond(403, &[], "bad session header");
                        }
                    }
                }
            };
            let user_id = s.as_ref().and_then(|s| s.get_i64("user_id"));
            let user = s
                .as_ref()
                .and_then(|s| s.get_str("user").map(str::to_string));
            let path = r.uri.path().to_string();
            if let Some(id) = path.strip_prefix("/api/users/") {
                let id: i64 = id.parse().unwrap_or(0);
                let body = format!(
                    r#"{{"id":{id},"name":"User {id}","roles":["reader","writer"],"score":0.30000000000000004}}"#
                );
                return respond(200, &[("content-type", "application/json")], body);
            }
            let mut after = s
                .as_ref()
                .map(|s| s.session.clone())
                .unwrap_or_else(|| php::Session::new(Serializer::Php));
            let body = match path.as_str() {
                "/whoami" => serde_json::json!({ "user_id": user_id, "user": user }),
                "/counter" => {
                    let before = s.as_ref().and_then(|s| s.get_i64("count")).unwrap_or(0);
                    let count = before + if bug { 2 } else { 1 };
                    after.set("count", Value::Int(count));
                    serde_json::json!({ "user_id": user_id, "count": count })
                }
                _ => return respond(404, &[], "not here"),
            };
            session_page(&r, body, &after, path == "/counter")
        }
    })
    .await
}

/// `cutover replay` as a user runs it: exit code and standard output.
fn replay(candidate: &str, config: &std::path::Path, recording: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["replay", "--candidate", candidate, "--config"])
        .arg(config)
        .arg(recording)
        .env("CUTOVER_SESSION_SECRET", SESSION_SECRET)
        .output()
        .expect("cutover replay runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some(),
        "replay was killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        stdout + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Comparisons finished so far, whatever their outcome.
async fn finished(admin: std::net::SocketAddr) -> f64 {
    scrape(admin)
        .await
        .lines()
        .filter(|l| l.starts_with("cutover_comparisons_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits for the exchange of the `n`th mirrored request to end: a request of the same session
/// sent while it still reads what PHP left would make it skip (see `mirror::races`).
async fn settled(admin: std::net::SocketAddr, n: usize) {
    eventually(Duration::from_secs(10), "the exchange to end", || async {
        finished(admin).await >= n as f64
    })
    .await;
}

fn route_line<'a>(out: &'a str, route: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(route))
        .unwrap_or_else(|| panic!("no line for {route} in:\n{out}"))
}

#[tokio::test]
async fn recorded_traffic_replays_against_a_candidate_build() {
    session_env();
    let dir = tempdir("record-replay");
    let sessions = dir.join("sessions");
    std::fs::create_dir_all(&sessions).expect("sessions folder");
    let recording = dir.join("traffic.jsonl");
    let legacy = php_server(
        &[("session.save_path", sessions.display().to_string())],
        &[],
    )
    .await;
    let live_checks = Arc::new(HeaderChecks::default());
    let live_candidate = candidate(false, live_checks.clone()).await;
    let routes = "[[route]]\npattern = \"/whoami\"\n[[route]]\npattern = \"/counter\"\n[[route]]\npattern = \"/api/users/{id}\"\n";
    let config = format!(
        "{}[session]\nstore = \"files\"\ntimeout_ms = 500\n[session.files]\npath = \"{}\"\n[record]\npath = \"{}\"\nsample = 1.0\n{routes}",
        base_config(&legacy.url(), &live_candidate.url()),
        sessions.display(),
        recording.display()
    );
    let proxy = cutover(&config).await;
    let users: Vec<String> = (0..10).map(|i| format!("recUser{i:04}secret")).collect();
    for (i, cookie) in users.iter().enumerate() {
        login(
            proxy.proxy_addr,
            cookie,
            &format!("user{i}"),
            100 + i as u32,
        )
        .await;
    }
    let mut sent = 0;
    for (i, cookie) in users.iter().enumerate() {
        let cookie = format!("PHPSESSID={cookie}; remember=keep-me-{i}-private");
        for round in 0..3 {
            for path in [
                "/whoami",
                "/counter",
                &format!("/api/users/{}", i * 3 + round),
            ] {
                let r = get(
                    proxy.proxy_addr,
                    path,
                    &[
                        ("Cookie", &cookie),
                        ("Authorization", "Bearer sekrit-bearer-token"),
                    ],
                )
                .await;
                assert_eq!(r.status, 200, "{path}");
                sent += 1;
                settled(proxy.admin_addr, sent).await;
            }
        }
    }
    // Visitors without a session, one of whom gets a new one from /counter.
    for path in [
        "/whoami",
        "/api/users/7",
        "/whoami?from=mail&token=abcdef-query-secret",
        "/counter",
        "/api/users/8",
        "/whoami",
        "/api/users/9",
        "/whoami",
        "/api/users/1",
        "/whoami",
    ] {
        let r = get(
            proxy.proxy_addr,
            path,
            &[("X-Api-Key", "apikey-0123456789")],
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        sent += 1;
        settled(proxy.admin_addr, sent).await;
    }
    assert_eq!(sent, 100);
    assert_eq!(
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_comparisons_total",
            &[("route", "/counter"), ("outcome", "skipped")]
        ),
        0.0
    );
    let lines = || {
        std::fs::read_to_string(&recording)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while lines() < 100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if waited.is_err() {
        let m = scrape(proxy.admin_addr).await;
        let routes = api(proxy.admin_addr, "/api/routes").await;
        panic!(
            "{} lines recorded of 100\n{}\n{routes:#}",
            lines(),
            m.lines()
                .filter(|l| l.starts_with("cutover_comparisons_total")
                    || l.starts_with("cutover_recorded")
                    || l.starts_with("cutover_shadow_dropped"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let scraped = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &scraped,
            "cutover_recorded_exchanges_total",
            &[("outcome", "recorded")]
        ),
        100.0
    );
    proxy.shutdown().await;

    // What the file holds: no cookie, credential or query secret; mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&recording)
        .expect("recording")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&recording).expect("recording");
    for secret in [
        "recUser",
        "keep-me-",
        "sekrit-bearer-token",
        "apikey-0123456789",
        "abcdef-query-secret",
    ] {
        assert!(!text.contains(secret), "the recording holds {secret}");
    }
    let counter = cutover::record::read(&recording)
        .expect("readable")
        .into_iter()
        .find(|x| x.route == "/counter" && x.session.is_some())
        .expect("a logged-in /counter");
    assert!(counter
        .session
        .as_ref()
        .is_some_and(|s| s.data["user"].is_string()));
    assert!(matches!(
        counter.session_after,
        Some(cutover::diff::SessionAfter::Session { .. })
    ));

    let config_file = dir.join("cutover.toml");
    std::fs::write(&config_file, &config).expect("config");
    let with_session = cutover::record::read(&recording)
        .expect("readable")
        .iter()
        .filter(|x| x.session.is_some())
        .count();
    assert_eq!(with_session, 90);

    // A faithful candidate: every route passes, and it verified every session header.
    let checks = Arc::new(HeaderChecks::default());
    let good = candidate(false, checks.clone()).await;
    let good_url = good.url();
    let (code, out) =
        tokio::task::spawn_blocking(move || replay(&good_url, &config_file, &recording))
            .await
            .expect("replay");
    assert_eq!(code, 0, "{out}");
    for route in ["/whoami", "/counter", "/api/users/{id}"] {
        assert!(route_line(&out, route).contains("PASS"), "{out}");
    }
    assert_eq!(good.count(), 100);
    assert_eq!(checks.verified.load(Ordering::Relaxed), with_session);
    assert_eq!(checks.refused.load(Ordering::Relaxed), 0);
    // Replayed requests are marked as shadow traffic.
    assert!(good
        .requests()
        .iter()
        .all(|r| r.headers.get("x-cutover-shadow").is_some_and(|v| v == "1")));

    // A planted bug in /counter: that route fails and is named, the others pass.
    let bad_checks = Arc::new(HeaderChecks::default());
    let bad = candidate(true, bad_checks.clone()).await;
    let bad_url = bad.url();
    let config_file = dir.join("cutover.toml");
    let recording = dir.join("traffic.jsonl");
    let (code, out) =
        tokio::task::spawn_blocking(move || replay(&bad_url, &config_file, &recording))
            .await
            .expect("replay");
    assert_eq!(code, 1, "{out}");
    assert!(route_line(&out, "/counter").contains("FAIL"), "{out}");
    assert!(out.contains("body/count"), "{out}");
    assert!(out.contains("session/count"), "{out}");
    assert!(route_line(&out, "/whoami").contains("PASS"), "{out}");
    assert!(
        route_line(&out, "/api/users/{id}").contains("PASS"),
        "{out}"
    );
    assert_eq!(bad_checks.refused.load(Ordering::Relaxed), 0);
    drop(legacy);
}

#[tokio::test]
async fn replay_errors_exit_2() {
    session_env();
    let dir = tempdir("replay-errors");
    let recording = dir.join("broken.jsonl");
    std::fs::write(&recording, "{\"v\":1}\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["replay", "--candidate", "http://127.0.0.1:9"])
        .arg(&recording)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.jsonl:1"), "{err}");
}
