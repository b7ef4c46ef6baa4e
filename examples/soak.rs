//! The soak behind `scripts/soak`: a fixed request rate through a cutover process in shadow
//! mode for a bounded time, with generated mismatches and a flaky candidate (5% 500s, 2% hangs
//! past the candidate timeout, 10% wrong bodies). Reports lost requests (anything but PHP's
//! exact answer within 5 s, body included), the proxy's RSS at start and end, and p99 per
//! minute. Exits 1 when a request was lost or never finished.
//!
//! `cargo run --release --example soak -- <cutover binary> <minutes> <requests per second>`

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BODY: &str = r#"{"items":[1,2,3],"name":"soak","price":9.99}"#;

async fn origin(flaky: bool) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let roll = fastrand::u32(..100);
                    let (status, body) = if !flaky {
                        (200, BODY.to_string())
                    } else if roll < 5 {
                        (500, "oops".to_string())
                    } else if roll < 7 {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        (200, BODY.to_string())
                    } else if roll < 17 {
                        (200, BODY.replace("9.99", "9.98"))
                    } else {
                        (200, BODY.to_string())
                    };
                    let mut r = http::Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() =
                        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
        })
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/cutover".into());
    let minutes: f64 = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(10.0);
    let rate: u64 = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(500);
    let legacy = origin(false).await;
    let candidate = origin(true).await;
    let (pp, ap) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("cutover-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("soak.toml");
    std::fs::write(
        &cfg,
        format!("[listen]\nproxy = \"127.0.0.1:{pp}\"\nadmin = \"127.0.0.1:{ap}\"\n[upstreams]\nlegacy = \"http://{legacy}\"\ncandidate = \"http://{candidate}\"\n[defaults]\ncandidate_timeout_ms = 1000\n"),
    )
    .expect("config");
    let mut child = std::process::Command::new(&bin)
        .args(["proxy", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cutover starts");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", pp)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(http);
    let sent = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let lat = Arc::new(std::sync::Mutex::new(Vec::<(u64, u32)>::new())); // (minute, micros)
                                                                         // Warm up, then take the starting RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_start = rss_kb(child.id());
    let started = Instant::now();
    let total = Duration::from_secs_f64(minutes * 60.0);
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while started.elapsed() < total {
        tick.tick().await;
        let (client, sent, lost, lat) = (client.clone(), sent.clone(), lost.clone(), lat.clone());
        let minute = started.elapsed().as_secs() / 60;
        sent.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let t = Instant::now();
            let req = http::Request::get(format!(
                "http://127.0.0.1:{pp}/items/{}",
                fastrand::u32(..1000)
            ))
            .body(Full::new(Bytes::new()));
            // The whole exchange, body included, within 5 s: a body that stalls is lost.
            let whole = async {
                let resp = client.request(req.ok()?).await.ok()?;
                let status = resp.status();
                let body = resp.into_body().collect().await.ok()?.to_bytes();
                Some(status == 200 && body == BODY.as_bytes())
            };
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(5), whole).await,
                Ok(Some(true))
            );
            if !ok {
                lost.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut l) = lat.lock() {
                l.push((minute, t.elapsed().as_micros() as u32));
            }
        });
    }
    // Every request finishes (answered, failed or timed out): none is left uncounted.
    let mut finished = 0u64;
    while tasks.join_next().await.is_some() {
        finished += 1;
    }
    let rss_end = rss_kb(child.id());
    let metrics = client
        .request(
            http::Request::get(format!("http://127.0.0.1:{ap}/metrics"))
                .body(Full::new(Bytes::new()))
                .expect("req"),
        )
        .await
        .ok();
    let text = match metrics {
        Some(r) => String::from_utf8_lossy(
            &r.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default(),
        )
        .into_owned(),
        None => String::new(),
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "soak: {:.1} min at {rate} req/s through cutover (shadow, flaky candidate)",
        minutes
    );
    let (sent, lost) = (sent.load(Ordering::Relaxed), lost.load(Ordering::Relaxed));
    println!("requests sent {sent}  finished {finished}  lost {lost}");
    println!("proxy RSS start {} KiB  end {} KiB", rss_start, rss_end);
    let l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    let minutes_seen = l.iter().map(|(m, _)| *m).max().unwrap_or(0);
    for m in 0..=minutes_seen {
        let mut v: Vec<u32> = l
            .iter()
            .filter(|(mm, _)| *mm == m)
            .map(|(_, us)| *us)
            .collect();
        v.sort_unstable();
        if v.is_empty() {
            continue;
        }
        let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0;
        println!(
            "minute {m}: p50 {:.2} ms  p99 {:.2} ms  ({} requests)",
            p(0.5),
            p(0.99),
            v.len()
        );
    }
    for line in text.lines().filter(|l| {
        l.starts_with("cutover_comparisons_total") || l.starts_with("cutover_shadow_dropped_total")
    }) {
        if !line.ends_with(" 0") {
            println!("{line}");
        }
    }
    if lost > 0 || finished != sent {
        eprintln!("soak: FAILED: {lost} lost, {} unfinished", sent - finished);
        std::process::exit(1);
    }
}
