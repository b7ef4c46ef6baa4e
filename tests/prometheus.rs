//! The shipped dashboard and alert rules against a real Prometheus scraping a running cutover
//! under generated traffic: every panel query returns data, every alert expression evaluates,
//! and one alert is made to fire.

mod common;

use common::*;
use std::time::Duration;

struct Prometheus {
    _service: Service,
    addr: std::net::SocketAddr,
}

async fn query(p: &Prometheus, expr: &str) -> serde_json::Value {
    let q = percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
    let r = get(p.addr, &format!("/api/v1/query?query={q}"), &[]).await;
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{expr}: {e}: {}", String::from_utf8_lossy(&r.body)))
}

/// The `expr:` of every rule in an alerts file (block scalars included).
fn alert_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut name = String::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if let Some(n) = t.strip_prefix("- alert:") {
            name = n.trim().to_string();
        }
        if let Some(rest) = t.strip_prefix("expr:") {
            let indent = lines[i].len() - t.len();
            let rest = rest.trim();
            if rest == "|" || rest == ">" {
                let mut body = Vec::new();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    body.push(lines[i].trim());
                    i += 1;
                }
                out.push((name.clone(), body.join(" ")));
                continue;
            }
            out.push((name.clone(), rest.to_string()));
        }
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_work_against_a_real_prometheus() {
    let prometheus_bin = require_tool("prometheus", "apt-get install prometheus");
    let promtool = require_tool("promtool", "apt-get install prometheus");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let alerts = std::fs::read_to_string(root.join("dashboards/alerts.yml")).expect("alerts.yml");
    let check = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(root.join("dashboards/alerts.yml"))
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // cutover with a matching route, a mismatching one, a session store that is down (session
    // errors), and POSTs that are not mirrored (drops).
    session_env();
    let legacy = Origin::start(|r: RecordedRequest| async move {
        respond(
            200,
            &[("content-type", "application/json")],
            format!("{{\"path\":\"{}\",\"v\":1}}", r.uri.path()),
        )
    })
    .await;
    let candidate = Origin::start(|r: RecordedRequest| async move {
        let v = if r.uri.path().starts_with("/bad") {
            2
        } else {
            1
        };
        respond(
            200,
            &[("content-type", "application/json")],
            format!("{{\"path\":\"{}\",\"v\":{v}}}", r.uri.path()),
        )
    })
    .await;
    let config = format!(
        "{}[session]\nstore = \"redis\"\ntimeout_ms = 50\n[session.redis]\nurl = \"redis://{}/0\"\n[gate]\nmin_samples = 10\nmax_mismatch_rate = 0.3\n[[route]]\npattern = \"/good/{{id}}\"\n[[route]]\npattern = \"/bad/{{id}}\"\n",
        base_config(&legacy.url(), &candidate.url()),
        dead_addr()
    );
    let proxy = cutover(&config).await;
    let (proxy_addr, admin_addr) = (proxy.proxy_addr, proxy.admin_addr);
    let traffic = tokio::spawn(async move {
        for i in 0u64.. {
            get(proxy_addr, &format!("/good/{i}"), &[]).await;
            get(proxy_addr, &format!("/bad/{i}"), &[]).await;
            get(
                proxy_addr,
                &format!("/good/{i}"),
                &[("Cookie", "PHPSESSID=someone0001")],
            )
            .await;
            let post = "POST /good/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi";
            raw_request(proxy_addr, post.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });

    // Prometheus scraping the admin listener every second, with the alert rules loaded as
    // shipped except `for:` (zeroed so that an alert can fire within the test).
    let dir = tempdir("prometheus");
    let fast_alerts = alerts
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for:") {
                l.split("for:").next().unwrap_or("").to_string() + "for: 0s"
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("alerts.yml"), fast_alerts).expect("alerts");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: cutover\n    static_configs:\n      - targets: ['{admin_addr}']\n",
            dir.join("alerts.yml").display()
        ),
    )
    .expect("config");
    let addr = dead_addr();
    let args = [
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={addr}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Prometheus {
        _service: start_service(&prometheus_bin, &args, addr, Duration::from_secs(30)).await,
        addr,
    };
    // The port opens before the TSDB is ready (503 until then).
    eventually(Duration::from_secs(30), "prometheus ready", || async {
        get(addr, "/-/ready", &[]).await.status == 200
    })
    .await;
    // Enough scrapes for rates over a 15 s window.
    eventually(
        Duration::from_secs(60),
        "prometheus has rates of cutover's metrics",
        || async {
            let v = query(&p, "sum(rate(cutover_comparisons_total[15s])) > 0").await;
            v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    )
    .await;

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("dashboards/cutover.json")).expect("dashboard"),
    )
    .expect("dashboard json");
    assert!(dashboard["templating"]["list"]
        .as_array()
        .expect("vars")
        .iter()
        .any(|v| v["name"] == "datasource" && v["type"] == "datasource"));
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "15s")
                .replace("$route", ".*");
            let title = panel["title"].as_str().unwrap_or("");
            let mut last = serde_json::Value::Null;
            let ok = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    last = query(&p, &expr).await;
                    if last["status"] == "success"
                        && last["data"]["result"]
                            .as_array()
                            .is_some_and(|r| !r.is_empty())
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
            .await;
            assert!(
                ok.is_ok(),
                "panel `{title}`: `{expr}` returned no data: {last}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked} panel queries");

    let exprs = alert_exprs(&alerts);
    assert_eq!(exprs.len(), 6, "{exprs:?}");
    for (name, expr) in &exprs {
        let v = query(&p, expr).await;
        assert_eq!(v["status"], "success", "{name}: {v}");
    }
    eventually(
        Duration::from_secs(60),
        "CutoverSessionResolutionErrors fires",
        || async {
            let r = get(p.addr, "/api/v1/alerts", &[]).await;
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            v["data"]["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["labels"]["alertname"] == "CutoverSessionResolutionErrors"
                        && x["state"] == "firing"
                })
            })
        },
    )
    .await;
    traffic.abort();
    proxy.shutdown().await;
}
