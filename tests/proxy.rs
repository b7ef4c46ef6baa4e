//! The shadowing proxy against real HTTP servers on ephemeral loopback ports: what the client
//! receives, what each upstream receives, and what is counted.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn legacy_app() -> Origin {
    Origin::start(|r: RecordedRequest| async move {
        match r.uri.path() {
            "/small" => respond(
                200,
                &[
                    ("content-type", "text/plain"),
                    ("set-cookie", "legacy=1; Path=/"),
                    ("x-app", "php"),
                ],
                "hello from php\n",
            ),
            "/chunked" => {
                let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..5)
                    .map(|i| Ok(http_body::Frame::data(Bytes::from(format!("part {i}\n")))))
                    .collect();
                let stream = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
                let mut resp = http::Response::new(stream.boxed());
                resp.headers_mut()
                    .insert("content-type", http::HeaderValue::from_static("text/plain"));
                resp
            }
            _ => respond(404, &[("content-type", "text/plain")], "not found\n"),
        }
    })
    .await
}

async fn evil_candidate() -> Origin {
    Origin::start(|_r| async move {
        respond(
            500,
            &[("set-cookie", "candidate=evil"), ("x-candidate", "1")],
            "CANDIDATE BODY",
        )
    })
    .await
}

#[tokio::test]
async fn client_gets_exactly_the_legacy_response() {
    let legacy = legacy_app().await;
    let candidate = evil_candidate().await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    for path in ["/small", "/chunked", "/missing"] {
        let direct = get(legacy.addr, path, &[]).await;
        let via = get(proxy.proxy_addr, path, &[]).await;
        assert_eq!(via.status, direct.status, "{path}");
        assert_eq!(via.body, direct.body, "{path}");
        let strip = |r: &RawResponse| {
            let mut h: Vec<(String, String)> = r
                .headers
                .iter()
                .filter(|(k, _)| {
                    !["date", "connection", "transfer-encoding", "content-length"]
                        .contains(&k.to_ascii_lowercase().as_str())
                })
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect();
            h.sort();
            h
        };
        assert_eq!(strip(&via), strip(&direct), "{path}");
        assert!(via.header("x-candidate").is_none());
        assert!(!via.all("set-cookie").contains(&"candidate=evil"));
    }
    // The candidate was asked (the mirror runs) but its answer never reached the client.
    eventually(Duration::from_secs(5), "three mirrors", || async {
        candidate.count() == 3
    })
    .await;
    let small = get(proxy.proxy_addr, "/small", &[]).await;
    assert_eq!(small.all("set-cookie"), vec!["legacy=1; Path=/"]);
    assert_eq!(small.body, b"hello from php\n");
    proxy.shutdown().await;
}

#[tokio::test]
async fn large_streamed_body_with_flat_memory() {
    const TOTAL: usize = 100 * 1024 * 1024;
    let legacy = Origin::start(|_r| async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let frames = (0..TOTAL / chunk.len())
            .map(move |_| Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk.clone())));
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        http::Response::new(body.boxed())
    })
    .await;
    let candidate = Origin::start(|_r| async move { respond(200, &[], "short") }).await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    let before = rss_bytes();
    let mut s = tokio::net::TcpStream::connect(proxy.proxy_addr)
        .await
        .expect("connect");
    s.write_all(b"GET /download HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    let mut first_byte_at = None;
    let started = Instant::now();
    let mut peak = before;
    let mut reads = 0u64;
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        first_byte_at.get_or_insert_with(|| started.elapsed());
        total += n;
        reads += 1;
        if reads.is_multiple_of(64) {
            peak = peak.max(rss_bytes());
        }
    }
    // Body plus a head of a few hundred bytes, chunk-encoded.
    assert!(total > TOTAL, "got {total} bytes");
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 48 * 1024 * 1024,
        "RSS grew by {} MB while streaming 100 MB",
        grown / (1024 * 1024)
    );
    // The comparison was skipped (legacy body over the cap), not attempted with 100 MB.
    eventually(Duration::from_secs(5), "skipped counted", || async {
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_comparisons_total",
            &[("outcome", "skipped")],
        ) == 1.0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn hung_candidate_never_delays_clients() {
    let legacy = legacy_app().await;
    let candidate = Origin::hanging().await;
    let config = format!(
        "{}[defaults]\ncandidate_timeout_ms = 1500\n",
        base_config(&legacy.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    // Legacy's own time for 50 requests on one keep-alive connection, then the same via cutover.
    let time_50 = |addr: std::net::SocketAddr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        let mut worst = Duration::ZERO;
        for _ in 0..50 {
            let t = Instant::now();
            s.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                if let Some((r, _)) = parse_response(&buf, false) {
                    assert_eq!(r.status, 200);
                    assert_eq!(r.body, b"hello from php\n");
                    break;
                }
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed early");
                buf.extend_from_slice(&chunk[..n]);
            }
            worst = worst.max(t.elapsed());
        }
        (started.elapsed(), worst)
    };
    let (direct, _) = time_50(legacy.addr).await;
    let (via, worst) = time_50(proxy.proxy_addr).await;
    // Had any client waited for the candidate, one request alone would take 1.5 s.
    assert!(
        worst < Duration::from_millis(750),
        "slowest request took {worst:?}"
    );
    assert!(
        via < direct * 4 + Duration::from_millis(500),
        "50 requests: {via:?} via cutover, {direct:?} direct"
    );
    eventually(
        Duration::from_secs(10),
        "50 mirror timeouts counted",
        || async {
            let m = scrape(proxy.admin_addr).await;
            metric(&m, "cutover_shadow_dropped_total", &[("reason", "timeout")]) == 50.0
                && metric(
                    &m,
                    "cutover_comparisons_total",
                    &[("outcome", "candidate_error")],
                ) == 50.0
        },
    )
    .await;
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(&m, "cutover_shadow_in_flight", &[]),
        0.0,
        "every mirror task ended"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn mirrors_beyond_the_bound_are_dropped_not_queued() {
    let legacy = legacy_app().await;
    let candidate = Origin::hanging().await;
    let config = format!(
        "{}[defaults]\ncandidate_timeout_ms = 3000\n[mirror]\nconcurrency = 2\nqueue = 3\n",
        base_config(&legacy.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    for _ in 0..20 {
        let r = get(proxy.proxy_addr, "/small", &[]).await;
        assert_eq!(r.status, 200);
    }
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "cutover_shadow_dropped_total",
            &[("reason", "queue_full")]
        ),
        15.0
    );
    assert!(metric(&m, "cutover_shadow_in_flight", &[]) <= 5.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn candidate_down_counts_errors_and_clients_are_fine() {
    let legacy = legacy_app().await;
    let dead = dead_addr();
    let proxy = cutover(&base_config(&legacy.url(), &format!("http://{dead}"))).await;
    for _ in 0..5 {
        let r = get(proxy.proxy_addr, "/small", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello from php\n");
    }
    eventually(
        Duration::from_secs(5),
        "candidate errors counted",
        || async {
            metric(
                &scrape(proxy.admin_addr).await,
                "cutover_comparisons_total",
                &[("route", "/small"), ("outcome", "candidate_error")],
            ) == 5.0
        },
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn legacy_down_is_a_502_and_counted() {
    let candidate = evil_candidate().await;
    let dead = dead_addr();
    let proxy = cutover(&base_config(&format!("http://{dead}"), &candidate.url())).await;
    let r = get(proxy.proxy_addr, "/x", &[]).await;
    assert_eq!(r.status, 502);
    assert!(String::from_utf8_lossy(&r.body).contains("legacy upstream is unavailable"));
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "cutover_requests_total",
            &[("route", "/x"), ("status_class", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "cutover_upstream_errors_total",
            &[("route", "/x"), ("upstream", "legacy")]
        ),
        1.0
    );
    // Still serving.
    let again = get(proxy.proxy_addr, "/x", &[]).await;
    assert_eq!(again.status, 502);
    proxy.shutdown().await;
}

#[tokio::test]
async fn per_route_counts_with_folded_labels() {
    let legacy = Origin::start(|r: RecordedRequest| async move {
        respond(
            200,
            &[("content-type", "application/json")],
            format!("{{\"path\":\"{}\",\"n\":1}}", r.uri.path()),
        )
    })
    .await;
    let candidate = Origin::start(|r: RecordedRequest| async move {
        let n = if r.uri.path().starts_with("/mismatch") {
            2
        } else {
            1
        };
        respond(
            200,
            &[("content-type", "application/json")],
            format!("{{\"n\":{n},\"path\":\"{}\"}}", r.uri.path()),
        )
    })
    .await;
    let config = format!(
        "{}[[route]]\npattern = \"/match/{{id}}\"\n[[route]]\npattern = \"/mismatch/{{id}}\"\n",
        base_config(&legacy.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    for i in 0..4 {
        get(proxy.proxy_addr, &format!("/match/{i}"), &[]).await;
        get(proxy.proxy_addr, &format!("/mismatch/{i}"), &[]).await;
        get(
            proxy.proxy_addr,
            &format!("/orders/{}/items", 1000 + i),
            &[],
        )
        .await;
    }
    eventually(Duration::from_secs(5), "12 comparisons", || async {
        let v = api(proxy.admin_addr, "/api/routes").await;
        v["routes"].as_array().map(|r| {
            r.iter()
                .map(|x| x["samples"].as_u64().unwrap_or(0))
                .sum::<u64>()
        }) == Some(12)
    })
    .await;
    let v = api(proxy.admin_addr, "/api/routes").await;
    let find = |name: &str| {
        v["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["route"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    let m = find("/match/{id}");
    assert_eq!(
        (m["matches"].as_u64(), m["mismatches"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(m["mode"], "shadow");
    assert_eq!(m["gate"]["passing"], false);
    assert!(m["gate"]["reason"]
        .as_str()
        .expect("reason")
        .contains("4 of 1000 samples needed"));
    let mm = find("/mismatch/{id}");
    assert_eq!(
        (mm["matches"].as_u64(), mm["mismatches"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(mm["mismatch_rate"].as_f64(), Some(1.0));
    let folded = find("/orders/{n}/items");
    assert_eq!(folded["matches"].as_u64(), Some(4));
    let text = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "cutover_comparisons_total",
            &[("route", "/mismatch/{id}"), ("outcome", "mismatch")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "cutover_comparisons_total",
            &[("route", "/orders/{n}/items"), ("outcome", "match")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "cutover_differences_total",
            &[
                ("route", "/mismatch/{id}"),
                ("field", "body/n"),
                ("kind", "changed")
            ]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "cutover_mismatch_ratio",
            &[("route", "/mismatch/{id}")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "cutover_route_mode",
            &[("route", "/match/{id}"), ("mode", "shadow")]
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "cutover_gate_passing", &[("route", "/match/{id}")]),
        0.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn methods_outside_mirror_methods_are_served_not_mirrored() {
    let legacy = Origin::start(|r: RecordedRequest| async move { respond(200, &[], r.body) }).await;
    let candidate = evil_candidate().await;
    let config = format!(
        "{}[[route]]\npattern = \"/form\"\nmirror_methods = [\"GET\"]\n[[route]]\npattern = \"/api/*\"\nmirror_methods = [\"GET\", \"POST\"]\n",
        base_config(&legacy.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    let post = |path: &'static str| {
        let addr = proxy.proxy_addr;
        async move {
            let body = "name=Ada&x=1";
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            raw_request(addr, req.as_bytes()).await
        }
    };
    let r = post("/form").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"name=Ada&x=1"[..]));
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(&m, "cutover_shadow_dropped_total", &[("reason", "method")]),
        1.0
    );
    // A POST on a route that lists POST is mirrored, with the same body.
    let r = post("/api/items").await;
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(5), "the mirrored POST", || async {
        candidate.count() == 1
    })
    .await;
    let seen = candidate.requests();
    assert_eq!(seen[0].uri.path(), "/api/items");
    assert_eq!(seen[0].body, Bytes::from_static(b"name=Ada&x=1"));
    assert_eq!(legacy.count(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn spoofed_cutover_headers_never_reach_upstreams() {
    let legacy = legacy_app().await;
    let candidate = Origin::start(|_r| async move { respond(200, &[], "x") }).await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    let r = get(
        proxy.proxy_addr,
        "/small",
        &[
            ("X-Cutover-Session", "v1.forged.sig"),
            ("x-cutover-shadow", "0"),
            ("x-cutover-anything", "1"),
            ("Connection", "close, x-drop-me"),
            ("x-drop-me", "secret"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(5), "the mirror", || async {
        candidate.count() == 1
    })
    .await;
    let l = &legacy.requests()[0];
    let c = &candidate.requests()[0];
    for h in [&l.headers, &c.headers] {
        assert!(h.get("x-cutover-session").is_none());
        assert!(h.get("x-cutover-anything").is_none());
        assert!(
            h.get("x-drop-me").is_none(),
            "headers named by Connection are hop-by-hop"
        );
        assert_eq!(h.get_all("host").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }
    assert!(l.headers.get("x-cutover-shadow").is_none());
    assert_eq!(c.headers["x-cutover-shadow"], "1");
    proxy.shutdown().await;
}

#[tokio::test]
async fn host_is_passed_unchanged_to_both_sides() {
    let legacy = legacy_app().await;
    let candidate = Origin::start(|_r| async move { respond(200, &[], "x") }).await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    let req = b"GET /small HTTP/1.1\r\nHost: shop.example:8443\r\nConnection: close\r\n\r\n";
    let r = raw_request(proxy.proxy_addr, req).await;
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(5), "the mirror", || async {
        candidate.count() == 1
    })
    .await;
    for seen in [&legacy.requests()[0], &candidate.requests()[0]] {
        assert_eq!(seen.headers["host"], "shop.example:8443");
        assert_eq!(seen.headers["x-forwarded-host"], "shop.example:8443");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn oversized_heads_get_431_and_slow_heads_are_cut_off() {
    let legacy = legacy_app().await;
    let candidate = evil_candidate().await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    let big = "a".repeat(70 * 1024);
    let req = format!("GET /small HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let r = raw_request(proxy.proxy_addr, req.as_bytes()).await;
    assert_eq!(r.status, 431);
    assert_eq!(legacy.count(), 0, "nothing malformed is passed on");
    // A client that never finishes its head is disconnected after the 10 s head timeout.
    let mut s = tokio::net::TcpStream::connect(proxy.proxy_addr)
        .await
        .expect("connect");
    s.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slow client still connected after 20 s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "cut off after {waited:?}"
    );
    assert_eq!(legacy.count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn candidate_mode_serves_from_the_candidate() {
    let legacy = legacy_app().await;
    let candidate =
        Origin::start(|_r| async move { respond(200, &[("x-served-by", "rust")], "from rust") })
            .await;
    let config = format!("{}[[route]]\npattern = \"/new/*\"\nmode = \"candidate\"\n[[route]]\npattern = \"/old/*\"\nmode = \"legacy\"\n[[route]]\npattern = \"/shadow/*\"\n", base_config(&legacy.url(), &candidate.url()));
    let proxy = cutover(&config).await;
    let r = get(proxy.proxy_addr, "/new/page", &[]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"from rust"[..]));
    let r = get(proxy.proxy_addr, "/old/small", &[]).await;
    assert_eq!(r.status, 404);
    // A barrier: a shadow request sent after the legacy one, whose mirror is waited for. A
    // mirror of the legacy request would have been started before it.
    get(proxy.proxy_addr, "/shadow/x", &[]).await;
    eventually(Duration::from_secs(5), "the shadow comparison", || async {
        let text = scrape(proxy.admin_addr).await;
        metric(
            &text,
            "cutover_comparisons_total",
            &[("route", "/shadow/*"), ("outcome", "mismatch")],
        ) == 1.0
    })
    .await;
    let paths: Vec<String> = candidate
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/new/page", "/shadow/x"],
        "legacy-mode routes are never mirrored"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let legacy = Origin::start(|_r| async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        respond(200, &[], "slow but complete")
    })
    .await;
    let candidate = evil_candidate().await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    let addr = proxy.proxy_addr;
    let client = tokio::spawn(async move { get(addr, "/slow", &[]).await });
    eventually(
        Duration::from_secs(5),
        "the request reached legacy",
        || async { legacy.count() == 1 },
    )
    .await;
    proxy.shutdown().await;
    let r = client.await.expect("client task");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"slow but complete"[..])
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// An HTTPS origin with a self-signed certificate for `localhost`; returns its port and the PEM.
async fn https_origin() -> (u16, String) {
    use tokio_rustls::rustls;
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let pem = ck.cert.pem();
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        Ok::<_, std::convert::Infallible>(respond(
                            200,
                            &[("x-tls", "yes")],
                            format!("secure hello for {host}"),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, pem)
}

#[tokio::test]
async fn https_upstreams_with_a_ca_file() {
    let (port, pem) = https_origin().await;
    let dir = std::env::temp_dir().join(format!("cutover-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pem).expect("ca");
    let legacy = format!("https://localhost:{port}");
    let trusted = format!(
        "{}ca_file = \"{}\"\n",
        base_config(&legacy, &legacy),
        ca.display()
    );
    let proxy = cutover(&trusted).await;
    let r = get(proxy.proxy_addr, "/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-tls"), Some("yes"));
    assert!(
        String::from_utf8_lossy(&r.body).starts_with("secure hello for 127.0.0.1:"),
        "the client's Host is passed through TLS too"
    );
    eventually(
        Duration::from_secs(5),
        "the mirror over TLS matches",
        || async {
            metric(
                &scrape(proxy.admin_addr).await,
                "cutover_comparisons_total",
                &[("route", "/x"), ("outcome", "match")],
            ) == 1.0
        },
    )
    .await;
    proxy.shutdown().await;
    // Without the CA file the certificate is not trusted: a 502, counted, no crash.
    let untrusted = cutover(&base_config(&legacy, &legacy)).await;
    let r = get(untrusted.proxy_addr, "/x", &[]).await;
    assert_eq!(r.status, 502);
    untrusted.shutdown().await;
}

/// An origin that answers after `delay` and counts its connections: accepted in all, and the
/// most open at once.
struct CountingOrigin {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most_open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn counting_origin(delay: Duration) -> CountingOrigin {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let most_open = Arc::new(AtomicUsize::new(0));
    let (a, o, m) = (accepted.clone(), open.clone(), most_open.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let now = o.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"counted\n")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    CountingOrigin {
        addr,
        accepted,
        open,
        most_open,
    }
}

#[tokio::test]
async fn upstream_connections_are_capped_reused_and_waited_for() {
    use std::sync::atomic::Ordering;
    let origin = counting_origin(Duration::from_millis(40)).await;
    let url = format!("http://{}", origin.addr);
    let config = format!(
        "{}max_connections = 4\n[defaults]\nmode = \"legacy\"\n",
        base_config(&url, &format!("http://{}", dead_addr()))
    );
    let proxy = cutover(&config).await;
    // The start-up probe opens (and closes) one connection to the legacy app: not the pool's.
    eventually(
        Duration::from_secs(5),
        "the start-up probe's connection",
        || async {
            origin.accepted.load(Ordering::SeqCst) == 1 && origin.open.load(Ordering::SeqCst) == 0
        },
    )
    .await;
    origin.accepted.store(0, Ordering::SeqCst);
    origin.most_open.store(0, Ordering::SeqCst);
    // 40 clients at once, each on its own connection: they share at most 4 upstream ones.
    let clients: Vec<_> = (0..40)
        .map(|i| {
            let addr = proxy.proxy_addr;
            tokio::spawn(async move { get(addr, &format!("/n/{i}"), &[]).await })
        })
        .collect();
    for c in clients {
        let r = c.await.expect("client task");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"counted\n");
    }
    let most = origin.most_open.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&most),
        "{most} upstream connections open at once"
    );
    let accepted = origin.accepted.load(Ordering::SeqCst);
    assert!(accepted <= 4, "{accepted} upstream connections made");
    // One after another: the pooled connections are reused, none is added.
    for _ in 0..10 {
        assert_eq!(get(proxy.proxy_addr, "/again", &[]).await.status, 200);
    }
    assert_eq!(origin.accepted.load(Ordering::SeqCst), accepted);
    let open_now: usize = proxy.app.pool().open_to(&proxy.app.legacy);
    assert!(open_now <= 4, "{open_now}");
}

#[tokio::test]
async fn pooled_connections_closed_by_the_upstream_are_replaced() {
    // An origin that closes every connection after one answer, without saying so.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nonce\n")
                    .await;
                // Closing after the answer: the proxy's pooled connection is now dead.
            });
        }
    });
    let url = format!("http://{addr}");
    let config = format!(
        "{}max_connections = 1\n[defaults]\nmode = \"legacy\"\n",
        base_config(&url, &url)
    );
    let proxy = cutover(&config).await;
    for i in 0..20 {
        let r = get(proxy.proxy_addr, "/x", &[]).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, b"once\n");
    }
}

#[tokio::test]
async fn mirrors_to_a_slow_candidate_wait_for_capped_connections_and_time_out() {
    use std::sync::atomic::Ordering;
    let legacy = legacy_app().await;
    // A candidate that reads requests and never answers, and notices at once when the proxy
    // closes a connection: it counts the connections open at the same time.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let candidate_addr = listener.local_addr().expect("addr");
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most_open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (o, m) = (open.clone(), most_open.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let now = o.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let config = format!(
        "{}max_connections = 2\n[defaults]\ncandidate_timeout_ms = 1500\n",
        base_config(&legacy.url(), &format!("http://{candidate_addr}"))
    );
    let proxy = cutover(&config).await;
    let started = Instant::now();
    for _ in 0..20 {
        let t = Instant::now();
        let r = get(proxy.proxy_addr, "/small", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello from php\n");
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    }
    // Before any mirror timed out (the candidate has dropped none of its connections yet),
    // two connections carry two mirrors and the other 18 wait.
    eventually(
        Duration::from_secs(1),
        "two candidate connections",
        || async { open.load(Ordering::SeqCst) == 2 },
    )
    .await;
    let most = most_open.load(Ordering::SeqCst);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "too slow to look before the first timeout"
    );
    assert_eq!(most, 2, "candidate connections open at once");
    // Mirrors beyond the two connections waited for one, and gave up at their timeout.
    eventually(Duration::from_secs(10), "20 mirror timeouts", || async {
        let m = scrape(proxy.admin_addr).await;
        metric(&m, "cutover_shadow_dropped_total", &[("reason", "timeout")]) == 20.0
    })
    .await;
}
