//! `Set-Cookie` headers as a browser reads them (RFC 6265 §5.2): the cookie's name and value,
//! and what it asks the browser to do — keep it for the session, keep it until a time, or delete
//! it — with its scope (Path, Domain) and flags (Secure, HttpOnly, SameSite). The comparison
//! looks at names and attributes, never values (a session id differs on every login); the
//! session's after-read follows the session cookie to a regenerated id. Pure: no IO.

/// What a `Set-Cookie` asks of the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieAction {
    /// Keep it until the browser closes.
    SetForSession,
    /// Keep it until an expiry in the future.
    SetPersistent,
    /// Delete it (an expiry in the past, `Max-Age` ≤ 0, or PHP's `deleted` value).
    Delete,
}

impl CookieAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CookieAction::SetForSession => "set",
            CookieAction::SetPersistent => "set persistent",
            CookieAction::Delete => "delete",
        }
    }
}

/// One parsed `Set-Cookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub action: CookieAction,
    pub path: Option<String>,
    /// Lowercased, without a leading dot (RFC 6265 §5.2.3).
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    /// Lowercased.
    pub same_site: Option<String>,
}

impl SetCookie {
    /// Parses a `Set-Cookie` value; `now` (unix seconds) decides whether an `Expires` is past.
    /// None when there is no `name=` part.
    pub fn parse(header: &str, now: u64) -> Option<SetCookie> {
        let mut parts = header.split(';');
        let (name, value) = parts.next()?.split_once('=')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        let value = value.trim().trim_matches('"').to_string();
        let mut c = SetCookie {
            name: name.to_string(),
            action: CookieAction::SetForSession,
            value,
            path: None,
            domain: None,
            secure: false,
            http_only: false,
            same_site: None,
        };
        let mut max_age: Option<i64> = None;
        let mut expires: Option<Option<u64>> = None;
        for attr in parts {
            let (k, v) = match attr.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (attr.trim(), ""),
            };
            match k.to_ascii_lowercase().as_str() {
                "path" => c.path = Some(v.to_string()),
                "domain" => {
                    c.domain = Some(v.trim_start_matches('.').to_ascii_lowercase());
                }
                "secure" => c.secure = true,
                "httponly" => c.http_only = true,
                "samesite" => c.same_site = Some(v.to_ascii_lowercase()),
                "max-age" => max_age = v.parse().ok(),
                "expires" => expires = Some(http_date_secs(v)),
                _ => {}
            }
        }
        // Max-Age wins over Expires (§5.3 step 3); an unparsable Expires is ignored.
        c.action = match (max_age, expires) {
            (Some(m), _) if m <= 0 => CookieAction::Delete,
            (Some(_), _) => CookieAction::SetPersistent,
            (None, Some(Some(at))) if at <= now => CookieAction::Delete,
            (None, Some(Some(_))) => CookieAction::SetPersistent,
            _ => CookieAction::SetForSession,
        };
        // PHP's setcookie($name, '') sends `deleted` with a past expiry; an empty value with
        // no expiry deletes it too in practice.
        if c.value.is_empty() || c.value == "deleted" {
            c.action = CookieAction::Delete;
        }
        Some(c)
    }

    /// The attributes compared between two responses: everything but the value (and the
    /// exact expiry, which depends on the moment).
    pub fn attributes(&self) -> String {
        let mut out = self.action.as_str().to_string();
        if let Some(p) = &self.path {
            out.push_str(&format!("; Path={p}"));
        }
        if let Some(d) = &self.domain {
            out.push_str(&format!("; Domain={d}"));
        }
        if self.secure {
            out.push_str("; Secure");
        }
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        if let Some(s) = &self.same_site {
            out.push_str(&format!("; SameSite={s}"));
        }
        out
    }
}

/// Every `Set-Cookie` of a response, parsed (unparsable ones left out).
pub fn set_cookies(headers: &http::HeaderMap, now: u64) -> Vec<SetCookie> {
    headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
        .filter_map(|v| SetCookie::parse(v, now))
        .collect()
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Unix seconds of an HTTP date (`Thu, 01 Jan 1970 00:00:01 GMT`, and the `01-Jan-1970`
/// cookie form PHP sends), or None.
pub fn http_date_secs(s: &str) -> Option<u64> {
    // Tokens: day of month, month name, year, hh:mm:ss, in any order (§5.1.1, loosely).
    let mut day = None;
    let mut month = None;
    let mut year = None;
    let mut time = None;
    for tok in s.split([' ', ',', '-']).filter(|t| !t.is_empty()) {
        let lower = tok.to_ascii_lowercase();
        if let Some(m) = MONTHS.iter().position(|m| lower.starts_with(m)) {
            month = Some(m as u64 + 1);
        } else if tok.contains(':') {
            let p: Vec<u64> = tok.split(':').filter_map(|x| x.parse().ok()).collect();
            if p.len() == 3 {
                time = Some(p[0] * 3600 + p[1] * 60 + p[2]);
            }
        } else if let Ok(n) = tok.parse::<u64>() {
            if tok.len() == 4 || n > 31 {
                year = Some(if n < 70 {
                    n + 2000
                } else if n < 100 {
                    n + 1900
                } else {
                    n
                });
            } else if day.is_none() {
                day = Some(n);
            }
        }
    }
    let (d, m, y, t) = (day?, month?, year?, time?);
    if !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe;
    Some((days.checked_sub(719_468)?) * 86_400 + t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_session_cookies() {
        let now = 1_795_000_000;
        let c = SetCookie::parse("PHPSESSID=abc123; path=/; HttpOnly; SameSite=Lax", now)
            .expect("parses");
        assert_eq!(c.name, "PHPSESSID");
        assert_eq!(c.value, "abc123");
        assert_eq!(c.action, CookieAction::SetForSession);
        assert_eq!(c.attributes(), "set; Path=/; HttpOnly; SameSite=lax");
        // What PHP sends to delete a cookie.
        let d = SetCookie::parse(
            "PHPSESSID=deleted; expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; path=/",
            now,
        )
        .expect("parses");
        assert_eq!(d.action, CookieAction::Delete);
        let p = SetCookie::parse(
            "remember=1; expires=Wed, 01-Jan-2031 00:00:00 GMT; Max-Age=100000; path=/",
            now,
        )
        .expect("parses");
        assert_eq!(p.action, CookieAction::SetPersistent);
        assert_eq!(
            SetCookie::parse("x=1; Expires=Thu, 01 Jan 1970 00:00:01 GMT", now)
                .expect("parses")
                .action,
            CookieAction::Delete
        );
        assert!(SetCookie::parse("novalue", now).is_none());
        assert_eq!(
            SetCookie::parse("a=1; Domain=.Example.com; Secure", now)
                .expect("parses")
                .attributes(),
            "set; Domain=example.com; Secure"
        );
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date_secs("Thu, 01 Jan 1970 00:00:01 GMT"), Some(1));
        assert_eq!(
            http_date_secs("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            http_date_secs("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(http_date_secs("not a date"), None);
    }
}
