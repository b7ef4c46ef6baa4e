//! What a session lookup adds to a mirrored request: `Resolver::resolve` (store read, PHP
//! decode, JSON form, HMAC-signed header) against each store, sequentially, on this machine; and
//! what the read of the session PHP left costs each exchange after PHP's response
//! (`Resolver::after`: the lock check, the store read, the JSON form; off the client's path).
//! Needs redis-server and dynalite (`.ci/run` installs both). Run:
//! `cargo bench --bench session_lookup`.

use cutover::config::Config;
use cutover::session::{Resolution, Resolver};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn wait(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

const BLOB: &[u8] = b"user_id|i:42;name|s:3:\"ada\";cart|a:2:{i:0;a:2:{s:3:\"sku\";s:3:\"A-1\";s:3:\"qty\";i:2;}i:1;a:2:{s:3:\"sku\";s:3:\"B-2\";s:3:\"qty\";i:1;}}csrf|s:32:\"0123456789abcdef0123456789abcdef\";";

async fn measure(name: &str, resolver: &Resolver) {
    let mut times = Vec::with_capacity(2000);
    for i in 0..2200 {
        let t = Instant::now();
        let r = resolver
            .resolve(Some("benchsession0001".into()), "GET /account".into())
            .await;
        let d = t.elapsed();
        assert!(
            matches!(r, Resolution::Found(_)),
            "{name}: no session resolved"
        );
        if i >= 200 {
            times.push(d);
        }
    }
    report(&format!("{name} lookup"), &mut times);
    let mut times = Vec::with_capacity(2000);
    for i in 0..2200 {
        let t = Instant::now();
        let r = resolver.after("benchsession0001").await;
        let d = t.elapsed();
        assert!(
            matches!(r, Ok(Some(_))),
            "{name}: the after-read found no session"
        );
        if i >= 200 {
            times.push(d);
        }
    }
    report(&format!("{name} after-read"), &mut times);
}

fn report(name: &str, times: &mut [Duration]) {
    times.sort();
    let q = |p: f64| {
        times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_secs_f64() * 1e6
    };
    println!(
        "{name:<20} p50 {:>7.1} µs   p99 {:>7.1} µs   ({} reads)",
        q(0.5),
        q(0.99),
        times.len()
    );
}

fn config(store: &str) -> Config {
    let text = format!("[upstreams]\nlegacy = \"http://127.0.0.1:1\"\ncandidate = \"http://127.0.0.1:2\"\n[session]\ntimeout_ms = 1000\n{store}");
    Config::from_str_at(&text, "bench.toml", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn main() {
    std::env::set_var("CUTOVER_SESSION_SECRET", "bench-secret");
    std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let metrics = cutover::stats::Metrics::register().unwrap_or_else(|e| panic!("{e}"));
    println!("session lookup (store read + decode + sign) and after-read latency, sequential:");

    let dir = std::env::temp_dir().join(format!("cutover-bench-sessions-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("sess_benchsession0001"), BLOB);
    rt.block_on(async {
        let c = config(&format!(
            "store = \"files\"\n[session.files]\npath = \"{}\"\n",
            dir.display()
        ));
        let r = Resolver::start(&c.session, &metrics)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("files"));
        measure("files", &r).await;
    });
    let _ = std::fs::remove_dir_all(&dir);

    let redis_port = free_port();
    match Command::new("redis-server")
        .args([
            "--port",
            &redis_port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(child) => {
            let _k = Kill(child);
            wait(redis_port);
            rt.block_on(async {
                let c = config(&format!("store = \"redis\"\n[session.redis]\nurl = \"redis://127.0.0.1:{redis_port}/0\"\n"));
                let client = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/0")).unwrap_or_else(|e| panic!("{e}"));
                let mut con = client.get_multiplexed_async_connection().await.unwrap_or_else(|e| panic!("{e}"));
                let _: () = redis::cmd("SET").arg("PHPREDIS_SESSION:benchsession0001").arg(BLOB).query_async(&mut con).await.unwrap_or_else(|e| panic!("{e}"));
                let r = Resolver::start(&c.session, &metrics).await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("redis"));
                measure("redis", &r).await;
            });
        }
        // A missing tool is a failure that says how to install it, never a silent skip.
        Err(e) => panic!("redis-server not runnable ({e}): apt-get install redis-server"),
    }

    let dyn_port = free_port();
    let dynalite = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/node/node_modules/.bin/dynalite");
    match Command::new(&dynalite)
        .args(["--port", &dyn_port.to_string(), "--createTableMs", "0"])
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(child) => {
            let _k = Kill(child);
            wait(dyn_port);
            rt.block_on(async {
                use aws_sdk_dynamodb::types::*;
                let endpoint = format!("http://127.0.0.1:{dyn_port}");
                let sdk = cutover::aws::sdk_config(Some("us-east-1"), Some(&endpoint)).await;
                let client = aws_sdk_dynamodb::Client::new(&sdk);
                let attr = AttributeDefinition::builder().attribute_name("id").attribute_type(ScalarAttributeType::S).build().unwrap_or_else(|e| panic!("{e}"));
                let key = KeySchemaElement::builder().attribute_name("id").key_type(KeyType::Hash).build().unwrap_or_else(|e| panic!("{e}"));
                client.create_table().table_name("sessions").attribute_definitions(attr).key_schema(key).billing_mode(BillingMode::PayPerRequest).send().await.unwrap_or_else(|e| panic!("{e:?}"));
                client
                    .put_item()
                    .table_name("sessions")
                    .item("id", AttributeValue::S("PHPSESSID_benchsession0001".into()))
                    .item("data", AttributeValue::S(String::from_utf8_lossy(BLOB).into_owned()))
                    .item("expires", AttributeValue::N((cutover::stats::now_secs() + 3600).to_string()))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{e:?}"));
                let c = config(&format!("store = \"dynamodb\"\n[session.dynamodb]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n"));
                let r = Resolver::start(&c.session, &metrics).await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("dynamodb"));
                measure("dynamodb", &r).await;
            });
        }
        Err(e) => panic!("dynalite not runnable ({e}): npm install --prefix tests/node"),
    }
}
