//! Route patterns: which `[[route]]` a request path belongs to (`/users/{id}`, `/php-pages/*`).
//! Pure, no IO.

/// Why a pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pattern `{pattern}` {why}")]
pub struct PatternError {
    pub pattern: String,
    pub why: String,
}

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
    /// The pattern as written.
    text: String,
    segments: Vec<Segment>,
    /// A trailing `/*`: the rest of the path, any depth (also nothing).
    rest: bool,
}

impl Pattern {
    /// Parses `/users/{id}`, `/php-pages/*`, `/`; errors say what is wrong.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let bad = |why: String| PatternError {
            pattern: text.to_string(),
            why,
        };
        if !text.starts_with('/') {
            return Err(bad("must start with /".into()));
        }
        if text.contains('?') || text.contains('#') {
            return Err(bad("matches paths only, not queries or fragments".into()));
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
                return Err(bad("uses `*` where only a trailing /* is allowed".into()));
            }
            if seg.starts_with('{') || seg.ends_with('}') {
                let name = seg
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .ok_or_else(|| bad(format!("has unbalanced braces in `{seg}`")))?;
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(bad(format!(
                        "has `{seg}`, which is not a {{name}} parameter"
                    )));
                }
                segments.push(Segment::Param);
            } else if seg.contains('{') || seg.contains('}') {
                return Err(bad("has a {name} that is not a whole segment".into()));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        if body == "/" {
            segments.clear();
            segments.push(Segment::Literal(String::new()));
        }
        Ok(Pattern {
            text: text.to_string(),
            segments,
            rest,
        })
    }

    /// The pattern as written (`/users/{id}`).
    pub fn as_str(&self) -> &str {
        &self.text
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
}
