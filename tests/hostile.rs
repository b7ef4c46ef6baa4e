//! Hostile input, reproduced as an attacker would send it — raw sockets, real `php -S` origins,
//! clients that upload slowly or stall — each checked against what the site must still do:
//! serve everyone else, bound memory, pass honest headers, keep secrets out of samples.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "hostile-token";

fn env() {
    session_env();
    std::env::set_var("CUTOVER_ADMIN_TOKEN", TOKEN);
}

/// Reads one response head (and whatever body came with it) from a raw socket.
async fn read_response(s: &mut TcpStream, within: Duration) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    tokio::time::timeout(within, async {
        loop {
            if let Some((r, _)) = parse_response(&buf, false) {
                return r;
            }
            let n = s.read(&mut chunk).await.expect("read");
            if n == 0 {
                let end = buf
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .expect("a head")
                    + 4;
                let (status, headers) = parse_head(&buf[..end]);
                return RawResponse {
                    status,
                    headers,
                    body: buf[end..].to_vec(),
                };
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response in time")
}

/// A big session of PHP's own making: `range(1, n)` stored by the fixture app under `id`.
async fn php_big_session(dir: &std::path::Path, id: &str, n: usize) {
    let php = php_server(
        &[("session.save_path", format!("\"{}\"", dir.display()))],
        &[],
    )
    .await;
    let r = get(
        php.addr,
        &format!("/big-session?n={n}"),
        &[("Cookie", &format!("PHPSESSID={id}"))],
    )
    .await;
    assert_eq!(r.body, format!("stored {n}\n").into_bytes());
    assert!(dir.join(format!("sess_{id}")).is_file());
}

#[tokio::test]
async fn a_huge_session_never_holds_the_worker_other_clients_use() {
    env();
    let dir = tempdir("huge-session");
    php_big_session(&dir, "hugesession0001", 100_000).await;
    // The legacy app records the order requests reach it.
    let arrivals = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = arrivals.clone();
    let legacy = Origin::start(move |r: RecordedRequest| {
        seen.lock().expect("lock").push(r.uri.path().to_string());
        async move { respond(200, &[], "php") }
    })
    .await;
    let candidate = json_origin("{}").await;
    // One worker: the big session's resolution and the small request share it.
    let config = format!(
        "{}[session]\nstore = \"files\"\ntimeout_ms = 10000\n[session.files]\npath = \"{}\"\n",
        base_config(&legacy.url(), &candidate.url())
            .replace("[upstreams]", "workers = 1\n[upstreams]"),
        dir.display()
    );
    let proxy = cutover(&config).await;
    // The session's resolution (1.5 MB to decode) comes first on the only worker; a small
    // request right behind it must not wait for it: it reaches PHP first.
    let addr = proxy.proxy_addr;
    let big =
        tokio::spawn(
            async move { get(addr, "/big", &[("Cookie", "PHPSESSID=hugesession0001")]).await },
        );
    let small = get(proxy.proxy_addr, "/small", &[]).await;
    assert_eq!(small.status, 200);
    assert_eq!(big.await.expect("big").status, 200);
    assert_eq!(
        arrivals.lock().expect("lock").as_slice(),
        ["/small", "/big"],
        "the small request waited behind the session's decoding"
    );
    proxy.shutdown().await;
}

/// Opens `n` uploads that declare `declared` bytes and send `first` bytes, then stall.
/// Comparisons of `route` whatever their outcome.
fn comparisons(text: &str, route: &str) -> f64 {
    ["match", "mismatch", "candidate_error", "skipped"]
        .iter()
        .map(|o| {
            metric(
                text,
                "cutover_comparisons_total",
                &[("route", route), ("outcome", o)],
            )
        })
        .sum()
}

/// Sizes of the files this process has open under `dir` (spool files have no name, so they
/// are found through the process's descriptors).
fn spooled_sizes(dir: &std::path::Path) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    fds.flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| m.len())
        .collect()
}

async fn stalled_uploads(
    addr: SocketAddr,
    n: usize,
    path: &str,
    declared: usize,
    first: usize,
) -> Vec<TcpStream> {
    let mut socks = Vec::with_capacity(n);
    let part = vec![b'u'; first];
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("head");
        s.write_all(&part).await.expect("part");
        socks.push(s);
    }
    socks
}

#[tokio::test]
async fn slow_uploads_never_starve_other_clients_and_stalls_end_in_408() {
    env();
    let legacy = Origin::start(|r: RecordedRequest| async move {
        respond(200, &[], format!("got {} bytes", r.body.len()))
    })
    .await;
    let candidate = json_origin("{}").await;
    // Two upstream connections for everyone: 300 uploads would take both if they held one.
    let config = base_config(&legacy.url(), &candidate.url())
        .replace("[upstreams]", "body_timeout_ms = 1500\n[upstreams]")
        + "max_connections = 2\n";
    let proxy = cutover(&config).await;
    let mut uploads = stalled_uploads(proxy.proxy_addr, 300, "/upload", 100_000_000, 1).await;
    let r = tokio::time::timeout(Duration::from_secs(5), get(proxy.proxy_addr, "/page", &[]))
        .await
        .expect("a GET is served while 300 uploads trickle");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"got 0 bytes"[..]));
    assert_eq!(
        legacy.count(),
        1,
        "no stalled upload reached the legacy app"
    );
    // The stalled uploads end with 408, counted.
    // (All 300 stay open until counted: a closed one would end as a failed body instead.)
    let r = read_response(&mut uploads[0], Duration::from_secs(10)).await;
    assert_eq!(r.status, 408);
    assert_eq!(r.header("connection"), Some("close"));
    eventually(
        Duration::from_secs(10),
        "300 body timeouts counted",
        || async {
            metric(
                &scrape(proxy.admin_addr).await,
                "cutover_rejected_requests_total",
                &[("reason", "body_timeout")],
            ) == 300.0
        },
    )
    .await;
    drop(uploads);
    // A complete upload is delivered whole: over the in-memory size, through the spool file.
    let body = vec![b'b'; 300_000];
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&body);
    let r = raw_request(proxy.proxy_addr, &bytes).await;
    assert_eq!(r.body, b"got 300000 bytes");
    let seen = legacy.requests();
    assert_eq!(seen.last().expect("upload").body.as_ref(), body.as_slice());
    // Over listen.max_request_body_bytes: 413 before a byte is read.
    let r = raw_request(
        proxy.proxy_addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 413);
    proxy.shutdown().await;
}

#[tokio::test]
async fn stalled_mirrored_bodies_stay_within_the_mirror_budget() {
    env();
    let legacy = Origin::start(|r: RecordedRequest| async move {
        respond(200, &[], format!("got {}", r.body.len()))
    })
    .await;
    let candidate = Origin::start(|r: RecordedRequest| async move {
        respond(200, &[], format!("got {}", r.body.len()))
    })
    .await;
    let budget = 8 * 1024 * 1024;
    let spool = tempdir("stalled-spool");
    let config = format!(
        "{}[mirror]\nmax_buffered_bytes = {budget}\n[[route]]\npattern = \"/upload\"\nmirror_methods = [\"POST\"]\n",
        base_config(&legacy.url(), &candidate.url()).replace(
            "[upstreams]",
            &format!("spool_dir = \"{}\"\n[upstreams]", spool.display())
        )
    );
    let proxy = cutover(&config).await;
    let size = 4_000_000;
    let mut uploads = stalled_uploads(proxy.proxy_addr, 10, "/upload", size, size - 1).await;
    // All ten stalled bodies read: two held for mirrors (the budget fits two), the other eight
    // refused by the budget and waiting in spool files.
    eventually(
        Duration::from_secs(30),
        "every stalled body read",
        || async {
            let held = metric(
                &scrape(proxy.admin_addr).await,
                "cutover_mirror_buffered_bytes",
                &[],
            );
            let spooled = spooled_sizes(&spool);
            held == 2.0 * (size - 1) as f64
                && spooled.len() == 8
                && spooled.iter().all(|&n| n == (size - 1) as u64)
        },
    )
    .await;
    // Each finishes: served in full whether mirrored or not.
    for s in &mut uploads {
        s.write_all(b"z").await.expect("last byte");
    }
    for s in &mut uploads {
        let r = read_response(s, Duration::from_secs(10)).await;
        assert_eq!(r.body, format!("got {size}").into_bytes());
    }
    eventually(Duration::from_secs(10), "every upload counted", || async {
        let text = scrape(proxy.admin_addr).await;
        let dropped = metric(
            &text,
            "cutover_shadow_dropped_total",
            &[("reason", "buffers_full")],
        );
        dropped + comparisons(&text, "/upload") == 10.0
    })
    .await;
    let text = scrape(proxy.admin_addr).await;
    let mirrored = comparisons(&text, "/upload");
    assert_eq!(mirrored, 2.0);
    assert_eq!(candidate.count() as f64, mirrored);
    assert_eq!(metric(&text, "cutover_mirror_buffered_bytes", &[]), 0.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_served_whole_and_not_mirrored() {
    env();
    let legacy = Origin::start(|r: RecordedRequest| async move {
        respond(200, &[], format!("got {}", r.body.len()))
    })
    .await;
    let candidate = json_origin("{}").await;
    let config = format!(
        "{}[[route]]\npattern = \"/upload\"\nmirror_methods = [\"POST\"]\nmax_body_bytes = 1000\n",
        base_config(&legacy.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    let body = "x".repeat(5000);
    let with_length = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5000\r\n\r\n{body}"
    );
    assert_eq!(
        raw_request(proxy.proxy_addr, with_length.as_bytes())
            .await
            .body,
        b"got 5000"
    );
    let chunked = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        3000,
        &body[..3000],
        2000,
        &body[3000..]
    );
    assert_eq!(
        raw_request(proxy.proxy_addr, chunked.as_bytes()).await.body,
        b"got 5000"
    );
    let text = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "cutover_shadow_dropped_total",
            &[("reason", "body_too_large")]
        ),
        2.0
    );
    assert_eq!(candidate.count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn php_sees_honest_headers() {
    env();
    let php = php_server(&[], &[]).await;
    let candidate = json_origin("{}").await;
    let config = format!(
        "{}[[route]]\npattern = \"/headers\"\nmode = \"legacy\"\n",
        base_config(&php.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    let headers = |r: RawResponse| -> serde_json::Value {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        serde_json::from_slice(&r.body).expect("json")
    };
    // `Connection: Host` (or Cookie) cannot delete them; `Connection: X-Other` still can.
    let r = raw_request(
        proxy.proxy_addr,
        b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nCookie: PHPSESSID=abc\r\nConnection: close, Host, Cookie, X-Forwarded-For\r\n\r\n",
    )
    .await;
    let h = headers(r);
    assert_eq!(h["host"], "shop.example");
    assert_eq!(h["cookie"], "PHPSESSID=abc");
    assert_eq!(h["xff"], "127.0.0.1");
    // The client's X-Forwarded-Proto/-Host are not passed on (no trusted proxies), nor `Proxy`.
    let r = raw_request(
        proxy.proxy_addr,
        b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-For: 6.6.6.6\r\nProxy: http://evil.example:3128\r\nConnection: close\r\n\r\n",
    )
    .await;
    let h = headers(r);
    assert_eq!(
        (&h["xfp"], &h["xfh"], &h["xff"], &h["http_proxy"]),
        (
            &serde_json::json!("http"),
            &serde_json::json!("shop.example"),
            &serde_json::json!("127.0.0.1"),
            &serde_json::Value::Null
        )
    );
    // HTTP/1.1 without Host, or with two: 400, as nginx answers; HTTP/1.0 may omit it.
    let r = raw_request(
        proxy.proxy_addr,
        b"GET /headers HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    let r = raw_request(
        proxy.proxy_addr,
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    let r = raw_request(proxy.proxy_addr, b"GET /headers HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200);
    let text = scrape(proxy.admin_addr).await;
    for reason in ["missing_host", "duplicate_host"] {
        assert_eq!(
            metric(
                &text,
                "cutover_rejected_requests_total",
                &[("reason", reason)]
            ),
            1.0,
            "{reason}"
        );
    }
    proxy.shutdown().await;
    // Behind a trusted proxy (an nginx edge on this host), its X-Forwarded-* are kept.
    let trusted = cutover(&config.replace(
        "[upstreams]",
        "trusted_proxies = [\"127.0.0.0/8\"]\n[upstreams]",
    ))
    .await;
    let r = raw_request(
        trusted.proxy_addr,
        b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: www.shop.example\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n",
    )
    .await;
    let h = headers(r);
    assert_eq!(h["xfp"], "https");
    assert_eq!(h["xfh"], "www.shop.example");
    assert_eq!(h["xff"], "203.0.113.9, 127.0.0.1");
    trusted.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways() {
    env();
    // The list from RFC 9110 §7.6.1 and RFC 9112, written out here rather than taken from the
    // code, plus what a Connection header names.
    let legacy = Origin::start(|_r| async move {
        respond(
            200,
            &[
                ("connection", "x-upstream-private"),
                ("x-upstream-private", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic"),
                ("proxy-anything", "1"),
                ("upgrade", "h2c"),
                ("trailer", "x-t"),
                ("x-kept", "yes"),
            ],
            "ok",
        )
    })
    .await;
    let candidate = json_origin("{}").await;
    let proxy = cutover(&base_config(&legacy.url(), &candidate.url())).await;
    let r = raw_request(
        proxy.proxy_addr,
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close, x-client-private\r\nX-Client-Private: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x-t\r\nUpgrade: h2c\r\nProxy-Authorization: Basic YTpi\r\nProxy-Connection: keep-alive\r\nProxy-Anything: 1\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    for gone in [
        "x-upstream-private",
        "keep-alive",
        "proxy-authenticate",
        "proxy-anything",
        "upgrade",
        "trailer",
    ] {
        assert_eq!(r.header(gone), None, "{gone} reached the client");
    }
    assert_eq!(r.header("x-kept"), Some("yes"));
    let seen = &legacy.requests()[0].headers;
    for gone in [
        "x-client-private",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "proxy-anything",
    ] {
        assert!(!seen.contains_key(gone), "{gone} reached the legacy app");
    }
    assert_eq!(seen["x-kept"], "yes");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_quoted_session_cookie_is_no_session() {
    env();
    let dir = tempdir("quoted-cookie");
    std::fs::write(dir.join("sess_quoted00001"), "user_id|i:5;").expect("session");
    let legacy = json_origin("{}").await;
    let candidate = Origin::start(|r: RecordedRequest| async move {
        let has = r.headers.contains_key("x-cutover-session");
        respond(
            200,
            &[("content-type", "application/json")],
            format!("{{\"session\":{has}}}"),
        )
    })
    .await;
    let config = format!(
        "{}[session]\nstore = \"files\"\n[session.files]\npath = \"{}\"\n",
        base_config(&legacy.url(), &candidate.url()),
        dir.display()
    );
    let proxy = cutover(&config).await;
    // PHP takes `"quoted00001"` (quotes included) as the id, which is no valid id.
    get(
        proxy.proxy_addr,
        "/a",
        &[("Cookie", "PHPSESSID=\"quoted00001\"")],
    )
    .await;
    get(
        proxy.proxy_addr,
        "/b",
        &[("Cookie", "PHPSESSID=quoted00001")],
    )
    .await;
    eventually(Duration::from_secs(5), "two mirrors", || async {
        candidate.count() == 2
    })
    .await;
    let mut seen: Vec<(String, bool)> = candidate
        .requests()
        .iter()
        .map(|r| {
            (
                r.uri.path().to_string(),
                r.headers.contains_key("x-cutover-session"),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, [("/a".to_string(), false), ("/b".to_string(), true)]);
    proxy.shutdown().await;
}

async fn admin_post(admin: SocketAddr, path: &str, authorization: &str) -> RawResponse {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\nAuthorization: {authorization}\r\n\r\n"
    );
    raw_request(admin, req.as_bytes()).await
}

#[tokio::test]
async fn the_admin_token_scheme_is_case_insensitive_and_a_forged_verdict_promotes_nothing() {
    env();
    let legacy = json_origin("{}").await;
    let candidate = json_origin("{}").await;
    let config = format!(
        "{}[[route]]\npattern = \"/r\"\n",
        base_config(&legacy.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    let reset = "/api/routes/reset?route=/r";
    assert_eq!(
        admin_post(proxy.admin_addr, reset, &format!("bearer {TOKEN}"))
            .await
            .status,
        200
    );
    for wrong in [
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", &TOKEN[..4]),
        "Bearer ".to_string(),
        format!("Basic {TOKEN}"),
    ] {
        assert_eq!(
            admin_post(proxy.admin_addr, reset, &wrong).await.status,
            401,
            "{wrong}"
        );
    }
    // A verdict sent along is a claim: with the route's own gate closed, no promotion.
    let forged = client_q(
        r#"{"passing":true,"reason":"trust me","rate":0.0,"upper_bound":0.0,"more_clean_samples":0}"#,
    );
    let r = admin_post(
        proxy.admin_addr,
        &format!("/api/routes/promote?route=/r&verdict={forged}"),
        &format!("Bearer {TOKEN}"),
    )
    .await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let routes = api(proxy.admin_addr, "/api/routes").await;
    assert_eq!(routes["routes"][0]["mode"], "shadow");
    let events = api(proxy.admin_addr, "/api/events").await;
    assert!(
        events["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["kind"] != "promote" && e["kind"] != "forced_promote"),
        "{events}"
    );
    proxy.shutdown().await;
}

fn client_q(v: &str) -> String {
    cutover::client::q(v)
}

#[tokio::test]
async fn secrets_stay_out_of_samples_and_the_samples_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    env();
    // The legacy app prints what the request carried (as a debug page might); the candidate
    // does not: every comparison is a mismatch with the secrets in its differences.
    let legacy = Origin::start(|r: RecordedRequest| async move {
        let h = |n: &str| {
            r.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let body = serde_json::json!({
            "auth": h("authorization"),
            "key": h("x-api-key"),
            "cookies": h("cookie"),
            "query": r.uri.query().unwrap_or(""),
        });
        respond(
            200,
            &[("content-type", "application/json")],
            body.to_string(),
        )
    })
    .await;
    let candidate = json_origin(r#"{"auth":"","key":"","cookies":"","query":""}"#).await;
    let dir = tempdir("samples-private");
    let jsonl = dir.join("samples.jsonl");
    let config = format!(
        "{}[samples]\njsonl_path = \"{}\"\n",
        base_config(&legacy.url(), &candidate.url()),
        jsonl.display()
    );
    let proxy = cutover(&config).await;
    get(
        proxy.proxy_addr,
        "/account?token=qwerty123456&page=2",
        &[
            ("Authorization", "Bearer sk-live-abcdef123456"),
            ("X-Api-Key", "key-987654321"),
            ("Cookie", "PHPSESSID=sessid0000001; remember=rem-token-5555"),
        ],
    )
    .await;
    eventually(Duration::from_secs(5), "a sample", || async {
        std::fs::read_to_string(&jsonl).is_ok_and(|t| t.contains("/account"))
    })
    .await;
    let mode = std::fs::metadata(&jsonl)
        .expect("jsonl")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the samples file is readable by others");
    let r = get(
        proxy.admin_addr,
        "/api/routes/mismatches?route=/account",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    let api_text = String::from_utf8_lossy(&r.body).into_owned();
    let file_text = std::fs::read_to_string(&jsonl).expect("jsonl");
    for text in [&api_text, &file_text] {
        assert!(text.contains("/account"), "{text}");
        for secret in [
            "qwerty123456",
            "sk-live-abcdef123456",
            "key-987654321",
            "sessid0000001",
            "rem-token-5555",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_legacy_app_that_never_answers_gets_a_504() {
    env();
    let php = php_server(&[], &[]).await;
    let candidate = json_origin("{}").await;
    let config = format!(
        "{}legacy_timeout_ms = 300\n[[route]]\npattern = \"/slow\"\nmode = \"legacy\"\n",
        base_config(&php.url(), &candidate.url())
    );
    let proxy = cutover(&config).await;
    let r = get(proxy.proxy_addr, "/slow?ms=3000", &[]).await;
    assert_eq!(r.status, 504);
    let r = get(proxy.proxy_addr, "/slow?ms=10", &[]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"late\n"[..]));
    let text = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "cutover_rejected_requests_total",
            &[("reason", "legacy_timeout")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "cutover_requests_total",
            &[("route", "/slow"), ("status_class", "5xx")]
        ),
        1.0
    );
    proxy.shutdown().await;
}

/// An origin that counts its open connections (each closed one is subtracted).
async fn counting_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(respond(200, &[], "ok"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    env();
    let (legacy, open) = counting_origin().await;
    let candidate = json_origin("{}").await;
    let config = format!(
        "{}idle_timeout_ms = 300\n[[route]]\npattern = \"/*\"\nmode = \"legacy\"\n",
        base_config(&format!("http://{legacy}"), &candidate.url())
    );
    let proxy = cutover(&config).await;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let addr = proxy.proxy_addr;
        burst.spawn(async move { get(addr, "/x", &[]).await.status });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.expect("request"), 200);
    }
    assert!(
        open.load(Ordering::SeqCst) > 0,
        "connections kept for reuse"
    );
    eventually(
        Duration::from_secs(5),
        "idle connections closed",
        || async { open.load(Ordering::SeqCst) == 0 },
    )
    .await;
    proxy.shutdown().await;
}
