//! Rules, noise learned from a twin, samples, reload and `cutover diff`, against real PHP
//! processes and real HTTP origins.

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

async fn php(variant: &str, sessions: &std::path::Path) -> Service {
    php_server(
        &[("session.save_path", sessions.display().to_string())],
        &[("CUTOVER_FIXTURE_VARIANT", variant.to_string())],
    )
    .await
}

fn twin_config(legacy: &Service, twin: &Service, candidate: &Service) -> String {
    format!(
        "{}legacy_twin = \"{}\"\n[[route]]\npattern = \"/noisy\"\n[[route]]\npattern = \"/api/profile/{{id}}\"\n",
        base_config(&legacy.url(), &candidate.url()),
        twin.url()
    )
}

async fn route_view(admin: std::net::SocketAddr, route: &str) -> serde_json::Value {
    let v = api(admin, "/api/routes").await;
    v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["route"] == route)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn noise_is_learned_from_the_twin_and_real_changes_still_show() {
    let dir = tempdir("noise");
    let legacy = php("", &dir).await;
    let twin = php("", &dir).await;
    let same = php("", &dir).await;
    let buggy = php("buggy", &dir).await;
    std::env::set_var("CUTOVER_ADMIN_TOKEN", "t0ken");

    // A candidate identical to PHP: every difference is noise (CSRF token, time, uniqid), and
    // the route converges to 0 mismatches without a single rule.
    let proxy = cutover(&twin_config(&legacy, &twin, &same)).await;
    for i in 0..20 {
        assert_eq!(get(proxy.proxy_addr, "/noisy", &[]).await.status, 200);
        assert_eq!(
            get(proxy.proxy_addr, &format!("/api/profile/{i}"), &[])
                .await
                .status,
            200
        );
    }
    eventually(Duration::from_secs(10), "40 comparisons", || async {
        let a = route_view(proxy.admin_addr, "/noisy").await;
        let b = route_view(proxy.admin_addr, "/api/profile/{id}").await;
        a["samples"] == 20 && b["samples"] == 20
    })
    .await;
    for route in ["/noisy", "/api/profile/{id}"] {
        let r = route_view(proxy.admin_addr, route).await;
        assert_eq!(r["mismatches"], 0, "{route}: {r}");
        let noise = r["noise"].as_array().expect("noise");
        assert!(!noise.is_empty(), "{route}: noise keys are listed");
        for n in noise {
            assert!(
                !n["suggested_rule"].as_str().expect("rule").is_empty(),
                "{n}"
            );
        }
    }
    let profile = route_view(proxy.admin_addr, "/api/profile/{id}").await;
    let rules: Vec<&str> = profile["noise"]
        .as_array()
        .expect("noise")
        .iter()
        .filter_map(|n| n["suggested_rule"].as_str())
        .collect();
    assert!(
        rules.contains(&"[json]\nignore = ['/meta/request_id']"),
        "{rules:?}"
    );
    let noisy = route_view(proxy.admin_addr, "/noisy").await;
    let keys: Vec<&str> = noisy["noise"]
        .as_array()
        .expect("noise")
        .iter()
        .filter_map(|n| n["key"].as_str())
        .collect();
    assert!(
        keys.iter().any(|k| k.contains("input")),
        "the CSRF input is noise: {keys:?}"
    );
    // Every suggested rule is a valid rules file.
    for n in noisy["noise"]
        .as_array()
        .expect("noise")
        .iter()
        .chain(profile["noise"].as_array().expect("noise"))
    {
        let rule = n["suggested_rule"].as_str().expect("rule");
        cutover::normalize::RuleSet::parse(rule, "suggested.toml")
            .unwrap_or_else(|e| panic!("{rule}: {e}"));
    }
    proxy.shutdown().await;

    // A candidate with real changes is still reported, at the right element path and pointer.
    let proxy = cutover(&twin_config(&legacy, &twin, &buggy)).await;
    for i in 0..10 {
        get(proxy.proxy_addr, "/noisy", &[]).await;
        get(proxy.proxy_addr, &format!("/api/profile/{i}"), &[]).await;
    }
    eventually(Duration::from_secs(10), "20 comparisons", || async {
        let a = route_view(proxy.admin_addr, "/noisy").await;
        let b = route_view(proxy.admin_addr, "/api/profile/{id}").await;
        a["samples"] == 10 && b["samples"] == 10
    })
    .await;
    assert_eq!(
        route_view(proxy.admin_addr, "/noisy").await["mismatches"],
        10
    );
    assert_eq!(
        route_view(proxy.admin_addr, "/api/profile/{id}").await["mismatches"],
        10
    );
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "cutover_differences_total",
            &[
                ("route", "/api/profile/{id}"),
                ("field", "body/roles/*"),
                ("kind", "changed")
            ]
        ),
        10.0,
        "{m}"
    );
    let samples = get(
        proxy.admin_addr,
        "/api/routes/mismatches?route=/noisy",
        &[("Authorization", "Bearer t0ken")],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&samples.body).expect("json");
    let diffs = v["samples"][0]["differences"]
        .as_array()
        .expect("differences");
    assert_eq!(diffs.len(), 1, "only the real difference: {diffs:?}");
    assert_eq!(diffs[0]["path"], "body/html/body/p[3]");
    assert_eq!(diffs[0]["legacy"], "stable content");
    assert_eq!(diffs[0]["candidate"], "changed content");
    assert!(v["samples"][0]["unified_diff"]
        .as_str()
        .expect("diff")
        .contains("+changed content"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn without_a_twin_noise_is_a_mismatch_until_rules_remove_it() {
    let dir = tempdir("norules");
    let legacy = php("", &dir).await;
    let candidate = php("", &dir).await;
    let rules_dir = tempdir("norules-rules");
    let rules = rules_dir.join("app.toml");
    std::fs::write(
        &rules,
        "[json]\nignore = ['/meta']\n[html]\nignore_elements = ['input[name=_token]', 'p#req']\n",
    )
    .expect("rules");
    let config = format!(
        "{}[defaults]\nrules = [\"{}\"]\n[[route]]\npattern = \"/noisy\"\n[[route]]\npattern = \"/api/profile/{{id}}\"\n",
        base_config(&legacy.url(), &candidate.url()),
        rules.display()
    );
    let proxy = cutover(&config).await;
    for i in 0..5 {
        get(proxy.proxy_addr, "/noisy", &[]).await;
        get(proxy.proxy_addr, &format!("/api/profile/{i}"), &[]).await;
    }
    eventually(Duration::from_secs(10), "10 comparisons", || async {
        route_view(proxy.admin_addr, "/noisy").await["samples"] == 5
            && route_view(proxy.admin_addr, "/api/profile/{id}").await["samples"] == 5
    })
    .await;
    // The built-in rules fold the epoch timestamp; the route's rules remove the rest.
    assert_eq!(route_view(proxy.admin_addr, "/noisy").await["matches"], 5);
    assert_eq!(
        route_view(proxy.admin_addr, "/api/profile/{id}").await["matches"],
        5
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn compressed_bodies_are_compared_decoded() {
    let legacy = Origin::start(|_r| async move {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(br#"{"items":[1,2,3],"name":"caf\u00e9"}"#)
            .expect("gz");
        respond(
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            gz.finish().expect("gz"),
        )
    })
    .await;
    let candidate = Origin::start(|_r| async move {
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(br#"{"name":"caf\u00e9","items":[1,2,3]}"#)
                .expect("br");
        }
        respond(
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "br"),
            ],
            br,
        )
    })
    .await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    let r = get(proxy.proxy_addr, "/c", &[]).await;
    assert_eq!(
        r.header("content-encoding"),
        Some("gzip"),
        "the client gets PHP's bytes as they were"
    );
    eventually(Duration::from_secs(5), "a match", || async {
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_comparisons_total",
            &[("route", "/c"), ("outcome", "match")],
        ) == 1.0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn samples_are_redacted_and_need_the_token() {
    std::env::set_var("CUTOVER_ADMIN_TOKEN", "t0ken");
    let legacy = Origin::start(|r: RecordedRequest| async move {
        let cookie = r
            .headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        respond(
            200,
            &[
                ("content-type", "text/html"),
                ("set-cookie", "PHPSESSID=sess1234secret; path=/"),
            ],
            format!("<html><body><p>{cookie}</p><p>legacy</p></body></html>"),
        )
    })
    .await;
    let candidate = Origin::start(|r: RecordedRequest| async move {
        let cookie = r
            .headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        respond(
            200,
            &[("content-type", "text/html")],
            format!("<html><body><p>{cookie}</p><p>candidate</p></body></html>"),
        )
    })
    .await;
    // POSTs are mirrored here, so their bodies could reach samples: they must not by default.
    let config = format!(
        "{}[defaults]\nmirror_methods = [\"GET\", \"POST\"]\n",
        base_config(&legacy.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    get(
        proxy.proxy_addr,
        "/account",
        &[
            ("Cookie", "PHPSESSID=sess1234secret"),
            ("Authorization", "Basic c2VjcmV0OnB3"),
        ],
    )
    .await;
    let post = "POST /account HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 14\r\n\r\npassword=hunter";
    raw_request(proxy.proxy_addr, post.as_bytes()).await;
    eventually(Duration::from_secs(5), "two mismatches", || async {
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_comparisons_total",
            &[("route", "/account"), ("outcome", "mismatch")],
        ) == 2.0
    })
    .await;
    let denied = get(
        proxy.admin_addr,
        "/api/routes/mismatches?route=/account",
        &[],
    )
    .await;
    assert_eq!(denied.status, 401);
    let wrong = get(
        proxy.admin_addr,
        "/api/routes/mismatches?route=/account",
        &[("Authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    let ok = get(
        proxy.admin_addr,
        "/api/routes/mismatches?route=/account",
        &[("Authorization", "Bearer t0ken")],
    )
    .await;
    assert_eq!(ok.status, 200);
    let text = String::from_utf8_lossy(&ok.body);
    assert!(text.contains("candidate"), "{text}");
    for secret in [
        "sess1234secret",
        "c2VjcmV0OnB3",
        "x-cutover-session",
        "hunter",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(text.contains("[redacted]"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn reload_keeps_old_rules_when_the_new_ones_are_invalid() {
    std::env::set_var("CUTOVER_ADMIN_TOKEN", "t0ken");
    let legacy = json_origin(r#"{"a":1,"t":1}"#).await;
    let candidate = json_origin(r#"{"a":1,"t":2}"#).await;
    let dir = tempdir("reload");
    let rules = dir.join("app.toml");
    std::fs::write(&rules, "[json]\nignore = ['/t']\n").expect("rules");
    let config_path = dir.join("cutover.toml");
    std::fs::write(
        &config_path,
        format!(
            "{}[defaults]\nrules = [\"app.toml\"]\n",
            base_config(&legacy.url(), &candidate.url())
        ),
    )
    .expect("config");
    let cfg = cutover::config::Config::load(&config_path).expect("config");
    let proxy = cutover::runtime::start(cfg).await.expect("start");
    let count = |outcome: &'static str| {
        let admin = proxy.admin_addr;
        async move {
            metric(
                &scrape(admin).await,
                "cutover_comparisons_total",
                &[("route", "/x"), ("outcome", outcome)],
            )
        }
    };
    get(proxy.proxy_addr, "/x", &[]).await;
    eventually(Duration::from_secs(5), "match with the rule", || async {
        count("match").await == 1.0
    })
    .await;
    // An invalid file: 400 with why, and the old rule still applies.
    std::fs::write(&rules, "[json]\nignore = ['/t']\nbogus = 1\n").expect("rules");
    let post = |auth: bool| {
        let admin = proxy.admin_addr;
        async move {
            let mut req = "POST /api/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n".to_string();
            if auth {
                req.push_str("Authorization: Bearer t0ken\r\n");
            }
            req.push_str("\r\n");
            raw_request(admin, req.as_bytes()).await
        }
    };
    assert_eq!(post(false).await.status, 401);
    let r = post(true).await;
    assert_eq!(r.status, 400);
    let why = String::from_utf8_lossy(&r.body);
    assert!(why.contains("app.toml:3") && why.contains("bogus"), "{why}");
    get(proxy.proxy_addr, "/x", &[]).await;
    eventually(Duration::from_secs(5), "still a match", || async {
        count("match").await == 2.0
    })
    .await;
    // A valid file without the rule: the difference shows.
    std::fs::write(&rules, "[json]\nignore = []\n").expect("rules");
    assert_eq!(post(true).await.status, 200);
    get(proxy.proxy_addr, "/x", &[]).await;
    eventually(
        Duration::from_secs(5),
        "a mismatch after reload",
        || async { count("mismatch").await == 1.0 },
    )
    .await;
    let events = api(proxy.admin_addr, "/api/events").await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, vec!["reload_failed", "reload"]);
    proxy.shutdown().await;
}

fn cutover_bin(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cutover_diff_on_saved_responses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diff");
    let p = |f: &str| dir.join(f).display().to_string();
    // Raw HTTP responses that differ only in Date and a CSRF token (removed by the rules file).
    let (code, out, err) = cutover_bin(&[
        "diff",
        "--rules",
        &p("rules.toml"),
        &p("legacy.http"),
        &p("candidate-same.http"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("equal after normalization"));
    // A real change: exit 1, the element path and both values.
    let (code, out, _) = cutover_bin(&[
        "diff",
        "--rules",
        &p("rules.toml"),
        &p("legacy.http"),
        &p("candidate-changed.http"),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("body/html/body/p[2]")
            && out.contains("legacy: 3 items")
            && out.contains("candidate: 4 items"),
        "{out}"
    );
    // JSON bodies as bare files, --json output.
    let (code, out, _) = cutover_bin(&["diff", "--json", &p("a.json"), &p("b.json")]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(v["equal"], false);
    assert_eq!(v["differences"][0]["path"], "body/user/email");
    // Without the rules file the token differs too.
    let (code, _, _) = cutover_bin(&["diff", &p("legacy.http"), &p("candidate-same.http")]);
    assert_eq!(code, 1);
    // A missing file is a runtime error.
    let (code, _, err) = cutover_bin(&["diff", &p("legacy.http"), &p("nope.http")]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn sighup_reloads_a_running_proxy() {
    let legacy = json_origin(r#"{"a":1,"t":1}"#).await;
    let candidate = json_origin(r#"{"a":1,"t":2}"#).await;
    let dir = tempdir("sighup");
    let rules = dir.join("app.toml");
    std::fs::write(&rules, "[json]\nignore = []\n").expect("rules");
    let (proxy_addr, admin_addr) = (dead_addr(), dead_addr());
    let config = base_config(&legacy.url(), &candidate.url())
        .replace("127.0.0.1:0\"\nadmin", &format!("{proxy_addr}\"\nadmin"))
        .replace(
            "admin = \"127.0.0.1:0\"",
            &format!("admin = \"{admin_addr}\""),
        );
    std::fs::write(
        dir.join("cutover.toml"),
        format!("{config}[defaults]\nrules = [\"app.toml\"]\n"),
    )
    .expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["proxy", "--config"])
        .arg(dir.join("cutover.toml"))
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cutover starts");
    wait_port(admin_addr, Duration::from_secs(10)).await;
    let count = |outcome: &'static str| async move {
        metric(
            &scrape(admin_addr).await,
            "cutover_comparisons_total",
            &[("route", "/x"), ("outcome", outcome)],
        )
    };
    get(proxy_addr, "/x", &[]).await;
    eventually(
        Duration::from_secs(5),
        "a mismatch before the rule",
        || async { count("mismatch").await == 1.0 },
    )
    .await;
    std::fs::write(&rules, "[json]\nignore = ['/t']\n").expect("rules");
    let pid = child.id().expect("pid").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    eventually(Duration::from_secs(5), "the reload event", || async {
        api(admin_addr, "/api/events").await["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["kind"] == "reload"))
    })
    .await;
    get(proxy_addr, "/x", &[]).await;
    eventually(Duration::from_secs(5), "a match after SIGHUP", || async {
        count("match").await == 1.0
    })
    .await;
    let _ = child.kill().await;
}
