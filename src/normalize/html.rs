//! HTML as a normalized token stream: tags with their attributes (sorted when asked), text with
//! whitespace folded, comments dropped when asked, and ignored elements (a CSRF
//! `<input name="_token">`) or attributes (`nonce`) removed. Each token knows its element path
//! (`html/body/form/input[2]`), so a difference says where it is. A forgiving scanner, not a
//! validating parser: it never fails, whatever the bytes.

use std::fmt::Write as _;

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

    fn matches(&self, tag: &str, attrs: &[(String, String)]) -> bool {
        let get = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
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
pub struct Token {
    /// Element path of the token (`html/body/p[2]`), shared by the tokens of one element.
    pub path: std::sync::Arc<str>,
    /// The token as text (`<p class="x">`, `</p>`, `hello`), after normalization.
    pub text: String,
}

const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];
const RAW_TEXT: &[&str] = &["script", "style", "textarea", "title"];

struct Open {
    tag: String,
    /// Child element counts by tag, for sibling indexes.
    children: Vec<(String, usize)>,
    /// The element's full path, made once.
    path: std::sync::Arc<str>,
}

fn parse_attrs(s: &str) -> Vec<(String, String)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
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
        let name = s[start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
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
                value = s[vs..i.min(b.len())].to_string();
                i += 1;
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = s[vs..i].to_string();
            }
        }
        out.push((name, value));
    }
    out
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
pub fn tokens(html: &str, rules: &HtmlRules) -> Vec<Token> {
    let mut out = Vec::new();
    let mut stack: Vec<Open> = vec![Open {
        tag: String::new(),
        children: Vec::new(),
        path: std::sync::Arc::from(""),
    }];
    let path = |stack: &[Open]| -> std::sync::Arc<str> {
        stack
            .last()
            .map(|o| o.path.clone())
            .unwrap_or_else(|| std::sync::Arc::from(""))
    };
    // Depth of an ignored element being skipped (0: not skipping).
    let mut skipping: Option<(String, usize)> = None;
    let mut i = 0;
    let len = html.len();
    let push_text =
        |out: &mut Vec<Token>, stack: &[Open], text: &str, skipping: &Option<(String, usize)>| {
            if skipping.is_some() {
                return;
            }
            let t = if rules.fold_whitespace {
                fold(text)
            } else {
                text.to_string()
            };
            if !t.is_empty() {
                out.push(Token {
                    path: path(stack),
                    text: t,
                });
            }
        };
    while i < len {
        let Some(rel) = html[i..].find('<') else {
            push_text(&mut out, &stack, &html[i..], &skipping);
            break;
        };
        if rel > 0 {
            push_text(&mut out, &stack, &html[i..i + rel], &skipping);
        }
        i += rel;
        let rest = &html[i..];
        if rest.starts_with("<!--") {
            let end = rest.find("-->").map(|e| e + 3).unwrap_or(rest.len());
            if !rules.strip_comments && skipping.is_none() {
                out.push(Token {
                    path: path(&stack),
                    text: rest[..end].to_string(),
                });
            }
            i += end;
            continue;
        }
        let Some(close) = rest.find('>') else {
            push_text(&mut out, &stack, rest, &skipping);
            break;
        };
        let inner = &rest[1..close];
        i += close + 1;
        if inner.starts_with('!') || inner.starts_with('?') {
            if skipping.is_none() {
                out.push(Token {
                    path: path(&stack),
                    text: format!("<{}>", fold(inner)),
                });
            }
            continue;
        }
        if let Some(name) = inner.strip_prefix('/') {
            let tag = name.trim().to_ascii_lowercase();
            if let Some((skip_tag, depth)) = &mut skipping {
                if *skip_tag == tag {
                    *depth -= 1;
                    if *depth == 0 {
                        skipping = None;
                    }
                }
                continue;
            }
            if let Some(pos) = stack.iter().rposition(|o| o.tag == tag) {
                if pos > 0 {
                    let p = path(&stack[..=pos]);
                    stack.truncate(pos);
                    out.push(Token {
                        path: p,
                        text: format!("</{tag}>"),
                    });
                }
            }
            continue;
        }
        let name_end = inner
            .find(|c: char| c.is_ascii_whitespace() || c == '/')
            .unwrap_or(inner.len());
        let tag = inner[..name_end].to_ascii_lowercase();
        if tag.is_empty() {
            push_text(&mut out, &stack, "<", &skipping);
            i -= close;
            continue;
        }
        let self_closing = inner.ends_with('/');
        let is_void = VOID.contains(&tag.as_str()) || self_closing;
        if let Some((skip_tag, depth)) = &mut skipping {
            if *skip_tag == tag && !is_void {
                *depth += 1;
            }
            continue;
        }
        let mut attrs = parse_attrs(&inner[name_end..]);
        if rules
            .ignore_elements
            .iter()
            .any(|s| s.matches(&tag, &attrs))
        {
            if !is_void {
                skipping = Some((tag.clone(), 1));
            }
            continue;
        }
        attrs.retain(|(k, _)| !rules.ignore_attributes.iter().any(|a| a == k));
        if rules.sort_attributes {
            attrs.sort();
        }
        // Sibling index among same-tag children of the parent.
        let parent =
            stack
                .last_mut()
                .map(|p| match p.children.iter_mut().find(|(t, _)| *t == tag) {
                    Some(e) => {
                        e.1 += 1;
                        e.1
                    }
                    None => {
                        p.children.push((tag.clone(), 1));
                        1
                    }
                });
        let label = match parent {
            Some(n) if n > 1 => format!("{tag}[{n}]"),
            _ => tag.clone(),
        };
        let mut text = format!("<{tag}");
        for (k, v) in &attrs {
            let _ = write!(text, " {k}=\"{v}\"");
        }
        text.push('>');
        let tag_path: std::sync::Arc<str> = {
            let base = path(&stack);
            if base.is_empty() {
                std::sync::Arc::from(label.as_str())
            } else {
                std::sync::Arc::from(format!("{base}/{label}").as_str())
            }
        };
        out.push(Token {
            path: tag_path.clone(),
            text,
        });
        if !is_void {
            if RAW_TEXT.contains(&tag.as_str()) {
                // Raw text up to the closing tag, as one token.
                let end = find_ci(html, &format!("</{tag}"), i).unwrap_or(len);
                let raw = &html[i..end];
                stack.push(Open {
                    tag: tag.clone(),
                    children: Vec::new(),
                    path: tag_path,
                });
                push_text(&mut out, &stack, raw, &skipping);
                i = end;
            } else if stack.len() < 512 {
                stack.push(Open {
                    tag,
                    children: Vec::new(),
                    path: tag_path,
                });
            }
        }
    }
    out
}

/// The stream rendered one token a line (for the unified diff and the fast equality check).
pub fn render(tokens: &[Token]) -> String {
    let mut s = String::new();
    for t in tokens {
        s.push_str(&t.text);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let texts: Vec<&str> = t.iter().map(|t| t.text.as_str()).collect();
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
        assert_eq!(&*two.path, "html/body/p[2]");
        let user = t.iter().find(|t| t.text.contains("user")).expect("input");
        assert_eq!(&*user.path, "html/body/form/input");
        assert!(texts.contains(&"var x = 1;"));
    }

    #[test]
    fn attribute_order_and_whitespace_do_not_matter() {
        let a = tokens("<div class=a id=b>x  y</div>", &rules());
        let b = tokens("<div id=b class=a>x y</div>\n", &rules());
        assert_eq!(render(&a), render(&b));
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
    fn selectors() {
        assert!(Selector::parse("input[name=_token]").is_ok());
        assert!(Selector::parse("meta[name='csrf-token']").is_ok());
        assert!(Selector::parse("div.banner").is_ok());
        assert!(Selector::parse("a[href").is_err());
        assert!(Selector::parse("a b").is_err());
    }
}
