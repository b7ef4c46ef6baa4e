//! Session side effects, compared: what PHP left in its session store once its request was
//! over, against what the candidate declares it would leave (`x-cutover-session-write`; none:
//! the session as it was found). The legacy side is read after PHP's response has ended,
//! following a regenerated id in the session cookie the response sets, or its deletion; the
//! read waits for PHP's lock (see `Stores::load_after`). A twin runs on a copy of the session:
//! the pre-request snapshot is written into its own store first.

use super::{Mirror, ShadowRequest};
use crate::diff::{DiffKind, Difference, SessionAfter};
use crate::normalize::Rules;
use cutover_session::{SessionWrite, WRITE_HEADER};
use http::{HeaderMap, HeaderValue};

/// What happened to the session id on the legacy side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LegacyId {
    /// No session before, none started.
    NoSession,
    /// The session cookie was deleted.
    Deleted,
    /// The session under `id`; `regenerated` when it is not the request's.
    Id { id: String, regenerated: bool },
}

/// Which session PHP left, from the request's id and the session cookie the response sets.
fn legacy_id(request_id: Option<&str>, cookie: &str, headers: &HeaderMap) -> LegacyId {
    let now = crate::stats::now_secs();
    let set = crate::cookies::set_cookies(headers, now)
        .into_iter()
        .rfind(|c| c.name == cookie);
    match set {
        Some(c) if c.action == crate::cookies::CookieAction::Delete => LegacyId::Deleted,
        Some(c) => match cutover_session::valid_session_id(&c.value) {
            Some(id) => LegacyId::Id {
                regenerated: Some(id.as_str()) != request_id,
                id,
            },
            None => LegacyId::Deleted,
        },
        None => match request_id {
            Some(id) => LegacyId::Id {
                id: id.to_string(),
                regenerated: false,
            },
            None => LegacyId::NoSession,
        },
    }
}

/// Why the session comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EffectsError {
    #[error("{0}")]
    After(#[from] crate::session::AfterError),
}

/// A declaration the candidate sent that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DeclarationError {
    #[error("{WRITE_HEADER} is not text")]
    NotText,
    #[error("{0}")]
    Header(#[from] cutover_session::write::WriteHeaderError),
}

/// The candidate's session after the request: its declaration, or the session as found.
fn candidate_after(
    request: &ShadowRequest,
    declared: Option<&HeaderValue>,
) -> Result<SessionAfter, DeclarationError> {
    declared_after(
        request.session.as_ref().map(|s| &s.data),
        request.session_id.as_deref(),
        declared,
    )
}

/// The session a candidate leaves by its declaration (`x-cutover-session-write`), given the
/// session it was handed (`before`, its data) and the request's session id; no declaration
/// leaves the session as it was found.
pub fn declared_after(
    before: Option<&serde_json::Value>,
    session_id: Option<&str>,
    declared: Option<&HeaderValue>,
) -> Result<SessionAfter, DeclarationError> {
    let Some(h) = declared else {
        return Ok(match before {
            Some(data) => SessionAfter::Session {
                regenerated: false,
                data: data.clone(),
            },
            None => SessionAfter::None,
        });
    };
    let text = h.to_str().map_err(|_| DeclarationError::NotText)?;
    match SessionWrite::parse(text)? {
        SessionWrite::Destroy => Ok(SessionAfter::None),
        SessionWrite::Set { id, data } => Ok(SessionAfter::Session {
            regenerated: match (id.as_deref(), session_id) {
                (Some(new), Some(old)) => new != old,
                (Some(_), None) => true,
                // Keeping "the request's" id when the request had none is a new session.
                (None, old) => old.is_none(),
            },
            data,
        }),
    }
}

/// Watches a session id the legacy response sets (a new or regenerated session) for races.
pub fn watch_new_id(mirror: &Mirror, ticket: &mut super::races::Ticket, headers: &HeaderMap) {
    let Some(resolver) = &mirror.session else {
        return;
    };
    if let LegacyId::Id {
        id,
        regenerated: true,
    } = legacy_id(None, resolver.cookie(), headers)
    {
        ticket.also(&id);
    }
}

/// The session PHP left (None: nothing to compare — no session store, or a promoted route
/// verified the other way round).
pub async fn legacy_after(
    mirror: &Mirror,
    request: &ShadowRequest,
    legacy_headers: &HeaderMap,
) -> Result<Option<SessionAfter>, EffectsError> {
    let Some(resolver) = &mirror.session else {
        return Ok(None);
    };
    if request.reverse {
        return Ok(None);
    }
    let after = match legacy_id(
        request.session_id.as_deref(),
        resolver.cookie(),
        legacy_headers,
    ) {
        LegacyId::NoSession | LegacyId::Deleted => SessionAfter::None,
        // Boxed: a store read's future (the DynamoDB client's above all) is kilobytes, and
        // every exchange's future, which is moved into its task, would otherwise carry it.
        LegacyId::Id { id, regenerated } => match Box::pin(resolver.after(&id)).await? {
            Some(data) => SessionAfter::Session { regenerated, data },
            None => SessionAfter::None,
        },
    };
    Ok(Some(after))
}

/// The differences between the session PHP left and the one the candidate declares.
pub fn session_differences(
    rules: &Rules,
    legacy: &SessionAfter,
    request: &ShadowRequest,
    declared: Option<&HeaderValue>,
) -> Vec<Difference> {
    match candidate_after(request, declared) {
        Ok(candidate) => rules.compare_sessions(legacy, &candidate),
        Err(why) => vec![Difference {
            path: "session".into(),
            kind: DiffKind::Changed,
            legacy: None,
            candidate: Some(why.to_string()),
        }],
    }
}

/// Writes the pre-request session into the twin's store (a no-op without one, or without a
/// session).
pub async fn copy_to_twin(
    mirror: &Mirror,
    request: &ShadowRequest,
) -> Result<(), crate::session::AfterError> {
    match (&mirror.session, &request.session) {
        // Boxed, as the read in `legacy_after`.
        (Some(resolver), Some(s)) => Box::pin(resolver.copy_to_twin(&s.id, &s.raw)).await,
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(set_cookie: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in set_cookie {
            h.append(
                http::header::SET_COOKIE,
                HeaderValue::from_str(c).expect("value"),
            );
        }
        h
    }

    #[test]
    fn the_legacy_sessions_id_follows_its_cookie() {
        let none = headers(&[]);
        assert_eq!(legacy_id(None, "PHPSESSID", &none), LegacyId::NoSession);
        assert_eq!(
            legacy_id(Some("abc"), "PHPSESSID", &none),
            LegacyId::Id {
                id: "abc".into(),
                regenerated: false
            }
        );
        let regenerated = headers(&["lang=en; path=/", "PHPSESSID=newid123; path=/; HttpOnly"]);
        assert_eq!(
            legacy_id(Some("abc"), "PHPSESSID", &regenerated),
            LegacyId::Id {
                id: "newid123".into(),
                regenerated: true
            }
        );
        let deleted = headers(&[
            "PHPSESSID=deleted; expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; path=/",
        ]);
        assert_eq!(
            legacy_id(Some("abc"), "PHPSESSID", &deleted),
            LegacyId::Deleted
        );
    }
}
