//! The comparison of two captured responses, after normalization: status, headers, then the
//! body — JSON as trees (each difference a JSON pointer), other text line by line with
//! `similar` — plus a unified diff of the normalized bodies for humans. Pure: no IO, no tokio;
//! the mirror runs it off the IO threads for large bodies.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use similar::TextDiff;

/// One side's response as the comparison sees it: the body already decoded from its
/// `Content-Encoding`.
#[derive(Debug, Clone)]
pub struct Captured {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    Changed,
    Missing,
    Extra,
    Type,
    Order,
    Size,
}

impl DiffKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::Changed => "changed",
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Type => "type",
            DiffKind::Order => "order",
            DiffKind::Size => "size",
        }
    }
}

/// One difference: where (`status`, `header:<name>`, a JSON pointer under `body`, or
/// `body:line N`), what kind, and both values (None where a side has nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub path: String,
    pub kind: DiffKind,
    pub legacy: Option<String>,
    pub candidate: Option<String>,
}

/// What a comparison found; empty `differences` is a match.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub differences: Vec<Difference>,
    /// Unified diff of the normalized bodies (empty when the bodies are equal).
    pub unified: String,
}

impl Report {
    pub fn is_match(&self) -> bool {
        self.differences.is_empty()
    }
}

/// The seam between the mirror and the rules engine: given both captured responses, report
/// their differences.
pub trait Comparator: Send + Sync {
    fn compare(&self, legacy: &Captured, candidate: &Captured) -> Report;
}

/// Longest a diff algorithm may search for a minimal diff; past it `similar` returns a correct
/// but coarser diff, so a pathological pair cannot hold a comparison worker.
pub const DIFF_DEADLINE: std::time::Duration = std::time::Duration::from_millis(50);

/// Most differences listed per comparison (the rest are summarised by one `size` entry).
pub const MAX_DIFFERENCES: usize = 200;

fn show(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &s[..cut])
    } else {
        s.into_owned()
    }
}

/// Headers compared by name after lowercasing; multiple values are compared as a list in order.
pub fn diff_headers(
    legacy: &http::HeaderMap,
    candidate: &http::HeaderMap,
    out: &mut Vec<Difference>,
) {
    let mut names: Vec<&http::HeaderName> = legacy.keys().chain(candidate.keys()).collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    for name in names {
        let l: Vec<&[u8]> = legacy.get_all(name).iter().map(|v| v.as_bytes()).collect();
        let c: Vec<&[u8]> = candidate
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if l == c {
            continue;
        }
        let path = format!("header:{}", name.as_str());
        let join = |v: &[&[u8]]| v.iter().map(|b| show(b)).collect::<Vec<_>>().join(", ");
        let (kind, lv, cv) = match (l.is_empty(), c.is_empty()) {
            (false, true) => (DiffKind::Missing, Some(join(&l)), None),
            (true, false) => (DiffKind::Extra, None, Some(join(&c))),
            _ => (DiffKind::Changed, Some(join(&l)), Some(join(&c))),
        };
        out.push(Difference {
            path,
            kind,
            legacy: lv,
            candidate: cv,
        });
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

pub(crate) fn escape_pointer(key: &str) -> std::borrow::Cow<'_, str> {
    if key.contains(['~', '/']) {
        key.replace('~', "~0").replace('/', "~1").into()
    } else {
        key.into()
    }
}

fn compact(v: &serde_json::Value) -> String {
    let s = v.to_string();
    show(s.as_bytes())
}

/// Numbers compare by value (`1` ≡ `1.0`) unless told otherwise by the rules.
fn numbers_equal(
    a: &serde_json::Number,
    b: &serde_json::Number,
    tolerance: &FloatTolerance,
) -> bool {
    if a == b {
        return true;
    }
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => {
            if x == y {
                return tolerance.by_value;
            }
            let diff = (x - y).abs();
            diff <= tolerance.absolute || diff <= tolerance.relative * x.abs().max(y.abs())
        }
        _ => false,
    }
}

/// How JSON numbers are compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatTolerance {
    pub absolute: f64,
    pub relative: f64,
    /// `1` ≡ `1.0`.
    pub by_value: bool,
}

impl Default for FloatTolerance {
    fn default() -> Self {
        FloatTolerance {
            absolute: 0.0,
            relative: 0.0,
            by_value: true,
        }
    }
}

/// JSON trees compared recursively; `path` is the JSON pointer of `l` and `c`.
pub fn diff_json(
    path: &str,
    l: &serde_json::Value,
    c: &serde_json::Value,
    tolerance: &FloatTolerance,
    out: &mut Vec<Difference>,
) {
    let mut pointer = String::with_capacity(64);
    pointer.push_str(path);
    diff_json_at(&mut pointer, l, c, tolerance, out);
}

/// The same values in the same order (object keys too): what makes `to_string` give the same
/// text, which the reordering check compares.
fn identical(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((ka, va), (kb, vb))| ka == kb && identical(va, vb))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(va, vb)| identical(va, vb))
        }
        _ => a == b,
    }
}

/// `diff_json` with the pointer in a buffer of its own: each level appends its segment and
/// takes it off again, so equal subtrees cost no allocation.
fn diff_json_at(
    path: &mut String,
    l: &serde_json::Value,
    c: &serde_json::Value,
    tolerance: &FloatTolerance,
    out: &mut Vec<Difference>,
) {
    use serde_json::Value;
    use std::fmt::Write;
    if out.len() >= MAX_DIFFERENCES {
        return;
    }
    let depth = path.len();
    match (l, c) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    // Equal values have no differences, whatever the tolerance.
                    Some(vb) if va == vb => {}
                    Some(vb) => {
                        path.push('/');
                        path.push_str(&escape_pointer(k));
                        diff_json_at(path, va, vb, tolerance, out);
                        path.truncate(depth);
                    }
                    None => out.push(Difference {
                        path: format!("{path}/{}", escape_pointer(k)),
                        kind: DiffKind::Missing,
                        legacy: Some(compact(va)),
                        candidate: None,
                    }),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    out.push(Difference {
                        path: format!("{path}/{}", escape_pointer(k)),
                        kind: DiffKind::Extra,
                        legacy: None,
                        candidate: Some(compact(vb)),
                    });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() == b.len() && a.len() > 1 && a != b {
                // The same elements in another order: one `order` difference, not one per
                // index. Elements identical at the same index are in both multisets, so only
                // the others are rendered and sorted.
                let differing: Vec<usize> =
                    (0..a.len()).filter(|&i| !identical(&a[i], &b[i])).collect();
                let mut sa: Vec<String> = differing.iter().map(|&i| a[i].to_string()).collect();
                let mut sb: Vec<String> = differing.iter().map(|&i| b[i].to_string()).collect();
                sa.sort();
                sb.sort();
                if sa == sb {
                    out.push(Difference {
                        path: path.to_string(),
                        kind: DiffKind::Order,
                        legacy: Some(compact(l)),
                        candidate: Some(compact(c)),
                    });
                    return;
                }
            }
            if a.len() != b.len() {
                out.push(Difference {
                    path: path.to_string(),
                    kind: DiffKind::Size,
                    legacy: Some(a.len().to_string()),
                    candidate: Some(b.len().to_string()),
                });
            }
            for (i, (va, vb)) in a.iter().zip(b.iter()).enumerate() {
                if va == vb {
                    continue;
                }
                let _ = write!(path, "/{i}");
                diff_json_at(path, va, vb, tolerance, out);
                path.truncate(depth);
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            if !numbers_equal(a, b, tolerance) {
                out.push(Difference {
                    path: path.to_string(),
                    kind: DiffKind::Changed,
                    legacy: Some(a.to_string()),
                    candidate: Some(b.to_string()),
                });
            }
        }
        _ => {
            if json_type(l) != json_type(c) {
                out.push(Difference {
                    path: path.to_string(),
                    kind: DiffKind::Type,
                    legacy: Some(compact(l)),
                    candidate: Some(compact(c)),
                });
            } else if l != c {
                out.push(Difference {
                    path: path.to_string(),
                    kind: DiffKind::Changed,
                    legacy: Some(compact(l)),
                    candidate: Some(compact(c)),
                });
            }
        }
    }
}

/// Text compared line by line, then word by word inside changed lines: each changed run is one
/// difference at its first line, with only the words that differ as its values.
pub fn diff_text(l: &str, c: &str, out: &mut Vec<Difference>) {
    let (_, _, ops) = line_ops(l, c);
    text_differences(l, c, &ops, out);
}

/// The differences of `ops`, a line diff of `l` and `c`.
fn text_differences(l: &str, c: &str, ops: &[similar::DiffOp], out: &mut Vec<Difference>) {
    for op in ops {
        if out.len() >= MAX_DIFFERENCES {
            return;
        }
        let (tag, old, new) = op.as_tag_tuple();
        let lines = |text: &str, r: std::ops::Range<usize>| -> String {
            text.split_inclusive('\n')
                .skip(r.start)
                .take(r.len())
                .collect::<Vec<&str>>()
                .concat()
        };
        let (kind, lv, cv) = match tag {
            similar::DiffTag::Equal => continue,
            similar::DiffTag::Delete => (DiffKind::Missing, Some(lines(l, old.clone())), None),
            similar::DiffTag::Insert => (DiffKind::Extra, None, Some(lines(c, new.clone()))),
            similar::DiffTag::Replace => {
                let (a, b) = (lines(l, old.clone()), lines(c, new.clone()));
                let words = TextDiff::configure()
                    .timeout(DIFF_DEADLINE)
                    .diff_words(a.as_str(), b.as_str());
                let mut removed = String::new();
                let mut added = String::new();
                for change in words.iter_all_changes() {
                    match change.tag() {
                        similar::ChangeTag::Delete => removed.push_str(change.value()),
                        similar::ChangeTag::Insert => added.push_str(change.value()),
                        similar::ChangeTag::Equal => {}
                    }
                }
                (
                    DiffKind::Changed,
                    Some(removed.trim().to_string()),
                    Some(added.trim().to_string()),
                )
            }
        };
        out.push(Difference {
            path: format!("body:line {}", old.start + 1),
            kind,
            legacy: lv.map(|v| show(v.as_bytes())),
            candidate: cv.map(|v| show(v.as_bytes())),
        });
    }
}

/// Lines of context around each change in the unified diff.
const CONTEXT_LINES: usize = 3;

/// A unified diff of two bodies (lossy UTF-8), for people: [`unified_whole`]'s text, with the
/// line diff run only between the lines both bodies start and end with (see [`line_ops`]).
pub fn unified(l: &[u8], c: &[u8]) -> String {
    unified_text(&String::from_utf8_lossy(l), &String::from_utf8_lossy(c))
}

/// [`unified`] of two texts.
pub fn unified_text(l: &str, c: &str) -> String {
    // Nothing left out: no cut to keep changes away from, and no change is no hunk.
    unified_text_after(l, c, 0, false).unwrap_or_default()
}

/// [`unified_text`] of two texts that come after `lines_before` lines both share (which are not
/// given), and, when `cut_after`, before lines both share (not given either): the same hunks,
/// numbered as in the whole texts. None when a change is within the context of a cut, where the
/// lines left out would show as context or could take the change (the line diff's compaction
/// slides a change over lines equal to it).
pub fn unified_text_after(
    l: &str,
    c: &str,
    lines_before: usize,
    cut_after: bool,
) -> Option<String> {
    use std::fmt::Write;
    let (old, new, ops) = line_ops(l, c);
    let mut changes = ops.iter().filter(|op| op.tag() != similar::DiffTag::Equal);
    let first = changes.next()?;
    if lines_before > 0
        && (first.old_range().start < CONTEXT_LINES || first.new_range().start < CONTEXT_LINES)
    {
        return None;
    }
    let last = changes.next_back().unwrap_or(first);
    if cut_after
        && (last.old_range().end + CONTEXT_LINES >= old.len()
            || last.new_range().end + CONTEXT_LINES >= new.len())
    {
        return None;
    }
    let shifted: Vec<similar::DiffOp> = ops.iter().map(|op| shift(*op, lines_before)).collect();
    let (old, new) = (
        Shifted {
            lines: &old,
            by: lines_before,
        },
        Shifted {
            lines: &new,
            by: lines_before,
        },
    );
    let mut out = String::new();
    for hunk in similar::group_diff_ops(shifted, CONTEXT_LINES) {
        if hunk.is_empty() {
            continue;
        }
        if out.is_empty() {
            out.push_str("--- legacy\n+++ candidate\n");
        }
        let _ = writeln!(out, "{}", similar::udiff::UnifiedHunkHeader::new(&hunk));
        for op in &hunk {
            for change in op.iter_changes(&old, &new) {
                let _ = write!(out, "{}{}", change.tag(), change.value());
                if change.missing_newline() {
                    out.push_str("\n\\ No newline at end of file\n");
                }
            }
        }
    }
    Some(out)
}

/// An op `by` lines further on.
fn shift(op: similar::DiffOp, by: usize) -> similar::DiffOp {
    use similar::DiffOp;
    match op {
        DiffOp::Equal {
            old_index,
            new_index,
            len,
        } => DiffOp::Equal {
            old_index: old_index + by,
            new_index: new_index + by,
            len,
        },
        DiffOp::Delete {
            old_index,
            old_len,
            new_index,
        } => DiffOp::Delete {
            old_index: old_index + by,
            old_len,
            new_index: new_index + by,
        },
        DiffOp::Insert {
            old_index,
            new_index,
            new_len,
        } => DiffOp::Insert {
            old_index: old_index + by,
            new_index: new_index + by,
            new_len,
        },
        DiffOp::Replace {
            old_index,
            old_len,
            new_index,
            new_len,
        } => DiffOp::Replace {
            old_index: old_index + by,
            old_len,
            new_index: new_index + by,
            new_len,
        },
    }
}

/// Lines numbered from `by`: what the shifted ops index.
struct Shifted<'l> {
    lines: &'l [&'l str],
    by: usize,
}

impl<'l> std::ops::Index<usize> for Shifted<'l> {
    type Output = &'l str;
    fn index(&self, i: usize) -> &&'l str {
        // The ops were shifted by `by` from indexes into `lines`.
        &self.lines[i - self.by]
    }
}

/// How many lines `similar` splits `s` into (as [`lines`] does, without keeping them).
pub fn line_count(s: &str) -> usize {
    let b = s.as_bytes();
    let (mut n, mut start) = (0, 0);
    while let Some(k) = memchr::memchr2(b'\n', b'\r', &b[start..]) {
        let at = start + k;
        start = if b[at] == b'\r' && b.get(at + 1) == Some(&b'\n') {
            at + 2
        } else {
            at + 1
        };
        n += 1;
    }
    n + usize::from(start < b.len())
}

/// The line diff `similar`'s `TextDiff::diff_lines(l, c)` makes (its lines and its ops, Myers
/// then its compaction), without pushing the lines both texts start and end with through the
/// diff: Myers strips them first anyway, and finding them a block of bytes at a time is what
/// makes a one-line change in 1 MB cost a few lines of diffing instead of hashing every line.
fn line_ops<'t>(l: &'t str, c: &'t str) -> (Vec<&'t str>, Vec<&'t str>, Vec<similar::DiffOp>) {
    use similar::algorithms::{Capture, Compact, DiffHook, NoFinishHook, Replace};
    let (old, new) = (lines(l), lines(c));
    let (a, b) = (l.as_bytes(), c.as_bytes());
    let (n, m) = (old.len(), new.len());
    let start_of = |text: &str, line: &str| line.as_ptr() as usize - text.as_ptr() as usize;
    // Lines before `head` are the same bytes, ending in `\n`, on both sides: the same lines.
    let shared = common_prefix(a, b);
    let head = memchr::memrchr(b'\n', &a[..shared]).map_or(0, |i| i + 1);
    let mut prefix = old.partition_point(|x| start_of(l, x) < head);
    while prefix < n && prefix < m && old[prefix] == new[prefix] {
        prefix += 1;
    }
    // Lines from `tail` on (a line start inside the bytes both texts end with) are the same
    // lines too.
    let room = a.len().min(b.len()) - head;
    let ends = common_suffix(&a[a.len() - room..], &b[b.len() - room..]);
    let from = a.len() - ends;
    let tail = memchr::memchr(b'\n', &a[from..]).map_or(a.len(), |i| from + i + 1);
    let most = (n - prefix).min(m - prefix);
    let mut suffix = (n - old.partition_point(|x| start_of(l, x) < tail)).min(most);
    while suffix < most && old[n - 1 - suffix] == new[m - 1 - suffix] {
        suffix += 1;
    }
    let mut hook = Compact::new(Replace::new(Capture::new()), &old[..], &new[..]);
    let deadline = std::time::Instant::now().checked_add(DIFF_DEADLINE);
    // What Myers' first step does with the whole texts: the shared start, the middle, the
    // shared end, and only then the compaction (which may move a change into the shared lines).
    if prefix > 0 {
        let _ = hook.equal(0, 0, prefix);
    }
    let _ = similar::algorithms::myers::diff_deadline(
        &mut NoFinishHook::new(&mut hook),
        &old[..],
        prefix..n - suffix,
        &new[..],
        prefix..m - suffix,
        deadline,
    );
    if suffix > 0 {
        let _ = hook.equal(n - suffix, m - suffix, suffix);
    }
    let _ = hook.finish();
    let ops = hook.into_inner().into_inner().into_ops();
    (old, new, ops)
}

/// Lines as `similar` splits them: each ends after `\n`, `\r\n` or a lone `\r`.
fn lines(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(memchr::memchr_iter(b'\n', b).count() + 1);
    let mut start = 0;
    while let Some(k) = memchr::memchr2(b'\n', b'\r', &b[start..]) {
        let at = start + k;
        let end = if b[at] == b'\r' && b.get(at + 1) == Some(&b'\n') {
            at + 2
        } else {
            at + 1
        };
        out.push(&s[start..end]);
        start = end;
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// The unified diff of the whole bodies, every line through the line diff: what [`unified`]
/// gives, the slow way (the exhaustive comparison and the tests hold the two to each other).
pub fn unified_whole(l: &[u8], c: &[u8]) -> String {
    let l = String::from_utf8_lossy(l);
    let c = String::from_utf8_lossy(c);
    TextDiff::configure()
        .timeout(DIFF_DEADLINE)
        .diff_lines(l.as_ref(), c.as_ref())
        .unified_diff()
        .context_radius(CONTEXT_LINES)
        .header("legacy", "candidate")
        .to_string()
}

/// Length of the longest common prefix of `a` and `b`, compared a block at a time (blocks of
/// a size known when compiling, which compare in a few vector instructions, not a call).
pub fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let max = a.len().min(b.len());
    let (a, b) = (&a[..max], &b[..max]);
    let (blocks_a, _) = a.as_chunks::<32>();
    let (blocks_b, _) = b.as_chunks::<32>();
    let same = blocks_a
        .iter()
        .zip(blocks_b)
        .take_while(|(x, y)| x == y)
        .count();
    let mut k = same * 32;
    // In the first block that differs (or the short rest), eight bytes at a time.
    let (words_a, _) = a[k..].as_chunks::<8>();
    let (words_b, _) = b[k..].as_chunks::<8>();
    for (x, y) in words_a.iter().zip(words_b).take(4) {
        let differ = u64::from_le_bytes(*x) ^ u64::from_le_bytes(*y);
        if differ != 0 {
            return k + (differ.trailing_zeros() / 8) as usize;
        }
        k += 8;
    }
    while k < max && a[k] == b[k] {
        k += 1;
    }
    k
}

/// Length of the longest common suffix of `a` and `b`, compared a block at a time.
pub fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let max = a.len().min(b.len());
    let (a, b) = (&a[a.len() - max..], &b[b.len() - max..]);
    let (_, blocks_a) = a.as_rchunks::<32>();
    let (_, blocks_b) = b.as_rchunks::<32>();
    let same = blocks_a
        .iter()
        .rev()
        .zip(blocks_b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let mut k = same * 32;
    while k < max && a[max - k - 1] == b[max - k - 1] {
        k += 1;
    }
    k
}

/// Whether a body is JSON by its content type, or by a sniff of its first byte when the type
/// says nothing.
pub fn looks_like_json(headers: &http::HeaderMap, body: &[u8]) -> bool {
    match headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(ct) => {
            let ct = ct.to_ascii_lowercase();
            ct.contains("json")
        }
        None => matches!(
            body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{') | Some(b'[')
        ),
    }
}

/// Compares two bodies (already normalized): bytes first, then JSON trees or text lines.
pub fn diff_bodies(
    legacy_headers: &http::HeaderMap,
    l: &[u8],
    c: &[u8],
    tolerance: &FloatTolerance,
    out: &mut Vec<Difference>,
) -> bool {
    if l == c {
        return true;
    }
    let before = out.len();
    if looks_like_json(legacy_headers, l) {
        if let (Ok(a), Ok(b)) = (
            serde_json::from_slice::<serde_json::Value>(l),
            serde_json::from_slice::<serde_json::Value>(c),
        ) {
            diff_json("body", &a, &b, tolerance, out);
            return out.len() == before;
        }
    }
    match (std::str::from_utf8(l), std::str::from_utf8(c)) {
        (Ok(a), Ok(b)) => diff_text(a, b, out),
        _ => out.push(Difference {
            path: "body".into(),
            kind: if l.len() != c.len() {
                DiffKind::Size
            } else {
                DiffKind::Changed
            },
            legacy: Some(format!("{} bytes", l.len())),
            candidate: Some(format!("{} bytes", c.len())),
        }),
    }
    out.len() == before
}

/// The session a side left after a request, in the JSON form of PHP sessions (in a recording:
/// `{"kind": "none"}` or `{"kind": "session", "regenerated": …, "data": …}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SessionAfter {
    /// No session: none was started, or it was destroyed.
    None,
    Session {
        /// Under another id than the request's (`session_regenerate_id()`, or a new session).
        regenerated: bool,
        /// The session's variables.
        data: serde_json::Value,
    },
}

/// Two sessions left after a request: `session` when one side has none, `session/$id` when one
/// side regenerated the id and the other did not, `session/<pointer>` for data.
pub fn diff_sessions(
    legacy: &SessionAfter,
    candidate: &SessionAfter,
    tolerance: &FloatTolerance,
    out: &mut Vec<Difference>,
) {
    let fate = |r: bool| if r { "regenerated" } else { "kept" };
    match (legacy, candidate) {
        (SessionAfter::None, SessionAfter::None) => {}
        (SessionAfter::Session { data, .. }, SessionAfter::None) => out.push(Difference {
            path: "session".into(),
            kind: DiffKind::Missing,
            legacy: Some(compact(data)),
            candidate: None,
        }),
        (SessionAfter::None, SessionAfter::Session { data, .. }) => out.push(Difference {
            path: "session".into(),
            kind: DiffKind::Extra,
            legacy: None,
            candidate: Some(compact(data)),
        }),
        (
            SessionAfter::Session {
                regenerated: rl,
                data: dl,
            },
            SessionAfter::Session {
                regenerated: rc,
                data: dc,
            },
        ) => {
            if rl != rc {
                out.push(Difference {
                    path: "session/$id".into(),
                    kind: DiffKind::Changed,
                    legacy: Some(fate(*rl).into()),
                    candidate: Some(fate(*rc).into()),
                });
            }
            diff_json("session", dl, dc, tolerance, out);
        }
    }
}

/// The field label of a difference: array indexes folded to `*` (so `/items/0/id` and
/// `/items/7/id` are one series).
pub fn field_label(path: &str) -> String {
    if path.starts_with("body:line") {
        return "body:text".into();
    }
    path.split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_and_suffix_are_the_byte_by_byte_ones() {
        let mut below = crate::normalize::html::tests::below(0x9E37_79B9_7F4A_7C15);
        let mut next = move |n: u64| below(n as usize) as u64;
        for _ in 0..20_000 {
            let len = next(200) as usize;
            let a: Vec<u8> = (0..len).map(|_| b'a' + next(2) as u8).collect();
            let mut b = a.clone();
            // Change, cut or lengthen it here and there, often not at all near its ends.
            for _ in 0..next(3) {
                match (next(3), b.len()) {
                    (0, n) if n > 0 => b[next(n as u64) as usize] ^= 1,
                    (1, n) => b.truncate(next(n as u64 + 1) as usize),
                    _ => b.push(b'c'),
                }
            }
            let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            let suffix = a
                .iter()
                .rev()
                .zip(b.iter().rev())
                .take_while(|(x, y)| x == y)
                .count();
            assert_eq!(common_prefix(&a, &b), prefix, "{a:?} {b:?}");
            assert_eq!(common_suffix(&a, &b), suffix, "{a:?} {b:?}");
        }
    }

    #[test]
    fn json_paths_and_kinds() {
        let a: serde_json::Value =
            serde_json::json!({"user": {"id": 1, "name": "a/b"}, "list": [1, 2], "x": 1});
        let b: serde_json::Value =
            serde_json::json!({"user": {"id": 2}, "list": [1, 2, 3], "x": "1", "y": true});
        let mut out = Vec::new();
        diff_json("body", &a, &b, &FloatTolerance::default(), &mut out);
        let got: Vec<(String, DiffKind)> = out.iter().map(|d| (d.path.clone(), d.kind)).collect();
        assert!(
            got.contains(&("body/user/id".into(), DiffKind::Changed)),
            "{got:?}"
        );
        assert!(got.contains(&("body/user/name".into(), DiffKind::Missing)));
        assert!(got.contains(&("body/list".into(), DiffKind::Size)));
        assert!(got.contains(&("body/x".into(), DiffKind::Type)));
        assert!(got.contains(&("body/y".into(), DiffKind::Extra)));
    }

    #[test]
    fn reordered_arrays_are_one_order_difference() {
        let mut out = Vec::new();
        diff_json(
            "body",
            &serde_json::json!({"t": [1, 2, 3]}),
            &serde_json::json!({"t": [3, 1, 2]}),
            &FloatTolerance::default(),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].path.as_str(), out[0].kind),
            ("body/t", DiffKind::Order)
        );
    }

    #[test]
    fn numbers_by_value_and_tolerance() {
        let t = FloatTolerance::default();
        let mut out = Vec::new();
        diff_json(
            "",
            &serde_json::json!(1),
            &serde_json::json!(1.0),
            &t,
            &mut out,
        );
        assert!(out.is_empty());
        diff_json(
            "",
            &serde_json::json!(1),
            &serde_json::json!(1.0000001),
            &t,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        out.clear();
        let loose = FloatTolerance {
            absolute: 1e-6,
            relative: 0.0,
            by_value: true,
        };
        diff_json(
            "",
            &serde_json::json!(1),
            &serde_json::json!(1.0000001),
            &loose,
            &mut out,
        );
        assert!(out.is_empty());
        let strict = FloatTolerance {
            absolute: 0.0,
            relative: 0.0,
            by_value: false,
        };
        diff_json(
            "",
            &serde_json::json!(1),
            &serde_json::json!(1.0),
            &strict,
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn sessions_after() {
        let t = FloatTolerance::default();
        let s = |regenerated, data| SessionAfter::Session { regenerated, data };
        let mut out = Vec::new();
        diff_sessions(
            &s(true, serde_json::json!({"user_id": 7, "csrf": "x"})),
            &s(false, serde_json::json!({"user_id": 7})),
            &t,
            &mut out,
        );
        let got: Vec<(&str, DiffKind)> = out.iter().map(|d| (d.path.as_str(), d.kind)).collect();
        assert_eq!(
            got,
            [
                ("session/$id", DiffKind::Changed),
                ("session/csrf", DiffKind::Missing)
            ]
        );
        out.clear();
        diff_sessions(
            &SessionAfter::None,
            &s(false, serde_json::json!({})),
            &t,
            &mut out,
        );
        assert_eq!(
            (out[0].path.as_str(), out[0].kind),
            ("session", DiffKind::Extra)
        );
        out.clear();
        diff_sessions(&SessionAfter::None, &SessionAfter::None, &t, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn field_labels_fold_indexes() {
        assert_eq!(field_label("body/items/12/id"), "body/items/*/id");
        assert_eq!(field_label("body:line 7"), "body:text");
        assert_eq!(field_label("header:vary"), "header:vary");
    }

    #[test]
    fn text_lines() {
        let mut out = Vec::new();
        let equal = diff_bodies(
            &http::HeaderMap::new(),
            b"a\nb\nc\n",
            b"a\nB\nc\n",
            &FloatTolerance::default(),
            &mut out,
        );
        assert!(!equal);
        assert_eq!(out[0].path, "body:line 2");
        assert_eq!(out[0].legacy.as_deref(), Some("b"));
        out.clear();
        diff_text(
            "total: 10 items at 17:03\n",
            "total: 11 items at 17:03\n",
            &mut out,
        );
        assert_eq!(
            (out[0].legacy.as_deref(), out[0].candidate.as_deref()),
            (Some("10"), Some("11"))
        );
        let u = unified(b"a\nb\nc\n", b"a\nB\nc\n");
        assert!(u.contains("-b\n+B\n"), "{u}");
    }

    /// Texts that share a start and an end, lines ended every way `similar` knows.
    fn text_pair() -> impl proptest::strategy::Strategy<Value = (String, String)> {
        use proptest::prelude::*;
        let piece = prop::sample::select(vec![
            "a\n",
            "b\n",
            "c",
            "\r",
            "\r\n",
            "x\r\n",
            "\n",
            "total 10\n",
            "é\n",
            "",
        ]);
        let part =
            |most: usize| prop::collection::vec(piece.clone(), 0..most).prop_map(|v| v.concat());
        // Long shared runs too: past 100 lines `similar` diffs line ids instead of lines.
        (part(150), part(12), part(12), part(150), part(12)).prop_map(|(head, l, c, tail, more)| {
            (format!("{head}{l}{tail}"), format!("{head}{c}{tail}{more}"))
        })
    }

    proptest::proptest! {
        #[test]
        fn the_windowed_diffs_are_the_whole_diffs((l, c) in text_pair()) {
            proptest::prop_assert_eq!(unified(l.as_bytes(), c.as_bytes()), unified_whole(l.as_bytes(), c.as_bytes()));
            let (mut windowed, mut whole) = (Vec::new(), Vec::new());
            diff_text(&l, &c, &mut windowed);
            let all = TextDiff::configure().timeout(DIFF_DEADLINE).diff_lines(l.as_str(), c.as_str());
            text_differences(&l, &c, all.ops(), &mut whole);
            proptest::prop_assert_eq!(windowed, whole);
        }
    }

    #[test]
    fn one_change_in_a_long_text_is_numbered_in_the_whole_text() {
        let l: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        let c = l.replace("line 2500\n", "line 2500 changed\n");
        let u = unified(l.as_bytes(), c.as_bytes());
        assert_eq!(u, unified_whole(l.as_bytes(), c.as_bytes()));
        assert!(u.contains("@@ -2498,7 +2498,7 @@"), "{u}");
        let mut out = Vec::new();
        diff_text(&l, &c, &mut out);
        assert_eq!(out[0].path, "body:line 2501");
    }
}
