//! Mismatch samples: the latest N mismatches per route, redacted before they are stored (the
//! cookie, Set-Cookie and Authorization headers, the session id wherever it appears, values at
//! configured JSON pointers, configured patterns), and an optional JSONL file sink rotated by
//! size, written off the request path.

use crate::diff::Difference;
use regex::Regex;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

/// One stored mismatch.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at: u64,
    pub route: String,
    /// `METHOD /path?query`.
    pub request: String,
    pub request_headers: Vec<(String, String)>,
    pub legacy_status: u16,
    pub candidate_status: u16,
    pub differences: Vec<Difference>,
    pub unified_diff: String,
    /// The request body, only with `samples.keep_request_bodies` (redacted, 4 KiB at most).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
}

/// What redaction removes.
#[derive(Debug, Clone)]
pub struct Redactor {
    headers: Vec<String>,
    pointers: Vec<Vec<String>>,
    patterns: Vec<Regex>,
}

pub const REDACTED: &str = "[redacted]";

impl Redactor {
    pub fn new(
        headers: &[String],
        pointers: &[String],
        patterns: &[String],
    ) -> Result<Redactor, String> {
        let mut compiled = Vec::new();
        for p in patterns {
            compiled
                .push(Regex::new(p).map_err(|e| format!("samples.redact_patterns: `{p}`: {e}"))?);
        }
        Ok(Redactor {
            headers: headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            pointers: pointers
                .iter()
                .map(|p| p.split('/').skip(1).map(str::to_string).collect())
                .collect(),
            patterns: compiled,
        })
    }

    /// `s` with the secrets and the configured patterns replaced by `[redacted]`.
    pub fn text(&self, s: &str, secrets: &[&str]) -> String {
        let mut out = s.to_string();
        for secret in secrets {
            if secret.len() >= 4 {
                out = out.replace(secret, REDACTED);
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

    /// A redacted sample. `secrets` are values to remove wherever they appear (the session id,
    /// the raw cookie).
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        route: &str,
        request: &str,
        headers: &http::HeaderMap,
        legacy_status: u16,
        candidate_status: u16,
        differences: &[Difference],
        unified: &str,
        secrets: &[&str],
        at: u64,
    ) -> Sample {
        let request_headers = headers
            .iter()
            .map(|(k, v)| {
                let name = k.as_str().to_string();
                let value = if self.headers.contains(&name) || name.starts_with("x-cutover-") {
                    REDACTED.to_string()
                } else {
                    self.text(&String::from_utf8_lossy(v.as_bytes()), secrets)
                };
                (name, value)
            })
            .collect();
        let differences = differences
            .iter()
            .map(|d| {
                let redact_all = self.pointer_redacted(&d.path)
                    || d.path
                        .strip_prefix("header:")
                        .is_some_and(|h| self.headers.iter().any(|x| x == h));
                let v = |x: &Option<String>| {
                    x.as_ref().map(|s| {
                        if redact_all {
                            REDACTED.to_string()
                        } else {
                            self.text(s, secrets)
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
        let mut unified_diff = self.text(unified, secrets);
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
            at,
            route: route.to_string(),
            request: self.text(request, secrets),
            request_headers,
            legacy_status,
            candidate_status,
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

/// Appends samples as JSON lines, rotating `path` to `path.1` past `max_bytes`. Runs in its own
/// thread fed by a bounded channel: a slow disk never slows the proxy (samples are dropped
/// instead, and counted by the caller).
pub struct JsonlSink {
    tx: std::sync::mpsc::SyncSender<Sample>,
}

impl JsonlSink {
    pub fn start(path: PathBuf, max_bytes: u64) -> Result<JsonlSink, String> {
        let mut file = open_append(&path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Sample>(1024);
        std::thread::Builder::new()
            .name("cutover-samples".into())
            .spawn(move || {
                let mut written = file.metadata().map(|m| m.len()).unwrap_or(0);
                for s in rx {
                    let Ok(mut line) = serde_json::to_vec(&s) else { continue };
                    line.push(b'\n');
                    if written + line.len() as u64 > max_bytes && written > 0 {
                        let rotated = path.with_extension(match path.extension() {
                            Some(e) => format!("{}.1", e.to_string_lossy()),
                            None => "1".into(),
                        });
                        let _ = std::fs::rename(&path, rotated);
                        match open_append(&path) {
                            Ok(f) => file = f,
                            Err(e) => {
                                tracing::warn!(error = %e, "samples file cannot be reopened; the sink stops");
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
            .map_err(|e| e.to_string())?;
        Ok(JsonlSink { tx })
    }

    /// Queues a sample; false when the sink is behind (the sample is dropped).
    pub fn send(&self, s: Sample) -> bool {
        self.tx.try_send(s).is_ok()
    }
}

fn open_append(path: &PathBuf) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::DiffKind;

    #[test]
    fn redaction() {
        let r = Redactor::new(
            &["cookie".into(), "set-cookie".into(), "authorization".into()],
            &["/user/password".into(), "/cards/*/number".into()],
            &[r"\b\d{16}\b".into()],
        )
        .expect("redactor");
        let mut h = http::HeaderMap::new();
        h.insert(
            "cookie",
            http::HeaderValue::from_static("PHPSESSID=abc123secret"),
        );
        h.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer xyz"),
        );
        h.insert(
            "referer",
            http::HeaderValue::from_static("http://x/?sid=abc123secret"),
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
                legacy: Some("card 4111111111111111 for abc123secret".into()),
                candidate: None,
            },
            Difference {
                path: "header:set-cookie".into(),
                kind: DiffKind::Changed,
                legacy: Some("PHPSESSID=abc123secret".into()),
                candidate: Some("x".into()),
            },
        ];
        let unified = "-  \"password\": \"hunter2\",\n+  \"password\": \"hunter3\",\n";
        let s = r.sample(
            "/u",
            "GET /u?sid=abc123secret",
            &h,
            200,
            200,
            &diffs,
            unified,
            &["abc123secret"],
            1,
        );
        let all = serde_json::to_string(&s).expect("json");
        for secret in [
            "abc123secret",
            "hunter2",
            "hunter3",
            "Bearer",
            "4111111111111111",
            "4242",
        ] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
        assert!(all.contains("card [redacted] for [redacted]"), "{all}");
        assert!(
            s.unified_diff.contains("\"password\": \"[redacted]\""),
            "{}",
            s.unified_diff
        );
    }

    #[test]
    fn jsonl_sink_writes_and_rotates() {
        let dir = std::env::temp_dir().join(format!("cutover-jsonl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("samples.jsonl");
        let sink = JsonlSink::start(path.clone(), 600).expect("sink");
        let r = Redactor::new(&[], &[], &[]).expect("r");
        for i in 0..10 {
            assert!(sink.send(r.sample(
                "/",
                &format!("GET /{i}"),
                &http::HeaderMap::new(),
                200,
                500,
                &[],
                "",
                &[],
                i
            )));
        }
        drop(sink); // the writer thread drains the channel and ends
        let rotated = dir.join("samples.jsonl.1");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let done = || std::fs::read_to_string(&path).is_ok_and(|t| t.contains("GET /9"));
        while !done() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(rotated.is_file(), "rotated past 600 bytes");
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
        for i in 0..5 {
            ring.push(
                r.sample(
                    "/",
                    &format!("GET /{i}"),
                    &http::HeaderMap::new(),
                    200,
                    500,
                    &[],
                    "",
                    &[],
                    i,
                ),
                3,
            );
        }
        let latest: Vec<String> = ring.latest().into_iter().map(|s| s.request).collect();
        assert_eq!(latest, vec!["GET /4", "GET /3", "GET /2"]);
    }
}
