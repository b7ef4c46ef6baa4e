//! Recordings: a share of the mirrored exchanges (`[record]`), written as JSON lines for
//! `cutover replay` — the request, the session as cutover resolved it before PHP ran, what PHP
//! left in the session and PHP's response. The mirror hands over what it already holds; the
//! redaction, base64 and JSON happen on the writer's thread, behind a bounded queue.
//!
//! A recording keeps what a replay needs and nothing that lets its reader act as a user: session
//! ids become pseudonyms (the same one for the same id, everywhere in the line), other cookie
//! values and credential headers are replaced, and query and form values under credential-like
//! names too (unless the value is already in the recorded session, as a CSRF token is).
//! Response bodies and session data are kept as PHP made them: they are what is compared.

use crate::diff::SessionAfter;
use crate::samples::{JsonlSink, Redactor, SinkError, REDACTED};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

/// The version of the line format; a replay refuses lines of another.
pub const FORMAT_VERSION: u32 = 1;

/// Lines waiting for the writer; beyond it exchanges are dropped and counted.
const QUEUE: usize = 1024;

/// Query and form parameter names (lower case, as substrings) whose values are credentials.
pub const CREDENTIAL_PARAMS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "sig",
    "otp",
    "session",
    "sid",
    "jwt",
    "code",
    "credential",
    "nonce",
];

/// One recorded exchange: a line of the recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub v: u32,
    /// Unix seconds.
    pub at: u64,
    /// The route label it was counted under.
    pub route: String,
    pub request: RecordedRequest,
    /// The session cutover resolved before PHP saw the request (None: no session).
    pub session: Option<RecordedSession>,
    /// What PHP left in the session (None: sessions were not compared, no store).
    pub session_after: Option<SessionAfter>,
    pub response: RecordedResponse,
    /// Difference keys the proxy had learned as noise for the route (with a twin).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub noise: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    /// Base64; absent when the request had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// The session snapshot, as the candidate's `x-cutover-session` carried it (id pseudonymised).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedSession {
    pub name: String,
    pub id: String,
    pub store: String,
    pub serializer: String,
    /// The stored bytes, base64.
    pub raw: String,
    /// The JSON form.
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Base64, as PHP sent it (content encoding included).
    pub body: String,
}

/// The pseudonym of a session id in recordings: stable, not reversible, and still a valid
/// PHP session id (hex).
pub fn pseudonym(id: &str) -> String {
    let digest = Sha256::digest(format!("cutover-record\0{id}").as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn credential_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    CREDENTIAL_PARAMS.iter().any(|c| n.contains(c))
}

/// String values of a session's JSON form: a parameter holding one of them (a CSRF token) is
/// no secret from the recording, which keeps the session anyway.
fn session_strings(v: &serde_json::Value, out: &mut HashSet<String>) {
    match v {
        serde_json::Value::String(s) => {
            out.insert(s.clone());
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| session_strings(x, out)),
        serde_json::Value::Object(m) => m.values().for_each(|x| session_strings(x, out)),
        _ => {}
    }
}

/// `a=1&token=x` with credential-like values replaced (percent-encoded `[redacted]`, so the
/// line stays a valid query).
fn redact_params(query: &str, keep: &HashSet<String>) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v))
                if !v.is_empty() && credential_name(&decoded(k)) && !keep.contains(&decoded(v)) =>
            {
                format!("{k}=%5Bredacted%5D")
            }
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn decoded(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

/// A JSON body with the values under credential-like keys replaced.
fn redact_json(v: &mut serde_json::Value, keep: &HashSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let secret = match x {
                    serde_json::Value::String(s) => !keep.contains(s.as_str()),
                    serde_json::Value::Number(_) => true,
                    _ => false,
                };
                if credential_name(k) && secret {
                    *x = serde_json::Value::String(REDACTED.into());
                } else {
                    redact_json(x, keep);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| redact_json(x, keep)),
        _ => {}
    }
}

/// How a recording redacts: the samples' credential headers, and the session cookie's name.
pub struct Redaction {
    pub redactor: Redactor,
    pub cookie: String,
}

impl Redaction {
    fn uri(&self, uri: &str, keep: &HashSet<String>) -> String {
        match uri.split_once('?') {
            Some((path, query)) => format!("{path}?{}", redact_params(query, keep)),
            None => uri.to_string(),
        }
    }

    /// A `Cookie` value: the session cookie as its pseudonym, every other value replaced.
    fn cookie_header(&self, v: &str) -> String {
        v.split(';')
            .map(|pair| match pair.trim().split_once('=') {
                Some((k, v)) if k.trim() == self.cookie => {
                    format!("{}={}", k.trim(), pseudonym(v.trim().trim_matches('"')))
                }
                Some((k, _)) => format!("{}={REDACTED}", k.trim()),
                None => pair.trim().to_string(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A `Set-Cookie` value: its attributes kept (they are compared), its value replaced by the
    /// session id's pseudonym or `[redacted]` (a deletion's empty or `deleted` value is kept).
    fn set_cookie(&self, v: &str) -> String {
        let (pair, attributes) = match v.split_once(';') {
            Some((p, a)) => (p, Some(a)),
            None => (v, None),
        };
        let pair = match pair.split_once('=') {
            Some((k, value)) => {
                let value = value.trim();
                let value = if value.is_empty() || value == "deleted" {
                    value.to_string()
                } else if k.trim() == self.cookie {
                    pseudonym(value.trim_matches('"'))
                } else {
                    REDACTED.to_string()
                };
                format!("{}={value}", k.trim())
            }
            None => pair.to_string(),
        };
        match attributes {
            Some(a) => format!("{pair};{a}"),
            None => pair,
        }
    }

    fn headers(&self, h: &HeaderMap, keep: &HashSet<String>) -> Vec<(String, String)> {
        h.iter()
            .filter(|(k, _)| !k.as_str().starts_with("x-cutover-"))
            .map(|(k, v)| {
                let name = k.as_str();
                let raw = String::from_utf8_lossy(v.as_bytes());
                let value = match name {
                    "cookie" => self.cookie_header(&raw),
                    "set-cookie" => self.set_cookie(&raw),
                    "referer" | "location" => self.uri(&raw, keep),
                    _ if self.redactor.header_redacted(name) => REDACTED.to_string(),
                    _ => raw.into_owned(),
                };
                (name.to_string(), value)
            })
            .collect()
    }

    fn body(&self, headers: &HeaderMap, body: &[u8], keep: &HashSet<String>) -> Vec<u8> {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("application/x-www-form-urlencoded") {
            if let Ok(text) = std::str::from_utf8(body) {
                return redact_params(text, keep).into_bytes();
            }
        } else if content_type.contains("json") {
            if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) {
                redact_json(&mut v, keep);
                if let Ok(out) = serde_json::to_vec(&v) {
                    return out;
                }
            }
        }
        body.to_vec()
    }
}

/// The session as the mirror holds it.
pub struct TakenSession {
    pub id: String,
    pub store: String,
    pub serializer: String,
    pub raw: Vec<u8>,
    pub data: serde_json::Value,
}

/// What the mirror hands over (cheap clones of what it holds); made into an [`Exchange`] on
/// the writer's thread, where it is serialized.
pub struct Taken {
    pub redaction: Arc<Redaction>,
    pub at: u64,
    pub route: String,
    pub method: String,
    pub uri: String,
    pub request_headers: HeaderMap,
    pub request_body: Bytes,
    pub session: Option<TakenSession>,
    pub session_after: Option<SessionAfter>,
    pub status: u16,
    pub response_headers: HeaderMap,
    pub response_body: Bytes,
    pub noise: Vec<String>,
}

impl Taken {
    /// The redacted line.
    pub fn exchange(&self) -> Exchange {
        let r = &self.redaction;
        let mut keep = HashSet::new();
        if let Some(s) = &self.session {
            session_strings(&s.data, &mut keep);
        }
        Exchange {
            v: FORMAT_VERSION,
            at: self.at,
            route: self.route.clone(),
            request: RecordedRequest {
                method: self.method.clone(),
                uri: r.uri(&self.uri, &keep),
                headers: r.headers(&self.request_headers, &keep),
                body: (!self.request_body.is_empty()).then(|| {
                    STANDARD.encode(r.body(&self.request_headers, &self.request_body, &keep))
                }),
            },
            session: self.session.as_ref().map(|s| RecordedSession {
                name: r.cookie.clone(),
                id: pseudonym(&s.id),
                store: s.store.clone(),
                serializer: s.serializer.clone(),
                raw: STANDARD.encode(&s.raw),
                data: s.data.clone(),
            }),
            session_after: self.session_after.clone(),
            response: RecordedResponse {
                status: self.status,
                headers: r.headers(&self.response_headers, &keep),
                body: STANDARD.encode(&self.response_body),
            },
            noise: self.noise.clone(),
        }
    }
}

impl Serialize for Taken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.exchange().serialize(s)
    }
}

/// The proxy's recorder: the share to record and the file's writer.
pub struct Recorder {
    pub sample: f64,
    pub redaction: Arc<Redaction>,
    sink: JsonlSink<Taken>,
    recorded: prometheus::IntCounter,
    dropped: prometheus::IntCounter,
}

impl Recorder {
    pub fn start(
        path: PathBuf,
        sample: f64,
        max_bytes: u64,
        redaction: Redaction,
        metrics: &crate::stats::Metrics,
    ) -> Result<Recorder, SinkError> {
        Ok(Recorder {
            sample,
            redaction: Arc::new(redaction),
            sink: JsonlSink::start(path, max_bytes, QUEUE)?,
            recorded: metrics.recorded.with_label_values(&["recorded"]),
            dropped: metrics.recorded.with_label_values(&["dropped"]),
        })
    }

    /// Queues an exchange; a writer that is behind drops it (counted).
    pub fn send(&self, t: Taken) {
        if self.sink.send(t) {
            self.recorded.inc();
        } else {
            self.dropped.inc();
        }
    }
}

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Line {
        path: String,
        line: usize,
        why: String,
    },
}

/// Every exchange of a recording file (`.jsonl`, or `.jsonl.gz`).
pub fn read(path: &std::path::Path) -> Result<Vec<Exchange>, ReadError> {
    use std::io::BufRead;
    let name = path.display().to_string();
    let io = |source| ReadError::Io {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let reader: Box<dyn BufRead> = if name.ends_with(".gz") {
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |why: String| ReadError::Line {
            path: name.clone(),
            line: i + 1,
            why,
        };
        let x: Exchange = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        if x.v != FORMAT_VERSION {
            return Err(at(format!(
                "format version {}, this cutover reads {FORMAT_VERSION}",
                x.v
            )));
        }
        out.push(x);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn redaction() -> Arc<Redaction> {
        Arc::new(Redaction {
            redactor: Redactor::new(&[], &[], &[]).expect("redactor"),
            cookie: "PHPSESSID".into(),
        })
    }

    #[test]
    fn a_line_holds_no_cookie_or_credential_but_what_replay_needs() {
        let mut req = HeaderMap::new();
        req.insert(
            "cookie",
            HeaderValue::from_static("PHPSESSID=abcdef0123456789; remember=zz-secret-zz"),
        );
        req.insert("authorization", HeaderValue::from_static("Bearer tok-999"));
        req.insert("accept", HeaderValue::from_static("text/html"));
        req.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let mut resp = HeaderMap::new();
        resp.append(
            "set-cookie",
            HeaderValue::from_static("PHPSESSID=newid0123456789; path=/; HttpOnly"),
        );
        resp.append(
            "set-cookie",
            HeaderValue::from_static("remember=deleted; expires=Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        let taken = Taken {
            redaction: redaction(),
            at: 1,
            route: "/login".into(),
            method: "POST".into(),
            uri: "/login?next=%2Fcart&api_key=k-123456".into(),
            request_headers: req,
            request_body: Bytes::from_static(b"user=ann&password=hunter22&_token=csrf-abc"),
            session: Some(TakenSession {
                id: "abcdef0123456789".into(),
                store: "files".into(),
                serializer: "php".into(),
                raw: b"csrf|s:8:\"csrf-abc\";".to_vec(),
                data: serde_json::json!({"csrf": "csrf-abc"}),
            }),
            session_after: Some(SessionAfter::None),
            status: 302,
            response_headers: resp,
            response_body: Bytes::from_static(b"moved"),
            noise: vec![],
        };
        let line = serde_json::to_string(&taken).expect("json");
        for secret in [
            "abcdef0123456789",
            "newid0123456789",
            "zz-secret-zz",
            "tok-999",
            "hunter22",
            "k-123456",
        ] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
        let x: Exchange = serde_json::from_str(&line).expect("parse");
        assert_eq!(x.request.uri, "/login?next=%2Fcart&api_key=%5Bredacted%5D");
        let body = STANDARD
            .decode(x.request.body.as_deref().expect("body"))
            .expect("b64");
        // The CSRF token is in the recorded session anyway, and the replay needs it.
        assert_eq!(
            String::from_utf8_lossy(&body),
            "user=ann&password=%5Bredacted%5D&_token=csrf-abc"
        );
        let session = x.session.expect("session");
        assert_eq!(session.id, pseudonym("abcdef0123456789"));
        let cookie = &x
            .request
            .headers
            .iter()
            .find(|(k, _)| k == "cookie")
            .expect("cookie")
            .1;
        assert_eq!(
            cookie,
            &format!("PHPSESSID={}; remember={REDACTED}", session.id)
        );
        let set: Vec<&str> = x
            .response
            .headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            set,
            [
                format!(
                    "PHPSESSID={}; path=/; HttpOnly",
                    pseudonym("newid0123456789")
                )
                .as_str(),
                "remember=deleted; expires=Thu, 01 Jan 1970 00:00:00 GMT"
            ]
        );
        assert_eq!(
            x.request
                .headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.as_str()),
            Some(REDACTED)
        );
    }

    #[test]
    fn json_bodies_lose_credential_values() {
        let mut v = serde_json::json!({"user": {"name": "ann", "password": "p", "pin_code": 1234}, "items": [1]});
        redact_json(&mut v, &HashSet::new());
        assert_eq!(
            v,
            serde_json::json!({"user": {"name": "ann", "password": REDACTED, "pin_code": REDACTED}, "items": [1]})
        );
    }

    #[test]
    fn pseudonyms_are_stable_valid_session_ids() {
        let p = pseudonym("abc");
        assert_eq!(p, pseudonym("abc"));
        assert_ne!(p, pseudonym("abd"));
        assert!(cutover_session::valid_session_id(&p).is_some());
    }

    #[test]
    fn recordings_are_read_plain_or_gzipped_and_bad_lines_are_named() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("dir");
        let x = Exchange {
            v: FORMAT_VERSION,
            at: 1,
            route: "/a".into(),
            request: RecordedRequest {
                method: "GET".into(),
                uri: "/a".into(),
                headers: vec![],
                body: None,
            },
            session: None,
            session_after: Some(SessionAfter::None),
            response: RecordedResponse {
                status: 200,
                headers: vec![],
                body: String::new(),
            },
            noise: vec![],
        };
        let line = serde_json::to_string(&x).expect("json") + "\n";
        let plain = dir.path().join("t.jsonl");
        std::fs::write(&plain, line.repeat(2)).expect("write");
        assert_eq!(read(&plain).expect("read"), vec![x.clone(), x.clone()]);
        let gz = dir.path().join("t.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).expect("create"),
            flate2::Compression::fast(),
        );
        enc.write_all(line.as_bytes()).expect("gz");
        enc.finish().expect("finish");
        assert_eq!(read(&gz).expect("read gz"), vec![x]);
        std::fs::write(&plain, format!("{line}{{\"v\":2}}\n")).expect("write");
        let e = read(&plain).expect_err("bad line").to_string();
        assert!(e.contains("t.jsonl:2"), "{e}");
    }
}
