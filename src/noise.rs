//! Noise learned from a twin, as Diffy does: per route and per difference key (field + kind),
//! count how often legacy and candidate differ (raw) and how often legacy and a second legacy
//! instance differ (noise). A key is noise unless raw clearly exceeds noise — relative
//! |raw − noise| / (raw + noise) above one threshold and absolute |raw − noise| / samples above
//! another. A comparison whose only differences are noise is a match. Pure: no IO.

use crate::diff::{DiffKind, Difference};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Most keys tracked per route (the rest are not learned, and count as real differences).
pub const MAX_KEYS: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub relative: f64,
    pub absolute: f64,
}

#[derive(Debug, Clone, Default)]
struct KeyCounts {
    raw: u64,
    noise: u64,
    /// An example difference, for the suggested rule.
    example: Option<Difference>,
}

/// One route's learned noise.
#[derive(Debug, Clone, Default)]
pub struct NoiseModel {
    keys: HashMap<String, KeyCounts>,
    /// Comparisons that had a twin answer.
    samples: u64,
}

/// A noise key as `/api/routes` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NoiseKey {
    pub key: String,
    pub raw: u64,
    pub noise: u64,
    pub suggested_rule: String,
}

/// Whether a difference can be learned as noise: never one of the session's.
fn learnable(d: &Difference) -> bool {
    d.path != "session" && !d.path.starts_with("session/")
}

/// The key of a difference: its field (array indexes folded to `*`) and its kind.
pub fn key_of(d: &Difference) -> String {
    let field = if d.path.starts_with("body:line") {
        d.path.clone()
    } else {
        crate::diff::field_label(&d.path)
    };
    format!("{field} {}", d.kind.as_str())
}

impl NoiseModel {
    /// Records one comparison: the legacy-vs-candidate differences, and the legacy-vs-twin ones
    /// when the twin answered.
    pub fn record(&mut self, raw: &[Difference], twin: Option<&[Difference]>) {
        // What each side left in the session is never noise: a twin on a copy of the session
        // does the same as PHP, so a session difference is the candidate's alone.
        let mut bump = |d: &Difference, is_raw: bool| {
            let key = key_of(d);
            if !self.keys.contains_key(&key) && self.keys.len() >= MAX_KEYS {
                return;
            }
            let e = self.keys.entry(key).or_default();
            if is_raw {
                e.raw += 1;
            } else {
                e.noise += 1;
            }
            if e.example.is_none() {
                e.example = Some(d.clone());
            }
        };
        // Each key counts once per comparison, however many times it appears.
        let mut seen = std::collections::HashSet::new();
        for d in raw.iter().filter(|d| learnable(d)) {
            if seen.insert(key_of(d)) {
                bump(d, true);
            }
        }
        if let Some(twin) = twin {
            self.samples += 1;
            let mut seen = std::collections::HashSet::new();
            for d in twin.iter().filter(|d| learnable(d)) {
                if seen.insert(key_of(d)) {
                    bump(d, false);
                }
            }
        }
    }

    /// Whether differences under `key` are noise (Diffy's test). Keys never seen are real.
    pub fn is_noise(&self, key: &str, t: &Thresholds) -> bool {
        let Some(c) = self.keys.get(key) else {
            return false;
        };
        if self.samples == 0 {
            return false;
        }
        let (raw, noise) = (c.raw as f64, c.noise as f64);
        let real = raw > noise
            && (raw - noise).abs() / (raw + noise) > t.relative
            && (raw - noise).abs() / self.samples as f64 > t.absolute;
        !real
    }

    /// The differences that are not noise.
    pub fn real<'d>(&self, diffs: &'d [Difference], t: &Thresholds) -> Vec<&'d Difference> {
        diffs
            .iter()
            .filter(|d| !self.is_noise(&key_of(d), t))
            .collect()
    }

    /// The keys currently judged noise, with a rule that would remove them.
    pub fn noise_keys(&self, t: &Thresholds) -> Vec<NoiseKey> {
        let mut v: Vec<NoiseKey> = self
            .keys
            .iter()
            .filter(|(k, c)| c.noise > 0 && self.is_noise(k, t))
            .map(|(k, c)| NoiseKey {
                key: k.clone(),
                raw: c.raw,
                noise: c.noise,
                suggested_rule: c.example.as_ref().map(suggest_rule).unwrap_or_default(),
            })
            .collect();
        v.sort_by(|a, b| b.noise.cmp(&a.noise).then(a.key.cmp(&b.key)));
        v
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.samples = 0;
    }
}

/// A regex that matches `s` with its volatile parts (digit runs, long hex and token runs)
/// generalised, for a `[[text.replace]]` suggestion.
pub fn regexify(s: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphanumeric() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let run: String = chars[start..i].iter().collect();
            let digits = run.chars().filter(char::is_ascii_digit).count();
            if digits == run.len() {
                out.push_str(r"\d+");
            } else if run.len() >= 8 && run.chars().all(|c| c.is_ascii_hexdigit()) && digits > 0 {
                out.push_str("[0-9a-fA-F]+");
            } else if run.len() >= 12 && digits > 0 {
                out.push_str("[A-Za-z0-9]+");
            } else {
                out.push_str(&regex::escape(&run));
            }
        } else {
            out.push_str(&regex::escape(&c.to_string()));
            i += 1;
        }
    }
    out
}

fn toml_str(s: &str) -> String {
    // A TOML literal string when possible (no escapes to think about), else a basic string.
    if !s.contains('\'') && !s.contains('\n') {
        format!("'{s}'")
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// A ready-to-paste rule that would remove this difference.
pub fn suggest_rule(d: &Difference) -> String {
    if d.path == "status" {
        return format!(
            "[status]\nequivalent = [[{}, {}]]",
            d.legacy.as_deref().unwrap_or("0"),
            d.candidate.as_deref().unwrap_or("0")
        );
    }
    if let Some(h) = d.path.strip_prefix("header:") {
        return format!("[headers]\nignore = [{}]", toml_str(h));
    }
    let value = d.legacy.as_deref().or(d.candidate.as_deref()).unwrap_or("");
    if d.path.starts_with("body:line") {
        return format!(
            "[[text.replace]]\npattern = {}\nreplace = \"{{noise}}\"",
            toml_str(&regexify(value))
        );
    }
    if let Some(pointer) = d.path.strip_prefix("body/") {
        let html_like = value.starts_with('<') || pointer.starts_with("html");
        if html_like {
            if let Some(sel) = selector_of(value) {
                return format!("[html]\nignore_elements = [{}]", toml_str(&sel));
            }
            return format!(
                "[[text.replace]]\npattern = {}\nreplace = \"{{noise}}\"",
                toml_str(&regexify(value))
            );
        }
        let folded = crate::diff::field_label(&format!("/{pointer}"));
        let rule = if d.kind == DiffKind::Order {
            "unordered"
        } else {
            "ignore"
        };
        return format!("[json]\n{rule} = [{}]", toml_str(&folded));
    }
    if d.path == "body" {
        return format!(
            "[[text.replace]]\npattern = {}\nreplace = \"{{noise}}\"",
            toml_str(&regexify(value))
        );
    }
    String::new()
}

/// `tag[name=x]` or `tag#id` for a start tag token such as `<input name="_token" value="…">`.
fn selector_of(token: &str) -> Option<String> {
    let inner = token.strip_prefix('<')?.strip_suffix('>')?;
    let mut parts = inner.splitn(2, ' ');
    let tag = parts.next()?.to_string();
    if tag.is_empty() || tag.starts_with('/') || !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let attrs = parts.next().unwrap_or("");
    let find = |name: &str| {
        let needle = format!("{name}=\"");
        attrs.find(&needle).and_then(|i| {
            let rest = &attrs[i + needle.len()..];
            rest.find('"').map(|e| rest[..e].to_string())
        })
    };
    if let Some(id) = find("id") {
        return Some(format!("{tag}#{id}"));
    }
    if let Some(name) = find("name") {
        return Some(format!("{tag}[name={name}]"));
    }
    Some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(path: &str, kind: DiffKind, l: &str, c: &str) -> Difference {
        Difference {
            path: path.into(),
            kind,
            legacy: Some(l.into()),
            candidate: Some(c.into()),
        }
    }

    const T: Thresholds = Thresholds {
        relative: 0.2,
        absolute: 0.0003,
    };

    #[test]
    fn diffys_rule() {
        let mut m = NoiseModel::default();
        let token = d("body/csrf", DiffKind::Changed, "a1", "b2");
        let real = d("body/price", DiffKind::Changed, "10", "11");
        for _ in 0..100 {
            // The twin differs on the token as often as the candidate does; never on the price.
            m.record(
                &[token.clone(), real.clone()],
                Some(std::slice::from_ref(&token)),
            );
        }
        assert!(m.is_noise(&key_of(&token), &T));
        assert!(!m.is_noise(&key_of(&real), &T));
        let both = [token.clone(), real.clone()];
        let real_ones = m.real(&both, &T);
        assert_eq!(real_ones.len(), 1);
        assert_eq!(real_ones[0].path, "body/price");
        let keys = m.noise_keys(&T);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].suggested_rule, "[json]\nignore = ['/csrf']");
    }

    #[test]
    fn thresholds_edges() {
        let mut m = NoiseModel::default();
        let k = d("body/x", DiffKind::Changed, "1", "2");
        // raw 11 vs noise 10 over 10 000 samples: relative 4.8% < 20% → noise.
        for i in 0..10_000 {
            let raw: Vec<Difference> = if i < 11 { vec![k.clone()] } else { vec![] };
            let twin: Vec<Difference> = if i < 10 { vec![k.clone()] } else { vec![] };
            m.record(&raw, Some(&twin));
        }
        assert!(m.is_noise(&key_of(&k), &T));
        // raw 3 vs noise 0 over 10 000: relative 100%, absolute 0.03% — not above: noise.
        let mut m = NoiseModel::default();
        for i in 0..10_000 {
            let raw: Vec<Difference> = if i < 3 { vec![k.clone()] } else { vec![] };
            m.record(&raw, Some(&[]));
        }
        assert!(m.is_noise(&key_of(&k), &T));
        // raw 4: absolute 0.04% > 0.03% → real.
        m.record(std::slice::from_ref(&k), Some(&[]));
        assert!(!m.is_noise(&key_of(&k), &T));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest_rule(&d("header:x-req", DiffKind::Changed, "1", "2")),
            "[headers]\nignore = ['x-req']"
        );
        assert_eq!(
            suggest_rule(&d(
                "body/html/body/form/input",
                DiffKind::Changed,
                "<input name=\"_token\" value=\"x\">",
                ""
            )),
            "[html]\nignore_elements = ['input[name=_token]']"
        );
        assert_eq!(
            suggest_rule(&d(
                "body:line 3",
                DiffKind::Changed,
                "generated at 1700000000",
                ""
            )),
            "[[text.replace]]\npattern = 'generated at \\d+'\nreplace = \"{noise}\""
        );
        assert_eq!(
            suggest_rule(&d("body/items/3/etag", DiffKind::Changed, "a", "b")),
            "[json]\nignore = ['/items/*/etag']"
        );
        assert_eq!(regexify("req-65a1f0c2b3d4e"), r"req\-[0-9a-fA-F]+");
    }
}
