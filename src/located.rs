//! Errors that say where a mistake is: the file, the 1-based line and the dotted key
//! (`defaults.sample`, `route[2].mode`). The config and the rules files share them, so a mistake
//! anywhere in either is found at once; the CLI maps [`ConfigError`] to exit 64.

/// A configuration or rules mistake, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: key `{key}`: {message}")]
pub struct ConfigError {
    pub file: String,
    /// 1-based line; 0 when the problem is not at one place (for example an unreadable file).
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// A config or rules file's name (for errors) and text.
pub fn read_file(path: &std::path::Path) -> Result<(String, String), ConfigError> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((name, text)),
        Err(e) => Err(ConfigError {
            file: name,
            line: 0,
            key: "-".into(),
            message: format!("cannot read the file: {e}"),
        }),
    }
}

/// 1-based line of a byte offset; 0 for a default value that has no place in the file.
pub fn line_of(text: &str, start: usize, end: usize) -> usize {
    if start == 0 && end == 0 {
        return 0;
    }
    let start = start.min(text.len());
    text.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key written at byte `offset` (`defaults.sample`, `route[2].mode`), from the
/// `key = value` on that line and the table header above it.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let before = &text[..line_start];
    let header = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    let table = match header {
        None => return Some(key.to_string()),
        Some(h) if h.starts_with("[[") => {
            let name = h
                .trim_start_matches("[[")
                .split("]]")
                .next()
                .unwrap_or("")
                .trim();
            let index = before
                .lines()
                .filter(|l| l.trim() == h)
                .count()
                .saturating_sub(1);
            format!("{name}[{index}]")
        }
        Some(h) => h
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
    };
    Some(format!("{table}.{key}"))
}

/// Turns a toml/serde error into a located [`ConfigError`]: the key is the dotted key at the
/// error's place, or the text there when it is not on a `key = value` line.
pub fn toml_error(name: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, key) = match e.span() {
        Some(span) => {
            let key = key_at(text, span.start).unwrap_or_else(|| {
                let snippet = text.get(span.clone()).unwrap_or("").trim();
                snippet
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(60)
                    .collect()
            });
            (line_of(text, span.start.max(1), span.end), key)
        }
        None => (0, String::new()),
    };
    let key = if key.is_empty() { "-".to_string() } else { key };
    ConfigError {
        file: name.to_string(),
        line,
        key,
        message: e.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_with_their_table() {
        let t =
            "a = 1\n[defaults]\nsample = 2\n[[route]]\npattern = \"/a\"\n[[route]]\nmode = \"x\"\n";
        assert_eq!(key_at(t, 2).as_deref(), Some("a"));
        assert_eq!(
            key_at(t, t.find("sample").expect("in text") + 9).as_deref(),
            Some("defaults.sample")
        );
        assert_eq!(
            key_at(t, t.find("mode").expect("in text")).as_deref(),
            Some("route[1].mode")
        );
        assert_eq!(key_at(t, t.find("[defaults]").expect("in text")), None);
    }
}
