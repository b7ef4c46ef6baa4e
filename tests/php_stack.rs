//! cutover where PHP already runs: a real PHP-FPM (Debian's php8.2-fpm, its own pool file, on
//! a Unix socket and on TCP) as the legacy app, answering as nginx + `fastcgi_pass` does; HTTP
//! upstreams on Unix sockets; WebSocket tunnels to the legacy app and to a promoted candidate;
//! `cutover init --from-nginx` producing a config `cutover check` accepts.

mod common;

use base64::Engine as _;
use common::*;
use sha1::Digest as _;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn fastcgi_config(legacy: &str, candidate: &str) -> String {
    format!(
        "{}[upstreams.fastcgi]\ndocument_root = \"{}\"\nindex = \"index.php\"\n[defaults]\nmode = \"legacy\"\n",
        base_config(legacy, candidate),
        fpm_app().display()
    )
}

/// A request, sent as the same bytes to each server.
struct Case {
    name: &'static str,
    method: &'static str,
    target: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    /// `Transfer-Encoding: chunked` instead of `Content-Length`.
    chunked: bool,
}

impl Case {
    fn get(name: &'static str, target: &'static str) -> Case {
        Case {
            name,
            method: "GET",
            target,
            body: Vec::new(),
            content_type: None,
            chunked: false,
        }
    }

    fn bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-Custom: one\r\nX_Weird: underscore\r\n",
            self.method, self.target
        );
        if let Some(ct) = self.content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        let mut out = Vec::new();
        if self.chunked {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            out.extend_from_slice(head.as_bytes());
            for piece in self.body.chunks(7000) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            if !self.body.is_empty() || self.method == "POST" {
                head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
            }
            head.push_str("\r\n");
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// What must be the same through nginx and through cutover: the status, the body, and the
/// headers PHP (or the file) decides.
fn essentials(r: &RawResponse, host: &str) -> (u16, Vec<u8>, Vec<(String, String)>) {
    let mut kept = Vec::new();
    for name in ["content-type", "location", "set-cookie", "content-length"] {
        for v in r.all(name) {
            // A dynamic response's length is chunked by either; a file's is exact in both.
            if name == "content-length" && r.header("transfer-encoding").is_some() {
                continue;
            }
            kept.push((name.to_string(), v.to_string()));
        }
    }
    // Pages that echo the Host header name each server's own port.
    let body = String::from_utf8_lossy(&r.body)
        .replace(host, "HOST")
        .into_bytes();
    (r.status, body, kept)
}

fn cases() -> Vec<Case> {
    let form = b"user=ada&note=caf%C3%A9&n=1".to_vec();
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    vec![
        Case::get("GET with a query", "/fpm/query?a=1&b=two&list[]=x&list[]=y"),
        Case {
            name: "POST with a form body",
            method: "POST",
            target: "/fpm/post",
            body: form.clone(),
            content_type: Some("application/x-www-form-urlencoded"),
            chunked: false,
        },
        Case {
            name: "POST with a chunked body",
            method: "POST",
            target: "/fpm/post",
            body: big.clone(),
            content_type: Some("application/octet-stream"),
            chunked: true,
        },
        Case {
            name: "POST with a large body",
            method: "POST",
            target: "/fpm/post",
            body: big,
            content_type: Some("application/octet-stream"),
            chunked: false,
        },
        Case::get("a redirect with Status: 302", "/fpm/redirect"),
        Case::get("http_response_code(201)", "/fpm/created"),
        Case::get("two cookies", "/fpm/cookies"),
        Case::get("a 1 MB response", "/fpm/big"),
        Case::get("a static file", "/assets/site.css"),
        Case::get("a static SVG", "/assets/logo.svg"),
        Case::get(
            "a script by name with PATH_INFO",
            "/info.php/extra/path?q=1",
        ),
        Case::get("a missing script", "/missing.php"),
        Case::get("a PHP fatal error after output", "/fpm/fatal"),
        Case::get("a PHP fatal error", "/fpm/fatal-early"),
        Case::get("the front controller's 404", "/no/such/page"),
        Case::get(
            "the legacy app through the front controller",
            "/api/users/5",
        ),
    ]
}

#[tokio::test]
async fn php_fpm_answers_as_through_nginx_fastcgi_pass() {
    let fpm = php_fpm("answers", &[]).await;
    let nginx = nginx_fastcgi(
        "answers",
        &fpm_app(),
        &format!("unix:{}", fpm.socket.display()),
    )
    .await;
    let candidate = dead_addr();
    let over_unix = cutover(&fastcgi_config(
        &fpm.unix_url(),
        &format!("http://{candidate}"),
    ))
    .await;
    let over_tcp = cutover(&fastcgi_config(
        &fpm.tcp_url(),
        &format!("http://{candidate}"),
    ))
    .await;
    for case in cases() {
        let expected = raw_request(nginx.addr, &case.bytes(nginx.addr)).await;
        let want = essentials(&expected, &nginx.addr.to_string());
        for (how, proxy) in [("unix", &over_unix), ("tcp", &over_tcp)] {
            let got = raw_request(proxy.proxy_addr, &case.bytes(proxy.proxy_addr)).await;
            let have = essentials(&got, &proxy.proxy_addr.to_string());
            assert_eq!(
                (have.0, &have.2),
                (want.0, &want.2),
                "{} over {how}: status and headers differ from nginx's",
                case.name
            );
            assert!(
                have.1 == want.1,
                "{} over {how}: the body differs from nginx's:\n  nginx:   {}\n  cutover: {}",
                case.name,
                String::from_utf8_lossy(&want.1[..want.1.len().min(400)]),
                String::from_utf8_lossy(&have.1[..have.1.len().min(400)]),
            );
        }
    }
    // What the cases show besides equality: PHP saw the query, the body, the redirect's status.
    // Repeated headers are joined (as nginx does since 1.23); a name with `_` is dropped.
    let r = get(
        over_unix.proxy_addr,
        "/fpm/query?a=1",
        &[("X-Custom", "v"), ("X-Custom", "w"), ("X_Weird", "no")],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["get"]["a"], "1");
    assert_eq!(v["server"]["SCRIPT_NAME"], "/index.php");
    assert_eq!(v["server"]["HTTP_X_CUSTOM"], "v, w");
    assert_eq!(v["server"]["HTTP_X_WEIRD"], serde_json::Value::Null);
    assert_eq!(v["server"]["HTTP_HOST"], "127.0.0.1");
    let post = Case {
        name: "chunked",
        method: "POST",
        target: "/fpm/post",
        body: vec![b'z'; 100_000],
        content_type: Some("application/octet-stream"),
        chunked: true,
    };
    let r = raw_request(over_tcp.proxy_addr, &post.bytes(over_tcp.proxy_addr)).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["length"], 100_000, "PHP read the whole chunked body");
    let r = get(over_tcp.proxy_addr, "/fpm/redirect", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/fpm/query?from=redirect"));
    let r = get(over_tcp.proxy_addr, "/fpm/cookies", &[]).await;
    assert_eq!(r.all("set-cookie").len(), 2);
    // The fatal error reached PHP-FPM's log through the FastCGI STDERR or its own log.
    assert!(
        fpm.log().contains("undefined_function_of_the_fixture"),
        "PHP-FPM logged the fatal error: {}",
        fpm.log()
    );
    over_unix.shutdown().await;
    over_tcp.shutdown().await;
}

#[tokio::test]
async fn fastcgi_connections_are_kept_when_asked_and_bounded() {
    // PHP-FPM here has 4 workers per pool; 2 kept connections leave it room.
    let fpm = php_fpm("reuse", &[]).await;
    let config = fastcgi_config(&fpm.tcp_url(), &format!("http://{}", dead_addr())).replace(
        "index = \"index.php\"",
        "index = \"index.php\"\nkeep_connections = 2",
    );
    let proxy = cutover(&config).await;
    // 40 requests, 8 at a time, through at most 2 connections: every answer right. Every
    // other one a POST whose body takes several STDIN records (written while PHP answers).
    let mut tasks = Vec::new();
    let mut workers = std::collections::BTreeSet::new();
    for i in 0..40 {
        let addr = proxy.proxy_addr;
        tasks.push(tokio::spawn(async move {
            let sent = if i % 2 == 0 { 0 } else { 100_000 + i };
            let request = format!(
                "POST /fpm/worker?i={i} HTTP/1.1\r\nHost: shop.test\r\nContent-Length: {sent}\r\nConnection: close\r\n\r\n{}",
                "b".repeat(sent)
            );
            (sent, raw_request(addr, request.as_bytes()).await)
        }));
        if tasks.len() == 8 || i == 39 {
            for t in tasks.drain(..) {
                let (sent, r) = t.await.expect("task");
                assert_eq!(r.status, 200);
                let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
                assert_eq!(v["length"], sent, "PHP read the whole body");
                workers.insert(v["pid"].as_u64().expect("pid"));
            }
        }
    }
    // A kept connection keeps its PHP-FPM worker: the connections were reused.
    assert!(
        (1..=2).contains(&workers.len()),
        "40 requests over at most 2 kept connections reach at most 2 workers, reached {workers:?}"
    );
    // Kept open for the next request (FCGI_KEEP_CONN), never more than keep_connections.
    let open = established_to(fpm.tcp);
    assert!(
        (1..=2).contains(&open),
        "1 or 2 connections to PHP-FPM kept open, found {open}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn without_kept_connections_more_requests_than_php_workers_all_finish() {
    // 16 slow requests at once against 4 PHP-FPM workers: a connection each, queued by
    // PHP-FPM, none pinned; nothing is left open afterwards.
    let fpm = php_fpm("no-keep", &[]).await;
    let proxy = cutover(&fastcgi_config(
        &fpm.tcp_url(),
        &format!("http://{}", dead_addr()),
    ))
    .await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let addr = proxy.proxy_addr;
            tokio::spawn(async move { get(addr, "/slow?ms=100", &[]).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 200);
        assert_eq!(String::from_utf8_lossy(&r.body), "late\n");
    }
    eventually(
        Duration::from_secs(5),
        "no connection left open",
        || async { established_to(fpm.tcp) == 0 },
    )
    .await;
    proxy.shutdown().await;
}

/// Established TCP connections to `addr` now (from /proc/net/tcp).
fn established_to(addr: SocketAddr) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = format!("{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, remote address, state 01 = ESTABLISHED; the client side's remote
            // is PHP-FPM's port.
            f.len() > 3 && f[2].ends_with(&format!(":{port}")) && f[3] == "01"
        })
        .count()
}

/// An HTTP server on a Unix socket answering JSON about the request.
async fn unix_origin(path: &std::path::Path, who: &'static str) -> tokio::task::JoinHandle<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).expect("bind unix socket");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let body = serde_json::json!({
                            "path": req.uri().path(),
                            "host": req.headers().get("host").and_then(|v| v.to_str().ok()),
                            "server": who,
                        });
                        let mut r = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body.to_string()),
                        ));
                        r.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

#[tokio::test]
async fn http_upstreams_on_unix_sockets() {
    let dir = tempdir("unix-upstreams");
    let legacy_sock = dir.join("legacy.sock");
    let candidate_sock = dir.join("candidate.sock");
    let _legacy = unix_origin(&legacy_sock, "legacy").await;
    let _candidate = unix_origin(&candidate_sock, "candidate").await;
    let config = format!(
        "{}[[route]]\npattern = \"/items/{{id}}\"\nmode = \"shadow\"\n",
        base_config(
            &format!("http+unix://{}", legacy_sock.display()),
            &format!("http+unix://{}", candidate_sock.display())
        )
    );
    let proxy = cutover(&config).await;
    let r = get(proxy.proxy_addr, "/items/1", &[]).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(
        v["server"], "legacy",
        "the client is served by the legacy app"
    );
    assert_eq!(
        v["host"],
        proxy.proxy_addr.to_string(),
        "the client's Host passes"
    );
    // The candidate answered over its socket too, and the same: a match.
    eventually(Duration::from_secs(5), "a comparison", || async {
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_comparisons_total",
            &[("route", "/items/{id}"), ("outcome", "mismatch")],
        ) == 1.0
    })
    .await;
    // (They differ only in "server": the mismatch proves the candidate's socket answered.)
    let routes = api(proxy.admin_addr, "/api/routes").await;
    let route = routes["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["route"] == "/items/{id}"))
        .cloned()
        .expect("route");
    assert_eq!(route["errors"], 0, "{route}");
    assert_eq!(route["mismatches"], 1, "{route}");
    // A socket that is not there: 502 for the client, the cause named.
    let config = base_config(
        &format!("http+unix://{}", dir.join("none.sock").display()),
        "http+unix:///nonexistent/c.sock",
    );
    let broken = cutover(&config).await;
    let r = get(broken.proxy_addr, "/x", &[]).await;
    assert_eq!(r.status, 502);
    broken.shutdown().await;
    proxy.shutdown().await;
}

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn ws_accept(key: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Reads one WebSocket frame: (opcode, payload), unmasked.
async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.ok()?;
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.ok()?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b).await.ok()?;
        len = u64::from_be_bytes(b);
    }
    let mut mask = [0u8; 4];
    if masked {
        s.read_exact(&mut mask).await.ok()?;
    }
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    s.read_exact(&mut payload).await.ok()?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Some((opcode, payload))
}

fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A WebSocket echo server (RFC 6455, by hand): answers each text frame with `<who>: <text>`,
/// a close with a close. Counts handshakes.
async fn ws_echo(
    who: &'static str,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let header = |name: &str| {
                    text.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_string())
                    })
                };
                let Some(key) = header("sec-websocket-key") else {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                };
                if !header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
                    let _ = s
                        .write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let session = header("x-cutover-session").is_some();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nX-Had-Session: {session}\r\n\r\n",
                    ws_accept(&key)
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                while let Some((op, payload)) = read_frame(&mut s).await {
                    match op {
                        1 => {
                            let mut reply = format!("{who}: ").into_bytes();
                            reply.extend_from_slice(&payload);
                            if s.write_all(&frame(1, &reply, None)).await.is_err() {
                                return;
                            }
                        }
                        8 => {
                            let _ = s.write_all(&frame(8, &payload, None)).await;
                            return;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, handshakes)
}

/// Opens a WebSocket through `proxy` at `path`, says hello, closes; returns the 101's headers
/// and the echo.
async fn ws_roundtrip(
    proxy: SocketAddr,
    path: &str,
    cookie: Option<&str>,
) -> (RawResponse, String) {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_be_bytes());
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {proxy}\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nX-Cutover-Session: forged\r\n"
    );
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: PHPSESSID={c}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.expect("the handshake's answer");
        head.push(b[0]);
    }
    let (status, headers) = parse_head(&head);
    let resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(ws_accept(&key).as_str()),
        "the upstream's accept key reaches the client"
    );
    let mask = fastrand::u32(..).to_be_bytes();
    // Two messages, one of them larger than a read buffer, in both directions.
    s.write_all(&frame(1, b"hello", Some(mask)))
        .await
        .expect("send");
    let (op, echo) = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s))
        .await
        .expect("an echo within 5 s")
        .expect("a frame");
    assert_eq!(op, 1);
    let long = "x".repeat(100_000);
    s.write_all(&frame(1, long.as_bytes(), Some(mask)))
        .await
        .expect("send");
    let (_, echo_long) = read_frame(&mut s).await.expect("the long echo");
    assert!(echo_long.ends_with(long.as_bytes()));
    s.write_all(&frame(8, &[0x03, 0xe8], Some(mask)))
        .await
        .expect("close");
    let (op, _) = read_frame(&mut s).await.expect("the close answer");
    assert_eq!(op, 8);
    // Then the tunnel ends: the proxy closes the client's side.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed within 5 s")
        .expect("read");
    assert_eq!(n, 0);
    (resp, String::from_utf8_lossy(&echo).into_owned())
}

#[tokio::test]
async fn websockets_are_tunnelled_to_the_side_serving_the_route() {
    let (legacy, legacy_handshakes) = ws_echo("legacy").await;
    let (candidate, candidate_handshakes) = ws_echo("candidate").await;
    let config = format!(
        "{}[[route]]\npattern = \"/ws/legacy\"\nmode = \"shadow\"\n[[route]]\npattern = \"/ws/new\"\nmode = \"candidate\"\n",
        base_config(&format!("http://{legacy}"), &format!("http://{candidate}"))
    );
    let proxy = cutover(&config).await;
    // A shadowed route: the legacy app's socket, and no mirror (the candidate sees nothing).
    let (resp, echo) = ws_roundtrip(proxy.proxy_addr, "/ws/legacy", None).await;
    assert_eq!(echo, "legacy: hello");
    assert_eq!(
        resp.header("x-had-session"),
        Some("false"),
        "a client's x-cutover-session is stripped"
    );
    assert_eq!(
        legacy_handshakes.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        candidate_handshakes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "never mirrored"
    );
    // A promoted route: the candidate's.
    let (_, echo) = ws_roundtrip(proxy.proxy_addr, "/ws/new", None).await;
    assert_eq!(echo, "candidate: hello");
    assert_eq!(
        legacy_handshakes.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let m = scrape(proxy.admin_addr).await;
    for (route, upstream) in [("/ws/legacy", "legacy"), ("/ws/new", "candidate")] {
        assert_eq!(
            metric(
                &m,
                "cutover_websockets_total",
                &[
                    ("route", route),
                    ("upstream", upstream),
                    ("outcome", "tunnelled")
                ]
            ),
            1.0,
            "{route}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "cutover_comparisons_total",
            &[("route", "/ws/legacy"), ("outcome", "match")]
        ),
        0.0
    );
    eventually(Duration::from_secs(5), "tunnels counted closed", || async {
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_websockets_open",
            &[],
        ) == 0.0
    })
    .await;
    // Refused by the upstream (no key): its answer, counted as refused.
    let r = raw_request(
        proxy.proxy_addr,
        format!(
            "GET /ws/legacy HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            proxy.proxy_addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_websockets_total",
            &[
                ("route", "/ws/legacy"),
                ("upstream", "legacy"),
                ("outcome", "refused")
            ]
        ),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn websockets_to_php_fpm_are_refused_clearly() {
    let fpm = php_fpm("ws", &[]).await;
    let proxy = cutover(&fastcgi_config(
        &fpm.unix_url(),
        &format!("http://{}", dead_addr()),
    ))
    .await;
    let r = raw_request(
        proxy.proxy_addr,
        format!(
            "GET /chat HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            proxy.proxy_addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 501);
    assert!(String::from_utf8_lossy(&r.body).contains("FastCGI"));
    assert_eq!(
        metric(
            &scrape(proxy.admin_addr).await,
            "cutover_websockets_total",
            &[("upstream", "legacy"), ("outcome", "unsupported")]
        ),
        1.0
    );
    proxy.shutdown().await;
}

const ISSUE_NGINX: &str = r"location /php-pages/ { fastcgi_pass unix:/run/php/php8.2-fpm.sock; include fastcgi_params; }
location = /about    { proxy_pass http://127.0.0.1:7001; }
location ~ \.php$    { fastcgi_pass unix:/run/php/php8.2-fpm.sock; }
location /           { proxy_pass http://127.0.0.1:7001; }
";

#[test]
fn init_from_nginx_makes_a_config_check_accepts() {
    let dir = tempdir("init-nginx");
    let site = dir.join("site.conf");
    std::fs::write(&site, ISSUE_NGINX).expect("write");
    let bin = env!("CARGO_BIN_EXE_cutover");
    let out = std::process::Command::new(bin)
        .args(["init", "--from-nginx"])
        .arg(&site)
        .output()
        .expect("cutover init runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).expect("utf-8");
    assert!(toml.starts_with("# cutover.toml made by"), "{toml}");
    assert!(toml.contains("# Check by hand"));
    let cfg = dir.join("cutover.toml");
    std::fs::write(&cfg, &toml).expect("write");
    let check = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("cutover check runs");
    assert!(
        check.status.success(),
        "check refused the generated config:\n{}\n{toml}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("ok (3 routes)"));
    let c = cutover::config::Config::load(&cfg).expect("loads");
    let routes: Vec<(String, String)> = c
        .routes
        .iter()
        .map(|r| {
            (
                r.label().to_string(),
                format!("{:?}", r.mode.expect("a mode")).to_lowercase(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            ("/php-pages/*".to_string(), "legacy".to_string()),
            ("/about".to_string(), "candidate".to_string()),
            ("/*".to_string(), "candidate".to_string()),
        ]
    );
    assert_eq!(
        c.upstreams.legacy.get_ref().to_string(),
        "fastcgi+unix:///run/php/php8.2-fpm.sock"
    );
    assert_eq!(
        c.upstreams.candidate.get_ref().to_string(),
        "http://127.0.0.1:7001"
    );
    // A broken nginx file: exit 64 with the file and line.
    std::fs::write(&site, "server {\n  location / {\n").expect("write");
    let out = std::process::Command::new(bin)
        .args(["init", "--from-nginx"])
        .arg(&site)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("site.conf:"));
}

#[tokio::test]
async fn php_stderr_is_logged_by_cutover() {
    let fpm = php_fpm("stderr", &[]).await;
    let dir = tempdir("stderr-log");
    let (proxy, admin) = (dead_addr(), dead_addr());
    let config = fastcgi_config(&fpm.unix_url(), &format!("http://{}", dead_addr()))
        .replace("127.0.0.1:0\"\nadmin", &format!("{proxy}\"\nadmin"))
        .replace("admin = \"127.0.0.1:0\"", &format!("admin = \"{admin}\""));
    let path = dir.join("cutover.toml");
    std::fs::write(&path, config).expect("write");
    let log = std::fs::File::create(dir.join("stderr.log")).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["proxy", "--config"])
        .arg(&path)
        .stderr(log)
        .spawn()
        .expect("cutover proxy");
    wait_port(proxy, Duration::from_secs(20)).await;
    let r = get(proxy, "/fpm/stderr", &[]).await;
    assert_eq!(String::from_utf8_lossy(&r.body), "logged\n");
    // SAFETY: kill(2) on our own child; no memory is touched.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().expect("wait").success());
    let logged = std::fs::read_to_string(dir.join("stderr.log")).expect("read");
    let line = logged
        .lines()
        .find(|l| l.contains("a message on stderr from the fixture"))
        .unwrap_or_else(|| panic!("PHP's stderr record is in cutover's log:\n{logged}"));
    assert!(line.contains("cutover::php"), "{line}");
}
