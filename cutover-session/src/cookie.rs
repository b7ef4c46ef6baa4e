//! Which session a request belongs to, by PHP's rules: the session cookie's value, URL-decoded,
//! is a session id only if it is 1–256 characters of `[A-Za-z0-9,-]`; anything else is no
//! session (and can never become a path or a key).

/// Validates a session id as PHP does: 1–256 characters of `[A-Za-z0-9,-]`, after URL-decoding.
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

/// The value of cookie `name` in a `Cookie` header value, as sent (a quoted value keeps its
/// quotes: PHP takes them as part of the id, which then is no valid id).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// The session id a request carries in the `Cookie` header values `cookies`, by PHP's rules.
pub fn session_id<'a>(cookies: impl IntoIterator<Item = &'a str>, name: &str) -> Option<String> {
    cookies
        .into_iter()
        .find_map(|v| cookie_value(v, name))
        .and_then(valid_session_id)
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
        // PHP takes the quotes as part of the value: no valid session id.
        assert_eq!(cookie_value("PHPSESSID=\"q\"", "PHPSESSID"), Some("\"q\""));
        assert_eq!(session_id(["PHPSESSID=\"abc\""], "PHPSESSID"), None);
        assert_eq!(
            session_id(["x=1", "PHPSESSID=abc"], "PHPSESSID").as_deref(),
            Some("abc")
        );
    }
}
