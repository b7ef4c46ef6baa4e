//! Normalization rules (`rules/*.toml`): what to remove or rewrite in both responses before
//! they are compared, so that a CSRF token or a timestamp is not called a mismatch. Files are
//! parsed with `deny_unknown_fields` and errors carry file, line and key. A route's rule files
//! (the built-in `rules/default.toml`, the defaults' list, the route's list) are compiled into
//! one [`Rules`], which implements [`Comparator`]. Pure: no IO beyond reading the files.

pub mod decode;
pub mod html;
mod lockstep;
mod replace;

use crate::diff::{self, Captured, Comparator, DiffKind, Difference, FloatTolerance, Report};
use crate::located::{toml_error, ConfigError};
use regex::bytes::Regex;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// The built-in rules, compiled into the binary.
pub const DEFAULT_RULES: &str = include_str!("../../rules/default.toml");

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderRules {
    #[serde(default)]
    ignore: Vec<String>,
    #[serde(default)]
    as_set: Vec<String>,
    #[serde(default)]
    rewrite: Vec<HeaderRewrite>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderRewrite {
    name: String,
    pattern: toml::Spanned<String>,
    replace: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRules {
    #[serde(default)]
    equivalent: Vec<Vec<u16>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRules {
    #[serde(default)]
    ignore: Vec<toml::Spanned<String>>,
    #[serde(default)]
    unordered: Vec<toml::Spanned<String>>,
    #[serde(default)]
    float_absolute: Option<f64>,
    #[serde(default)]
    float_relative: Option<f64>,
    #[serde(default)]
    numbers_by_value: Option<bool>,
    /// Numbers that are Unix times in seconds within a day of the response's `Date`.
    #[serde(default)]
    epoch_seconds: Option<bool>,
    /// The same in milliseconds.
    #[serde(default)]
    epoch_millis: Option<bool>,
    /// ISO 8601 date-times and HTTP dates inside strings.
    #[serde(default)]
    date_strings: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRules {
    #[serde(default)]
    ignore: Vec<toml::Spanned<String>>,
    #[serde(default)]
    unordered: Vec<toml::Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextRules {
    #[serde(default)]
    replace: Vec<TextReplace>,
    #[serde(default)]
    fold_whitespace: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextReplace {
    pattern: toml::Spanned<String>,
    replace: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HtmlRulesFile {
    #[serde(default)]
    strip_comments: Option<bool>,
    #[serde(default)]
    sort_attributes: Option<bool>,
    #[serde(default)]
    ignore_elements: Vec<toml::Spanned<String>>,
    #[serde(default)]
    ignore_attributes: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    headers: HeaderRules,
    #[serde(default)]
    status: StatusRules,
    #[serde(default)]
    json: JsonRules,
    #[serde(default)]
    text: TextRules,
    #[serde(default)]
    html: HtmlRulesFile,
    #[serde(default)]
    session: SessionRules,
}

/// One parsed and checked rules file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub name: String,
    file: RulesFile,
    header_rewrites: Vec<(http::HeaderName, Regex, String)>,
    text_replaces: Vec<replace::TextReplacement>,
    html_selectors: Vec<html::Selector>,
}

impl RuleSet {
    /// Reads and checks a rules file.
    pub fn load(path: &Path) -> Result<RuleSet, ConfigError> {
        let (name, text) = crate::located::read_file(path)?;
        RuleSet::parse(&text, &name)
    }

    /// The built-in `rules/default.toml`.
    pub fn builtin() -> Result<RuleSet, ConfigError> {
        RuleSet::parse(DEFAULT_RULES, "rules/default.toml (built in)")
    }

    /// Parses and checks rules text; `name` appears in errors.
    pub fn parse(text: &str, name: &str) -> Result<RuleSet, ConfigError> {
        let file: RulesFile = toml::from_str(text).map_err(|e| toml_error(name, text, &e))?;
        let at = |span: std::ops::Range<usize>, key: &str, message: String| ConfigError {
            file: name.to_string(),
            line: crate::located::line_of(text, span.start, span.end),
            key: key.to_string(),
            message,
        };
        let mut header_rewrites = Vec::new();
        for (i, rw) in file.headers.rewrite.iter().enumerate() {
            let key = format!("headers.rewrite[{i}].pattern");
            let header = http::HeaderName::from_bytes(rw.name.as_bytes()).map_err(|_| {
                at(
                    rw.pattern.span(),
                    &format!("headers.rewrite[{i}].name"),
                    format!("`{}` is not a header name", rw.name),
                )
            })?;
            let re = Regex::new(rw.pattern.get_ref())
                .map_err(|e| at(rw.pattern.span(), &key, format!("bad regex: {e}")))?;
            header_rewrites.push((header, re, rw.replace.clone()));
        }
        for n in file.headers.ignore.iter().chain(file.headers.as_set.iter()) {
            if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                return Err(at(
                    0..0,
                    "headers.ignore",
                    format!("`{n}` is not a header name"),
                ));
            }
        }
        let mut text_replaces = Vec::new();
        for (i, r) in file.text.replace.iter().enumerate() {
            let re = Regex::new(r.pattern.get_ref()).map_err(|e| {
                at(
                    r.pattern.span(),
                    &format!("text.replace[{i}].pattern"),
                    format!("bad regex: {e}"),
                )
            })?;
            text_replaces.push(replace::TextReplacement::new(
                re,
                r.replace.clone().into_bytes(),
            ));
        }
        let mut html_selectors = Vec::new();
        for (i, sel) in file.html.ignore_elements.iter().enumerate() {
            html_selectors.push(html::Selector::parse(sel.get_ref()).map_err(|e| {
                at(
                    sel.span(),
                    &format!("html.ignore_elements[{i}]"),
                    e.to_string(),
                )
            })?);
        }
        for (key, list) in [
            ("json.ignore", &file.json.ignore),
            ("json.unordered", &file.json.unordered),
            ("session.ignore", &file.session.ignore),
            ("session.unordered", &file.session.unordered),
        ] {
            for p in list {
                let s = p.get_ref();
                if !(s.is_empty() || s.starts_with('/')) {
                    return Err(at(
                        p.span(),
                        key,
                        format!("`{s}` is not a JSON pointer (it must start with /)"),
                    ));
                }
            }
        }
        for (i, class) in file.status.equivalent.iter().enumerate() {
            if class.len() < 2 || class.iter().any(|s| !(100..=599).contains(s)) {
                return Err(at(
                    0..0,
                    &format!("status.equivalent[{i}]"),
                    format!("{class:?} must list two or more status codes 100..599"),
                ));
            }
        }
        for (key, v) in [
            ("json.float_absolute", file.json.float_absolute),
            ("json.float_relative", file.json.float_relative),
        ] {
            if let Some(x) = v {
                if !(x >= 0.0 && x.is_finite()) {
                    return Err(at(0..0, key, format!("{x} must be a finite number >= 0")));
                }
            }
        }
        Ok(RuleSet {
            name: name.to_string(),
            file,
            header_rewrites,
            text_replaces,
            html_selectors,
        })
    }
}

/// Headers never compared whatever the rules say: they describe the transport, not the content.
const TRANSPORT_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// A route's compiled rules: the union of its rule sets, in order.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    ignore_headers: BTreeSet<String>,
    set_headers: BTreeSet<String>,
    header_rewrites: Vec<(http::HeaderName, Regex, String)>,
    status_classes: Vec<Vec<u16>>,
    json_ignore: Vec<Vec<String>>,
    json_unordered: Vec<Vec<String>>,
    tolerance: FloatTolerance,
    text_replaces: Vec<replace::TextReplacement>,
    fold_whitespace: bool,
    html: html::HtmlRules,
    session_ignore: Vec<Vec<String>>,
    session_unordered: Vec<Vec<String>>,
    times: TimeFolding,
    pub sources: Vec<String>,
}

/// Which time-like JSON values are folded to a placeholder before comparing.
#[derive(Debug, Clone, Copy, Default)]
struct TimeFolding {
    epoch_seconds: bool,
    epoch_millis: bool,
    date_strings: bool,
}

/// How far from the response's `Date` a number may be and still be taken as a timestamp.
const EPOCH_WINDOW_SECS: f64 = 86_400.0;

static ISO_DATETIME: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?\b",
    )
    .ok()
});
static HTTP_DATE: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2}[ -](?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[ -]\d{4} \d{2}:\d{2}:\d{2}(?: GMT| [+-]\d{4})?",
    )
    .ok()
});

impl TimeFolding {
    fn any(&self) -> bool {
        self.epoch_seconds || self.epoch_millis || self.date_strings
    }

    /// What a number folds to, if it is a time within a day of `now` (seconds or milliseconds).
    fn placeholder(&self, x: f64, now: f64) -> Option<&'static str> {
        if self.epoch_seconds && (x - now).abs() <= EPOCH_WINDOW_SECS {
            Some("{epoch}")
        } else if self.epoch_millis && (x / 1000.0 - now).abs() <= EPOCH_WINDOW_SECS {
            Some("{epoch_ms}")
        } else {
            None
        }
    }

    /// Replaces time-like values under `v`: numbers within a day of `now` (seconds or
    /// milliseconds) and dates inside strings.
    fn fold(&self, v: &mut serde_json::Value, now: f64) {
        use serde_json::Value;
        match v {
            Value::Number(n) => {
                let Some(x) = n.as_f64() else { return };
                if let Some(with) = self.placeholder(x, now) {
                    *v = Value::String(with.into());
                }
            }
            // Both date patterns need a time (`hh:mm:ss`) and at least 19 bytes: most
            // strings are passed over without running either regex.
            Value::String(s) if self.date_strings && s.len() >= 19 && s.contains(':') => {
                let mut out = std::borrow::Cow::Borrowed(s.as_str());
                for (re, with) in [(&*ISO_DATETIME, "{datetime}"), (&*HTTP_DATE, "{httpdate}")] {
                    if let Some(re) = re {
                        if let std::borrow::Cow::Owned(o) = re.replace_all(&out, with) {
                            out = std::borrow::Cow::Owned(o);
                        }
                    }
                }
                if let std::borrow::Cow::Owned(o) = out {
                    *s = o;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.fold(i, now)),
            Value::Object(map) => map.values_mut().for_each(|i| self.fold(i, now)),
            _ => {}
        }
    }
}

/// The moment a response describes: its `Date`, else now.
fn response_time(headers: &http::HeaderMap) -> f64 {
    headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::cookies::http_date_secs)
        .map(|s| s as f64)
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        })
}

fn split_pointer(p: &str) -> Vec<String> {
    p.split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

impl Rules {
    pub fn compile(sets: &[Arc<RuleSet>]) -> Rules {
        let mut r = Rules::default();
        for s in sets {
            let f = &s.file;
            r.sources.push(s.name.clone());
            r.ignore_headers
                .extend(f.headers.ignore.iter().map(|h| h.to_ascii_lowercase()));
            r.set_headers
                .extend(f.headers.as_set.iter().map(|h| h.to_ascii_lowercase()));
            r.header_rewrites.extend(s.header_rewrites.iter().cloned());
            r.status_classes.extend(f.status.equivalent.iter().cloned());
            r.json_ignore
                .extend(f.json.ignore.iter().map(|p| split_pointer(p.get_ref())));
            r.json_unordered
                .extend(f.json.unordered.iter().map(|p| split_pointer(p.get_ref())));
            if let Some(a) = f.json.float_absolute {
                r.tolerance.absolute = a;
            }
            if let Some(x) = f.json.float_relative {
                r.tolerance.relative = x;
            }
            if let Some(b) = f.json.numbers_by_value {
                r.tolerance.by_value = b;
            }
            if let Some(b) = f.json.epoch_seconds {
                r.times.epoch_seconds = b;
            }
            if let Some(b) = f.json.epoch_millis {
                r.times.epoch_millis = b;
            }
            if let Some(b) = f.json.date_strings {
                r.times.date_strings = b;
            }
            r.session_ignore
                .extend(f.session.ignore.iter().map(|p| split_pointer(p.get_ref())));
            r.session_unordered.extend(
                f.session
                    .unordered
                    .iter()
                    .map(|p| split_pointer(p.get_ref())),
            );
            r.text_replaces.extend(s.text_replaces.iter().cloned());
            if let Some(w) = f.text.fold_whitespace {
                r.fold_whitespace = w;
                // HTML text folds as `[text]` says, decided once here.
                r.html.fold_whitespace = w;
            }
            if let Some(c) = f.html.strip_comments {
                r.html.strip_comments = c;
            }
            if let Some(a) = f.html.sort_attributes {
                r.html.sort_attributes = a;
            }
            r.html
                .ignore_elements
                .extend(s.html_selectors.iter().cloned());
            r.html.ignore_attributes.extend(
                f.html
                    .ignore_attributes
                    .iter()
                    .map(|a| a.to_ascii_lowercase()),
            );
        }
        r
    }

    fn canonical_status(&self, s: u16) -> u16 {
        for class in &self.status_classes {
            if class.contains(&s) {
                return class.iter().copied().min().unwrap_or(s);
            }
        }
        s
    }

    /// Whether a header takes part in the comparison (not transport, not ignored by a rule).
    /// `Set-Cookie` takes part by cookie name and attributes (see [`Rules::diff_set_cookies`]),
    /// not with the other headers.
    fn compares(&self, name: &str) -> bool {
        !TRANSPORT_HEADERS.contains(&name)
            && !self.ignore_headers.contains(name)
            && name != "set-cookie"
    }

    /// `Set-Cookie` compared by cookie name and attributes (what the browser is asked to do,
    /// its scope and flags), not by value: a cookie one side sets and the other does not, or
    /// sets differently, is a difference at `header:set-cookie/<name>`.
    fn diff_set_cookies(&self, legacy: &Captured, candidate: &Captured, out: &mut Vec<Difference>) {
        if self.ignore_headers.contains("set-cookie") {
            return;
        }
        let (l, c) = (
            legacy.headers.get_all(http::header::SET_COOKIE),
            candidate.headers.get_all(http::header::SET_COOKIE),
        );
        if l.iter().next().is_none() && c.iter().next().is_none() {
            return;
        }
        let now = response_time(&legacy.headers) as u64;
        let by_name = |h: &http::HeaderMap| {
            let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for c in crate::cookies::set_cookies(h, now) {
                m.entry(c.name.clone()).or_default().push(c.attributes());
            }
            m
        };
        let (lm, cm) = (by_name(&legacy.headers), by_name(&candidate.headers));
        let names: BTreeSet<&String> = lm.keys().chain(cm.keys()).collect();
        for name in names {
            let (lv, cv) = (lm.get(name), cm.get(name));
            if lv == cv {
                continue;
            }
            let join = |v: Option<&Vec<String>>| v.map(|v| v.join(" | "));
            out.push(Difference {
                path: format!("header:set-cookie/{name}"),
                kind: match (lv, cv) {
                    (Some(_), None) => DiffKind::Missing,
                    (None, Some(_)) => DiffKind::Extra,
                    _ => DiffKind::Changed,
                },
                legacy: join(lv),
                candidate: join(cv),
            });
        }
    }

    /// The sessions both sides left, compared under `[session]` `ignore` and `unordered`.
    pub fn compare_sessions(
        &self,
        legacy: &diff::SessionAfter,
        candidate: &diff::SessionAfter,
    ) -> Vec<Difference> {
        let normalized = |s: &diff::SessionAfter| match s {
            diff::SessionAfter::Session { regenerated, data } => {
                let mut data = data.clone();
                for p in &self.session_ignore {
                    remove_pointer(&mut data, p);
                }
                for p in &self.session_unordered {
                    sort_arrays_at(&mut data, p);
                }
                // An empty session is no session: PHP reads both as an empty $_SESSION, and
                // stores differ in whether `session_start()` alone leaves an empty one behind
                // (files do, DynamoDB does not). Its cookie is compared apart.
                if data.as_object().is_some_and(|m| m.is_empty()) {
                    return diff::SessionAfter::None;
                }
                diff::SessionAfter::Session {
                    regenerated: *regenerated,
                    data,
                }
            }
            diff::SessionAfter::None => diff::SessionAfter::None,
        };
        let mut out = Vec::new();
        diff::diff_sessions(
            &normalized(legacy),
            &normalized(candidate),
            &self.tolerance,
            &mut out,
        );
        out
    }

    /// Whether the headers that take part in the comparison are the same values in the same
    /// order on both sides: then they are the same after any rewriting too, and there is
    /// nothing to normalize or diff (the header counterpart of the equal-bytes body path).
    fn same_compared_headers(&self, a: &http::HeaderMap, b: &http::HeaderMap) -> bool {
        let count =
            |h: &http::HeaderMap| h.iter().filter(|(n, _)| self.compares(n.as_str())).count();
        count(a) == count(b)
            && a.keys()
                .filter(|n| self.compares(n.as_str()))
                .all(|n| a.get_all(n).iter().eq(b.get_all(n).iter()))
    }

    /// The headers that take part in the comparison, rewritten.
    pub fn normalize_headers(&self, h: &http::HeaderMap) -> http::HeaderMap {
        let mut out = http::HeaderMap::with_capacity(h.len());
        for (name, value) in h {
            let n = name.as_str();
            if !self.compares(n) {
                continue;
            }
            // Most values pass unchanged: they are shared, not copied (this runs twice per
            // comparison, on every header).
            let mut v: std::borrow::Cow<[u8]> = std::borrow::Cow::Borrowed(value.as_bytes());
            for (hn, re, rep) in &self.header_rewrites {
                if hn == name {
                    if let std::borrow::Cow::Owned(o) = re.replace_all(&v, rep.as_bytes()) {
                        v = std::borrow::Cow::Owned(o);
                    }
                }
            }
            if self.set_headers.contains(n) {
                let mut parts: Vec<Vec<u8>> = v
                    .split(|&b| b == b',')
                    .map(|p| p.trim_ascii().to_vec())
                    .filter(|p| !p.is_empty())
                    .collect();
                parts.sort();
                parts.dedup();
                v = std::borrow::Cow::Owned(parts.join(&b", "[..]));
            }
            match v {
                std::borrow::Cow::Borrowed(_) => {
                    out.append(name.clone(), value.clone());
                }
                std::borrow::Cow::Owned(v) => {
                    if let Ok(value) = http::HeaderValue::from_bytes(&v) {
                        out.append(name.clone(), value);
                    }
                }
            }
        }
        if !self.set_headers.is_empty() {
            // Compare multi-valued set headers as one joined, sorted value.
            for n in &self.set_headers {
                let mut all: Vec<Vec<u8>> = out
                    .get_all(n.as_str())
                    .iter()
                    .map(|v| v.as_bytes().to_vec())
                    .collect();
                if all.len() > 1 {
                    all.sort();
                    all.dedup();
                    if let (Ok(name), Ok(v)) = (
                        http::HeaderName::from_bytes(n.as_bytes()),
                        http::HeaderValue::from_bytes(&all.join(&b", "[..])),
                    ) {
                        out.insert(name, v);
                    }
                }
            }
        }
        out
    }

    fn replaced<'b>(&self, body: &'b [u8]) -> std::borrow::Cow<'b, [u8]> {
        let mut v: std::borrow::Cow<[u8]> = std::borrow::Cow::Borrowed(body);
        for r in &self.text_replaces {
            if let std::borrow::Cow::Owned(o) = r.apply(&v) {
                v = std::borrow::Cow::Owned(o);
            }
        }
        v
    }

    /// [`Self::replaced`] of both bodies, the candidate searched only where it differs.
    fn replaced_pair<'b>(
        &self,
        a: &'b [u8],
        b: &'b [u8],
    ) -> (std::borrow::Cow<'b, [u8]>, std::borrow::Cow<'b, [u8]>) {
        use std::borrow::Cow;
        let (mut va, mut vb): (Cow<[u8]>, Cow<[u8]>) = (Cow::Borrowed(a), Cow::Borrowed(b));
        for r in &self.text_replaces {
            let (na, nb) = r.apply_pair(&va, &vb);
            let (na, nb) = (
                matches!(na, Cow::Owned(_)).then(|| na.into_owned()),
                matches!(nb, Cow::Owned(_)).then(|| nb.into_owned()),
            );
            if let Some(na) = na {
                va = Cow::Owned(na);
            }
            if let Some(nb) = nb {
                vb = Cow::Owned(nb);
            }
        }
        (va, vb)
    }

    /// Whether two HTML bodies, their text replacements made, give the same normalized token
    /// stream: the same bytes, or the same tokens walked side by side (nothing kept).
    fn same_html(&self, a: &[u8], b: &[u8]) -> bool {
        a == b || html::same_tokens(&text_of(a), &text_of(b), &self.html)
    }

    /// The differences of two token streams, and their unified diff (one token a line).
    fn diff_html_tokens(
        &self,
        a: &html::Tokens,
        b: &html::Tokens,
        differences: &mut Vec<Difference>,
        unified: &mut String,
        unify: fn(&str, &str) -> String,
    ) {
        let (ra, rb) = (a.rendered(), b.rendered());
        if ra != rb {
            diff_html(a, b, differences);
            *unified = unify(ra, rb);
        }
    }

    /// The differences of two HTML texts (their replacements made) and their unified diff: from
    /// the window both pages reach in the same state `margin` bytes before they differ when the
    /// window gives what the whole token streams give, from the whole streams otherwise.
    fn diff_html_texts(
        &self,
        a: &str,
        b: &str,
        margin: usize,
        differences: &mut Vec<Difference>,
        unified: &mut String,
    ) {
        if !self.diff_html_window(a, b, margin, differences, unified) {
            let (a, b) = (html::tokens(a, &self.html), html::tokens(b, &self.html));
            self.diff_html_tokens(&a, &b, differences, unified, diff::unified_text);
        }
    }

    /// [`Self::diff_html_texts`] from the window, when it can be: false (nothing listed) when
    /// the window is the whole streams or a changed line is within the context of one of its
    /// ends. The token diff of the window is that of the whole streams (Myers takes the shared
    /// start and end off first), and so is the line diff once its changes are far enough from
    /// the cuts that neither their context nor their compaction reaches the lines left out.
    fn diff_html_window(
        &self,
        a: &str,
        b: &str,
        margin: usize,
        differences: &mut Vec<Difference>,
        unified: &mut String,
    ) -> bool {
        let w = html::window(a, b, &self.html, margin);
        if w.tokens_before == 0 && !w.cut_after {
            return false;
        }
        let Some(text) = diff::unified_text_after(
            w.legacy.rendered(),
            w.candidate.rendered(),
            w.lines_before,
            w.cut_after,
        ) else {
            return false;
        };
        diff_html(&w.legacy, &w.candidate, differences);
        *unified = text;
        true
    }

    /// The unified diff of two JSON bodies' pretty texts (normalized), made from their window
    /// when no change is near its cuts, else from the whole texts; None when the printer leaves
    /// them to the trees. Public for the fuzz target, which holds small margins to the whole
    /// texts (`usize::MAX`: no cut).
    #[doc(hidden)]
    pub fn json_unified(&self, a: &[u8], b: &[u8], now: f64, margin: usize) -> Option<String> {
        // What the window's printing cannot decide, the whole texts' cannot either: they
        // print the same bytes and more.
        let w = lockstep::json_pretty_window(a, b, self, now, margin).ok()?;
        diff::unified_text_after(&w.legacy, &w.candidate, w.lines_before, w.cut_after).or_else(
            || {
                let a = lockstep::json_pretty(a, self, now).ok()?;
                let b = lockstep::json_pretty(b, self, now).ok()?;
                Some(diff::unified_text(&a, &b))
            },
        )
    }

    /// HTML body normalization: text replacements, then the token stream.
    pub fn html_tokens(&self, body: &[u8]) -> html::Tokens {
        let v = self.replaced(body);
        html::tokens(&text_of(&v), &self.html)
    }

    /// Text body normalization: regex replacements, then whitespace folding.
    pub fn normalize_text(&self, body: &[u8]) -> Vec<u8> {
        self.fold_text(self.replaced(body))
    }

    /// Whitespace folded, when the rules say so.
    fn fold_text(&self, v: std::borrow::Cow<'_, [u8]>) -> Vec<u8> {
        if self.fold_whitespace {
            let mut out = Vec::with_capacity(v.len());
            let mut in_space = false;
            for &b in v.iter() {
                if b.is_ascii_whitespace() {
                    in_space = true;
                } else {
                    if in_space && !out.is_empty() {
                        out.push(b' ');
                    }
                    in_space = false;
                    out.push(b);
                }
            }
            return out;
        }
        v.into_owned()
    }

    /// JSON normalization: ignored pointers removed, unordered arrays sorted.
    /// JSON normalization: time-like values folded (around `now`, unix seconds), ignored
    /// pointers removed, unordered arrays sorted.
    pub fn normalize_json(&self, v: &mut serde_json::Value, now: f64) {
        if self.times.any() {
            self.times.fold(v, now);
        }
        for p in &self.json_ignore {
            remove_pointer(v, p);
        }
        for p in &self.json_unordered {
            sort_arrays_at(v, p);
        }
    }
}

/// How far before the first byte two HTML pages differ in their difference's window starts:
/// room for the unified diff's context lines, which the window must hold.
const HTML_WINDOW_MARGIN: usize = 512;

/// The same for two JSON documents' pretty texts.
const JSON_WINDOW_MARGIN: usize = 512;

/// The walks skip what both sides share with it.
use crate::diff::common_prefix;

/// The body as text, invalid UTF-8 replaced (checked the fast way first: most pages are valid).
fn text_of(body: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(body) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(body),
    }
}

/// HTML by content type, or by a sniff of the first bytes when the type says nothing.
pub fn looks_like_html(headers: &http::HeaderMap, body: &[u8]) -> bool {
    match headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(ct) => ct.to_ascii_lowercase().contains("html"),
        None => {
            let start: Vec<u8> = body
                .iter()
                .skip_while(|b| b.is_ascii_whitespace())
                .take(15)
                .map(u8::to_ascii_lowercase)
                .collect();
            start.starts_with(b"<!doctype html") || start.starts_with(b"<html")
        }
    }
}

/// Token streams compared with `similar`; each changed run is a difference at its element path.
fn diff_html(a: &html::Tokens, b: &html::Tokens, out: &mut Vec<Difference>) {
    let (ta, tb) = (a.texts(), b.texts());
    let deadline = std::time::Instant::now() + diff::DIFF_DEADLINE;
    let ops =
        similar::capture_diff_slices_deadline(similar::Algorithm::Myers, &ta, &tb, Some(deadline));
    for op in ops {
        if out.len() >= diff::MAX_DIFFERENCES {
            return;
        }
        let (tag, old, new) = op.as_tag_tuple();
        let kind = match tag {
            similar::DiffTag::Equal => continue,
            similar::DiffTag::Delete => DiffKind::Missing,
            similar::DiffTag::Insert => DiffKind::Extra,
            similar::DiffTag::Replace => DiffKind::Changed,
        };
        let path = a
            .get(old.start)
            .or_else(|| b.get(new.start))
            .map(|t| t.path)
            .unwrap_or_default();
        out.push(Difference {
            path: format!("body/{path}"),
            kind,
            legacy: (!old.is_empty()).then(|| ta[old.clone()].concat()),
            candidate: (!new.is_empty()).then(|| tb[new.clone()].concat()),
        });
    }
}

fn remove_pointer(v: &mut serde_json::Value, path: &[String]) {
    use serde_json::Value;
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    let last = rest.is_empty();
    match v {
        Value::Object(map) => {
            if head == "*" {
                if last {
                    map.clear();
                } else {
                    for child in map.values_mut() {
                        remove_pointer(child, rest);
                    }
                }
            } else if last {
                // Shift, not swap: the keys left keep the body's order (the unified diff
                // shows them as the body has them).
                map.shift_remove(head.as_str());
            } else if let Some(child) = map.get_mut(head.as_str()) {
                remove_pointer(child, rest);
            }
        }
        Value::Array(items) => {
            if head == "*" {
                if last {
                    items.clear();
                } else {
                    for child in items.iter_mut() {
                        remove_pointer(child, rest);
                    }
                }
            } else if let Ok(i) = head.parse::<usize>() {
                if last {
                    if i < items.len() {
                        // Replace rather than shift, so later indexes keep their meaning.
                        items[i] = Value::Null;
                    }
                } else if let Some(child) = items.get_mut(i) {
                    remove_pointer(child, rest);
                }
            }
        }
        _ => {}
    }
}

fn sort_arrays_at(v: &mut serde_json::Value, path: &[String]) {
    use serde_json::Value;
    match path.split_first() {
        None => {
            if let Value::Array(items) = v {
                items.sort_by_cached_key(|x| x.to_string());
            }
        }
        Some((head, rest)) => match v {
            Value::Object(map) => {
                if head == "*" {
                    for child in map.values_mut() {
                        sort_arrays_at(child, rest);
                    }
                } else if let Some(child) = map.get_mut(head.as_str()) {
                    sort_arrays_at(child, rest);
                }
            }
            Value::Array(items) => {
                if head == "*" {
                    for child in items.iter_mut() {
                        sort_arrays_at(child, rest);
                    }
                } else if let Some(child) =
                    head.parse::<usize>().ok().and_then(|i| items.get_mut(i))
                {
                    sort_arrays_at(child, rest);
                }
            }
            _ => {}
        },
    }
}

impl Comparator for Rules {
    fn compare(&self, legacy: &Captured, candidate: &Captured) -> Report {
        self.compare_with(legacy, candidate, BodyPath::Walk)
            .unwrap_or_default()
    }
}

/// How bodies are compared.
#[derive(Clone, Copy, PartialEq)]
enum BodyPath {
    /// The lockstep walks (JSON, HTML), then the trees when they cannot decide.
    Walk,
    /// The lockstep walks only (fast enough for an IO thread on small bodies): no answer when
    /// they cannot decide.
    WalkOnly,
    /// The trees only.
    Trees,
}

impl Rules {
    /// The comparison without the fast walk: every body pair normalized whole and compared as
    /// trees. Its report is the one `compare` gives; the differential tests and the fuzz
    /// target hold the fast walk to it.
    #[doc(hidden)]
    pub fn compare_exhaustive(&self, legacy: &Captured, candidate: &Captured) -> Report {
        self.compare_with(legacy, candidate, BodyPath::Trees)
            .unwrap_or_default()
    }

    /// The comparison when it takes little time (equal bodies, or JSON or HTML bodies the
    /// lockstep walks find equal after the rules, of identity-encoded responses); None when the
    /// bodies need the full comparison, which should then run off the proxy's IO threads.
    pub fn compare_quickly(&self, legacy: &Captured, candidate: &Captured) -> Option<Report> {
        self.compare_with(legacy, candidate, BodyPath::WalkOnly)
    }

    fn compare_with(
        &self,
        legacy: &Captured,
        candidate: &Captured,
        path: BodyPath,
    ) -> Option<Report> {
        let mut differences = Vec::new();
        let (ls, cs) = (
            self.canonical_status(legacy.status),
            self.canonical_status(candidate.status),
        );
        if ls != cs {
            differences.push(Difference {
                path: "status".into(),
                kind: DiffKind::Changed,
                legacy: Some(legacy.status.to_string()),
                candidate: Some(candidate.status.to_string()),
            });
        }
        self.diff_set_cookies(legacy, candidate, &mut differences);
        if !self.same_compared_headers(&legacy.headers, &candidate.headers) {
            diff::diff_headers(
                &self.normalize_headers(&legacy.headers),
                &self.normalize_headers(&candidate.headers),
                &mut differences,
            );
        }
        let unified = self.compare_bodies(legacy, candidate, &mut differences, path)?;
        Some(Report {
            differences,
            unified,
        })
    }

    /// Body differences into `differences`; returns the unified diff (None: `WalkOnly` and
    /// the walk could not decide).
    fn compare_bodies(
        &self,
        legacy: &Captured,
        candidate: &Captured,
        differences: &mut Vec<Difference>,
        path: BodyPath,
    ) -> Option<String> {
        let mut unified = String::new();
        // Normalization is a function of the body alone: equal bytes stay equal, whatever the rules.
        if legacy.body != candidate.body {
            let is_json = diff::looks_like_json(&legacy.headers, &legacy.body);
            let now = response_time(&legacy.headers);
            if path != BodyPath::Trees {
                let identity =
                    decode::identity_encoded(legacy) && decode::identity_encoded(candidate);
                if identity && is_json {
                    // On the IO thread (`WalkOnly`) the first real difference ends the walk:
                    // listing them is for the comparison workers, which walk the pair again.
                    let room = if path == BodyPath::WalkOnly {
                        0
                    } else {
                        diff::MAX_DIFFERENCES.saturating_sub(differences.len())
                    };
                    match lockstep::json_differences(&legacy.body, &candidate.body, self, now, room)
                    {
                        Ok(found) if found.is_empty() => return Some(unified),
                        // A real difference: its report, with the unified diff of the two
                        // normalized texts made straight from the bodies, is for the
                        // comparison workers.
                        Ok(_) if path == BodyPath::WalkOnly => return None,
                        Ok(found) => {
                            let unified = self.json_unified(
                                &legacy.body,
                                &candidate.body,
                                now,
                                JSON_WINDOW_MARGIN,
                            );
                            if let Some(unified) = unified {
                                differences.extend(found);
                                return Some(unified);
                            }
                        }
                        Err(lockstep::Undecided) => {}
                    }
                }
                if identity && !is_json && looks_like_html(&legacy.headers, &legacy.body) {
                    let replaced = self.replaced_pair(&legacy.body, &candidate.body);
                    if self.same_html(&replaced.0, &replaced.1) {
                        return Some(unified);
                    }
                    if path == BodyPath::WalkOnly {
                        return None;
                    }
                    // The tokens of a real difference start from the same replaced text.
                    self.diff_html_texts(
                        &text_of(&replaced.0),
                        &text_of(&replaced.1),
                        HTML_WINDOW_MARGIN,
                        differences,
                        &mut unified,
                    );
                    return Some(unified);
                }
                if path == BodyPath::WalkOnly {
                    return None;
                }
            }
            let parsed = if is_json {
                match (
                    serde_json::from_slice::<serde_json::Value>(&legacy.body),
                    serde_json::from_slice::<serde_json::Value>(&candidate.body),
                ) {
                    (Ok(a), Ok(b)) => Some((a, b)),
                    _ => None,
                }
            } else {
                None
            };
            // The exhaustive comparison diffs every line; the others skip the shared ones.
            let unify: fn(&[u8], &[u8]) -> String = if path == BodyPath::Trees {
                diff::unified_whole
            } else {
                diff::unified
            };
            let is_html = !is_json && looks_like_html(&legacy.headers, &legacy.body);
            if is_html {
                let a = self.html_tokens(&legacy.body);
                let b = self.html_tokens(&candidate.body);
                let unify_text: fn(&str, &str) -> String = if path == BodyPath::Trees {
                    |a, b| diff::unified_whole(a.as_bytes(), b.as_bytes())
                } else {
                    diff::unified_text
                };
                self.diff_html_tokens(&a, &b, differences, &mut unified, unify_text);
            } else if let Some((mut a, mut b)) = parsed {
                self.normalize_json(&mut a, now);
                self.normalize_json(&mut b, now);
                let before = differences.len();
                diff::diff_json("body", &a, &b, &self.tolerance, differences);
                if differences.len() > before {
                    let pa = serde_json::to_string_pretty(&a).unwrap_or_default();
                    let pb = serde_json::to_string_pretty(&b).unwrap_or_default();
                    unified = unify(pa.as_bytes(), pb.as_bytes());
                }
            } else {
                // The exhaustive comparison replaces in each body alone, the others in the pair.
                let (a, b) = if path == BodyPath::Trees {
                    (
                        self.normalize_text(&legacy.body),
                        self.normalize_text(&candidate.body),
                    )
                } else {
                    let (a, b) = self.replaced_pair(&legacy.body, &candidate.body);
                    (self.fold_text(a), self.fold_text(b))
                };
                if !diff::diff_bodies(&legacy.headers, &a, &b, &self.tolerance, differences) {
                    unified = unify(&a, &b);
                }
            }
        }
        Some(unified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(status: u16, headers: &[(&str, &str)], body: &str) -> Captured {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        Captured {
            status,
            headers: h,
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    fn rules(text: &str) -> Rules {
        Rules::compile(&[Arc::new(RuleSet::parse(text, "t.toml").expect("parse"))])
    }

    /// The full path's differences and unified diff of two HTML texts.
    fn html_whole(r: &Rules, a: &str, b: &str) -> (Vec<Difference>, String) {
        let (mut found, mut unified) = (Vec::new(), String::new());
        let (ta, tb) = (html::tokens(a, &r.html), html::tokens(b, &r.html));
        r.diff_html_tokens(&ta, &tb, &mut found, &mut unified, diff::unified_text);
        (found, unified)
    }

    #[test]
    fn the_html_window_lists_what_the_whole_token_streams_list() {
        let rule_sets = [
            rules("[html]\nstrip_comments = true\nsort_attributes = true\nignore_elements = ['input[name=_token]', '#debug']\nignore_attributes = ['nonce']\n"),
            rules("[text]\nfold_whitespace = true\n"),
            rules("[html]\nignore_elements = ['div#debug', 'b']\n"),
        ];
        let pieces = html::tests::PIECES;
        let mut next = html::tests::below(0x9E37_79B9_7F4A_7C15);
        let (mut windowed, mut whole, mut cut_after, mut cut_both) = (0, 0, 0, 0);
        for _ in 0..4_000 {
            let mut doc: Vec<&str> = (0..20 + next(150))
                .map(|_| match next(6) {
                    0 => "\n",
                    1 => "<li>",
                    _ => pieces[next(pieces.len())],
                })
                .collect();
            let a = doc.concat();
            for _ in 0..1 + next(3) {
                let at = next(doc.len());
                match next(3) {
                    0 => doc[at] = pieces[next(pieces.len())],
                    1 => doc.insert(at, pieces[next(pieces.len())]),
                    _ => {
                        doc.remove(at);
                    }
                }
            }
            let b = doc.concat();
            for r in &rule_sets {
                let expected = html_whole(r, &a, &b);
                for margin in [0, 1, 4, 16, 40, 100, 512] {
                    let (mut found, mut unified) = (Vec::new(), String::new());
                    if r.diff_html_window(&a, &b, margin, &mut found, &mut unified) {
                        windowed += 1;
                        let w = html::window(&a, &b, &r.html, margin);
                        if w.cut_after {
                            cut_after += 1;
                            if w.tokens_before > 0 {
                                cut_both += 1;
                            }
                        }
                        assert_eq!((found, unified), expected, "margin {margin}\n{a:?}\n{b:?}");
                    } else {
                        assert!(found.is_empty() && unified.is_empty());
                        whole += 1;
                    }
                    let (mut found, mut unified) = (Vec::new(), String::new());
                    r.diff_html_texts(&a, &b, margin, &mut found, &mut unified);
                    assert_eq!((found, unified), expected, "margin {margin}");
                }
            }
        }
        // Both ways are taken often enough to mean something.
        assert!(
            windowed > 20_000 && whole > 5_000 && cut_after > 3_000 && cut_both > 1_800,
            "{windowed} {whole} {cut_after} {cut_both}"
        );
    }

    #[test]
    fn one_difference_in_a_long_page_is_found_in_its_window() {
        let r = rules("[html]\nsort_attributes = true\n");
        let row = |i: usize| format!("<tr><td class=n>{i}</td><td>row {i}</td></tr>\n");
        let page = |changed: usize| {
            let rows: String = (0..5_000)
                .map(|i| {
                    if i == changed {
                        row(i).replace("row", "line")
                    } else {
                        row(i)
                    }
                })
                .collect();
            format!("<!DOCTYPE html><html><head><title>T</title><script>var a = '<b>';</script></head><body><table>{rows}</table></body></html>")
        };
        let (a, b) = (page(usize::MAX), page(3_000));
        let (mut found, mut unified) = (Vec::new(), String::new());
        assert!(r.diff_html_window(&a, &b, HTML_WINDOW_MARGIN, &mut found, &mut unified));
        // A window of a few rows around the change, not the rows before or after it.
        let w = html::window(&a, &b, &r.html, HTML_WINDOW_MARGIN);
        assert!(w.cut_after && w.tokens_before > 20_000, "{w:?}");
        assert!(w.legacy.len() < 200 && w.candidate.len() < 200, "{w:?}");
        assert_eq!((found.clone(), unified.clone()), html_whole(&r, &a, &b));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "body/html/body/table/tr[3001]/td[2]");
        assert!(unified.contains("-row 3000\n+line 3000\n"), "{unified}");
        let h = [("content-type", "text/html")];
        assert_eq!(
            r.compare(&cap(200, &h, &a), &cap(200, &h, &b)),
            r.compare_exhaustive(&cap(200, &h, &a), &cap(200, &h, &b))
        );
    }

    #[test]
    fn builtin_rules_parse() {
        RuleSet::builtin().expect("the shipped default rules parse");
    }

    #[test]
    fn unknown_keys_are_located() {
        let e =
            RuleSet::parse("[json]\nignore = []\nignroe = 1\n", "r.toml").expect_err("unknown key");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.key.contains("ignroe"), "{e}");
        let e = RuleSet::parse("[[text.replace]]\npattern = '('\nreplace = ''\n", "r.toml")
            .expect_err("bad regex");
        assert_eq!(e.line, 2, "{e}");
        assert_eq!(e.key, "text.replace[0].pattern");
    }

    #[test]
    fn equal_headers_skip_normalizing_and_differences_are_still_found() {
        let r = rules("[headers]\nignore=['x-request-id']\n");
        let base = [
            ("content-type", "application/json"),
            ("x-a", "1"),
            ("x-a", "2"),
        ];
        let a = cap(200, &[&base[..], &[("x-request-id", "1")]].concat(), "{}");
        // Equal but for an ignored header and a transport one: the fast path.
        let b = cap(
            200,
            &[&base[..], &[("x-request-id", "2"), ("content-length", "2")]].concat(),
            "{}",
        );
        assert!(r.same_compared_headers(&a.headers, &b.headers));
        assert!(r.compare(&a, &b).is_match());
        // One more value, a different value, another order of a multi-valued header: not the
        // same, and the comparison reports them.
        for other in [
            &[&base[..], &[("x-b", "1")]].concat()[..],
            &[("content-type", "text/html"), ("x-a", "1"), ("x-a", "2")][..],
            &[
                ("content-type", "application/json"),
                ("x-a", "2"),
                ("x-a", "1"),
            ][..],
        ] {
            let c = cap(200, other, "{}");
            assert!(
                !r.same_compared_headers(&a.headers, &c.headers),
                "{other:?}"
            );
            assert!(!r.compare(&a, &c).is_match(), "{other:?}");
        }
    }

    #[test]
    fn header_ignore_and_rewrite() {
        let r = rules("[headers]\nignore=['x-request-id']\n[[headers.rewrite]]\nname='location'\npattern='^https?://[^/]+'\nreplace=''\n");
        let a = cap(
            302,
            &[("x-request-id", "1"), ("location", "http://a.example/x")],
            "",
        );
        let b = cap(
            302,
            &[("x-request-id", "2"), ("location", "https://b.example/x")],
            "",
        );
        assert!(r.compare(&a, &b).is_match());
        let c = cap(302, &[("location", "https://b.example/y")], "");
        assert!(!r.compare(&a, &c).is_match());
    }

    #[test]
    fn headers_as_sets() {
        let r = rules("[headers]\nas_set=['vary', 'allow']\n");
        let a = cap(
            200,
            &[
                ("vary", "Cookie, Accept-Encoding"),
                ("allow", "GET"),
                ("allow", "POST"),
            ],
            "",
        );
        let b = cap(
            200,
            &[("vary", "Accept-Encoding,Cookie"), ("allow", "POST, GET")],
            "",
        );
        assert!(
            r.compare(&a, &b).is_match(),
            "{:?}",
            r.compare(&a, &b).differences
        );
        let c = cap(200, &[("vary", "Cookie")], "");
        assert!(!r.compare(&a, &c).is_match());
        assert!(!rules("").compare(&a, &b).is_match());
    }

    #[test]
    fn the_shipped_example_rules_parse() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples/php-app.toml");
        RuleSet::load(&path).expect("rules/examples/php-app.toml parses");
    }

    #[test]
    fn set_cookie_by_name_and_attributes_not_value() {
        let r = Rules::compile(&[Arc::new(RuleSet::builtin().expect("builtin"))]);
        let php = cap(
            200,
            &[
                ("set-cookie", "PHPSESSID=abc; path=/; HttpOnly"),
                ("set-cookie", "lang=en; path=/"),
            ],
            "",
        );
        // Another session id, the same cookies and attributes: equal.
        let same = cap(
            200,
            &[
                ("set-cookie", "lang=de; path=/"),
                ("set-cookie", "PHPSESSID=xyz; path=/; HttpOnly"),
            ],
            "",
        );
        assert!(r.compare(&php, &same).is_match());
        // A forgotten cookie, and one set without HttpOnly.
        let forgot = cap(200, &[("set-cookie", "lang=en; path=/")], "");
        let rep = r.compare(&php, &forgot);
        assert_eq!(rep.differences.len(), 1, "{:?}", rep.differences);
        assert_eq!(rep.differences[0].path, "header:set-cookie/PHPSESSID");
        assert_eq!(rep.differences[0].kind, DiffKind::Missing);
        let loose = cap(
            200,
            &[
                ("set-cookie", "PHPSESSID=q; path=/"),
                ("set-cookie", "lang=en; path=/"),
            ],
            "",
        );
        let rep = r.compare(&php, &loose);
        assert_eq!(
            (
                rep.differences[0].legacy.as_deref(),
                rep.differences[0].candidate.as_deref()
            ),
            (Some("set; Path=/; HttpOnly"), Some("set; Path=/"))
        );
        // Deleting is not setting.
        let deleting = cap(
            200,
            &[
                (
                    "set-cookie",
                    "PHPSESSID=deleted; expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; path=/",
                ),
                ("set-cookie", "lang=en; path=/"),
            ],
            "",
        );
        assert!(!r.compare(&php, &deleting).is_match());
        // A rule can still ignore it.
        let ignoring = rules("[headers]\nignore = ['set-cookie']\n");
        assert!(ignoring.compare(&php, &forgot).is_match());
    }

    #[test]
    fn time_like_json_values_fold_near_the_responses_date() {
        let builtin = Rules::compile(&[Arc::new(RuleSet::builtin().expect("builtin"))]);
        let date = ("date", "Sat, 28 Nov 2026 12:00:00 GMT");
        let h = [("content-type", "application/json"), date];
        let t = 1_795_867_200u64; // that Date
        let a = cap(
            200,
            &h,
            &format!(
                r#"{{"server_time":{},"ms":{},"at":"2026-11-28T12:00:01Z","mod":"Sat, 28 Nov 2026 12:00:01 GMT","born":1000000000}}"#,
                t + 1,
                (t + 1) * 1000
            ),
        );
        let b = cap(
            200,
            &h,
            &format!(
                r#"{{"server_time":{},"ms":{},"at":"2026-11-28T12:00:03Z","mod":"Sat, 28 Nov 2026 12:00:03 GMT","born":1000000000}}"#,
                t + 3,
                (t + 3) * 1000 + 17
            ),
        );
        let rep = builtin.compare(&a, &b);
        assert!(rep.is_match(), "{:?}", rep.differences);
        // Far from the Date, a number is a number.
        let text = String::from_utf8(a.body.to_vec()).expect("utf8");
        let c = cap(200, &h, &text.replace("1000000000", "1000000001"));
        let rep = builtin.compare(&a, &c);
        assert_eq!(rep.differences.len(), 1, "{:?}", rep.differences);
        assert_eq!(rep.differences[0].path, "body/born");
        // Each can be turned off by a later rules file.
        let off = Rules::compile(&[
            Arc::new(RuleSet::builtin().expect("builtin")),
            Arc::new(RuleSet::parse("[json]\nepoch_seconds = false\n", "off.toml").expect("rules")),
        ]);
        let rep = off.compare(&a, &b);
        assert_eq!(rep.differences.len(), 1, "{:?}", rep.differences);
        assert_eq!(rep.differences[0].path, "body/server_time");
    }

    #[test]
    fn status_equivalence() {
        let r = rules("[status]\nequivalent=[[301,308]]\n");
        assert!(r.compare(&cap(301, &[], ""), &cap(308, &[], "")).is_match());
        assert!(!r.compare(&cap(301, &[], ""), &cap(302, &[], "")).is_match());
    }

    #[test]
    fn json_ignore_unordered_tolerance() {
        let r = rules("[json]\nignore=['/meta/*', '/items/*/etag']\nunordered=['/tags']\nfloat_absolute=1e-6\n");
        let h = [("content-type", "application/json")];
        let a = cap(
            200,
            &h,
            r#"{"meta":{"t":1},"items":[{"id":1,"etag":"a"}],"tags":["x","y"],"p":1}"#,
        );
        let b = cap(
            200,
            &h,
            r#"{"p":1.0000001,"tags":["y","x"],"items":[{"etag":"b","id":1}],"meta":{"t":2}}"#,
        );
        let rep = r.compare(&a, &b);
        assert!(rep.is_match(), "{:?}", rep.differences);
        let c = cap(
            200,
            &h,
            r#"{"p":1,"tags":["y","x"],"items":[{"etag":"b","id":2}],"meta":{}}"#,
        );
        let rep = r.compare(&a, &c);
        assert_eq!(rep.differences.len(), 1);
        assert_eq!(rep.differences[0].path, "body/items/0/id");
        assert!(rep.unified.contains("-      \"id\": 1"), "{}", rep.unified);
        // Without the unordered rule, order matters.
        let plain = rules("");
        assert!(!plain
            .compare(&cap(200, &h, r#"["x","y"]"#), &cap(200, &h, r#"["y","x"]"#))
            .is_match());
    }

    #[test]
    fn html_rules() {
        let r = rules(
            "[text]\nfold_whitespace=true\n[html]\nstrip_comments=true\nsort_attributes=true\nignore_elements=['input[name=_token]']\nignore_attributes=['nonce']\n",
        );
        let h = [("content-type", "text/html; charset=UTF-8")];
        let a = cap(200, &h, "<html><body><!-- build 1 --><form><input type=hidden name=_token value=abc><p class=a id=x>Hi  there</p></form><script nonce=r1>1</script></body></html>");
        let b = cap(200, &h, "<html><body><!-- build 2 --><form><input type=hidden name=_token value=def><p id=x class=a>Hi there</p></form><script nonce=r2>1</script></body></html>");
        let rep = r.compare(&a, &b);
        assert!(rep.is_match(), "{:?}", rep.differences);
        // A missing element is reported at its element path.
        let c = cap(
            200,
            &h,
            "<html><body><form><p id=x class=a>Hi there</p></form></body></html>",
        );
        let d = cap(200, &h, "<html><body><form></form></body></html>");
        let rep = r.compare(&c, &d);
        assert_eq!(rep.differences.len(), 1, "{:?}", rep.differences);
        assert_eq!(rep.differences[0].path, "body/html/body/form/p");
        assert_eq!(rep.differences[0].kind, DiffKind::Missing);
        assert!(
            rep.unified.contains("-<p class=\"a\" id=\"x\">"),
            "{}",
            rep.unified
        );
        // Without the rules, the same pair differs.
        assert!(!rules("").compare(&a, &b).is_match());
    }

    #[test]
    fn html_is_sniffed_without_a_content_type() {
        let r = rules("[html]\nsort_attributes=true\n");
        let a = cap(200, &[], "<!DOCTYPE html><html><p a=1 b=2>x</p></html>");
        let b = cap(200, &[], "<!DOCTYPE html><html><p b=2 a=1>x</p></html>");
        assert!(r.compare(&a, &b).is_match());
    }

    #[test]
    fn text_replace_and_whitespace() {
        let r = rules("[text]\nfold_whitespace=true\n[[text.replace]]\npattern='\\b\\d{10}\\b'\nreplace='{epoch}'\n");
        let a = cap(
            200,
            &[("content-type", "text/html")],
            "<p>at 1700000000</p>\n\n  <b>x</b>",
        );
        let b = cap(
            200,
            &[("content-type", "text/html")],
            "<p>at 1700000123</p> <b>x</b>\n",
        );
        assert!(r.compare(&a, &b).is_match());
        let c = cap(
            200,
            &[("content-type", "text/html")],
            "<p>at 1700000123</p> <b>y</b>\n",
        );
        assert!(!r.compare(&a, &c).is_match());
    }
}
