//! HTML as a normalized token stream: tags with their attributes (sorted when asked), text with
//! whitespace folded, comments dropped when asked, and ignored elements (a CSRF
//! `<input name="_token">`) or attributes (`nonce`) removed. Each token knows its element path
//! (`html/body/form/input[2]`), so a difference says where it is. A forgiving scanner, not a
//! validating parser: it never fails, whatever the bytes.

use std::borrow::Cow;

/// A simple selector: `tag`, `#id`, `.class`, `[attr]`, `[attr=value]`, or a tag followed by
/// any of those (`input[name=_token]`, `div.banner`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    tag: Option<String>,
    id: Option<String>,
    class: Option<String>,
    attr: Option<(String, Option<String>)>,
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let bad = |why: &str| SelectorError {
            selector: s.to_string(),
            why: why.to_string(),
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("is empty"));
        }
        let mut sel = Selector {
            tag: None,
            id: None,
            class: None,
            attr: None,
        };
        let mut rest = s;
        let tag_end = rest.find(['#', '.', '[']).unwrap_or(rest.len());
        if tag_end > 0 {
            let tag = &rest[..tag_end];
            if !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(bad(&format!("has `{tag}`, which is not a tag name")));
            }
            sel.tag = Some(tag.to_ascii_lowercase());
            rest = &rest[tag_end..];
        }
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('#') {
                let end = r.find(['#', '.', '[']).unwrap_or(r.len());
                sel.id = Some(r[..end].to_string());
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['#', '.', '[']).unwrap_or(r.len());
                sel.class = Some(r[..end].to_string());
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or_else(|| bad("has an unclosed ["))?;
                let inner = &r[..end];
                sel.attr = Some(match inner.split_once('=') {
                    Some((k, v)) => (
                        k.trim().to_ascii_lowercase(),
                        Some(v.trim().trim_matches(['"', '\'']).to_string()),
                    ),
                    None => (inner.trim().to_ascii_lowercase(), None),
                });
                rest = &r[end + 1..];
            } else {
                return Err(bad(
                    "is not a selector (tag, #id, .class, [attr], [attr=value])",
                ));
            }
        }
        Ok(sel)
    }

    /// Whether an element with this tag could match, whatever its attributes.
    fn could_match(&self, tag: &str) -> bool {
        self.tag.as_deref().is_none_or(|t| t == tag)
    }

    fn matches(&self, tag: &str, attrs: &[Attr]) -> bool {
        let get = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        if self.tag.as_deref().is_some_and(|t| t != tag) {
            return false;
        }
        if let Some(id) = &self.id {
            if get("id") != Some(id.as_str()) {
                return false;
            }
        }
        if let Some(class) = &self.class {
            if !get("class").is_some_and(|c| c.split_whitespace().any(|x| x == class)) {
                return false;
            }
        }
        if let Some((k, v)) = &self.attr {
            match (get(k), v) {
                (None, _) => return false,
                (Some(actual), Some(want)) if actual != want => return false,
                _ => {}
            }
        }
        true
    }
}

/// A selector that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector `{selector}` {why}")]
pub struct SelectorError {
    pub selector: String,
    pub why: String,
}

/// What HTML normalization does.
#[derive(Debug, Clone, Default)]
pub struct HtmlRules {
    pub strip_comments: bool,
    pub sort_attributes: bool,
    pub fold_whitespace: bool,
    pub ignore_elements: Vec<Selector>,
    pub ignore_attributes: Vec<String>,
}

/// One token of the normalized stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'t> {
    /// Element path of the token (`html/body/p[2]`), shared by the tokens of one element.
    pub path: &'t str,
    /// The token as text (`<p class="x">`, `</p>`, `hello`), after normalization.
    pub text: &'t str,
}

/// A page's normalized token stream, kept in one string: each token's text followed by a
/// newline, which is also the rendering the unified diff is made from (one token a line), and
/// per token where its text is and which element path it has. One allocation for all the
/// texts instead of one per token, and no rendering pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    rendered: String,
    spans: Vec<Span>,
    paths: PathTable,
}

/// Element paths, each made once when its element opens and kept in one string; path 0 is
/// the root's ("").
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathTable {
    text: String,
    spans: Vec<(usize, usize)>,
}

impl Default for PathTable {
    fn default() -> Self {
        PathTable {
            text: String::new(),
            spans: vec![(0, 0)],
        }
    }
}

impl PathTable {
    fn get(&self, i: usize) -> &str {
        self.spans
            .get(i)
            .and_then(|&(s, e)| self.text.get(s..e))
            .unwrap_or("")
    }

    /// A child of path `parent` labelled `tag` (`[n]` after it for the `n`th same-tag child).
    fn push(&mut self, parent: usize, tag: &str, n: usize) -> usize {
        let start = self.text.len();
        if let Some(&(s, e)) = self.spans.get(parent) {
            if e > s {
                self.text.extend_from_within(s..e);
                self.text.push('/');
            }
        }
        self.text.push_str(tag);
        if n > 1 {
            use std::fmt::Write;
            let _ = write!(self.text, "[{n}]");
        }
        self.spans.push((start, self.text.len()));
        self.spans.len() - 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    path: usize,
}

impl Tokens {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The stream rendered one token a line (for the unified diff and the equality check).
    pub fn rendered(&self) -> &str {
        &self.rendered
    }

    /// The `i`th token.
    pub fn get(&self, i: usize) -> Option<Token<'_>> {
        let s = self.spans.get(i)?;
        Some(Token {
            path: self.paths.get(s.path),
            text: self.text_of(s),
        })
    }

    fn text_of(&self, s: &Span) -> &str {
        self.rendered.get(s.start..s.end).unwrap_or("")
    }

    pub fn iter(&self) -> impl Iterator<Item = Token<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The token texts, in order.
    pub fn texts(&self) -> Vec<&str> {
        self.spans.iter().map(|s| self.text_of(s)).collect()
    }
}

/// Elements without content (no end tag).
fn is_void(tag: &str) -> bool {
    matches!(
        tag,
        "area"
            | "base"
            | "br"
            | "col"
            | "embed"
            | "hr"
            | "img"
            | "input"
            | "link"
            | "meta"
            | "param"
            | "source"
            | "track"
            | "wbr"
    )
}

/// Elements whose content is text up to their end tag.
const RAW_TEXT: &[&str] = &["script", "style", "textarea", "title"];

/// A byte of a tag name the skim takes as it is: lower case or a digit.
fn is_plain_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_raw_text(tag: &str) -> bool {
    RAW_TEXT.contains(&tag)
}

/// An attribute: its name in lower case (borrowed when it already was) and its value.
type Attr<'a> = (Cow<'a, str>, &'a str);

/// `s` in ASCII lower case, borrowed when it already is.
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[derive(Clone)]
struct Open<'a> {
    tag: Cow<'a, str>,
    /// Child element counts by tag, for sibling indexes.
    children: Vec<(Cow<'a, str>, usize)>,
    /// The element's full path in the scanner's table, made once (kept only when the scanner
    /// keeps paths).
    path: Option<usize>,
}

/// The attributes of a tag's inside (after its name) into `out`.
fn parse_attrs<'a>(s: &'a str, out: &mut Vec<Attr<'a>>) {
    let b = s.as_bytes();
    let mut i = 0;
    out.clear();
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        if start == i {
            i += 1;
            continue;
        }
        let name = lower(&s[start..i]);
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = "";
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                i += 1;
                let vs = i;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                value = &s[vs..i.min(b.len())];
                i += 1;
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = &s[vs..i];
            }
        }
        out.push((name, value));
    }
}

fn fold(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn find_ci(hay: &str, needle: &str, from: usize) -> Option<usize> {
    let h = hay.as_bytes();
    let n = needle.as_bytes();
    (from..h.len().saturating_sub(n.len()) + 1).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Tokenizes and normalizes `html` (lossy UTF-8).
pub fn tokens(html: &str, rules: &HtmlRules) -> Tokens {
    // At most a tag and a text per `<`: one allocation instead of a doubling series of copies;
    // normalized texts are about as long as the page.
    rest_of(Scanner::new(html, rules, true))
}

/// The tokens from where `scanner` is to the end of its page.
fn rest_of(mut scanner: Scanner) -> Tokens {
    let mut out = Builder::for_rest_of(&scanner);
    while out.step(&mut scanner).is_some() {}
    out.finish(scanner)
}

/// A token stream being made, a step at a time.
struct Builder {
    spans: Vec<Span>,
    rendered: String,
}

impl Builder {
    /// Room for the tokens of the rest of `scanner`'s page: at most a tag and a text per `<`,
    /// one allocation instead of a doubling series of copies; normalized texts are about as
    /// long as the page.
    fn for_rest_of(scanner: &Scanner) -> Builder {
        let rest = scanner.html.get(scanner.i..).unwrap_or("");
        Builder {
            spans: Vec::with_capacity(2 * memchr::memchr_iter(b'<', rest.as_bytes()).count() + 1),
            rendered: String::with_capacity(rest.len() + rest.len() / 8),
        }
    }

    /// One step of `scanner`, its token kept: None at the end of the page.
    fn step(&mut self, scanner: &mut Scanner) -> Option<()> {
        let start = self.rendered.len();
        if scanner.step(&mut self.rendered)? {
            self.spans.push(Span {
                start,
                end: self.rendered.len(),
                path: scanner.token_path,
            });
            self.rendered.push('\n');
        } else {
            // A step without a token writes nothing.
            self.rendered.truncate(start);
        }
        Some(())
    }

    fn finish(self, scanner: Scanner) -> Tokens {
        Tokens {
            rendered: self.rendered,
            spans: self.spans,
            paths: scanner.path_table,
        }
    }
}

/// Two pages' token streams from a token both reach in the same state to, when they end alike,
/// a token after which both give the same tokens; what comes before the window (the same
/// tokens on both sides) is only counted, and what comes after it is left out.
#[derive(Debug)]
pub struct Window {
    pub legacy: Tokens,
    pub candidate: Tokens,
    /// Tokens before the window, on each side.
    pub tokens_before: usize,
    /// Lines of the rendering before the window (a token's text can hold line breaks).
    pub lines_before: usize,
    /// Whether tokens after the window were left out (the same on both sides).
    pub cut_after: bool,
}

/// The token streams of `a` and `b` from the last step that reads only bytes both pages start
/// with and ends at least `margin` bytes before the first byte they differ in: every step
/// before it gives both pages the same token and state, so it is taken once, on `a`, and the
/// tokens it makes are only counted (the paths of the elements still open are kept). They end
/// where both scanners stand in the same state as many bytes from their page's end, in the
/// bytes both pages end with and at least `margin` after the last byte they differ in: the
/// same bytes read in the same state give the same tokens.
pub fn window<'s>(a: &'s str, b: &'s str, rules: &'s HtmlRules, margin: usize) -> Window {
    let shared = super::common_prefix(a.as_bytes(), b.as_bytes());
    let limit = shared.saturating_sub(margin);
    let mut sa = Scanner::new(a, rules, true);
    let (mut tokens_before, mut lines_before) = (0, 0);
    let mut text = String::new();
    // A raw text's opening tag reads on to its end tag (`next_extent` counts it), so the raw
    // text that follows is within the limit too.
    while sa.i < a.len() && sa.next_extent() <= limit {
        text.clear();
        match sa.step(&mut text) {
            None => break,
            Some(true) => {
                text.push('\n');
                tokens_before += 1;
                lines_before += crate::diff::line_count(&text);
            }
            Some(false) => {}
        }
    }
    let mut sb = Scanner {
        html: b,
        rules,
        i: sa.i,
        stack: sa.stack.clone(),
        skipping: sa.skipping.clone(),
        attrs: Vec::new(),
        paths: true,
        token_path: sa.token_path,
        path_table: sa.path_table.clone(),
        raw_until: sa.raw_until,
    };
    // The shared end, not counting bytes of the shared start (a page inside the other).
    let room = a.len().min(b.len()) - shared;
    let shared_end = crate::diff::common_suffix(
        &a.as_bytes()[a.len() - room..],
        &b.as_bytes()[b.len() - room..],
    );
    let after = shared_end.saturating_sub(margin);
    let (mut ta, mut tb) = (Builder::for_rest_of(&sa), Builder::for_rest_of(&sb));
    let mut cut_after = false;
    loop {
        let (left_a, left_b) = (a.len() - sa.i, b.len() - sb.i);
        if left_a == left_b && left_a <= after && sa.same_state(&sb) {
            cut_after = left_a > 0;
            break;
        }
        // The side further from its end steps, until both stand as far from it.
        let stepped = if left_a >= left_b {
            ta.step(&mut sa)
        } else {
            tb.step(&mut sb)
        };
        if stepped.is_none() {
            while ta.step(&mut sa).is_some() {}
            while tb.step(&mut sb).is_some() {}
            break;
        }
    }
    Window {
        legacy: ta.finish(sa),
        candidate: tb.finish(sb),
        tokens_before,
        lines_before,
        cut_after,
    }
}

/// Whether two documents give the same token texts, walked side by side without keeping
/// tokens or paths (the same stream as [`tokens`], so equal here is equal there).
pub fn same_tokens<'s>(a: &'s str, b: &'s str, rules: &'s HtmlRules) -> bool {
    let mut sa = Scanner::new(a, rules, false);
    let mut sb = Scanner::new(b, rules, false);
    let (mut ta, mut tb) = (String::new(), String::new());
    loop {
        leap(&mut sa, &mut sb);
        let next_a = next_token(&mut sa, &mut ta);
        let next_b = next_token(&mut sb, &mut tb);
        match (next_a, next_b) {
            (false, false) => return true,
            (true, true) if ta == tb => {}
            _ => return false,
        }
    }
}

/// When both scanners are in the same state before the same bytes, skims `a` alone over the
/// steps that read only those bytes (each would give `b` the same token and state) and then
/// gives `b` the state `a` reached: the bytes both pages share are not tokenized, only
/// followed for the open elements and ignored ones.
fn leap<'s>(a: &mut Scanner<'s>, b: &mut Scanner<'s>) {
    if a.raw_until.is_some()
        || b.raw_until.is_some()
        || a.skipping != b.skipping
        || a.stack.len() != b.stack.len()
        || a.stack.iter().zip(&b.stack).any(|(x, y)| x.tag != y.tag)
    {
        return;
    }
    let (ra, rb) = (&a.html.as_bytes()[a.i..], &b.html.as_bytes()[b.i..]);
    let run = super::common_prefix(ra, rb);
    // A step that reads to the end of the page reads past the shared bytes unless both pages
    // end there.
    let limit = if run == ra.len() && run == rb.len() {
        a.i + run + 1
    } else {
        a.i + run
    };
    let start = a.i;
    a.skim_until(limit);
    if a.i == start {
        return;
    }
    b.i += a.i - start;
    b.stack.clone_from(&a.stack);
    b.skipping.clone_from(&a.skipping);
    b.raw_until = a.raw_until.map(|end| end - a.i + b.i);
}

/// Steps `s` to its next token (into `text`); false at the end.
fn next_token(s: &mut Scanner, text: &mut String) -> bool {
    loop {
        text.clear();
        match s.step(text) {
            None => return false,
            Some(true) => return true,
            Some(false) => {}
        }
    }
}

/// The tokenizer's state between tokens.
struct Scanner<'a> {
    html: &'a str,
    rules: &'a HtmlRules,
    i: usize,
    stack: Vec<Open<'a>>,
    /// An ignored element being skipped, and how deep in it (None: not skipping).
    skipping: Option<(Cow<'a, str>, usize)>,
    /// The current tag's attributes (kept to reuse the allocation).
    attrs: Vec<Attr<'a>>,
    /// Whether element paths are kept (for differences; the walk needs none).
    paths: bool,
    /// The path of the last token emitted (in `path_table`).
    token_path: usize,
    /// Every element path made (kept only when the scanner keeps paths).
    path_table: PathTable,
    /// Where the raw text of a `script`, `style`, `textarea` or `title` just opened ends.
    raw_until: Option<usize>,
}

impl<'a> Scanner<'a> {
    fn new(html: &'a str, rules: &'a HtmlRules, paths: bool) -> Scanner<'a> {
        Scanner {
            html,
            rules,
            i: 0,
            stack: vec![Open {
                tag: Cow::Borrowed(""),
                children: Vec::new(),
                path: Some(0),
            }],
            skipping: None,
            attrs: Vec::new(),
            paths,
            token_path: 0,
            path_table: PathTable::default(),
            raw_until: None,
        }
    }

    /// How far (exclusive) the next step reads; past the page's end when it reads to the end.
    /// A step that opens a raw-text element reads ahead to its closing tag: it counts as
    /// reading everything.
    /// Whether the same bytes from here to the end give both scanners the same tokens: the
    /// same elements open (by tag: paths do not make token texts), the same ignored element
    /// being skipped, raw text ending as far from the end.
    fn same_state(&self, other: &Scanner) -> bool {
        let raw_left = |s: &Scanner| s.raw_until.map(|e| s.html.len() - e);
        raw_left(self) == raw_left(other)
            && self.skipping == other.skipping
            && self.stack.len() == other.stack.len()
            && self
                .stack
                .iter()
                .zip(&other.stack)
                .all(|(x, y)| x.tag == y.tag)
    }

    fn next_extent(&self) -> usize {
        let (bytes, i) = (self.html.as_bytes(), self.i);
        let past_end = bytes.len() + 1;
        if let Some(end) = self.raw_until {
            return end;
        }
        let Some(rel) = memchr::memchr(b'<', &bytes[i..]) else {
            return past_end;
        };
        if rel > 0 {
            return i + rel + 1;
        }
        let rest = &bytes[i..];
        if rest.starts_with(b"<!--") {
            return memchr::memmem::find(rest, b"-->").map_or(past_end, |e| i + e + 3);
        }
        let Some(close) = memchr::memchr(b'>', rest) else {
            return past_end;
        };
        let inner = &rest[1..close];
        let name_end = inner
            .iter()
            .position(|&c| c.is_ascii_whitespace() || c == b'/')
            .unwrap_or(inner.len());
        let name = &inner[..name_end];
        if RAW_TEXT
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(name))
        {
            // The step reads on to the raw text's end tag (at most: a tag that opens no raw
            // text reads less).
            let end_tag = format!("</{}", String::from_utf8_lossy(name));
            return find_ci(self.html, &end_tag, i + close + 1)
                .map_or(past_end, |e| e + end_tag.len());
        }
        i + close + 1
    }

    fn path(&self) -> usize {
        self.stack.last().and_then(|o| o.path).unwrap_or(0)
    }

    /// Text at the current element appended to `out`; whether it makes a token (when not,
    /// nothing was appended).
    fn text(&mut self, text: &str, out: &mut String) -> bool {
        if self.skipping.is_some() {
            return false;
        }
        let start = out.len();
        if self.rules.fold_whitespace {
            for (n, word) in text.split_whitespace().enumerate() {
                if n > 0 {
                    out.push(' ');
                }
                out.push_str(word);
            }
        } else {
            out.push_str(text);
        }
        if out.len() == start {
            return false;
        }
        if self.paths {
            self.token_path = self.path();
        }
        true
    }

    /// One step: Some(true) when it wrote a token into `out`, Some(false) when it consumed
    /// input without one, None at the end.
    fn step(&mut self, out: &mut String) -> Option<bool> {
        self.step_as::<true>(out)
    }

    /// Skims the steps that read nothing at or past `limit`: the common ones (text, and tags
    /// with a plain lower-case name that no ignored-element selector could match) by
    /// `skim_plain`, the rest through `next_extent` and `skim`, to the same state.
    fn skim_until(&mut self, limit: usize) {
        while self.i < self.html.len() {
            if !self.paths
                && self.raw_until.is_none()
                && self.skipping.is_none()
                && self.skim_plain(limit)
            {
                return;
            }
            if self.next_extent() > limit || self.skim().is_none() {
                return;
            }
        }
    }

    /// Plain steps skimmed, a text and the tag after it at a time, until one would read at or
    /// past `limit` (true) or the next step is not a plain one (false: `skim` takes it).
    fn skim_plain(&mut self, limit: usize) -> bool {
        let (html, bytes) = (self.html, self.html.as_bytes());
        loop {
            let i = self.i;
            let Some(rel) = memchr::memchr(b'<', &bytes[i..]) else {
                return false;
            };
            let at = i + rel;
            // A text's step reads the `<` that ends it.
            if at + 1 > limit {
                return true;
            }
            self.i = at;
            let Some(close) = memchr::memchr(b'>', &bytes[at..]) else {
                return false;
            };
            // Every step at a `<` reads at least to the first `>`.
            if at + close + 1 > limit {
                return true;
            }
            let inner = &bytes[at + 1..at + close];
            let Some((&first, name)) = inner.split_first() else {
                return false;
            };
            if first == b'/' {
                if name.is_empty() || !name.iter().all(|&b| is_plain_name_byte(b)) {
                    return false;
                }
                let tag = &html[at + 2..at + close];
                self.i = at + close + 1;
                if let Some(pos) = self.stack.iter().rposition(|o| o.tag == tag) {
                    if pos > 0 {
                        self.stack.truncate(pos);
                    }
                }
                continue;
            }
            if !first.is_ascii_lowercase() {
                return false;
            }
            // The name runs to white space or `/`; every byte of it plain, in one pass.
            let mut name_end = 1;
            for &b in name {
                if b.is_ascii_whitespace() || b == b'/' {
                    break;
                }
                if !is_plain_name_byte(b) {
                    return false;
                }
                name_end += 1;
            }
            let tag = &html[at + 1..at + 1 + name_end];
            if is_raw_text(tag)
                || self
                    .rules
                    .ignore_elements
                    .iter()
                    .any(|s| s.could_match(tag))
            {
                return false;
            }
            self.i = at + close + 1;
            if !is_void(tag) && !inner.ends_with(b"/") && self.stack.len() < 512 {
                self.stack.push(Open {
                    tag: Cow::Borrowed(tag),
                    children: Vec::new(),
                    path: None,
                });
            }
        }
    }

    /// One step that only moves the state (the open elements, an ignored element being
    /// skipped, raw text) and writes nothing: for bytes whose tokens are known to be equal.
    fn skim(&mut self) -> Option<()> {
        let mut unused = String::new();
        self.step_as::<false>(&mut unused).map(|_| ())
    }

    /// A step; with `EMIT` false no token is written (nor its text built), and attributes are
    /// parsed only when an ignored-element selector could match the tag.
    fn step_as<const EMIT: bool>(&mut self, out: &mut String) -> Option<bool> {
        let html = self.html;
        let len = html.len();
        let i = self.i;
        if let Some(end) = self.raw_until.take() {
            self.i = end;
            return Some(EMIT && self.text(&html[i..end], out));
        }
        if i >= len {
            return None;
        }
        let Some(rel) = memchr::memchr(b'<', &html.as_bytes()[i..]) else {
            self.i = len;
            return Some(EMIT && self.text(&html[i..], out));
        };
        if rel > 0 {
            self.i = i + rel;
            return Some(EMIT && self.text(&html[i..i + rel], out));
        }
        let rest = &html[i..];
        if rest.starts_with("<!--") {
            let end = rest.find("-->").map(|e| e + 3).unwrap_or(rest.len());
            self.i = i + end;
            if EMIT && !self.rules.strip_comments && self.skipping.is_none() {
                out.push_str(&rest[..end]);
                if self.paths {
                    self.token_path = self.path();
                }
                return Some(true);
            }
            return Some(false);
        }
        let Some(close) = memchr::memchr(b'>', rest.as_bytes()) else {
            self.i = len;
            return Some(EMIT && self.text(rest, out));
        };
        let inner = &rest[1..close];
        self.i = i + close + 1;
        if inner.starts_with('!') || inner.starts_with('?') {
            if !EMIT || self.skipping.is_some() {
                return Some(false);
            }
            out.push('<');
            out.push_str(&fold(inner));
            out.push('>');
            if self.paths {
                self.token_path = self.path();
            }
            return Some(true);
        }
        if let Some(name) = inner.strip_prefix('/') {
            let tag = lower(name.trim());
            if let Some((skip_tag, depth)) = &mut self.skipping {
                if *skip_tag == tag {
                    *depth -= 1;
                    if *depth == 0 {
                        self.skipping = None;
                    }
                }
                return Some(false);
            }
            if let Some(pos) = self.stack.iter().rposition(|o| o.tag == tag) {
                if pos > 0 {
                    if let Some(path) = self.stack[pos].path {
                        self.token_path = path;
                    }
                    self.stack.truncate(pos);
                    if EMIT {
                        out.push_str("</");
                        out.push_str(&tag);
                        out.push('>');
                    }
                    return Some(EMIT);
                }
            }
            return Some(false);
        }
        let name_end = inner
            .find(|c: char| c.is_ascii_whitespace() || c == '/')
            .unwrap_or(inner.len());
        let tag = lower(&inner[..name_end]);
        if tag.is_empty() {
            // A `<` that opens nothing: text, and scanning resumes after it.
            self.i = i + 1;
            return Some(EMIT && self.text("<", out));
        }
        let self_closing = inner.ends_with('/');
        let is_void = is_void(&tag) || self_closing;
        if let Some((skip_tag, depth)) = &mut self.skipping {
            if *skip_tag == tag && !is_void {
                *depth += 1;
            }
            return Some(false);
        }
        let rules = self.rules;
        let mut attrs = std::mem::take(&mut self.attrs);
        let selectors = &rules.ignore_elements;
        if EMIT || selectors.iter().any(|s| s.could_match(&tag)) {
            parse_attrs(&inner[name_end..], &mut attrs);
            if selectors.iter().any(|s| s.matches(&tag, &attrs)) {
                self.attrs = attrs;
                if !is_void {
                    self.skipping = Some((tag, 1));
                }
                return Some(false);
            }
        }
        if EMIT {
            attrs.retain(|(k, _)| !rules.ignore_attributes.iter().any(|a| a == k));
            if rules.sort_attributes {
                attrs.sort();
            }
            out.push('<');
            out.push_str(&tag);
            for (k, v) in &attrs {
                out.push(' ');
                out.push_str(k);
                out.push_str("=\"");
                out.push_str(v);
                out.push('"');
            }
            out.push('>');
        }
        self.attrs = attrs;
        let tag_path: Option<usize> = if self.paths {
            // Sibling index among same-tag children of the parent.
            let parent = self.stack.last_mut().map(|p| {
                match p.children.iter_mut().find(|(t, _)| *t == tag) {
                    Some(e) => {
                        e.1 += 1;
                        e.1
                    }
                    None => {
                        p.children.push((tag.clone(), 1));
                        1
                    }
                }
            });
            let base = self.path();
            self.token_path = self.path_table.push(base, &tag, parent.unwrap_or(1));
            Some(self.token_path)
        } else {
            None
        };
        if !is_void {
            if is_raw_text(&tag) {
                // Raw text up to the closing tag: the next step's token.
                let end = find_ci(html, &format!("</{tag}"), self.i).unwrap_or(len);
                self.stack.push(Open {
                    tag,
                    children: Vec::new(),
                    path: tag_path,
                });
                self.raw_until = Some(end);
            } else if self.stack.len() < 512 {
                self.stack.push(Open {
                    tag,
                    children: Vec::new(),
                    path: tag_path,
                });
            }
        }
        Some(EMIT)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// xorshift64 from `seed`: numbers below `n`, a reproducible corpus without a dependency.
    pub(crate) fn below(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        }
    }

    /// Bits of pages, well and badly formed, that generated pages are made of.
    pub(crate) const PIECES: &[&str] = &[
        "<p>",
        "</p>",
        "<div class=a id=b>",
        "<div id=b class=a>",
        "</div>",
        "text ",
        "  \n ",
        "<!-- c -->",
        "<!--",
        "<script>",
        "</script>",
        "x < y",
        "<br/>",
        "<input name=_token value=1>",
        "<input name=\"_token\" value='2'>",
        "<div id=debug>",
        "<b>",
        "</b>",
        "<!DOCTYPE html>",
        "<title>T</title>",
        "<a href='x' nonce=n>",
        "<a nonce=m href='x'>",
        "</a>",
        "<",
        ">",
        "</ div>",
        "<P A=1 a=2>",
        "<textarea>",
        "\u{e9}",
        "<>",
        "</x>",
        "<style>p{}</STYLE>",
        "<span>",
        "</span>",
        "<img src=a>",
        "<p/>",
        "<h1 class=x>",
        "</h1>",
        "</div >",
    ];

    fn rules() -> HtmlRules {
        HtmlRules {
            strip_comments: true,
            sort_attributes: true,
            fold_whitespace: true,
            ignore_elements: vec![
                Selector::parse("input[name=_token]").expect("sel"),
                Selector::parse("#debug").expect("sel"),
            ],
            ignore_attributes: vec!["nonce".into()],
        }
    }

    #[test]
    fn paths_and_normalization() {
        let html = "<html><body><p b='2' a=\"1\">Hello\n   world</p><!-- x --><p>two</p><form><input name=\"_token\" value=\"abc\"><input name=user></form><div id=debug><b>t</b></div><script nonce=\"n1\">var x = 1;</script></body></html>";
        let t = tokens(html, &rules());
        let texts = t.texts();
        assert!(texts.contains(&"<p a=\"1\" b=\"2\">"), "{texts:?}");
        assert!(texts.contains(&"Hello world"));
        assert!(
            !texts.iter().any(|x| x.contains("_token")
                || x.contains("<!--")
                || x.contains("debug")
                || x.contains("nonce")),
            "{texts:?}"
        );
        let two = t.iter().find(|t| t.text == "two").expect("second p text");
        assert_eq!(two.path, "html/body/p[2]");
        let user = t.iter().find(|t| t.text.contains("user")).expect("input");
        assert_eq!(user.path, "html/body/form/input");
        assert!(texts.contains(&"var x = 1;"));
    }

    #[test]
    fn attribute_order_and_whitespace_do_not_matter() {
        let a = tokens("<div class=a id=b>x  y</div>", &rules());
        let b = tokens("<div id=b class=a>x y</div>\n", &rules());
        assert_eq!(a.rendered(), b.rendered());
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "<",
            "<<>>",
            "</x>",
            "<a <b>",
            "<!--",
            "<script>",
            "<p a='1>",
            "<\u{e9}>",
            "<br/><p/>x",
        ] {
            let _ = tokens(s, &rules());
        }
    }

    #[test]
    fn the_side_by_side_walk_sees_the_token_stream_the_trees_see() {
        let pieces = PIECES;
        // Selectors that name their tag: other tags are skimmed by the plain steps.
        let by_tag = HtmlRules {
            ignore_elements: vec![
                Selector::parse("input[name=_token]").expect("sel"),
                Selector::parse("div#debug").expect("sel"),
            ],
            ..rules()
        };
        let mut next = below(0x2545_F491_4F6C_DD1D);
        let mut equal = 0;
        for _ in 0..20_000 {
            let doc: Vec<&str> = (0..next(20)).map(|_| pieces[next(pieces.len())]).collect();
            let mut other = doc.clone();
            if !other.is_empty() && next(2) == 0 {
                let at = next(other.len());
                other[at] = pieces[next(pieces.len())];
            }
            let (a, b) = (doc.concat(), other.concat());
            for r in [rules(), HtmlRules::default(), by_tag.clone()] {
                let texts = |s: &str| -> Vec<String> {
                    tokens(s, &r).iter().map(|t| t.text.to_string()).collect()
                };
                let same = texts(&a) == texts(&b);
                assert_eq!(same_tokens(&a, &b, &r), same, "{a:?} {b:?}");
                if same && a != b {
                    equal += 1;
                }
            }
        }
        assert!(equal > 500, "{equal} pairs equal only after normalization");
    }

    #[test]
    fn selectors() {
        assert!(Selector::parse("input[name=_token]").is_ok());
        assert!(Selector::parse("meta[name='csrf-token']").is_ok());
        assert!(Selector::parse("div.banner").is_ok());
        assert!(Selector::parse("a[href").is_err());
        assert!(Selector::parse("a b").is_err());
    }
}
