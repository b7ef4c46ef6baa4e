//! A real PHP application (`tests/fixtures/legacy-php`, served by `php -S`) behind cutover:
//! what the client gets is what PHP sent, byte for byte in the body and header for header.

mod common;

use common::*;

async fn php(session_dir: &std::path::Path) -> Service {
    php_server(
        &[("session.save_path", session_dir.display().to_string())],
        &[],
    )
    .await
}

fn comparable(r: &RawResponse) -> (u16, Vec<(String, String)>, Vec<u8>) {
    // Date moves with the clock; connection framing is per hop by definition.
    let skip = [
        "date",
        "connection",
        "transfer-encoding",
        "content-length",
        "keep-alive",
    ];
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .collect();
    h.sort();
    (r.status, h, r.body.clone())
}

#[tokio::test]
async fn php_pages_come_back_byte_identical() {
    let sessions = tempdir("php-identical");
    let legacy = php(&sessions).await;
    let candidate = php(&sessions).await;
    let config = format!(
        "{}[[route]]\npattern = \"/login\"\nmirror_methods = [\"GET\"]\n",
        base_config(
            &format!("http://{}", legacy.addr),
            &format!("http://{}", candidate.addr)
        )
    );
    let proxy = cutover(&config).await;
    let form = "user=ada&user_id=7&_token=x";
    let requests: Vec<String> = vec![
        "GET / HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\n\r\n".into(),
        "GET /old-page HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\n\r\n".into(),
        "GET /cookies HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\n\r\n".into(),
        "GET /no/such/page HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\n\r\n".into(),
        "GET /api/users/42 HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\n\r\n".into(),
        "HEAD / HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\n\r\n".into(),
        format!(
            "POST /login HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\nCookie: PHPSESSID=fixture0session0id\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
        "GET /account HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\nCookie: PHPSESSID=fixture0session0id\r\n\r\n".into(),
        "POST /login HTTP/1.1\r\nHost: php.test\r\nConnection: close\r\nCookie: PHPSESSID=fixture0session1id\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n".into(),
    ];
    let mut statuses = Vec::new();
    for req in &requests {
        let direct = raw_request(legacy.addr, req.as_bytes()).await;
        let via = raw_request(proxy.proxy_addr, req.as_bytes()).await;
        let first_line = req.lines().next().unwrap_or_default();
        assert_eq!(comparable(&via), comparable(&direct), "{first_line}");
        statuses.push(via.status);
    }
    assert_eq!(statuses, vec![200, 301, 200, 404, 200, 200, 302, 200, 422]);
    // What the fixture itself says it did, so the comparison above compared something real.
    let cookies = raw_request(proxy.proxy_addr, requests[2].as_bytes()).await;
    assert_eq!(cookies.all("set-cookie").len(), 2);
    let account = raw_request(proxy.proxy_addr, requests[7].as_bytes()).await;
    assert!(String::from_utf8_lossy(&account.body).contains("Hello ada (#7)"));
    assert_eq!(
        cookies.header("host"),
        Some("php.test"),
        "php -S echoes the Host it was given"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn php_sees_the_client_host_and_no_cutover_headers() {
    let sessions = tempdir("php-headers");
    let legacy = php(&sessions).await;
    let candidate = php(&sessions).await;
    let proxy = cutover(&base_config(
        &format!("http://{}", legacy.addr),
        &format!("http://{}", candidate.addr),
    ))
    .await;
    let form = "a=1";
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\nX-Cutover-Session: v1.forged.x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    let r = raw_request(proxy.proxy_addr, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["host"], "shop.example");
    assert_eq!(v["xff"], "127.0.0.1");
    assert_eq!(v["post"]["a"], "1");
    assert_eq!(v["cutover_headers"], serde_json::json!([]));
    proxy.shutdown().await;
}
