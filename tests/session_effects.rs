//! A match that means the route is safe: what each side leaves in the PHP session and which
//! cookies it sets are compared, with real PHP (`php -S`) writing sessions into each store
//! (files, Redis through phpredis, DynamoDB through dynalite); a twin runs on a copy of the
//! session; candidate errors are told apart from mismatches; reload reaches every route label.

mod common;

use common::*;
use cutover_session::header::{verify, Keyring, VerifiedSession};
use cutover_session::php::{Serializer, Session, Value};
use cutover_session::SessionWrite;
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN: &str = "effects-token";

fn env() {
    session_env();
    std::env::set_var("CUTOVER_ADMIN_TOKEN", TOKEN);
}

fn verified(r: &RecordedRequest) -> Option<VerifiedSession> {
    let keys = Keyring::single(SESSION_SECRET.as_bytes().to_vec());
    let h = r
        .headers
        .get("x-cutover-session")
        .and_then(|v| v.to_str().ok());
    let pq = r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    verify(
        h,
        &keys,
        60,
        cutover::stats::now_secs(),
        r.method.as_str(),
        pq,
    )
    .ok()
}

/// What the candidate gets wrong.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// Its login creates no session.
    ForgetsSession,
    /// Its login sets no session cookie.
    ForgetsCookie,
}

/// The Rust handlers of the /fx/ pages: what PHP's pages do, told as a shadow handler tells it
/// (headers PHP sends, the session it would leave declared in `x-cutover-session-write`).
async fn candidate(bug: Bug) -> Origin {
    Origin::start(move |r: RecordedRequest| async move {
        let before = verified(&r);
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), "application/json".into()),
            (
                "cache-control".into(),
                "no-store, no-cache, must-revalidate".into(),
            ),
            ("pragma".into(), "no-cache".into()),
        ];
        let mut declare = |w: SessionWrite| {
            headers.push((cutover_session::WRITE_HEADER.into(), w.to_header()));
        };
        let form = |k: &str| {
            String::from_utf8_lossy(&r.body)
                .split('&')
                .find_map(|p| p.strip_prefix(&format!("{k}=")).map(str::to_string))
        };
        let body = match r.uri.path() {
            "/fx/login" => {
                let user = form("user").unwrap_or_else(|| "anon".into());
                let user_id: i64 = form("user_id").and_then(|v| v.parse().ok()).unwrap_or(1);
                let id = format!("rs{:020x}", fastrand::u128(..) >> 48);
                let mut s = Session::new(Serializer::Php);
                s.set("user_id", Value::Int(user_id));
                s.set("user", Value::Str(user.clone().into_bytes()));
                s.set(
                    "roles",
                    Value::Array(vec![(
                        cutover_session::php::Key::Int(0),
                        Value::Str(b"reader".to_vec()),
                    )]),
                );
                if bug != Bug::ForgetsSession {
                    declare(SessionWrite::Set {
                        id: Some(id.clone()),
                        data: s.to_json().expect("json"),
                    });
                }
                if bug != Bug::ForgetsCookie {
                    headers.push(("set-cookie".into(), format!("PHPSESSID={id}; path=/")));
                }
                serde_json::json!({ "logged_in": user })
            }
            "/fx/counter" => {
                let mut s = before
                    .as_ref()
                    .map(|b| b.session.clone())
                    .unwrap_or_else(|| Session::new(Serializer::Php));
                let visits = s.get("visits").and_then(Value::as_i64).unwrap_or(0) + 1;
                s.set("visits", Value::Int(visits));
                declare(SessionWrite::keep(&s).expect("json"));
                serde_json::json!({ "visits": visits })
            }
            "/fx/profile" => {
                let user = before
                    .as_ref()
                    .and_then(|b| b.get_str("user"))
                    .map(str::to_string);
                let roles = before
                    .as_ref()
                    .map(|b| b.data["roles"].clone())
                    .filter(|r| !r.is_null())
                    .unwrap_or(serde_json::json!([]));
                serde_json::json!({ "user": user, "roles": roles })
            }
            "/fx/logout" => {
                declare(SessionWrite::Destroy);
                headers.push((
                    "set-cookie".into(),
                    "PHPSESSID=deleted; expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; path=/"
                        .into(),
                ));
                serde_json::json!({ "logged_out": true })
            }
            _ => serde_json::json!({}),
        };
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        respond(200, &headers, body.to_string())
    })
    .await
}

fn fx_config(legacy: &str, candidate: &str, store: &str, extra: &str) -> String {
    let kind = store
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("[session."))
        .and_then(|l| l.strip_suffix(']'))
        .unwrap_or("none");
    format!(
        "{}{extra}[session]\nstore = \"{kind}\"\ntimeout_ms = 2000\n{store}\n[gate]\nmin_samples = 1\nmax_mismatch_rate = 0.5\n[[route]]\npattern = \"/fx/login\"\nmirror_methods = [\"POST\"]\n[[route]]\npattern = \"/fx/logout\"\nmirror_methods = [\"POST\"]\n[[route]]\npattern = \"/fx/counter\"\n[[route]]\npattern = \"/fx/profile\"\n",
        base_config(legacy, candidate)
    )
}

async fn post_form(proxy: SocketAddr, path: &str, cookie: &str, form: &str) -> RawResponse {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\nCookie: PHPSESSID={cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    raw_request(proxy, req.as_bytes()).await
}

/// Comparisons finished (compared or skipped) over every route.
async fn finished(admin: SocketAddr) -> u64 {
    let v = api(admin, "/api/routes").await;
    v["routes"].as_array().map_or(0, |r| {
        r.iter()
            .map(|x| x["samples"].as_u64().unwrap_or(0) + x["skipped"].as_u64().unwrap_or(0))
            .sum()
    })
}

/// Waits until `n` comparisons have finished: a user who waits for each page before the next,
/// so that no request of the session races the previous one's read of it.
async fn settled(admin: SocketAddr, n: u64) {
    eventually(
        Duration::from_secs(10),
        &format!("{n} comparisons"),
        || async { finished(admin).await >= n },
    )
    .await;
}

/// A user's visit: log in, count twice, look at the profile, log out, each after the last
/// page's comparison. Returns the session id PHP gave at login.
async fn visit(proxy: SocketAddr, admin: SocketAddr, first_cookie: &str, user: &str) -> String {
    let base = finished(admin).await;
    let cookie = |id: &str| format!("PHPSESSID={id}");
    let r = post_form(
        proxy,
        "/fx/login",
        first_cookie,
        &format!("user={user}&user_id=7"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r
        .all("set-cookie")
        .iter()
        .find_map(|c| c.strip_prefix("PHPSESSID="))
        .and_then(|c| c.split(';').next())
        .expect("PHP regenerated the id at login")
        .to_string();
    settled(admin, base + 1).await;
    for n in 1..=2 {
        let r = get(proxy, "/fx/counter", &[("Cookie", &cookie(&id))]).await;
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            format!("{{\"visits\":{n}}}"),
            "PHP counts every visit once"
        );
        settled(admin, base + 1 + n).await;
    }
    let r = get(proxy, "/fx/profile", &[("Cookie", &cookie(&id))]).await;
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        format!("{{\"user\":\"{user}\",\"roles\":[\"reader\"]}}")
    );
    settled(admin, base + 4).await;
    let r = post_form(proxy, "/fx/logout", &id, "").await;
    assert_eq!(r.status, 200);
    settled(admin, base + 5).await;
    id
}

async fn outcome_count(admin: SocketAddr, route: &str, outcome: &str) -> f64 {
    metric(
        &scrape(admin).await,
        "cutover_comparisons_total",
        &[("route", route), ("outcome", outcome)],
    )
}

/// Waits until the visit's five comparisons are in, then returns each route's mismatches.
async fn mismatches_after_a_visit(admin: SocketAddr) -> Vec<(String, u64)> {
    eventually(Duration::from_secs(15), "five comparisons", || async {
        let v = api(admin, "/api/routes").await;
        v["routes"].as_array().map(|r| {
            r.iter()
                .map(|x| x["samples"].as_u64().unwrap_or(0))
                .sum::<u64>()
        }) == Some(5)
    })
    .await;
    let v = api(admin, "/api/routes").await;
    v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            (
                r["route"].as_str().unwrap_or("").to_string(),
                r["mismatches"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

async fn difference_paths(admin: SocketAddr, route: &str) -> Vec<String> {
    let r = get(
        admin,
        &format!("/api/routes/mismatches?route={}", cutover::client::q(route)),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let mut paths: Vec<String> = v["samples"][0]["differences"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| x["path"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
}

/// The faithful candidate matches on every page; each buggy one mismatches exactly where its
/// bug is, with the store in `store` written by real PHP.
async fn faithful_and_buggy(legacy: &Service, store: &str, tag: &str) {
    for (bug, expected) in [
        (Bug::None, vec![]),
        (Bug::ForgetsSession, vec!["session".to_string()]),
        (
            Bug::ForgetsCookie,
            vec!["header:set-cookie/PHPSESSID".to_string()],
        ),
    ] {
        let candidate = candidate(bug).await;
        let proxy = cutover(&fx_config(&legacy.url(), &candidate.url(), store, "")).await;
        let cookie = format!("{tag}{:06}", fastrand::u32(..1_000_000));
        visit(proxy.proxy_addr, proxy.admin_addr, &cookie, "ada").await;
        let mismatches = mismatches_after_a_visit(proxy.admin_addr).await;
        for (route, n) in &mismatches {
            let want = if route == "/fx/login" && !expected.is_empty() {
                1
            } else {
                0
            };
            if *n != want {
                let r = get(
                    proxy.admin_addr,
                    &format!("/api/routes/mismatches?route={}", cutover::client::q(route)),
                    &[("Authorization", &format!("Bearer {TOKEN}"))],
                )
                .await;
                panic!(
                    "{tag}: {route} mismatches: {mismatches:?}: {}",
                    String::from_utf8_lossy(&r.body)
                );
            }
        }
        if !expected.is_empty() {
            assert_eq!(
                difference_paths(proxy.admin_addr, "/fx/login").await,
                expected,
                "{tag}"
            );
        }
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn session_effects_with_files() {
    env();
    let dir = tempdir("fx-files");
    let legacy = php_server(
        &[("session.save_path", format!("\"{}\"", dir.display()))],
        &[],
    )
    .await;
    let store = format!("[session.files]\npath = \"{}\"", dir.display());
    faithful_and_buggy(&legacy, &store, "fxfiles").await;
}

#[tokio::test]
async fn session_effects_with_redis() {
    env();
    php_has_redis();
    let redis = redis_server().await;
    let legacy = php_server(
        &[
            ("session.save_handler", "redis".into()),
            ("session.save_path", format!("tcp://{}", redis.addr)),
        ],
        &[],
    )
    .await;
    let store = format!("[session.redis]\nurl = \"redis://{}/0\"", redis.addr);
    faithful_and_buggy(&legacy, &store, "fxredis").await;
}

#[tokio::test]
async fn session_effects_with_dynamodb() {
    env();
    let db = dynalite().await;
    create_sessions_table(&db.url()).await;
    let legacy = php_server(&[], &[("CUTOVER_TEST_DYNAMODB", db.url())]).await;
    let store = format!(
        "[session.dynamodb]\ntable = \"sessions\"\nendpoint = \"{}\"\nregion = \"us-east-1\"",
        db.url()
    );
    faithful_and_buggy(&legacy, &store, "fxdynamo").await;
}

#[tokio::test]
async fn a_twin_runs_on_a_copy_of_the_session() {
    env();
    let live = tempdir("fx-twin-live");
    let copy = tempdir("fx-twin-copy");
    let legacy = php_server(
        &[("session.save_path", format!("\"{}\"", live.display()))],
        &[],
    )
    .await;
    let twin = php_server(
        &[("session.save_path", format!("\"{}\"", copy.display()))],
        &[],
    )
    .await;
    let candidate = candidate(Bug::None).await;
    let store = format!("[session.files]\npath = \"{}\"", live.display());
    let twin_config = format!("legacy_twin = \"{}\"\n", twin.url());
    // Without [session.twin] the config is refused: the twin would write real users' sessions.
    let text = fx_config(&legacy.url(), &candidate.url(), &store, &twin_config);
    let e = cutover::config::Config::from_str_at(&text, "t.toml", std::path::Path::new("."))
        .expect_err("a twin without [session.twin]");
    assert_eq!(e.key, "session.twin");
    let text = text.replace(
        "[gate]",
        &format!("[session.twin]\npath = \"{}\"\n[gate]", copy.display()),
    );
    let proxy = cutover(&text).await;
    let id = visit(proxy.proxy_addr, proxy.admin_addr, "fxtwin000001", "bea").await;
    assert!(
        mismatches_after_a_visit(proxy.admin_addr)
            .await
            .iter()
            .all(|(_, n)| *n == 0),
        "the twin's noise and the session compare clean"
    );
    // The live store holds the client's sessions only: the login's (destroyed at logout, so
    // gone) and the client's first id's (regenerated away, also gone); nothing of the twin's.
    let live_files: Vec<String> = std::fs::read_dir(&live)
        .expect("live dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(live_files.is_empty(), "{live_files:?}");
    // The twin counted on its copy, which cutover wrote before each of its requests: the
    // second visit's copy held visits = 1, and the twin left 2.
    let twin_copy =
        std::fs::read_to_string(copy.join(format!("sess_{id}"))).expect("the twin's copy");
    assert!(twin_copy.contains("visits|i:2;"), "{twin_copy}");
    // The twin saw the same user as PHP: nothing session-driven is learned as noise.
    let routes = api(proxy.admin_addr, "/api/routes").await;
    for name in ["/fx/counter", "/fx/profile"] {
        let r = routes["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["route"] == name)
            .cloned()
            .expect("route");
        assert_eq!(r["noise"], serde_json::json!([]), "{r}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn errors_apart_from_mismatches_and_the_gate_judges_mirrorable_routes() {
    env();
    let legacy = json_origin(r#"{"ok":true}"#).await;
    let config = format!(
        "{}[gate]\nmin_samples = 3\nmax_mismatch_rate = 0.5\n[[route]]\npattern = \"/down\"\n[[route]]\npattern = \"/post-only\"\n[[route]]\npattern = \"/fine\"\ncandidate = \"{}\"\n",
        base_config(&legacy.url(), &format!("http://{}", dead_addr())),
        legacy.url()
    );
    let proxy = cutover(&config).await;
    for _ in 0..3 {
        get(proxy.proxy_addr, "/down", &[]).await;
        get(proxy.proxy_addr, "/fine", &[]).await;
        let r = raw_request(
            proxy.proxy_addr,
            b"POST /post-only HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    eventually(Duration::from_secs(10), "the comparisons", || async {
        outcome_count(proxy.admin_addr, "/down", "candidate_error").await == 3.0
            && outcome_count(proxy.admin_addr, "/fine", "match").await == 3.0
    })
    .await;
    let v = api(proxy.admin_addr, "/api/routes").await;
    let route = |name: &str| {
        v["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["route"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    let down = route("/down");
    assert_eq!(
        (down["errors"].as_u64(), down["mismatches"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(down["last_error"], "candidate: connect refused", "{down}");
    let reason = down["gate"]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("0 mismatches, 3 candidate errors"),
        "{reason}"
    );
    assert_eq!(route("/post-only")["mirrorable"], false);
    assert_eq!(route("/fine")["mirrorable"], true);
    // `cutover gate` judges mirrorable shadow routes: /down holds it closed, /post-only does not.
    let admin = format!("http://{}", proxy.admin_addr);
    let gate = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("gate")
            .args(args)
            .output()
            .await
            .expect("cutover gate");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = gate(vec!["--admin".into(), admin.clone()]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("/down") && !out.contains("/post-only"),
        "{out}"
    );
    let (code, out) = gate(vec![
        "--admin".into(),
        admin.clone(),
        "--route".into(),
        "/fine".into(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_reload_reaches_every_route_label_present_and_future() {
    env();
    let legacy = Origin::start(|_r| async move {
        respond(
            200,
            &[("content-type", "application/json")],
            format!("{{\"id\":1,\"request_id\":\"{:x}\"}}", fastrand::u64(..)),
        )
    })
    .await;
    let candidate = Origin::start(|_r| async move {
        respond(
            200,
            &[("content-type", "application/json")],
            format!("{{\"id\":1,\"request_id\":\"{:x}\"}}", fastrand::u64(..)),
        )
    })
    .await;
    let dir = tempdir("reload-labels");
    std::fs::write(dir.join("app.toml"), "[json]\nignore = [\"/request_id\"]\n").expect("rules");
    let config_path = dir.join("cutover.toml");
    let config = format!(
        "{}[defaults]\nrules = [\"app.toml\"]\n[gate]\nmin_samples = 1000\n",
        base_config(&legacy.url(), &candidate.url())
    );
    std::fs::write(&config_path, &config).expect("config");
    let cfg = cutover::config::Config::load(&config_path).expect("config");
    let proxy = cutover::runtime::start(cfg).await.expect("starts");
    get(proxy.proxy_addr, "/orders/1", &[]).await;
    eventually(Duration::from_secs(5), "a match", || async {
        outcome_count(proxy.admin_addr, "/orders/{n}", "match").await == 1.0
    })
    .await;
    // The ignore rule goes; a reload applies that to the old label and to labels made after.
    std::fs::write(dir.join("app.toml"), "[json]\n").expect("rules");
    let r = raw_request(
        proxy.admin_addr,
        format!("POST /api/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    get(proxy.proxy_addr, "/orders/2", &[]).await;
    get(proxy.proxy_addr, "/carts/3", &[]).await;
    eventually(
        Duration::from_secs(5),
        "mismatches after the reload",
        || async {
            outcome_count(proxy.admin_addr, "/orders/{n}", "mismatch").await == 1.0
                && outcome_count(proxy.admin_addr, "/carts/{n}", "mismatch").await == 1.0
        },
    )
    .await;
    // [gate] is applied too, and the answer says so.
    std::fs::write(
        &config_path,
        config.replace("min_samples = 1000", "min_samples = 7"),
    )
    .expect("config");
    let r = raw_request(
        proxy.admin_addr,
        format!("POST /api/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes(),
    )
    .await;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.contains("[gate]"), "{body}");
    let v = api(proxy.admin_addr, "/api/routes").await;
    assert_eq!(v["gate_thresholds"]["min_samples"], 7);
    proxy.shutdown().await;
}

#[tokio::test]
async fn requests_that_race_a_sessions_read_skip_their_comparison() {
    env();
    let dir = tempdir("fx-race");
    let legacy = php_server(
        &[("session.save_path", format!("\"{}\"", dir.display()))],
        &[],
    )
    .await;
    let candidate = candidate(Bug::None).await;
    let store = format!("[session.files]\npath = \"{}\"", dir.display());
    let proxy = cutover(&fx_config(&legacy.url(), &candidate.url(), &store, "")).await;
    let r = post_form(
        proxy.proxy_addr,
        "/fx/login",
        "fxrace000001",
        "user=cy&user_id=3",
    )
    .await;
    let id = r
        .all("set-cookie")
        .iter()
        .find_map(|c| c.strip_prefix("PHPSESSID="))
        .and_then(|c| c.split(';').next())
        .expect("a new id")
        .to_string();
    settled(proxy.admin_addr, 1).await;
    // Counter pages of one user at once (as a page's parallel XHRs): PHP runs them one after
    // the other under its lock, and what each read of the session sees may be the other's
    // doing. Such comparisons are skipped, never counted as mismatches.
    let mut pages = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (addr, cookie) = (proxy.proxy_addr, format!("PHPSESSID={id}"));
        pages.spawn(async move {
            get(addr, "/fx/counter", &[("Cookie", &cookie)])
                .await
                .status
        });
    }
    while let Some(status) = pages.join_next().await {
        assert_eq!(status.expect("page"), 200);
    }
    settled(proxy.admin_addr, 5).await;
    let skipped = outcome_count(proxy.admin_addr, "/fx/counter", "skipped").await;
    let matched = outcome_count(proxy.admin_addr, "/fx/counter", "match").await;
    let mismatched = outcome_count(proxy.admin_addr, "/fx/counter", "mismatch").await;
    assert_eq!(mismatched, 0.0, "a race is never blamed on the candidate");
    assert_eq!(skipped + matched, 4.0);
    assert!(skipped >= 1.0, "concurrent pages race: {skipped} skipped");
    proxy.shutdown().await;
}
