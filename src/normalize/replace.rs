//! Text replacements (`[[text.replace]]`) made on a pair of bodies that are mostly the same
//! bytes: the legacy body is searched whole, the candidate only where it differs. A match of a
//! regex whose matches are at most `longest` bytes is decided by the bytes from a few before
//! its start to a few after `longest`, so where both bodies hold the same bytes they hold the
//! same matches: the candidate's replaced text takes the legacy's up to the last match that
//! lies wholly in the shared start, is searched from there, and takes the legacy's again from
//! the first place in the shared end where both searches stand equally far from the end
//! outside any match. Regexes with unbounded or empty matches are searched whole on both
//! sides. Pure: no IO.

use regex::bytes::Regex;
use std::borrow::Cow;

/// Bytes of context a match's assertions may look at on either side (`\b` reads one
/// character, four bytes at most in UTF-8), with room to spare.
const LOOK: usize = 8;

/// One `[[text.replace]]` rule, compiled.
#[derive(Debug, Clone)]
pub(super) struct TextReplacement {
    pub re: Regex,
    pub with: Vec<u8>,
    /// The most bytes a match can take, when bounded and no match is empty (None: the pair
    /// is searched whole on both sides).
    longest: Option<usize>,
}

impl TextReplacement {
    pub fn new(re: Regex, with: Vec<u8>) -> Self {
        let longest = regex_syntax::parse(re.as_str()).ok().and_then(|hir| {
            let p = hir.properties();
            p.minimum_len().filter(|&n| n > 0).and(p.maximum_len())
        });
        TextReplacement { re, with, longest }
    }

    /// The replaced text of one body, as `regex` gives it.
    pub fn apply<'b>(&self, body: &'b [u8]) -> Cow<'b, [u8]> {
        self.re.replace_all(body, self.with.as_slice())
    }

    /// The replaced texts of `a` and `b`: what [`Self::apply`] gives each.
    pub fn apply_pair<'b>(&self, a: &'b [u8], b: &'b [u8]) -> (Cow<'b, [u8]>, Cow<'b, [u8]>) {
        let Some(longest) = self.longest else {
            return (self.apply(a), self.apply(b));
        };
        if a == b {
            let replaced = self.apply(a);
            return (replaced.clone(), replaced);
        }
        // The legacy's matches: where each starts and ends, and where its replacement ends in
        // the replaced text.
        let mut out_a = Vec::new();
        let mut matches: Vec<(usize, usize, usize)> = Vec::new();
        let mut last = 0;
        let mut at = 0;
        while let Some((start, end)) = self.next_match(a, at, &mut out_a, &mut last) {
            matches.push((start, end, out_a.len()));
            at = end;
        }
        out_a.extend_from_slice(&a[last..]);
        let prefix = crate::diff::common_prefix(a, b);
        let suffix = crate::diff::common_suffix(a, b).min(a.len().min(b.len()) - prefix);
        // The legacy's matches the candidate shares: those decided by shared bytes only.
        let shared = matches.partition_point(|&(start, _, _)| start + longest + LOOK <= prefix);
        let (mut at, copied) = match shared.checked_sub(1).map(|k| matches[k]) {
            Some((_, end, out_end)) => (end, out_end),
            None => (0, 0),
        };
        let mut out_b = Vec::new();
        if copied > 0 {
            out_b.reserve(b.len() + self.with.len());
            out_b.extend_from_slice(&out_a[..copied]);
        }
        let mut last = at;
        // Whether the candidate's text has a replacement in it (else it is the body itself).
        let mut replaced_b = shared > 0;
        // From here (positions in `b`) the bytes to the end are the legacy's, context included.
        let resync_from = b.len() - suffix + LOOK;
        loop {
            if at >= resync_from {
                // The legacy's position as far from its end, and whether its search passes
                // there outside a match (the next match ending after it starts at or after it).
                let pa = at + a.len() - b.len();
                let next = matches.partition_point(|&(_, end, _)| end <= pa);
                if matches.get(next).is_none_or(|&(start, _, _)| start >= pa) {
                    let from = match next.checked_sub(1).map(|k| matches[k]) {
                        Some((_, end, out_end)) => out_end + (pa - end),
                        None => pa,
                    };
                    out_b.reserve(at - last + out_a.len() - from);
                    out_b.extend_from_slice(&b[last..at]);
                    out_b.extend_from_slice(&out_a[from..]);
                    replaced_b |= next < matches.len();
                    return Self::texts(a, out_a, &matches, b, out_b, replaced_b);
                }
            }
            // Searched only as far as the place the two could stand together again: a match
            // found with its context inside is the whole body's; none found means none starts
            // before that place.
            let bound = resync_from.saturating_add(longest + LOOK);
            let hay = if at < resync_from && bound < b.len() {
                match self.re.find_at(&b[..bound], at) {
                    Some(m) if m.start() + longest + LOOK <= bound => &b[..bound],
                    Some(_) => b,
                    None => {
                        at = resync_from;
                        continue;
                    }
                }
            } else {
                b
            };
            match self.next_match(hay, at, &mut out_b, &mut last) {
                Some((_, end)) => {
                    at = end;
                    replaced_b = true;
                }
                None => break,
            }
        }
        out_b.extend_from_slice(&b[last..]);
        Self::texts(a, out_a, &matches, b, out_b, replaced_b)
    }

    /// The replaced texts, borrowing the bodies where nothing was replaced (as `replace_all`
    /// does, so that no copy is made).
    fn texts<'b>(
        a: &'b [u8],
        out_a: Vec<u8>,
        matches: &[(usize, usize, usize)],
        b: &'b [u8],
        out_b: Vec<u8>,
        replaced_b: bool,
    ) -> (Cow<'b, [u8]>, Cow<'b, [u8]>) {
        let a = if matches.is_empty() {
            Cow::Borrowed(a)
        } else {
            Cow::Owned(out_a)
        };
        let b = if replaced_b {
            Cow::Owned(out_b)
        } else {
            Cow::Borrowed(b)
        };
        (a, b)
    }

    /// The next match in `hay` from `at`: the text from `last` to it and its replacement are
    /// written to `out`, and `last` moves past it.
    fn next_match(
        &self,
        hay: &[u8],
        at: usize,
        out: &mut Vec<u8>,
        last: &mut usize,
    ) -> Option<(usize, usize)> {
        // The replaced text is about as long as the body: one allocation at the first match
        // (none when nothing matches), not a doubling run.
        let reserve = |out: &mut Vec<u8>| {
            if out.capacity() == 0 {
                out.reserve(hay.len() + self.with.len());
            }
        };
        // `$` in the replacement names groups: expanded from the match's captures, as
        // `replace_all` does.
        let (start, end) = if memchr::memchr(b'$', &self.with).is_some() {
            let caps = self.re.captures_at(hay, at)?;
            let m = caps.get(0)?;
            reserve(out);
            out.extend_from_slice(&hay[*last..m.start()]);
            caps.expand(&self.with, out);
            (m.start(), m.end())
        } else {
            let m = self.re.find_at(hay, at)?;
            reserve(out);
            out.extend_from_slice(&hay[*last..m.start()]);
            out.extend_from_slice(&self.with);
            (m.start(), m.end())
        };
        *last = end;
        Some((start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, with: &str) -> TextReplacement {
        TextReplacement::new(
            Regex::new(pattern).expect("regex"),
            with.as_bytes().to_vec(),
        )
    }

    /// Texts made of pieces the regexes below match, half match or do not match.
    const PIECES: &[&str] = &[
        "1764000000",
        "1764000000123",
        "17640",
        ".123",
        "2026-11-28 10:00:07",
        "2026-11-28T10:00:07.5Z",
        "Tue, 14 Nov 2023 22:13:20 GMT",
        "?v=1234567",
        "&_=99",
        "<td>",
        "</td>\n",
        " ",
        "\n",
        "x",
        "é",
        "tok-",
        "abc",
        "9",
        "{epoch}",
        "{epoch}.456",
        "ab",
    ];

    fn text(below: &mut impl FnMut(usize) -> usize, n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|_| PIECES[below(PIECES.len())].bytes())
            .collect()
    }

    #[test]
    fn the_pair_is_replaced_as_each_body_alone() {
        let rules = [
            rule(r"\b1[0-9]{9}(?:[0-9]{3})?\b", "{epoch}"),
            rule(
                r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?\b",
                "{datetime}",
            ),
            rule(r"([?&](?:v|ver|_|t|ts|cb)=)[0-9]{6,9}", "${1}{n}"),
            rule(r"\{epoch\}\.[0-9]{3}\b", "{msec}"),
            rule(r"(?m)^x", "X"),
            rule(r"ab|abc", "_"),
            rule(r"[0-9]", ""),
            rule(r"é\b", "e"),
            rule(r"x*", "-"),
        ];
        assert!(rules[0].longest.is_some() && rules[1].longest.is_none());
        assert!(rules[8].longest.is_none(), "empty matches");
        let mut below = crate::normalize::html::tests::below(0x0BAD_5EED_1234_5678);
        let (mut windowed, mut cut) = (0, 0);
        for _ in 0..3_000 {
            let n = below(200);
            let a = text(&mut below, n);
            let mut b = a.clone();
            for _ in 0..below(3) + 1 {
                let at = below(b.len() + 1);
                let cut_to = (at + below(20)).min(b.len());
                let n = below(3);
                let with = text(&mut below, n);
                b.splice(at..cut_to, with);
            }
            for rule in &rules {
                let (pa, pb) = rule.apply_pair(&a, &b);
                let (ea, eb) = (rule.apply(&a), rule.apply(&b));
                assert_eq!(
                    (&*pa, &*pb),
                    (&*ea, &*eb),
                    "{}\n{}\n{}",
                    rule.re.as_str(),
                    String::from_utf8_lossy(&a),
                    String::from_utf8_lossy(&b)
                );
                if rule.longest.is_some() && a != b {
                    windowed += 1;
                    let shared =
                        crate::diff::common_prefix(&a, &b) + crate::diff::common_suffix(&a, &b);
                    cut += usize::from(shared > 200);
                }
            }
        }
        assert!(windowed > 15_000 && cut > 5_000, "{windowed} {cut}");
    }
}
