//! The PHP session, shared by both sides: the value codec ([`php`]), the stores PHP writes
//! ([`store`], [`files`]), the signed snapshot header and the handler library that reads it
//! ([`header`]), the per-request resolution the proxy does ([`resolve`]), and the cookie rules
//! that say which session a request belongs to.

pub mod files;
pub mod header;
pub mod php;
pub mod resolve;
pub mod store;

/// Validates a session id as PHP does: 1–256 characters of `[A-Za-z0-9,-]`, after URL-decoding.
/// Anything else is no session (and can never become a path).
pub fn valid_session_id(raw: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    let ok = !decoded.is_empty()
        && decoded.len() <= 256
        && decoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b',' || b == b'-');
    ok.then(|| decoded.into_owned())
}

/// The value of cookie `name` in a `Cookie` header value, if present.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated_like_php() {
        assert_eq!(valid_session_id("abc123").as_deref(), Some("abc123"));
        assert_eq!(valid_session_id("a%2Cb-c").as_deref(), Some("a,b-c"));
        assert_eq!(valid_session_id("../../etc/passwd"), None);
        assert_eq!(valid_session_id("..%2F..%2Fetc"), None);
        assert_eq!(valid_session_id(""), None);
        assert_eq!(valid_session_id(&"a".repeat(257)), None);
        assert_eq!(valid_session_id("a%00b"), None);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = "lang=en; PHPSESSID=abc; other=1";
        assert_eq!(cookie_value(h, "PHPSESSID"), Some("abc"));
        assert_eq!(cookie_value(h, "SESS"), None);
        assert_eq!(cookie_value("PHPSESSID=\"q\"", "PHPSESSID"), Some("q"));
    }
}
