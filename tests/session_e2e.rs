//! The PHP session on both sides, end to end: a real PHP app logs a user in with each store
//! (files, DynamoDB through dynalite, Redis through phpredis), the same cookie goes through
//! cutover, and a candidate written with the handler library answers as that user.

mod common;

use common::*;
use cutover_session::dynamodb::{DynamoStore, Layout};
use cutover_session::files::FilesStore;
use cutover_session::header::{verify, Keyring, VerifiedSession};
use cutover_session::php::{self, Serializer, Value};
use cutover_session::redis::RedisStore;
use std::time::{Duration, Instant};

fn keys() -> Keyring {
    Keyring::single(SESSION_SECRET.as_bytes().to_vec())
}

fn verified(r: &RecordedRequest) -> Result<VerifiedSession, cutover_session::header::HeaderError> {
    let h = r
        .headers
        .get("x-cutover-session")
        .and_then(|v| v.to_str().ok());
    let pq = r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    verify(
        h,
        &keys(),
        60,
        cutover::stats::now_secs(),
        r.method.as_str(),
        pq,
    )
}

/// The new Rust handlers: they answer /whoami and /counter from the verified snapshot, with
/// the headers PHP's session_start() sends, and declare the session they would leave (a new one
/// for a visitor without one, the counter incremented) as PHP's own pages do.
async fn rust_candidate() -> Origin {
    Origin::start(|r: RecordedRequest| async move {
        let s = verified(&r).ok();
        let user_id = s.as_ref().and_then(|s| s.get_i64("user_id"));
        let user = s
            .as_ref()
            .and_then(|s| s.get_str("user").map(str::to_string));
        let mut after = s
            .as_ref()
            .map(|s| s.session.clone())
            .unwrap_or_else(|| php::Session::new(Serializer::Php));
        let body = match r.uri.path() {
            "/whoami" => serde_json::json!({ "user_id": user_id, "user": user }),
            "/counter" => {
                let before = s.as_ref().and_then(|s| s.get_i64("count")).unwrap_or(0);
                after.set("count", Value::Int(before + 1));
                serde_json::json!({ "user_id": user_id, "count": before + 1 })
            }
            _ => serde_json::json!({}),
        };
        session_page(&r, body, &after, true)
    })
    .await
}

fn session_config(legacy: &str, candidate: &str, store: &str) -> String {
    format!(
        "{}[session]\nstore = \"{}\"\ntimeout_ms = 500\n{store}\n[[route]]\npattern = \"/whoami\"\n[[route]]\npattern = \"/counter\"\n",
        base_config(legacy, candidate),
        store.lines().next().and_then(|l| l.strip_prefix("[session.")).and_then(|l| l.strip_suffix(']')).unwrap_or("none")
    )
}

async fn whoami(addr: std::net::SocketAddr, cookie: &str) -> serde_json::Value {
    let r = get(
        addr,
        "/whoami",
        &[("Cookie", &format!("PHPSESSID={cookie}"))],
    )
    .await;
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).expect("json")
}

async fn comparisons(admin: std::net::SocketAddr, route: &str, outcome: &str) -> f64 {
    metric(
        &scrape(admin).await,
        "cutover_comparisons_total",
        &[("route", route), ("outcome", outcome)],
    )
}

#[tokio::test]
async fn files_store_end_to_end() {
    session_env();
    let dir = tempdir("files-e2e");
    let legacy = php_server(&[("session.save_path", dir.display().to_string())], &[]).await;
    let candidate = rust_candidate().await;
    let store = format!("[session.files]\npath = \"{}\"", dir.display());
    let proxy = cutover(&session_config(&legacy.url(), &candidate.url(), &store)).await;
    login(proxy.proxy_addr, "filesUser0001", "ada", 7).await;
    let answer = whoami(proxy.proxy_addr, "filesUser0001").await;
    assert_eq!(answer, serde_json::json!({"user_id": 7, "user": "ada"}));
    eventually(Duration::from_secs(5), "the whoami comparison", || async {
        comparisons(proxy.admin_addr, "/whoami", "match").await == 1.0
    })
    .await;
    let seen = candidate.requests();
    let s = verified(&seen[0]).expect("the candidate got a valid header");
    assert_eq!(s.get_i64("user_id"), Some(7));
    assert_eq!(s.id, "filesUser0001");
    assert_eq!(s.store, "files");
    assert_eq!(s.data["user"], "ada");
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "cutover_session_resolutions_total",
            &[("store", "files"), ("outcome", "found")]
        ),
        1.0
    );
    // No cookie: no header, and PHP and the candidate agree on a logged-out user.
    let r = get(proxy.proxy_addr, "/whoami", &[]).await;
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        r#"{"user_id":null,"user":null}"#
    );
    eventually(Duration::from_secs(5), "second comparison", || async {
        comparisons(proxy.admin_addr, "/whoami", "match").await == 2.0
    })
    .await;
    assert!(candidate.requests()[1]
        .headers
        .get("x-cutover-session")
        .is_none());
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_candidate_sees_the_session_from_before_the_request() {
    session_env();
    let dir = tempdir("files-counter");
    let legacy = php_server(&[("session.save_path", dir.display().to_string())], &[]).await;
    let candidate = rust_candidate().await;
    let store = format!("[session.files]\npath = \"{}\"", dir.display());
    let proxy = cutover(&session_config(&legacy.url(), &candidate.url(), &store)).await;
    login(proxy.proxy_addr, "counterUser01", "bob", 9).await;
    for expected in 1..=3 {
        let r = get(
            proxy.proxy_addr,
            "/counter",
            &[("Cookie", "PHPSESSID=counterUser01")],
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v["count"], expected, "PHP's own count");
        eventually(Duration::from_secs(5), "the counter mirror", || async {
            candidate.count() == expected as usize
        })
        .await;
        let seen = verified(&candidate.requests()[expected as usize - 1]).expect("header");
        // PHP incremented during the request; the snapshot is from before it.
        assert_eq!(
            seen.get_i64("count"),
            if expected == 1 {
                None
            } else {
                Some(expected - 1)
            }
        );
        // Compared (PHP's session read back) before the session's next request: one that
        // started earlier would be skipped as raced.
        eventually(Duration::from_secs(5), "the comparison", || async {
            comparisons(proxy.admin_addr, "/counter", "match").await == expected as f64
        })
        .await;
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn forged_headers_and_hostile_cookies() {
    session_env();
    let dir = tempdir("files-hostile");
    std::fs::write(
        dir.join("sess_victim0001"),
        "user_id|i:1;user|s:5:\"admin\";",
    )
    .expect("write");
    let legacy = php_server(&[("session.save_path", dir.display().to_string())], &[]).await;
    let candidate = rust_candidate().await;
    let store = format!("[session.files]\npath = \"{}\"", dir.display());
    let proxy = cutover(&session_config(&legacy.url(), &candidate.url(), &store)).await;
    // A client-forged header signed with the right secret but for another session never
    // reaches the candidate: cutover replaces it with the snapshot it resolved itself.
    let forged = cutover_session::header::sign(
        &cutover_session::header::Snapshot {
            name: "PHPSESSID".into(),
            id: "victim0001".into(),
            store: "files".into(),
            serializer: Serializer::Php,
            raw: b"user_id|i:1;".to_vec(),
            resolved_at: cutover::stats::now_secs(),
            req: "GET /whoami".into(),
        },
        &keys(),
    )
    .expect("sign");
    let r = get(
        proxy.proxy_addr,
        "/whoami",
        &[("x-cutover-session", &forged)],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        r#"{"user_id":null,"user":null}"#
    );
    // Path traversal in the cookie reads nothing.
    std::fs::write(
        dir.parent().expect("parent").join("sess_escape"),
        "user_id|i:666;",
    )
    .expect("write");
    let r = get(
        proxy.proxy_addr,
        "/whoami",
        &[("Cookie", "PHPSESSID=..%2Fsess_escape")],
    )
    .await;
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(5), "two mirrors", || async {
        candidate.count() == 2
    })
    .await;
    for seen in candidate.requests() {
        assert!(
            seen.headers.get("x-cutover-session").is_none(),
            "no session: no header"
        );
    }
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "cutover_session_resolutions_total",
            &[("store", "files"), ("outcome", "found")]
        ),
        0.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn dynamodb_store_end_to_end() {
    use aws_sdk_dynamodb::types::AttributeValue;
    session_env();
    let db = dynalite().await;
    let client = create_sessions_table(&db.url()).await;
    let legacy = php_server(&[], &[("CUTOVER_TEST_DYNAMODB", db.url())]).await;
    let candidate = rust_candidate().await;
    let store = format!(
        "[session.dynamodb]\ntable = \"sessions\"\nendpoint = \"{}\"\nregion = \"us-east-1\"",
        db.url()
    );
    let proxy = cutover(&session_config(&legacy.url(), &candidate.url(), &store)).await;
    // PHP writes the item (aws-sdk-php's layout, data as S).
    login(proxy.proxy_addr, "dynUser0001", "cleo", 11).await;
    let item = client
        .get_item()
        .table_name("sessions")
        .key("id", AttributeValue::S("PHPSESSID_dynUser0001".into()))
        .send()
        .await
        .expect("get")
        .item
        .expect("PHP wrote the item");
    assert!(matches!(item.get("data"), Some(AttributeValue::S(_))));
    assert!(matches!(item.get("expires"), Some(AttributeValue::N(_))));
    assert_eq!(
        whoami(proxy.proxy_addr, "dynUser0001").await,
        serde_json::json!({"user_id": 11, "user": "cleo"})
    );
    // The same layout with data as B, and an expired item.
    let now = cutover::stats::now_secs();
    for (id, data, expires) in [
        (
            "dynBinary001",
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                b"user_id|i:12;user|s:4:\"dana\";".to_vec(),
            )),
            now + 600,
        ),
        (
            "dynExpired01",
            AttributeValue::S("user_id|i:13;user|s:3:\"eve\";".into()),
            now - 10,
        ),
    ] {
        client
            .put_item()
            .table_name("sessions")
            .item("id", AttributeValue::S(format!("PHPSESSID_{id}")))
            .item("data", data)
            .item("expires", AttributeValue::N(expires.to_string()))
            .send()
            .await
            .expect("put");
    }
    assert_eq!(
        whoami(proxy.proxy_addr, "dynBinary001").await,
        serde_json::json!({"user_id": 12, "user": "dana"})
    );
    assert_eq!(
        whoami(proxy.proxy_addr, "dynExpired01").await,
        serde_json::json!({"user_id": null, "user": null})
    );
    eventually(Duration::from_secs(5), "3 matches", || async {
        comparisons(proxy.admin_addr, "/whoami", "match").await == 3.0
    })
    .await;
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "cutover_session_resolutions_total",
            &[("store", "dynamodb"), ("outcome", "found")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "cutover_session_resolutions_total",
            &[("store", "dynamodb"), ("outcome", "expired")]
        ),
        1.0
    );
    let seen: Vec<Option<i64>> = candidate
        .requests()
        .iter()
        .map(|r| verified(r).ok().and_then(|s| s.get_i64("user_id")))
        .collect();
    assert_eq!(seen, vec![Some(11), Some(12), None]);

    // The handler library writes a session PHP reads: a promoted Rust route logs a user in.
    let writer = DynamoStore::new(
        cutover::aws::dynamodb(Some("us-east-1"), Some(&db.url())).await,
        Layout {
            table: "sessions".into(),
            hash_key: "id".into(),
            data_attribute: "data".into(),
            session_name: "PHPSESSID".into(),
        },
    );
    writer.check_table().await.expect("the table and its key");
    let mut s = php::Session::new(Serializer::Php);
    s.set("user_id", Value::Int(14));
    s.set("user", Value::Str(b"finn".to_vec()));
    writer
        .save(
            "dynWritten01",
            &s.encode().expect("encode"),
            Duration::from_secs(600),
        )
        .await
        .expect("save");
    assert_eq!(
        whoami(legacy.addr, "dynWritten01").await,
        serde_json::json!({"user_id": 14, "user": "finn"})
    );
    writer.destroy("dynWritten01").await.expect("destroy");
    assert_eq!(
        whoami(legacy.addr, "dynWritten01").await,
        serde_json::json!({"user_id": null, "user": null})
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn redis_store_end_to_end() {
    session_env();
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
    let candidate = rust_candidate().await;
    let store = format!("[session.redis]\nurl = \"redis://{}/0\"", redis.addr);
    let proxy = cutover(&session_config(&legacy.url(), &candidate.url(), &store)).await;
    login(proxy.proxy_addr, "redisUser001", "gus", 21).await;
    assert_eq!(
        whoami(proxy.proxy_addr, "redisUser001").await,
        serde_json::json!({"user_id": 21, "user": "gus"})
    );
    eventually(Duration::from_secs(5), "a match", || async {
        comparisons(proxy.admin_addr, "/whoami", "match").await == 1.0
    })
    .await;
    assert_eq!(
        verified(&candidate.requests()[0]).expect("header").store,
        "redis"
    );
    // The library writes with SETEX under phpredis' key; PHP reads it.
    let writer =
        RedisStore::open(&format!("redis://{}/0", redis.addr), "PHPREDIS_SESSION:").expect("url");
    writer.ping().await.expect("PING");
    let mut s = php::Session::new(Serializer::Php);
    s.set("user_id", Value::Int(22));
    s.set("user", Value::Str(b"hal".to_vec()));
    writer
        .save(
            "redisWrite01",
            &s.encode().expect("encode"),
            Duration::from_secs(600),
        )
        .await
        .expect("save");
    assert_eq!(
        whoami(legacy.addr, "redisWrite01").await,
        serde_json::json!({"user_id": 22, "user": "hal"})
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn files_writer_is_read_by_php() {
    let dir = tempdir("files-writer");
    // Quoted: in php.ini syntax an unquoted `;` starts a comment.
    let legacy = php_server(
        &[("session.save_path", format!("\"1;{}\"", dir.display()))],
        &[],
    )
    .await;
    std::fs::create_dir_all(dir.join("w")).expect("depth folder");
    let store = FilesStore::new(&format!("1;{}", dir.display()), Duration::from_millis(200))
        .expect("save path");
    let mut s = php::Session::new(Serializer::Php);
    s.set("user_id", Value::Int(31));
    s.set("user", Value::Str(b"ivy".to_vec()));
    store
        .save("writer000001", &s.encode().expect("encode"))
        .expect("save");
    assert!(dir.join("w/sess_writer000001").is_file(), "depth-1 layout");
    assert_eq!(
        whoami(legacy.addr, "writer000001").await,
        serde_json::json!({"user_id": 31, "user": "ivy"})
    );
    // And what PHP writes, the library reads.
    login(legacy.addr, "wphp00000001", "jo", 32).await;
    let got = store.load("wphp00000001").expect("load");
    let cutover_session::store::Lookup::Found(raw) = got else {
        panic!("{got:?}")
    };
    let back = php::decode_session(&raw, Serializer::Php, php::DEFAULT_MAX_BYTES).expect("decode");
    assert_eq!(back.get("user_id").and_then(Value::as_i64), Some(32));
}

#[tokio::test]
async fn a_dead_or_hanging_store_never_holds_the_client() {
    session_env();
    let legacy = Origin::start(|_r| async move {
        respond(200, &[("content-type", "text/plain")], "php answered")
    })
    .await;
    let candidate = rust_candidate().await;
    let hanging = Origin::hanging().await;
    for (what, addr) in [("refused", dead_addr()), ("hanging", hanging.addr)] {
        let store = format!("[session.redis]\nurl = \"redis://{addr}/0\"");
        let config = session_config(&legacy.url(), &candidate.url(), &store)
            .replace("timeout_ms = 500", "timeout_ms = 100");
        let proxy = cutover(&config).await;
        for _ in 0..5 {
            let started = Instant::now();
            let r = get(
                proxy.proxy_addr,
                "/whoami",
                &[("Cookie", "PHPSESSID=someone00001")],
            )
            .await;
            assert_eq!(
                (r.status, r.body.as_slice()),
                (200, &b"php answered"[..]),
                "{what}"
            );
            assert!(
                started.elapsed() < Duration::from_millis(600),
                "{what}: the client waited {:?}",
                started.elapsed()
            );
        }
        let m = scrape(proxy.admin_addr).await;
        assert_eq!(
            metric(
                &m,
                "cutover_session_resolutions_total",
                &[("store", "redis"), ("outcome", "error")]
            ),
            5.0,
            "{what}"
        );
        assert_eq!(
            metric(
                &m,
                "cutover_comparisons_total",
                &[("route", "/whoami"), ("outcome", "skipped")]
            ),
            5.0,
            "{what}"
        );
        proxy.shutdown().await;
    }
    assert_eq!(candidate.count(), 0, "no comparison without the session");
}

#[tokio::test]
async fn a_garbage_session_is_counted_and_sent_empty() {
    session_env();
    let dir = tempdir("files-garbage");
    std::fs::write(
        dir.join("sess_garbage00001"),
        b"user_id|i:notanumber;\xff\xfe{{{",
    )
    .expect("write");
    let legacy = Origin::start(|_r| async move {
        respond(200, &[("content-type", "text/plain")], "php answered")
    })
    .await;
    let candidate = rust_candidate().await;
    let store = format!("[session.files]\npath = \"{}\"", dir.display());
    let proxy = cutover(&session_config(&legacy.url(), &candidate.url(), &store)).await;
    let r = get(
        proxy.proxy_addr,
        "/whoami",
        &[("Cookie", "PHPSESSID=garbage00001")],
    )
    .await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"php answered"[..]));
    eventually(Duration::from_secs(5), "the mirror", || async {
        candidate.count() == 1
    })
    .await;
    let seen = verified(&candidate.requests()[0]).expect("a valid header all the same");
    assert_eq!(
        seen.data,
        serde_json::json!({}),
        "PHP would start it empty; so does the snapshot"
    );
    assert_eq!(seen.raw, b"user_id|i:notanumber;\xff\xfe{{{");
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "cutover_session_resolutions_total",
            &[("store", "files"), ("outcome", "undecodable")]
        ),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn php_fpm_as_the_legacy_app() {
    // The same flow with PHP behind FastCGI (Debian's php8.2-fpm): the login PHP-FPM stores
    // is the candidate's snapshot, and what PHP leaves in the session after each request (read
    // once PHP-FPM ends the request) is what the candidate declares.
    session_env();
    let dir = tempdir("fpm-sessions");
    let fpm = php_fpm(
        "sessions",
        &[("session.save_path", dir.display().to_string())],
    )
    .await;
    let candidate = rust_candidate().await;
    let store = format!("[session.files]\npath = \"{}\"", dir.display());
    let config = format!(
        "{}\n[upstreams.fastcgi]\ndocument_root = \"{}\"\n",
        session_config(&fpm.unix_url(), &candidate.url(), &store),
        fpm_app().display()
    );
    let proxy = cutover(&config).await;
    login(proxy.proxy_addr, "fpmUser000001", "grace", 11).await;
    let answer = whoami(proxy.proxy_addr, "fpmUser000001").await;
    assert_eq!(answer, serde_json::json!({"user_id": 11, "user": "grace"}));
    eventually(Duration::from_secs(5), "the whoami comparison", || async {
        comparisons(proxy.admin_addr, "/whoami", "match").await == 1.0
    })
    .await;
    for expected in 1..=3 {
        let r = get(
            proxy.proxy_addr,
            "/counter",
            &[("Cookie", "PHPSESSID=fpmUser000001")],
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v["count"], expected, "PHP's own count");
        // One request of the session at a time: a request that started before the previous
        // one's session was read back would be skipped as raced.
        eventually(Duration::from_secs(5), "the counter comparison", || async {
            comparisons(proxy.admin_addr, "/counter", "match").await == f64::from(expected)
        })
        .await;
    }
    let seen = candidate.requests();
    let first = verified(&seen[0]).expect("a valid header");
    assert_eq!(first.get_i64("user_id"), Some(11));
    assert_eq!(first.store, "files");
    // The third counter request's snapshot holds PHP-FPM's count from the second.
    let last = verified(&seen[3]).expect("a valid header");
    assert_eq!(last.get_i64("count"), Some(2));
    assert_eq!(
        comparisons(proxy.admin_addr, "/counter", "mismatch").await,
        0.0
    );
    proxy.shutdown().await;
}
