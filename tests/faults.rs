//! Fault injection on real loopback sockets: whatever the candidate or the client does, the
//! client sees exactly what PHP sent, the event is counted, and nothing leaks.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw TCP "candidate" that reads a request head and then does `act` with the socket.
async fn raw_candidate<F, Fut>(act: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let act = std::sync::Arc::new(act);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let act = act.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                act(s).await;
            });
        }
    });
    addr
}

async fn php_like() -> Origin {
    json_origin(r#"{"ok":true,"from":"php"}"#).await
}

async fn check_clients_unaffected(proxy: &cutover::runtime::Running, n: usize) {
    for _ in 0..n {
        let started = Instant::now();
        let r = get(proxy.proxy_addr, "/f", &[]).await;
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &br#"{"ok":true,"from":"php"}"#[..])
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "client waited {:?}",
            started.elapsed()
        );
    }
}

async fn outcome(proxy: &cutover::runtime::Running, outcome: &str) -> f64 {
    metric(
        &scrape(proxy.admin_addr).await,
        "cutover_comparisons_total",
        &[("route", "/f"), ("outcome", outcome)],
    )
}

#[tokio::test]
async fn candidate_faults_never_reach_the_client() {
    let legacy = php_like().await;
    let resets = raw_candidate(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await;
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
        drop(s); // RST mid-body
    })
    .await;
    let garbage = raw_candidate(|mut s| async move {
        let _ = s
            .write_all(b"\x00\xffNOT HTTP AT ALL\r\n\r\n\x01\x02")
            .await;
    })
    .await;
    let hangs_mid_body = raw_candidate(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let refuses = dead_addr();
    for (what, addr, expect) in [
        ("reset mid-body", resets, "candidate_error"),
        ("garbage bytes", garbage, "candidate_error"),
        ("hangs mid-body", hangs_mid_body, "candidate_error"),
        ("refuses", refuses, "candidate_error"),
    ] {
        let config = format!(
            "{}[defaults]\ncandidate_timeout_ms = 300\n",
            base_config(&legacy.url(), &format!("http://{addr}"))
        );
        let proxy = cutover(&config).await;
        check_clients_unaffected(&proxy, 5).await;
        eventually(Duration::from_secs(5), what, || async {
            outcome(&proxy, expect).await == 5.0
        })
        .await;
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn a_2gb_candidate_body_is_cut_at_the_cap() {
    let legacy = php_like().await;
    let candidate = Origin::start(|_r| async move {
        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
        let frames = (0..2048)
            .map(move |_| Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk.clone())));
        http::Response::new(
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed(),
        )
    })
    .await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    let before = rss_bytes();
    check_clients_unaffected(&proxy, 3).await;
    eventually(Duration::from_secs(20), "3 size mismatches", || async {
        outcome(&proxy, "mismatch").await == 3.0
    })
    .await;
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "cutover_differences_total",
            &[("route", "/f"), ("field", "body"), ("kind", "size")]
        ),
        3.0
    );
    assert!(
        rss_bytes().saturating_sub(before) < 64 << 20,
        "memory stays bounded"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_slow_candidate_costs_the_client_nothing() {
    let legacy = Origin::start(|_r| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        respond(
            200,
            &[("content-type", "application/json")],
            r#"{"ok":true,"from":"php"}"#,
        )
    })
    .await;
    let candidate = Origin::start(|_r| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        respond(
            200,
            &[("content-type", "application/json")],
            r#"{"ok":true,"from":"php"}"#,
        )
    })
    .await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    let started = Instant::now();
    check_clients_unaffected(&proxy, 20).await;
    // 20 requests at PHP's 5 ms, not the candidate's 50 ms (that alone would be a second).
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(5), "20 matches", || async {
        outcome(&proxy, "match").await == 20.0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn legacy_reset_mid_body_reaches_the_client_as_a_truncation() {
    let legacy = raw_candidate(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await;
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
        drop(s);
    })
    .await;
    let candidate = php_like().await;
    let proxy = cutover(&base_config(&format!("http://{legacy}"), &candidate.url())).await;
    let mut s = tokio::net::TcpStream::connect(proxy.proxy_addr)
        .await
        .expect("connect");
    s.write_all(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the client is not left hanging");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("0123456789"), "the same truncation: {text}");
    eventually(Duration::from_secs(5), "skipped", || async {
        outcome(&proxy, "skipped").await == 1.0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn clients_that_leave_early_leak_no_tasks() {
    let legacy = Origin::start(|_r| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        respond(200, &[], "late")
    })
    .await;
    let candidate = php_like().await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(proxy.proxy_addr)
            .await
            .expect("connect");
        s.write_all(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        // Gone while PHP works on it (a client gone before its request was read is never
        // served, nor mirrored).
        eventually(Duration::from_secs(5), "PHP got the request", || async {
            legacy.count() == i + 1
        })
        .await;
        drop(s);
    }
    eventually(
        Duration::from_secs(10),
        "every mirror task ended",
        || async {
            let m = scrape(proxy.admin_addr).await;
            metric(&m, "cutover_shadow_in_flight", &[]) == 0.0
                && metric(
                    &m,
                    "cutover_comparisons_total",
                    &[("route", "/f"), ("outcome", "skipped")],
                ) == 20.0
        },
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_urls_keep_labels_capped() {
    let legacy = php_like().await;
    let candidate = php_like().await;
    let config = format!(
        "{}[defaults]\nmax_routes = 50\nsample = 0.0\n",
        base_config(&legacy.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    let mut s = tokio::net::TcpStream::connect(proxy.proxy_addr)
        .await
        .expect("connect");
    for i in 0..10_000 {
        s.write_all(format!("GET /page-{}/x HTTP/1.1\r\nHost: x\r\n\r\n", word(i)).as_bytes())
            .await
            .expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while parse_response(&buf, false).is_none() {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    assert_eq!(proxy.app.routes.auto_count(), 50);
    let m = scrape(proxy.admin_addr).await;
    let labels = m
        .lines()
        .filter(|l| l.starts_with("cutover_requests_total{"))
        .count();
    assert!(labels <= 51, "{labels} series");
    assert_eq!(
        metric(
            &m,
            "cutover_requests_total",
            &[("route", "other"), ("status_class", "2xx")]
        ),
        9_950.0
    );
    proxy.shutdown().await;
}

fn word(i: usize) -> String {
    // Letters only, so that no id folding merges them: a, b, ..., z, ba, bb, ...
    let mut n = i;
    let mut s = String::new();
    loop {
        s.insert(0, (b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            return s;
        }
    }
}

#[tokio::test]
async fn hostile_requests_are_refused_and_never_forwarded() {
    let legacy = php_like().await;
    let candidate = php_like().await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    // Smuggling: both Content-Length and Transfer-Encoding. hyper frames by Transfer-Encoding
    // and closes the connection after the answer; the legacy app gets one unambiguous request.
    let mut s = tokio::net::TcpStream::connect(proxy.proxy_addr)
        .await
        .expect("connect");
    s.write_all(b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "one answer, then the connection closes: {text}"
    );
    let seen = legacy.requests();
    assert_eq!(seen.len(), 1, "the smuggled request never reaches PHP");
    assert_eq!(seen[0].uri.path(), "/f");
    assert!(
        seen[0]
            .headers
            .get("content-length")
            .is_none_or(|v| v == "0"),
        "{:?}",
        seen[0].headers
    );
    assert!(seen[0]
        .headers
        .get("transfer-encoding")
        .is_none_or(|v| v == "chunked"));
    assert!(seen[0].body.is_empty());
    let cases: [&[u8]; 3] = [
        // Not HTTP.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        // A bad request line.
        b"GET /f HTTP/9.9 extra\r\nHost: x\r\n\r\n",
        // A header name with a space.
        b"GET /f HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    ];
    for raw in cases {
        let mut s = tokio::net::TcpStream::connect(proxy.proxy_addr)
            .await
            .expect("connect");
        s.write_all(raw).await.expect("write");
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        assert!(
            status == 400 || status == 0 || status == 505,
            "{:?} → {text}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(legacy.count(), 1, "nothing malformed is passed on");
    // Cookies with odd bytes are just cookies: served, no session; a control byte is a 400.
    let r = get(
        proxy.proxy_addr,
        "/f",
        &[("Cookie", "PHPSESSID=%00%FF..%2F;;==; x=\"")],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(proxy.proxy_addr, "/f", &[("Cookie", "PHPSESSID=\u{7f}")]).await;
    assert_eq!(r.status, 400);
    assert_eq!(legacy.count(), 2);
    proxy.shutdown().await;
}
