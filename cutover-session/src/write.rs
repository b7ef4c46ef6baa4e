//! The session a handler declares it would leave, in shadow mode: the response header
//! `x-cutover-session-write: <base64url of JSON>`, the JSON being
//! `{"id": <the id it would set in a cookie, or null to keep the request's>, "data": {…}}` or
//! `{"destroy": true}`. No header means "left as it was found". cutover compares the declared
//! session with the one PHP left in its store; in candidate mode the handler writes the store
//! itself and sends no header.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The header's name.
pub const WRITE_HEADER: &str = "x-cutover-session-write";

/// What the handler would do to the session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionWrite {
    /// Leave this session: `data` in the JSON form of the session (an object keyed by variable
    /// name); `id` is the id it would set in a cookie (a new session, `session_regenerate_id()`),
    /// or None to keep the request's.
    Set {
        id: Option<String>,
        data: serde_json::Value,
    },
    /// `session_destroy()`.
    Destroy,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    destroy: bool,
}

/// Why a declared session write cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteHeaderError {
    #[error("x-cutover-session-write is not base64url: {0}")]
    Base64(String),
    #[error("x-cutover-session-write is not the expected JSON: {0}")]
    Json(String),
    #[error("x-cutover-session-write: `data` must be an object keyed by variable name")]
    NotAnObject,
    #[error("x-cutover-session-write: `{0}` is not a session id PHP accepts")]
    BadId(String),
    #[error("x-cutover-session-write: a session to keep needs `data`, or `destroy: true`")]
    Empty,
}

impl SessionWrite {
    /// The session in `session`'s variables, kept under the request's id.
    pub fn keep(session: &crate::php::Session) -> Result<SessionWrite, crate::php::DecodeError> {
        Ok(SessionWrite::Set {
            id: None,
            data: session.to_json()?,
        })
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        let wire = match self {
            SessionWrite::Set { id, data } => Wire {
                id: id.clone(),
                data: Some(data.clone()),
                destroy: false,
            },
            SessionWrite::Destroy => Wire {
                id: None,
                data: None,
                destroy: true,
            },
        };
        // A struct of strings and JSON values always serializes.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads a header value.
    pub fn parse(header: &str) -> Result<SessionWrite, WriteHeaderError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(header.trim())
            .map_err(|e| WriteHeaderError::Base64(e.to_string()))?;
        let wire: Wire =
            serde_json::from_slice(&bytes).map_err(|e| WriteHeaderError::Json(e.to_string()))?;
        if wire.destroy {
            return Ok(SessionWrite::Destroy);
        }
        let data = wire.data.ok_or(WriteHeaderError::Empty)?;
        if !data.is_object() {
            return Err(WriteHeaderError::NotAnObject);
        }
        if let Some(id) = &wire.id {
            if crate::cookie::valid_session_id(id).as_deref() != Some(id.as_str()) {
                return Err(WriteHeaderError::BadId(id.clone()));
            }
        }
        Ok(SessionWrite::Set { id: wire.id, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for w in [
            SessionWrite::Set {
                id: None,
                data: serde_json::json!({"user_id": 7, "cart": [1, 2]}),
            },
            SessionWrite::Set {
                id: Some("newid123".into()),
                data: serde_json::json!({}),
            },
            SessionWrite::Destroy,
        ] {
            let h = w.to_header();
            assert!(!h.contains('='), "unpadded base64url: {h}");
            assert_eq!(SessionWrite::parse(&h).expect("parses"), w);
        }
    }

    #[test]
    fn the_wire_form_is_the_documented_json() {
        let h = SessionWrite::Set {
            id: None,
            data: serde_json::json!({"a": 1}),
        }
        .to_header();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).expect("b64")).expect("json");
        assert_eq!(json, serde_json::json!({"data": {"a": 1}}));
        let d = URL_SAFE_NO_PAD.encode(br#"{"destroy":true}"#);
        assert_eq!(SessionWrite::parse(&d), Ok(SessionWrite::Destroy));
        let null_id = URL_SAFE_NO_PAD.encode(br#"{"id":null,"data":{"x":"y"}}"#);
        assert!(matches!(
            SessionWrite::parse(&null_id),
            Ok(SessionWrite::Set { id: None, .. })
        ));
    }

    #[test]
    fn bad_headers_are_errors() {
        assert!(matches!(
            SessionWrite::parse("***"),
            Err(WriteHeaderError::Base64(_))
        ));
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s.as_bytes());
        assert_eq!(
            SessionWrite::parse(&enc(r#"{"data":[1]}"#)),
            Err(WriteHeaderError::NotAnObject)
        );
        assert_eq!(
            SessionWrite::parse(&enc(r#"{"id":"../x","data":{}}"#)),
            Err(WriteHeaderError::BadId("../x".into()))
        );
        assert_eq!(
            SessionWrite::parse(&enc(r#"{}"#)),
            Err(WriteHeaderError::Empty)
        );
    }
}
