//! The signed session snapshot cutover hands the candidate, and the library the Rust handlers
//! use to read it: `x-cutover-session: v1.<base64url payload>.<base64url HMAC-SHA256>`, the
//! HMAC keyed with the secret's bytes over the ASCII text `v1.<payload>` (as a JWT signs).
//! Pure: no IO, no clock (the caller passes `now`).
//!
//! ```
//! use cutover_session::header::{sign, Keyring, Snapshot, verify};
//! use cutover_session::php::Serializer;
//!
//! let keys = Keyring::single(b"s3cret".to_vec());
//! let snapshot = Snapshot {
//!     name: "PHPSESSID".into(),
//!     id: "abc123".into(),
//!     store: "files".into(),
//!     serializer: Serializer::Php,
//!     raw: b"user_id|i:42;".to_vec(),
//!     resolved_at: 1_700_000_000,
//!     req: "GET /account".into(),
//! };
//! let header = sign(&snapshot, &keys).expect("signs");
//!
//! // In the Rust handler, for the request `GET /account`:
//! let session = verify(Some(&header), &keys, 60, 1_700_000_010, "GET", "/account").expect("valid");
//! assert_eq!(session.get("user_id").and_then(|v| v.as_i64()), Some(42));
//! assert_eq!(session.id, "abc123");
//! ```

use super::php::{self, Serializer};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The header's name.
pub const HEADER: &str = "x-cutover-session";

type HmacSha256 = Hmac<Sha256>;

/// Signing keys by key id; the first is used to sign, any verifies (rotation: add the new
/// secret, deploy the handlers, then make it first in cutover).
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Keyring").field("kids", &kids).finish()
    }
}

/// A key id derived from the secret (the first 8 hex digits of its SHA-256), so that no
/// configuration is needed to tell keys apart.
pub fn key_id(secret: &[u8]) -> String {
    let digest = Sha256::digest(secret);
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

impl Keyring {
    pub fn single(secret: Vec<u8>) -> Keyring {
        Keyring {
            keys: vec![(key_id(&secret), secret)],
        }
    }

    /// Several secrets; the first signs.
    pub fn new(secrets: Vec<Vec<u8>>) -> Keyring {
        Keyring {
            keys: secrets.into_iter().map(|s| (key_id(&s), s)).collect(),
        }
    }

    fn signing(&self) -> Option<&(String, Vec<u8>)> {
        self.keys.first()
    }

    fn find(&self, kid: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, s)| s.as_slice())
    }
}

/// What cutover read from the store for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The session (cookie) name.
    pub name: String,
    pub id: String,
    /// `files`, `dynamodb`, `redis`.
    pub store: String,
    pub serializer: Serializer,
    /// The stored bytes.
    pub raw: Vec<u8>,
    /// Unix seconds.
    pub resolved_at: u64,
    /// `METHOD /path?query` of the request it belongs to.
    pub req: String,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    kid: String,
    name: String,
    id: String,
    store: String,
    /// Addition to the contract: which serializer `raw` is in.
    serializer: String,
    raw: String,
    data: serde_json::Value,
    resolved_at: u64,
    req: String,
}

/// Why a header could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("no signing key")]
    NoKey,
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Makes the header value. A session PHP could not decode is sent with `"data": {}` (PHP
/// starts such a session empty) and the raw bytes.
pub fn sign(s: &Snapshot, keys: &Keyring) -> Result<String, SignError> {
    let data = php::decode_session(&s.raw, s.serializer, php::DEFAULT_MAX_BYTES)
        .ok()
        .and_then(|session| session.to_json().ok())
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    sign_decoded(s, data, keys)
}

/// Like [`sign`], with the session's JSON form already made by the caller.
pub fn sign_decoded(
    s: &Snapshot,
    data: serde_json::Value,
    keys: &Keyring,
) -> Result<String, SignError> {
    let (kid, secret) = keys.signing().ok_or(SignError::NoKey)?;
    let payload = Payload {
        kid: kid.clone(),
        name: s.name.clone(),
        id: s.id.clone(),
        store: s.store.clone(),
        serializer: s.serializer.name().to_string(),
        raw: STANDARD.encode(&s.raw),
        data,
        resolved_at: s.resolved_at,
        req: s.req.clone(),
    };
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload)?);
    let signed = format!("v1.{body}");
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| SignError::NoKey)?;
    mac.update(signed.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Ok(format!("{signed}.{sig}"))
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no x-cutover-session header (no session, or not sent through cutover)")]
    Missing,
    #[error("malformed x-cutover-session header: {0}")]
    Malformed(String),
    #[error("x-cutover-session signed with unknown key id `{0}`")]
    UnknownKey(String),
    #[error("x-cutover-session signature does not verify (tampered, or another secret)")]
    BadSignature,
    #[error("x-cutover-session resolved {age} s ago, over the {max_age} s limit")]
    Expired { age: u64, max_age: u64 },
    #[error(
        "x-cutover-session belongs to `{expected}`, not to this request `{actual}` (a replay)"
    )]
    Replayed { expected: String, actual: String },
}

/// A verified session snapshot, with the PHP session decoded for typed access.
#[derive(Debug, Clone)]
pub struct VerifiedSession {
    pub kid: String,
    pub name: String,
    pub id: String,
    pub store: String,
    pub serializer: Serializer,
    pub raw: Vec<u8>,
    /// The contract's JSON form.
    pub data: serde_json::Value,
    pub resolved_at: u64,
    pub req: String,
    /// The decoded session (empty when PHP could not have decoded it either).
    pub session: php::Session,
}

impl VerifiedSession {
    /// `$_SESSION[name]`, references followed.
    pub fn get(&self, name: &str) -> Option<&php::Value> {
        self.session.get(name)
    }

    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(php::Value::as_i64)
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(php::Value::as_str)
    }

    pub fn get_bool(&self, name: &str) -> Option<bool> {
        self.get(name).and_then(php::Value::as_bool)
    }
}

/// Verifies the header of a request `method path_and_query` at unix time `now`.
pub fn verify(
    header: Option<&str>,
    keys: &Keyring,
    max_age_secs: u64,
    now: u64,
    method: &str,
    path_and_query: &str,
) -> Result<VerifiedSession, HeaderError> {
    let header = header.ok_or(HeaderError::Missing)?.trim();
    let rest = header
        .strip_prefix("v1.")
        .ok_or_else(|| HeaderError::Malformed("does not start with v1.".into()))?;
    let (body, sig) = rest
        .split_once('.')
        .ok_or_else(|| HeaderError::Malformed("no signature part".into()))?;
    let payload_bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| HeaderError::Malformed(format!("payload is not base64url: {e}")))?;
    let payload: Payload = serde_json::from_slice(&payload_bytes)
        .map_err(|e| HeaderError::Malformed(format!("payload: {e}")))?;
    let secret = keys
        .find(&payload.kid)
        .ok_or_else(|| HeaderError::UnknownKey(payload.kid.clone()))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| HeaderError::BadSignature)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| HeaderError::BadSignature)?;
    mac.update(b"v1.");
    mac.update(body.as_bytes());
    // Constant time.
    mac.verify_slice(&sig)
        .map_err(|_| HeaderError::BadSignature)?;
    let age = now.saturating_sub(payload.resolved_at);
    if age > max_age_secs {
        return Err(HeaderError::Expired {
            age,
            max_age: max_age_secs,
        });
    }
    let actual = format!("{method} {path_and_query}");
    if payload.req != actual {
        return Err(HeaderError::Replayed {
            expected: payload.req,
            actual,
        });
    }
    let serializer = Serializer::parse(&payload.serializer).ok_or_else(|| {
        HeaderError::Malformed(format!("unknown serializer `{}`", payload.serializer))
    })?;
    let raw = STANDARD
        .decode(&payload.raw)
        .map_err(|e| HeaderError::Malformed(format!("raw is not base64: {e}")))?;
    let session = php::decode_session(&raw, serializer, php::DEFAULT_MAX_BYTES)
        .unwrap_or_else(|_| php::Session::new(serializer));
    Ok(VerifiedSession {
        kid: payload.kid,
        name: payload.name,
        id: payload.id,
        store: payload.store,
        serializer,
        raw,
        data: payload.data,
        resolved_at: payload.resolved_at,
        req: payload.req,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        Snapshot {
            name: "PHPSESSID".into(),
            id: "abc".into(),
            store: "files".into(),
            serializer: Serializer::Php,
            raw: b"user_id|i:42;name|s:3:\"Ada\";".to_vec(),
            resolved_at: 1000,
            req: "GET /a?b=1".into(),
        }
    }

    #[test]
    fn round_trip_and_payload_fields() {
        let keys = Keyring::single(b"k".to_vec());
        let h = sign(&snap(), &keys).expect("sign");
        assert!(h.starts_with("v1."));
        let v = verify(Some(&h), &keys, 60, 1030, "GET", "/a?b=1").expect("verify");
        assert_eq!(v.get_i64("user_id"), Some(42));
        assert_eq!(v.get_str("name"), Some("Ada"));
        assert_eq!(v.data, serde_json::json!({"user_id": 42, "name": "Ada"}));
        assert_eq!(v.kid, key_id(b"k"));
        // The signature is HMAC-SHA256 over the ASCII text `v1.<payload>` with the secret's bytes.
        let (signed, sig) = h.rsplit_once('.').expect("three parts");
        let mut mac = HmacSha256::new_from_slice(b"k").expect("key");
        mac.update(signed.as_bytes());
        assert_eq!(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()), sig);
    }

    #[test]
    fn tampering_is_rejected() {
        let keys = Keyring::single(b"k".to_vec());
        let h = sign(&snap(), &keys).expect("sign");
        let (_, rest) = h.split_once('.').expect("v1");
        let (body, sig) = rest.split_once('.').expect("sig");
        // Another payload with the old signature.
        let mut other = snap();
        other.raw = b"user_id|i:1;".to_vec();
        let other_h = sign(&other, &keys).expect("sign");
        let other_body = other_h.split('.').nth(1).expect("body");
        let forged = format!("v1.{other_body}.{sig}");
        assert_eq!(
            verify(Some(&forged), &keys, 60, 1000, "GET", "/a?b=1").unwrap_err(),
            HeaderError::BadSignature
        );
        // Unsigned, or signed with another secret.
        assert!(matches!(
            verify(
                Some(&format!("v1.{body}")),
                &keys,
                60,
                1000,
                "GET",
                "/a?b=1"
            ),
            Err(HeaderError::Malformed(_))
        ));
        let theirs = sign(&snap(), &Keyring::single(b"other".to_vec())).expect("sign");
        assert!(matches!(
            verify(Some(&theirs), &keys, 60, 1000, "GET", "/a?b=1"),
            Err(HeaderError::UnknownKey(_))
        ));
        assert_eq!(
            verify(None, &keys, 60, 1000, "GET", "/a").unwrap_err(),
            HeaderError::Missing
        );
    }

    #[test]
    fn age_and_replay() {
        let keys = Keyring::single(b"k".to_vec());
        let h = sign(&snap(), &keys).expect("sign");
        assert_eq!(
            verify(Some(&h), &keys, 60, 1061, "GET", "/a?b=1").unwrap_err(),
            HeaderError::Expired {
                age: 61,
                max_age: 60
            }
        );
        assert!(matches!(
            verify(Some(&h), &keys, 60, 1001, "GET", "/a?b=2"),
            Err(HeaderError::Replayed { .. })
        ));
        assert!(matches!(
            verify(Some(&h), &keys, 60, 1001, "POST", "/a?b=1"),
            Err(HeaderError::Replayed { .. })
        ));
    }

    #[test]
    fn rotation() {
        let old = b"old".to_vec();
        let new = b"new".to_vec();
        let h_old = sign(&snap(), &Keyring::single(old.clone())).expect("sign");
        let both = Keyring::new(vec![new, old]);
        verify(Some(&h_old), &both, 60, 1000, "GET", "/a?b=1").expect("old key still verifies");
    }

    #[test]
    fn undecodable_sessions_are_sent_empty() {
        let keys = Keyring::single(b"k".to_vec());
        let mut s = snap();
        s.raw = b"user_id|i:notanumber;".to_vec();
        let h = sign(&s, &keys).expect("sign");
        let v = verify(Some(&h), &keys, 60, 1000, "GET", "/a?b=1").expect("verify");
        assert_eq!(v.data, serde_json::json!({}));
        assert_eq!(v.raw, b"user_id|i:notanumber;");
        assert!(v.get("user_id").is_none());
    }
}
