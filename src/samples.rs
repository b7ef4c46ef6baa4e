//! Mismatch samples: the latest N mismatches per route, redacted before they are stored, and an
//! optional JSONL file sink (mode 0600, rotated by size) written off the request path.
//!
//! Redaction removes: the values of credential-like headers (a configurable list) and of every
//! cookie, the values of every query parameter, the request's credentials and cookie values
//! wherever they are echoed (a body that prints the `Authorization` header, say), values at
//! configured JSON pointers, and configured patterns.

use crate::diff::Difference;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

/// One stored mismatch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub at: u64,
    pub route: String,
    /// `METHOD /path?query`, query values redacted.
    pub request: String,
    pub request_headers: Vec<(String, String)>,
    pub legacy_status: u16,
    pub candidate_status: u16,
    pub differences: Vec<Difference>,
    pub unified_diff: String,
    /// The request body, only with `samples.keep_request_bodies` (redacted, 4 KiB at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
}

/// What a sample is made from, before redaction.
pub struct SampleInput<'a> {
    pub route: &'a str,
    pub method: &'a http::Method,
    /// The request target as the client sent it (`/path?query`).
    pub target: &'a str,
    pub headers: &'a http::HeaderMap,
    pub legacy_status: u16,
    pub candidate_status: u16,
    pub differences: &'a [Difference],
    pub unified: &'a str,
    pub at: u64,
}

/// Header names whose values are always redacted (besides the configured list): every
/// credential-like header a PHP app or its clients commonly send.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-access-token",
    "x-csrf-token",
    "x-xsrf-token",
    "x-amz-security-token",
];

/// What redaction removes.
#[derive(Debug, Clone)]
pub struct Redactor {
    headers: Vec<String>,
    pointers: Vec<Vec<String>>,
    patterns: Vec<Regex>,
}

/// A `samples.redact_patterns` entry that is not a regex.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{pattern}` is not a regex: {why}")]
pub struct RedactError {
    pub pattern: String,
    pub why: String,
}

pub const REDACTED: &str = "[redacted]";

/// Secrets shorter than this are not searched for in text (they would match everywhere).
const MIN_SECRET_LEN: usize = 4;

/// `target` (`/path?a=1&b=2`) with every query value replaced by `[redacted]`.
pub fn redact_query(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !v.is_empty() => format!("{k}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect();
    let mut out = format!("{path}?{}", redacted.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// A `Cookie` header value with every cookie's value replaced (names kept).
fn redact_cookies(v: &str) -> String {
    v.split(';')
        .map(|pair| match pair.trim().split_once('=') {
            Some((k, _)) => format!("{}={REDACTED}", k.trim()),
            None => pair.trim().to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The request's own secrets: cookie values, credential header values (and the token after an
/// `Authorization` scheme), query values. Removed wherever they are echoed.
fn secrets_of(target: &str, headers: &http::HeaderMap, credential: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        let s = s.trim();
        if s.len() >= MIN_SECRET_LEN {
            out.push(s.to_string());
            // The decoded form too: a page may print it decoded.
            if let Ok(d) = percent_encoding::percent_decode_str(s).decode_utf8() {
                if d != s && d.len() >= MIN_SECRET_LEN {
                    out.push(d.into_owned());
                }
            }
        }
    };
    for v in headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for pair in v.split(';') {
            if let Some((_, value)) = pair.split_once('=') {
                add(value.trim_matches('"'));
            }
        }
    }
    for (name, value) in headers {
        if credential.iter().any(|c| c == name.as_str()) && name != http::header::COOKIE {
            if let Ok(v) = value.to_str() {
                add(v);
                if let Some((_, token)) = v.split_once(' ') {
                    add(token);
                }
            }
        }
    }
    if let Some((_, query)) = target.split_once('?') {
        for pair in query.split('&') {
            if let Some((_, v)) = pair.split_once('=') {
                add(v);
            }
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

impl Redactor {
    /// `headers`: names whose values are redacted (on top of [`CREDENTIAL_HEADERS`]);
    /// `pointers`: JSON pointers (with `*`) whose values are redacted in differences;
    /// `patterns`: regexes whose matches are redacted everywhere.
    pub fn new(
        headers: &[String],
        pointers: &[String],
        patterns: &[String],
    ) -> Result<Redactor, RedactError> {
        let mut compiled = Vec::new();
        for p in patterns {
            compiled.push(Regex::new(p).map_err(|e| RedactError {
                pattern: p.clone(),
                why: e.to_string(),
            })?);
        }
        let mut names: Vec<String> = CREDENTIAL_HEADERS.iter().map(|s| s.to_string()).collect();
        for h in headers {
            let h = h.to_ascii_lowercase();
            if !names.contains(&h) {
                names.push(h);
            }
        }
        Ok(Redactor {
            headers: names,
            pointers: pointers
                .iter()
                .map(|p| p.split('/').skip(1).map(str::to_string).collect())
                .collect(),
            patterns: compiled,
        })
    }

    /// `s` with the secrets and the configured patterns replaced by `[redacted]`.
    pub fn text(&self, s: &str, secrets: &[String]) -> String {
        let mut out = s.to_string();
        for secret in secrets {
            if secret.len() >= MIN_SECRET_LEN && out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        for re in &self.patterns {
            out = re.replace_all(&out, REDACTED).into_owned();
        }
        out
    }

    fn pointer_redacted(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix("body") else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').skip(1).collect();
        self.pointers.iter().any(|p| {
            p.len() <= parts.len()
                && p.iter()
                    .zip(parts.iter())
                    .all(|(want, got)| want == "*" || want == got)
        })
    }

    /// Whether a header's values are redacted (credential-like, configured, or cutover's own).
    pub fn header_redacted(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h == name) || name.starts_with("x-cutover-")
    }

    /// The request's secrets, for [`Redactor::text`] on anything else that comes with it.
    pub fn secrets(&self, target: &str, headers: &http::HeaderMap) -> Vec<String> {
        secrets_of(target, headers, &self.headers)
    }

    /// A redacted sample.
    pub fn sample(&self, input: SampleInput<'_>) -> Sample {
        let secrets = self.secrets(input.target, input.headers);
        let request_headers = input
            .headers
            .iter()
            .map(|(k, v)| {
                let name = k.as_str().to_string();
                let raw = String::from_utf8_lossy(v.as_bytes());
                let value = if name == "cookie" {
                    redact_cookies(&raw)
                } else if self.header_redacted(&name) {
                    REDACTED.to_string()
                } else if name == "referer" || raw.contains("://") {
                    self.text(&redact_query(&raw), &secrets)
                } else {
                    self.text(&raw, &secrets)
                };
                (name, value)
            })
            .collect();
        let differences = input
            .differences
            .iter()
            .map(|d| {
                let header = d.path.strip_prefix("header:").map(|h| {
                    // `header:set-cookie/<name>` names the cookie; its values are secrets.
                    h.split('/').next().unwrap_or(h)
                });
                let redact_all = self.pointer_redacted(&d.path)
                    || d.path.starts_with("session/")
                    || header.is_some_and(|h| self.header_redacted(h));
                let v = |x: &Option<String>| {
                    x.as_ref().map(|s| {
                        if redact_all {
                            REDACTED.to_string()
                        } else if header == Some("location") {
                            self.text(&redact_query(s), &secrets)
                        } else {
                            self.text(s, &secrets)
                        }
                    })
                };
                Difference {
                    path: d.path.clone(),
                    kind: d.kind,
                    legacy: v(&d.legacy),
                    candidate: v(&d.candidate),
                }
            })
            .collect();
        let mut unified_diff = self.text(input.unified, &secrets);
        for p in &self.pointers {
            if let Some(last) = p.last().filter(|l| l.as_str() != "*") {
                // `"key": value` lines of a pretty-printed JSON diff.
                if let Ok(re) = Regex::new(&format!(
                    r#"("{}"\s*:\s*)("(?:[^"\\]|\\.)*"|[^,\s\]}}]+)"#,
                    regex::escape(last)
                )) {
                    unified_diff = re
                        .replace_all(&unified_diff, format!("${{1}}\"{REDACTED}\""))
                        .into_owned();
                }
            }
        }
        Sample {
            at: input.at,
            route: input.route.to_string(),
            request: format!(
                "{} {}",
                input.method,
                self.text(&redact_query(input.target), &secrets)
            ),
            request_headers,
            legacy_status: input.legacy_status,
            candidate_status: input.candidate_status,
            differences,
            unified_diff,
            request_body: None,
        }
    }
}

/// The latest samples of one route.
#[derive(Debug, Default)]
pub struct SampleRing {
    items: VecDeque<Sample>,
}

impl SampleRing {
    pub fn push(&mut self, s: Sample, cap: usize) {
        if cap == 0 {
            return;
        }
        while self.items.len() >= cap {
            self.items.pop_front();
        }
        self.items.push_back(s);
    }

    /// Newest first.
    pub fn latest(&self) -> Vec<Sample> {
        self.items.iter().rev().cloned().collect()
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }
}

/// A file sink that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SinkError {
    pub path: String,
    pub source: std::io::Error,
}

/// Opens `path` for appending, created with mode 0600 (and narrowed to it if it existed): what
/// goes in it is user data.
pub fn open_private(path: &std::path::Path) -> Result<std::fs::File, SinkError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| SinkError {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    Ok(file)
}

/// Appends JSON lines to `path`, rotating it to `path.1` past `max_bytes`. Runs in its own
/// thread fed by a bounded channel: a slow disk never slows the proxy (lines are dropped instead,
/// and the caller counts them).
pub struct JsonlSink<T: Serialize + Send + 'static> {
    tx: std::sync::mpsc::SyncSender<T>,
}

impl<T: Serialize + Send + 'static> JsonlSink<T> {
    pub fn start(path: PathBuf, max_bytes: u64, queue: usize) -> Result<JsonlSink<T>, SinkError> {
        let mut file = open_private(&path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<T>(queue.max(1));
        std::thread::Builder::new()
            .name("cutover-jsonl".into())
            .spawn(move || {
                let mut written = file.metadata().map(|m| m.len()).unwrap_or(0);
                for item in rx {
                    let Ok(mut line) = serde_json::to_vec(&item) else {
                        continue;
                    };
                    line.push(b'\n');
                    if written + line.len() as u64 > max_bytes && written > 0 {
                        let rotated = path.with_extension(match path.extension() {
                            Some(e) => format!("{}.1", e.to_string_lossy()),
                            None => "1".into(),
                        });
                        let _ = std::fs::rename(&path, rotated);
                        match open_private(&path) {
                            Ok(f) => file = f,
                            Err(e) => {
                                tracing::warn!(error = %e, "JSONL file cannot be reopened; the sink stops");
                                return;
                            }
                        }
                        written = 0;
                    }
                    if file.write_all(&line).is_ok() {
                        written += line.len() as u64;
                    }
                }
            })
            .map_err(|source| SinkError {
                path: "(writer thread)".into(),
                source,
            })?;
        Ok(JsonlSink { tx })
    }

    /// Queues an item; false when the sink is behind (the item is dropped).
    pub fn send(&self, item: T) -> bool {
        self.tx.try_send(item).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::DiffKind;

    fn input<'a>(
        target: &'a str,
        headers: &'a http::HeaderMap,
        diffs: &'a [Difference],
        unified: &'a str,
    ) -> SampleInput<'a> {
        SampleInput {
            route: "/u",
            method: &http::Method::GET,
            target,
            headers,
            legacy_status: 200,
            candidate_status: 200,
            differences: diffs,
            unified,
            at: 1,
        }
    }

    #[test]
    fn redaction() {
        let r = Redactor::new(
            &["x-custom-secret".into()],
            &["/user/password".into(), "/cards/*/number".into()],
            &[r"\b\d{16}\b".into()],
        )
        .expect("redactor");
        let mut h = http::HeaderMap::new();
        h.insert(
            "cookie",
            http::HeaderValue::from_static("PHPSESSID=abc123secret; lang=en-GB-x"),
        );
        h.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer tok-xyz-987"),
        );
        h.insert("x-api-key", http::HeaderValue::from_static("key-5555"));
        h.insert("x-custom-secret", http::HeaderValue::from_static("s3cr3t!"));
        h.insert(
            "referer",
            http::HeaderValue::from_static("http://x/?sid=abc123secret&next=%2Fhome"),
        );
        let diffs = vec![
            Difference {
                path: "body/user/password".into(),
                kind: DiffKind::Changed,
                legacy: Some("hunter2".into()),
                candidate: Some("hunter3".into()),
            },
            Difference {
                path: "body/cards/0/number".into(),
                kind: DiffKind::Changed,
                legacy: Some("4111".into()),
                candidate: Some("4242".into()),
            },
            Difference {
                path: "body/note".into(),
                kind: DiffKind::Changed,
                legacy: Some(
                    "card 4111111111111111 for abc123secret, echo: Bearer tok-xyz-987 /home".into(),
                ),
                candidate: None,
            },
            Difference {
                path: "header:set-cookie/PHPSESSID".into(),
                kind: DiffKind::Changed,
                legacy: Some("PHPSESSID=abc123secret".into()),
                candidate: Some("x".into()),
            },
            Difference {
                path: "session/user_id".into(),
                kind: DiffKind::Changed,
                legacy: Some("42".into()),
                candidate: Some("43".into()),
            },
        ];
        let unified = "-  \"password\": \"hunter2\",\n+  \"password\": \"hunter3\",\n";
        let s = r.sample(input("/u?token=qwerty123&page=2", &h, &diffs, unified));
        let all = serde_json::to_string(&s).expect("json");
        for secret in [
            "abc123secret",
            "en-GB-x",
            "hunter2",
            "hunter3",
            "tok-xyz-987",
            "key-5555",
            "s3cr3t!",
            "4111111111111111",
            "4242",
            "qwerty123",
            "\"42\"",
        ] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
        assert_eq!(s.request, "GET /u?token=[redacted]&page=[redacted]");
        let cookie = &s
            .request_headers
            .iter()
            .find(|(k, _)| k == "cookie")
            .expect("cookie")
            .1;
        assert_eq!(cookie, "PHPSESSID=[redacted]; lang=[redacted]");
        assert!(all.contains("card [redacted] for [redacted]"), "{all}");
        assert!(
            s.unified_diff.contains("\"password\": \"[redacted]\""),
            "{}",
            s.unified_diff
        );
    }

    #[test]
    fn query_values_go_names_stay() {
        assert_eq!(redact_query("/a"), "/a");
        assert_eq!(redact_query("/a?x=1&flag&y="), "/a?x=[redacted]&flag&y=");
        assert_eq!(redact_query("/a?x=1#frag"), "/a?x=[redacted]#frag");
    }

    #[test]
    fn jsonl_sink_writes_private_files_and_rotates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cutover-jsonl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("samples.jsonl");
        let sink = JsonlSink::start(path.clone(), 600, 64).expect("sink");
        let r = Redactor::new(&[], &[], &[]).expect("r");
        let h = http::HeaderMap::new();
        for i in 0..10 {
            let target = format!("/{i}");
            let mut s = r.sample(input(&target, &h, &[], ""));
            s.at = i;
            assert!(sink.send(s));
        }
        drop(sink); // the writer thread drains the channel and ends
        let rotated = dir.join("samples.jsonl.1");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let done = || std::fs::read_to_string(&path).is_ok_and(|t| t.contains("GET /9"));
        while !done() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(rotated.is_file(), "rotated past 600 bytes");
        for p in [&path, &rotated] {
            let mode = std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        assert!(std::fs::metadata(&path).expect("current").len() <= 600);
        let last: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .last()
                .expect("a line"),
        )
        .expect("json");
        assert_eq!(last["request"], "GET /9");
    }

    #[test]
    fn ring_keeps_the_latest() {
        let mut ring = SampleRing::default();
        let r = Redactor::new(&[], &[], &[]).expect("r");
        let h = http::HeaderMap::new();
        for i in 0..5 {
            let target = format!("/{i}");
            ring.push(r.sample(input(&target, &h, &[], "")), 3);
        }
        let latest: Vec<String> = ring.latest().into_iter().map(|s| s.request).collect();
        assert_eq!(latest, vec!["GET /4", "GET /3", "GET /2"]);
    }
}
