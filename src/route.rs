//! Route patterns and route labels: which `[[route]]` a request path belongs to, and the
//! bounded label a path that matches no route is counted under (`/orders/8812/items` →
//! `/orders/{n}/items`). Pure functions, no IO: the proxy's route table is built on them.

/// One segment of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param,
}

/// A compiled `[[route]] pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
    /// A trailing `/*`: the rest of the path, any depth (also nothing).
    rest: bool,
}

impl Pattern {
    /// Parses `/users/{id}`, `/php-pages/*`, `/`; errors say what is wrong.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if !text.starts_with('/') {
            return Err(format!("pattern `{text}` must start with /"));
        }
        if text.contains('?') || text.contains('#') {
            return Err(format!(
                "pattern `{text}` matches paths only, not queries or fragments"
            ));
        }
        let (body, rest) = match text.strip_suffix("/*") {
            Some(b) => (b, true),
            None => (text, false),
        };
        let mut segments = Vec::new();
        for seg in body.split('/').skip(1) {
            if seg.is_empty() && !body.is_empty() && body != "/" {
                // "/a//b" or a trailing slash: keep as an empty literal so "/a/" differs from "/a".
                segments.push(Segment::Literal(String::new()));
                continue;
            }
            if seg.contains('*') {
                return Err(format!(
                    "pattern `{text}`: `*` is only allowed as a trailing /*"
                ));
            }
            if seg.starts_with('{') || seg.ends_with('}') {
                let name = seg
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .ok_or_else(|| format!("pattern `{text}`: unbalanced braces in `{seg}`"))?;
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "pattern `{text}`: `{seg}` is not a {{name}} parameter"
                    ));
                }
                segments.push(Segment::Param);
            } else if seg.contains('{') || seg.contains('}') {
                return Err(format!(
                    "pattern `{text}`: a {{name}} must be a whole segment"
                ));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        if body == "/" {
            segments.clear();
            segments.push(Segment::Literal(String::new()));
        }
        Ok(Pattern { segments, rest })
    }

    /// Whether `path` (no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').skip(1);
        for seg in &self.segments {
            match parts.next() {
                None => return false,
                Some(p) => match seg {
                    Segment::Literal(l) => {
                        if l != p {
                            return false;
                        }
                    }
                    Segment::Param => {
                        if p.is_empty() {
                            return false;
                        }
                    }
                },
            }
        }
        self.rest || parts.next().is_none()
    }
}

/// The label for a path no route matched: segments that look like ids are folded so that
/// `/orders/8812` and `/orders/9921` count as one series.
pub fn template_label(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if i == 0 {
            continue;
        }
        out.push_str(fold_segment(seg));
        if out.len() > 200 {
            out.truncate(200);
            out.push_str("...");
            break;
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn fold_segment(seg: &str) -> &str {
    if seg.is_empty() {
        return seg;
    }
    let b = seg.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return "{n}";
    }
    if is_uuid(b) {
        return "{uuid}";
    }
    if b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) {
        return "{hex}";
    }
    // base64-ish tokens: long, from the base64 alphabets, and with both digits and letters
    // (so that long words such as `internationalization` stay as they are).
    if b.len() >= 20
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'=' | b'.' | b'%')
        })
        && b.iter().any(u8::is_ascii_digit)
        && b.iter().any(u8::is_ascii_alphabetic)
    {
        return "{token}";
    }
    if seg.len() > 64 {
        return "{long}";
    }
    seg
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_match_one_segment() {
        let p = Pattern::parse("/users/{id}").expect("valid");
        assert!(p.matches("/users/42"));
        assert!(!p.matches("/users/"));
        assert!(!p.matches("/users/42/posts"));
        assert!(!p.matches("/users"));
    }

    #[test]
    fn trailing_star_matches_the_rest() {
        let p = Pattern::parse("/php-pages/*").expect("valid");
        assert!(p.matches("/php-pages/a/b.php"));
        assert!(p.matches("/php-pages/"));
        assert!(p.matches("/php-pages"));
        assert!(!p.matches("/php-pagesx"));
        let all = Pattern::parse("/*").expect("valid");
        assert!(all.matches("/"));
        assert!(all.matches("/anything/at/all"));
    }

    #[test]
    fn root_and_literals() {
        let root = Pattern::parse("/").expect("valid");
        assert!(root.matches("/"));
        assert!(!root.matches("/a"));
        let lit = Pattern::parse("/api/health").expect("valid");
        assert!(lit.matches("/api/health"));
        assert!(!lit.matches("/api/health/"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["users", "/a/*/b", "/a/{", "/a/{}", "/a/x{id}", "/a?b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn labels_fold_ids() {
        assert_eq!(template_label("/orders/8812/items"), "/orders/{n}/items");
        assert_eq!(
            template_label("/u/123e4567-e89b-12d3-a456-426614174000"),
            "/u/{uuid}"
        );
        assert_eq!(template_label("/t/0123456789abcdef0123"), "/t/{hex}");
        assert_eq!(template_label("/k/aGVsbG8gd29ybGQgaGVsbG8x"), "/k/{token}");
        assert_eq!(
            template_label("/about/internationalization"),
            "/about/internationalization"
        );
        assert_eq!(template_label("/"), "/");
    }
}
