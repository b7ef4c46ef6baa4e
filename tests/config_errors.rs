//! Every kind of config mistake exits 64 from `cutover check` and `cutover proxy`, naming the
//! file, the line and the key, and nothing is bound.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cutover-cfg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn cutover(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .expect("run cutover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[listen]
proxy = "127.0.0.1:18080"
admin = "127.0.0.1:19090"

[upstreams]
legacy = "http://127.0.0.1:8081"
candidate = "http://127.0.0.1:8082"

[defaults]
sample = 1.0
rules = ["rules/app.toml"]

[[route]]
pattern = "/users/{id}"
mirror_methods = ["GET", "POST"]
"#;

fn write(d: &Path, config: &str, rules: &str) -> PathBuf {
    std::fs::create_dir_all(d.join("rules")).expect("rules dir");
    std::fs::write(d.join("rules/app.toml"), rules).expect("write rules");
    let p = d.join("cutover.toml");
    std::fs::write(&p, config).expect("write config");
    p
}

/// (what is wrong, the config, the rules file, the file named, line, key)
fn mistakes() -> Vec<(
    &'static str,
    String,
    &'static str,
    &'static str,
    usize,
    &'static str,
)> {
    vec![
        (
            "unknown key",
            GOOD.replace("sample = 1.0", "sampel = 1.0"),
            "",
            "cutover.toml",
            11,
            "defaults.sampel",
        ),
        (
            "bad upstream scheme",
            GOOD.replace("http://127.0.0.1:8081", "ftp://127.0.0.1:8081"),
            "",
            "cutover.toml",
            7,
            "upstreams.legacy",
        ),
        (
            "upstream not a URL",
            GOOD.replace("http://127.0.0.1:8082", "not a url"),
            "",
            "cutover.toml",
            8,
            "upstreams.candidate",
        ),
        (
            "no upstream connections allowed",
            GOOD.replace(
                "candidate = \"http://127.0.0.1:8082\"",
                "candidate = \"http://127.0.0.1:8082\"\nmax_connections = 0",
            ),
            "",
            "cutover.toml",
            9,
            "upstreams.max_connections",
        ),
        (
            "bad listen address",
            GOOD.replace("127.0.0.1:19090", "localhost-9090"),
            "",
            "cutover.toml",
            4,
            "listen.admin",
        ),
        (
            "sample out of range",
            GOOD.replace("sample = 1.0", "sample = 1.5"),
            "",
            "cutover.toml",
            11,
            "defaults.sample",
        ),
        (
            "wrong type",
            GOOD.replace("sample = 1.0", "sample = \"all\""),
            "",
            "cutover.toml",
            11,
            "defaults.sample",
        ),
        (
            "bad pattern",
            GOOD.replace("/users/{id}", "users/{id}"),
            "",
            "cutover.toml",
            15,
            "route[0].pattern",
        ),
        (
            "bad method",
            GOOD.replace("\"POST\"]", "\"PO ST\"]"),
            "",
            "cutover.toml",
            16,
            "route[0].mirror_methods",
        ),
        (
            "missing rules file",
            GOOD.replace("rules/app.toml", "rules/nope.toml"),
            "",
            "cutover.toml",
            12,
            "defaults.rules",
        ),
        (
            "bad rules file",
            GOOD.to_string(),
            "[json]\nignore = [\"/a\"]\nunordred = [\"/b\"]\n",
            "app.toml",
            3,
            "unordred",
        ),
        (
            "bad regex in rules",
            GOOD.to_string(),
            "[[text.replace]]\npattern = '(['\nreplace = ''\n",
            "app.toml",
            2,
            "text.replace[0].pattern",
        ),
        (
            "syntax error",
            GOOD.replace("[defaults]", "[defaults"),
            "",
            "cutover.toml",
            10,
            "",
        ),
        (
            "duplicate pattern",
            format!("{GOOD}\n[[route]]\npattern = \"/users/{{id}}\"\n"),
            "",
            "cutover.toml",
            19,
            "route[1].pattern",
        ),
        (
            "bad mode",
            GOOD.replace(
                "pattern = \"/users/{id}\"",
                "pattern = \"/users/{id}\"\nmode = \"rust\"",
            ),
            "",
            "cutover.toml",
            16,
            "route[0].mode",
        ),
        (
            "gate confidence",
            format!("{GOOD}\n[gate]\nconfidence = 1.5\n"),
            "",
            "cutover.toml",
            19,
            "gate.confidence",
        ),
    ]
}

#[test]
fn a_good_config_checks_ok() {
    let d = dir("good");
    let p = write(&d, GOOD, "[json]\nignore = [\"/meta\"]\n");
    let (code, out, err) = cutover(&["check", "--config", p.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok (1 routes)"), "{out}");
}

#[test]
fn every_mistake_exits_64_with_file_line_and_key() {
    for (what, config, rules, file, line, key) in mistakes() {
        let d = dir(&what.replace(' ', "-"));
        let p = write(
            &d,
            &config,
            if rules.is_empty() { "[json]\n" } else { rules },
        );
        let (code, _, err) = cutover(&["check", "--config", p.to_str().expect("utf8")]);
        assert_eq!(code, 64, "{what}: {err}");
        assert!(
            err.contains(&format!("{file}:{line}:")),
            "{what}: expected {file}:{line} in: {err}"
        );
        assert!(err.contains(key), "{what}: expected key {key} in: {err}");
    }
}

/// The `bind` calls a `cutover proxy` run makes, seen by strace: (exit code, stderr, binds).
fn proxy_binds(config: &Path, stop_when_listening: Option<u16>) -> (i32, String, Vec<String>) {
    let strace = which("strace").unwrap_or_else(|| {
        panic!(
            "`strace` is not installed; install it with: apt-get install strace (or run .ci/run)"
        )
    });
    use std::os::unix::process::CommandExt;
    let trace = config.with_extension("strace");
    // A process group of its own: the stop below reaches strace and the proxy alike.
    let child = Command::new(strace)
        .process_group(0)
        .args(["-f", "-qq", "-e", "trace=bind", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_cutover"))
        .args(["proxy", "--config"])
        .arg(config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace cutover");
    if let Some(port) = stop_when_listening {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the proxy never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: kill(2) on our own child's process group; no memory is touched.
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGTERM);
        }
    }
    let out = child.wait_with_output().expect("wait");
    let binds = std::fs::read_to_string(&trace)
        .expect("strace output")
        .lines()
        .filter(|l| l.contains("bind(") && (l.contains("AF_INET") || l.contains("AF_INET6")))
        .map(str::to_string)
        .collect();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        binds,
    )
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[test]
fn proxy_with_a_bad_config_binds_nothing() {
    let free = |()| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (proxy_port, admin_port) = (free(()), free(()));
    let good = GOOD
        .replace("127.0.0.1:18080", &format!("127.0.0.1:{proxy_port}"))
        .replace("127.0.0.1:19090", &format!("127.0.0.1:{admin_port}"));
    // The method sees binds: a good config binds the proxy and the admin ports.
    let d = dir("proxy-good");
    let p = write(&d, &good, "[json]\n");
    let (_, err, binds) = proxy_binds(&p, Some(proxy_port));
    assert!(
        binds
            .iter()
            .any(|b| b.contains(&format!("htons({proxy_port})"))),
        "strace did not see the proxy's bind: {binds:?} {err}"
    );
    // A mistake found after the listen addresses parsed: exit 64, and not one bind.
    let d = dir("proxy-bad");
    let p = write(&d, &good.replace("sample = 1.0", "sample = -1"), "[json]\n");
    let (code, err, binds) = proxy_binds(&p, None);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("defaults.sample"), "{err}");
    assert!(
        binds.is_empty(),
        "bound before the config was valid: {binds:?}"
    );
}

#[test]
fn unreadable_config_is_a_config_error() {
    let (code, _, err) = cutover(&["check", "--config", "/nonexistent/cutover.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/cutover.toml"), "{err}");
}
