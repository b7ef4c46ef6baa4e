//! The gate, promote and rollback through the admin API and the CLI, auto-rollback, and route
//! modes shared by a fleet through the state store (a file, and DynamoDB through dynalite).

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "t0ken";

fn env() {
    session_env();
    std::env::set_var("CUTOVER_ADMIN_TOKEN", TOKEN);
}

fn gate_config(legacy: &str, candidate: &str) -> String {
    format!(
        "{}[gate]\nmin_samples = 20\nmax_mismatch_rate = 0.2\n[[route]]\npattern = \"/items/{{id}}\"\n[[route]]\npattern = \"/other\"\n",
        base_config(legacy, candidate)
    )
}

/// Runs the CLI without blocking the runtime the in-process proxies run on.
async fn cli(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env("CUTOVER_ADMIN_TOKEN", TOKEN)
        .output()
        .await
        .expect("run cutover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn post(
    admin: std::net::SocketAddr,
    path_and_query: &str,
    token: Option<&str>,
) -> RawResponse {
    let mut req = format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(admin, req.as_bytes()).await
}

async fn mode_of(admin: std::net::SocketAddr, route: &str) -> String {
    let v = api(admin, "/api/routes").await;
    v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["route"] == route)
        .map(|r| r["mode"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

async fn legacy_and_candidate() -> (Origin, Origin) {
    let legacy = json_origin(r#"{"from":"php"}"#).await;
    let candidate = Origin::start(|r: RecordedRequest| async move {
        // Matches PHP in shadow mode; says who it is when it serves clients.
        let body = if r.headers.contains_key("x-cutover-shadow") {
            r#"{"from":"php"}"#
        } else {
            r#"{"from":"rust"}"#
        };
        respond(200, &[("content-type", "application/json")], body)
    })
    .await;
    (legacy, candidate)
}

#[tokio::test]
async fn promote_is_refused_until_the_gate_opens_then_the_candidate_serves() {
    env();
    let (legacy, candidate) = legacy_and_candidate().await;
    let proxy = cutover(&gate_config(&legacy.url(), &candidate.url())).await;
    let admin = format!("http://{}", proxy.admin_addr);
    for i in 0..5 {
        get(proxy.proxy_addr, &format!("/items/{i}"), &[]).await;
    }
    eventually(Duration::from_secs(5), "5 samples", || async {
        api(proxy.admin_addr, "/api/routes").await["routes"][0]["samples"] == 5
    })
    .await;
    // No token: 401. With it, while the gate is closed: 409 with the verdict.
    let q = "/api/routes/promote?route=%2Fitems%2F%7Bid%7D";
    assert_eq!(post(proxy.admin_addr, q, None).await.status, 401);
    assert_eq!(post(proxy.admin_addr, q, Some("wrong")).await.status, 401);
    let refused = post(proxy.admin_addr, q, Some(TOKEN)).await;
    assert_eq!(refused.status, 409);
    let v: serde_json::Value = serde_json::from_slice(&refused.body).expect("json");
    assert!(
        v["verdict"]["reason"]
            .as_str()
            .expect("reason")
            .starts_with("5 of 20 samples needed"),
        "{v}"
    );
    let (code, _, err) = cli(&["promote", "/items/{id}", "--admin", &admin]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused") && err.contains("samples needed"),
        "{err}"
    );
    let (code, out, _) = cli(&["gate", "--admin", &admin, "--route", "/items/{id}"]).await;
    assert_eq!(code, 1, "{out}");
    // Matches accumulate; the gate opens.
    for i in 5..20 {
        get(proxy.proxy_addr, &format!("/items/{i}"), &[]).await;
    }
    eventually(Duration::from_secs(5), "the gate opens", || async {
        api(proxy.admin_addr, "/api/routes").await["routes"][0]["gate"]["passing"] == true
    })
    .await;
    let (code, out, _) = cli(&["gate", "--admin", &admin, "--route", "/items/{id}"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS"));
    let (code, out, err) = cli(&["promote", "/items/{id}", "--admin", &admin]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(mode_of(proxy.admin_addr, "/items/{id}").await, "candidate");
    let r = get(proxy.proxy_addr, "/items/1", &[]).await;
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        r#"{"from":"rust"}"#,
        "the candidate's answer reaches the client"
    );
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "cutover_route_mode",
            &[("route", "/items/{id}"), ("mode", "candidate")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "cutover_route_mode",
            &[("route", "/items/{id}"), ("mode", "shadow")]
        ),
        0.0
    );
    // Forced promotion of a route whose gate is closed, with a reason; then a rollback.
    let (code, _, err) = cli(&["promote", "/other", "--admin", &admin, "--force"]).await;
    assert_eq!(code, 2, "--force without --reason: {err}");
    let (code, _, err) = cli(&[
        "promote",
        "/other",
        "--admin",
        &admin,
        "--force",
        "--reason",
        "hotfix for INC-42",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["rollback", "/items/{id}", "--admin", &admin]).await;
    assert_eq!(code, 0, "{err}");
    let r = get(proxy.proxy_addr, "/items/1", &[]).await;
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        r#"{"from":"php"}"#,
        "PHP serves again"
    );
    let events = api(proxy.admin_addr, "/api/events").await;
    let list = events["events"].as_array().expect("events");
    let kinds: Vec<&str> = list.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, vec!["promote", "forced_promote", "rollback"]);
    assert_eq!(list[1]["reason"], "hotfix for INC-42");
    assert_eq!(
        list[1]["verdict"]["passing"], false,
        "the verdict at that moment is kept"
    );
    // gate: exit 2 when a proxy cannot be read.
    let (code, _, err) = cli(&["gate", "--admin", &format!("http://{}", dead_addr())]).await;
    assert_eq!(code, 2, "{err}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn gradual_promotion_serves_a_share_sticky_per_session() {
    env();
    let (legacy, candidate) = legacy_and_candidate().await;
    // The two sides answer differently by design: verifying the promoted route would roll it
    // back part-way through, whenever the control loop next looks.
    let config = gate_config(&legacy.url(), &candidate.url())
        .replace("[gate]\n", "[gate]\nverify_after_promotion = false\n");
    let proxy = cutover(&config).await;
    let r = post(
        proxy.admin_addr,
        "/api/routes/promote?route=/other&percent=30&force=true&reason=canary",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut rust = 0;
    for i in 0..200 {
        let cookie = format!("PHPSESSID=user{i:05}");
        let first = get(proxy.proxy_addr, "/other", &[("Cookie", &cookie)])
            .await
            .body;
        let again = get(proxy.proxy_addr, "/other", &[("Cookie", &cookie)])
            .await
            .body;
        assert_eq!(first, again, "sticky per session");
        if first == br#"{"from":"rust"}"# {
            rust += 1;
        }
    }
    assert!(
        (35..=85).contains(&rust),
        "about 30% of 200 sessions: {rust}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_failing_promoted_route_rolls_back_by_itself() {
    env();
    let broken = Arc::new(AtomicBool::new(false));
    let legacy = json_origin(r#"{"from":"php"}"#).await;
    let flag = broken.clone();
    let candidate = Origin::start(move |_r| {
        let broken = flag.load(Ordering::SeqCst);
        async move {
            if broken {
                respond(500, &[], "boom")
            } else {
                respond(
                    200,
                    &[("content-type", "application/json")],
                    r#"{"from":"php"}"#,
                )
            }
        }
    })
    .await;
    let proxy = cutover(&gate_config(&legacy.url(), &candidate.url())).await;
    let r = post(
        proxy.admin_addr,
        "/api/routes/promote?route=/other&force=true&reason=test",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200);
    broken.store(true, Ordering::SeqCst);
    let saw_500 = Arc::new(AtomicBool::new(false));
    eventually(Duration::from_secs(15), "auto-rollback", || {
        let saw = saw_500.clone();
        let (p, a) = (proxy.proxy_addr, proxy.admin_addr);
        async move {
            if get(p, "/other", &[]).await.status == 500 {
                saw.store(true, Ordering::SeqCst);
            }
            mode_of(a, "/other").await == "shadow"
        }
    })
    .await;
    assert!(
        saw_500.load(Ordering::SeqCst),
        "the candidate served (and failed) before the rollback"
    );
    let r = get(proxy.proxy_addr, "/other", &[]).await;
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        (200, r#"{"from":"php"}"#.to_string())
    );
    let events = api(proxy.admin_addr, "/api/events").await;
    let last = events["events"]
        .as_array()
        .expect("events")
        .last()
        .cloned()
        .expect("an event");
    assert_eq!(last["kind"], "auto_rollback");
    assert!(
        last["reason"].as_str().expect("reason").contains("5xx"),
        "{last}"
    );
    assert_eq!(
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_auto_rollbacks_total",
            &[]
        ),
        1.0
    );
    proxy.shutdown().await;
}

fn state_config(legacy: &str, candidate: &str, state: &str) -> String {
    format!("{}{state}\n", gate_config(legacy, candidate))
}

#[tokio::test]
async fn a_fleet_shares_modes_through_dynamodb() {
    env();
    let db = dynalite().await;
    let (legacy, candidate) = legacy_and_candidate().await;
    let state = format!("[state]\nstore = \"dynamodb\"\ntable = \"cutover_routes\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\npoll_ms = 200", db.url());
    let a = cutover(&state_config(&legacy.url(), &candidate.url(), &state)).await;
    let b = cutover(&state_config(&legacy.url(), &candidate.url(), &state)).await;
    let r = post(
        a.admin_addr,
        "/api/routes/promote?route=/other&force=true&reason=fleet",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The other proxy applies it within the poll interval.
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(5),
        "proxy b applies the promotion",
        || async { mode_of(b.admin_addr, "/other").await == "candidate" },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        String::from_utf8_lossy(&get(b.proxy_addr, "/other", &[]).await.body),
        r#"{"from":"rust"}"#
    );
    // Two concurrent changes of the same route from the same version: exactly one lands.
    let (ra, rb) = tokio::join!(
        post(
            a.admin_addr,
            "/api/routes/promote?route=/other&percent=50&force=true&reason=a",
            Some(TOKEN)
        ),
        post(
            b.admin_addr,
            "/api/routes/promote?route=/other&percent=60&force=true&reason=b",
            Some(TOKEN)
        ),
    );
    let mut statuses = vec![ra.status, rb.status];
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 409],
        "a: {} b: {}",
        String::from_utf8_lossy(&ra.body),
        String::from_utf8_lossy(&rb.body)
    );
    let sdk = cutover::aws::sdk_config(Some("us-east-1"), Some(&db.url())).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let item = client
        .get_item()
        .table_name("cutover_routes")
        .key(
            "route",
            aws_sdk_dynamodb::types::AttributeValue::S("/other".into()),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("item");
    assert_eq!(
        item.get("version"),
        Some(&aws_sdk_dynamodb::types::AttributeValue::N("2".into())),
        "exactly one version step"
    );
    // A proxy started later picks up the current modes before serving.
    let c = cutover(&state_config(&legacy.url(), &candidate.url(), &state)).await;
    assert_eq!(mode_of(c.admin_addr, "/other").await, "candidate");
    assert_eq!(api(c.admin_addr, "/api/routes").await["state_version"], 2);
    for p in [a, b, c] {
        p.shutdown().await;
    }
}

#[tokio::test]
async fn local_proxies_share_a_state_file() {
    env();
    let (legacy, candidate) = legacy_and_candidate().await;
    let dir = tempdir("state-file");
    let state = format!(
        "[state]\nstore = \"file\"\npath = \"{}\"\npoll_ms = 100",
        dir.join("state.json").display()
    );
    let a = cutover(&state_config(&legacy.url(), &candidate.url(), &state)).await;
    let b = cutover(&state_config(&legacy.url(), &candidate.url(), &state)).await;
    assert_eq!(
        post(
            a.admin_addr,
            "/api/routes/promote?route=/other&force=true&reason=x",
            Some(TOKEN)
        )
        .await
        .status,
        200
    );
    eventually(Duration::from_secs(3), "b applies it", || async {
        mode_of(b.admin_addr, "/other").await == "candidate"
    })
    .await;
    assert_eq!(
        post(
            b.admin_addr,
            "/api/routes/rollback?route=/other",
            Some(TOKEN)
        )
        .await
        .status,
        200
    );
    eventually(Duration::from_secs(3), "a applies the rollback", || async {
        mode_of(a.admin_addr, "/other").await == "shadow"
    })
    .await;
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).expect("state file"))
            .expect("json");
    assert_eq!(stored["routes"]["/other"]["version"], 2);
    assert_eq!(stored["routes"]["/other"]["mode"], "shadow");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn gate_sums_a_fleet() {
    env();
    let (legacy, candidate) = legacy_and_candidate().await;
    let a = cutover(&gate_config(&legacy.url(), &candidate.url())).await;
    let b = cutover(&gate_config(&legacy.url(), &candidate.url())).await;
    // 12 samples on each: neither alone has 20, the fleet has 24.
    for i in 0..12 {
        get(a.proxy_addr, &format!("/items/{i}"), &[]).await;
        get(b.proxy_addr, &format!("/items/{i}"), &[]).await;
    }
    eventually(Duration::from_secs(5), "24 samples", || async {
        api(a.admin_addr, "/api/routes").await["routes"][0]["samples"] == 12
            && api(b.admin_addr, "/api/routes").await["routes"][0]["samples"] == 12
    })
    .await;
    let (ua, ub) = (
        format!("http://{}", a.admin_addr),
        format!("http://{}", b.admin_addr),
    );
    assert_eq!(
        cli(&["gate", "--admin", &ua, "--route", "/items/{id}"])
            .await
            .0,
        1
    );
    let (code, out, _) = cli(&[
        "gate",
        "--admin",
        &ua,
        "--admin",
        &ub,
        "--route",
        "/items/{id}",
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["proxies"], 2);
    assert_eq!(v["routes"][0]["passing"], true);
    // promote with several proxies judges the fleet; the proxy's own gate is closed (12 of
    // 20), so it is recorded as a forced promotion whose reason is the fleet's verdict.
    let (code, out, err) = cli(&["promote", "/items/{id}", "--admin", &ua, "--admin", &ub]).await;
    assert_eq!(code, 0, "{out}{err}");
    let events = api(a.admin_addr, "/api/events").await;
    let ev = &events["events"][0];
    assert_eq!(ev["kind"], "forced_promote", "{events}");
    assert!(
        ev["reason"]
            .as_str()
            .expect("reason")
            .starts_with("fleet of 2 proxies passes: passing"),
        "{events}"
    );
    assert_eq!(
        ev["verdict"]["passing"], false,
        "the proxy's own verdict is kept"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn promoted_routes_verify_fall_back_and_reset() {
    env();
    let (legacy, candidate) = legacy_and_candidate().await;
    let dead = format!("http://{}", dead_addr());
    let config = format!(
        "{}[[route]]\npattern = \"/gone\"\ncandidate = \"{dead}\"\n",
        gate_config(&legacy.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    // A promoted route whose candidate cannot be reached: safe requests are answered by PHP.
    assert_eq!(
        post(
            proxy.admin_addr,
            "/api/routes/promote?route=/gone&force=true&reason=t",
            Some(TOKEN)
        )
        .await
        .status,
        200
    );
    let r = get(proxy.proxy_addr, "/gone", &[]).await;
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        (200, r#"{"from":"php"}"#.to_string())
    );
    assert_eq!(
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_candidate_fallbacks_total",
            &[]
        ),
        1.0
    );
    // verify_after_promotion: the candidate serves, PHP is asked too, and they are compared.
    assert_eq!(
        post(
            proxy.admin_addr,
            "/api/routes/promote?route=/other&force=true&reason=t",
            Some(TOKEN)
        )
        .await
        .status,
        200
    );
    for _ in 0..5 {
        let r = get(proxy.proxy_addr, "/other", &[]).await;
        assert_eq!(String::from_utf8_lossy(&r.body), r#"{"from":"rust"}"#);
    }
    eventually(Duration::from_secs(5), "5 reverse comparisons", || async {
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_comparisons_total",
            &[("route", "/other"), ("outcome", "mismatch")],
        ) == 5.0
    })
    .await;
    assert_eq!(
        legacy
            .requests()
            .iter()
            .filter(|r| r.uri.path() == "/other")
            .count(),
        5,
        "PHP got the verification requests"
    );
    // reset: the window, noise and samples of the route are forgotten.
    assert_eq!(
        post(proxy.admin_addr, "/api/routes/reset?route=/other", None)
            .await
            .status,
        401
    );
    assert_eq!(
        post(
            proxy.admin_addr,
            "/api/routes/reset?route=/other",
            Some(TOKEN)
        )
        .await
        .status,
        200
    );
    let v = api(proxy.admin_addr, "/api/routes").await;
    let other = v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["route"] == "/other")
        .cloned()
        .expect("route");
    assert_eq!(other["samples"], 0);
    assert_eq!(
        post(
            proxy.admin_addr,
            "/api/routes/reset?route=/nope",
            Some(TOKEN)
        )
        .await
        .status,
        404
    );
    let events = api(proxy.admin_addr, "/api/events").await;
    assert_eq!(
        events["events"]
            .as_array()
            .expect("events")
            .last()
            .expect("event")["kind"],
        "reset"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_promoted_route_that_mismatches_rolls_back_by_itself() {
    env();
    // The candidate answers every client (200) but not as PHP does: only the comparisons made
    // after the promotion (verify_after_promotion) can see it.
    let legacy = json_origin(r#"{"price":"9.99"}"#).await;
    let candidate = json_origin(r#"{"price":"9.90"}"#).await;
    let proxy = cutover(&gate_config(&legacy.url(), &candidate.url())).await;
    let r = post(
        proxy.admin_addr,
        "/api/routes/promote?route=/other&force=true&reason=test",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(15), "auto-rollback", || {
        let (p, a) = (proxy.proxy_addr, proxy.admin_addr);
        async move {
            assert_eq!(get(p, "/other", &[]).await.status, 200);
            mode_of(a, "/other").await == "shadow"
        }
    })
    .await;
    let events = api(proxy.admin_addr, "/api/events").await;
    let last = events["events"]
        .as_array()
        .expect("events")
        .last()
        .cloned()
        .expect("an event");
    assert_eq!(last["kind"], "auto_rollback");
    assert!(
        last["reason"]
            .as_str()
            .expect("reason")
            .contains("comparisons since the promotion differ"),
        "{last}"
    );
    // Back in shadow, PHP serves again.
    let r = get(proxy.proxy_addr, "/other", &[]).await;
    assert_eq!(r.body, br#"{"price":"9.99"}"#);
    proxy.shutdown().await;
}

// Multi-threaded: waiting for the screen blocks a thread, and the proxy in this process must
// keep answering the dashboard meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_keys_promote_roll_back_and_reset() {
    env();
    require_tool("tmux", "apt-get install tmux");
    let (legacy, candidate) = legacy_and_candidate().await;
    let proxy = cutover(&gate_config(&legacy.url(), &candidate.url())).await;
    for i in 0..25 {
        get(proxy.proxy_addr, &format!("/items/{i}"), &[]).await;
    }
    eventually(Duration::from_secs(10), "a passing gate", || async {
        let v = api(proxy.admin_addr, "/api/routes").await;
        v["routes"][0]["gate"]["passing"] == true
    })
    .await;
    let name = format!("cutover-keys-{}", std::process::id());
    let _session = TmuxSession(name.clone());
    let cmd = format!(
        "CUTOVER_ADMIN_TOKEN={TOKEN} {} tui --admin {}; sleep 60",
        env!("CARGO_BIN_EXE_cutover"),
        proxy.admin_addr
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "140",
        "-y",
        "30",
        &cmd,
    ]);
    wait_screen(&name, "/items/{id}", Duration::from_secs(20));
    // Sorted by name, /items/{id} is the first row.
    tmux(&["send-keys", "-t", &name, "s"]);
    tmux(&["send-keys", "-t", &name, "s"]);
    wait_screen(&name, "sort: name", Duration::from_secs(5));
    tmux(&["send-keys", "-t", &name, "p"]);
    wait_screen(&name, "to the candidate? y/n", Duration::from_secs(5));
    tmux(&["send-keys", "-t", &name, "y"]);
    wait_screen(&name, "promoted /items/{id}", Duration::from_secs(10));
    assert_eq!(mode_of(proxy.admin_addr, "/items/{id}").await, "candidate");
    tmux(&["send-keys", "-t", &name, "r"]);
    wait_screen(&name, "back to shadow? y/n", Duration::from_secs(5));
    tmux(&["send-keys", "-t", &name, "y"]);
    wait_screen(&name, "is back in shadow mode", Duration::from_secs(10));
    assert_eq!(mode_of(proxy.admin_addr, "/items/{id}").await, "shadow");
    tmux(&["send-keys", "-t", &name, "x"]);
    wait_screen(
        &name,
        "window, noise and samples on every proxy? y/n",
        Duration::from_secs(5),
    );
    tmux(&["send-keys", "-t", &name, "y"]);
    wait_screen(
        &name,
        "window, noise and samples cleared",
        Duration::from_secs(10),
    );
    let v = api(proxy.admin_addr, "/api/routes").await;
    assert_eq!(v["routes"][0]["samples"], 0, "{v}");
    let kinds: Vec<String> = api(proxy.admin_addr, "/api/events").await["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds, ["promote", "rollback", "reset"]);
    proxy.shutdown().await;
}
