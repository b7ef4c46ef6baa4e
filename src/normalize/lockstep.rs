//! The fast way to a match: both bodies walked side by side, once, without building trees.
//! While the two sides hold the same bytes there is nothing to normalize; the rules are
//! consulted only where they differ (is this pointer ignored? do these two times fold to the
//! same placeholder? are these numbers within the tolerance?). The walk answers only "equal
//! after the rules" or "not sure": anything it cannot decide exactly as the tree comparison
//! would (a real difference, keys in another order, an escape it does not decode, a body
//! `serde_json` would refuse) sends the pair to the tree comparison, which then builds the
//! report. So a report is the same whichever path made it; `compare_exhaustive` and the
//! differential tests and fuzz target hold the two to that.

use super::Rules;
use crate::diff::Difference;

/// Deeper nesting is left to the tree comparison (serde_json stops at 128 levels).
const MAX_DEPTH: usize = 100;

/// The walk cannot decide; the tree comparison will.
#[derive(Debug)]
pub(super) struct Undecided;

type Step = Result<(), Undecided>;

/// One step of the path from the root: a key (its span in the legacy body, between the
/// quotes) or an array index.
#[derive(Clone, Copy)]
enum Seg {
    Key {
        start: usize,
        end: usize,
        escaped: bool,
    },
    Index(usize),
}

/// The body differences of two JSON documents after `rules` (with `now` the response's time,
/// for time folding), exactly as the tree comparison lists them: empty when they are equal
/// after the rules. At most `room` differences; more, or anything the walk cannot decide, is
/// `Undecided`. Without `[json] unordered` rules the walk goes on past a difference (the same
/// keys in the same order, numbers and strings that differ); with them it stops at the first.
pub(super) fn json_differences(
    legacy: &[u8],
    candidate: &[u8],
    rules: &Rules,
    now: f64,
    room: usize,
) -> Result<Vec<Difference>, Undecided> {
    // serde_json takes UTF-8 only; outside strings every valid byte is ASCII, so checking
    // the whole body is the same as checking its strings.
    if std::str::from_utf8(legacy).is_err() || std::str::from_utf8(candidate).is_err() {
        return Err(Undecided);
    }
    let (ends, all) = pointer_ends(rules).ok_or(Undecided)?;
    let mut walk = Walk {
        l: legacy,
        c: candidate,
        i: 0,
        j: 0,
        rules,
        now,
        ends,
        same_until: 0,
        same_offset: 0,
        report: rules.json_unordered.is_empty(),
        room,
        found: Vec::new(),
        path: Vec::new(),
        keys: Vec::new(),
        differing: false,
        skips_missed: [0; MAX_DEPTH + 2],
    };
    walk.document(all)?;
    Ok(walk.found)
}

/// True when `legacy` and `candidate` are JSON documents the walk finds equal after `rules`.
#[cfg(test)]
pub(super) fn json_equal(legacy: &[u8], candidate: &[u8], rules: &Rules, now: f64) -> bool {
    json_differences(legacy, candidate, rules, now, crate::diff::MAX_DIFFERENCES)
        .is_ok_and(|found| found.is_empty())
}

/// Which ignore pointers still match the path walked so far is a bit set, one bit per
/// pointer: by depth, the pointers that many segments long, and all of them (None: more
/// pointers than bits, left to the tree comparison).
fn pointer_ends(rules: &Rules) -> Option<(Vec<u64>, u64)> {
    let ignore = &rules.json_ignore;
    if ignore.len() > 64 {
        return None;
    }
    let mut ends = vec![0u64; MAX_DEPTH + 2];
    let mut all = 0u64;
    for (bit, p) in ignore.iter().enumerate() {
        // An empty pointer removes nothing in the tree comparison, so it names nothing here.
        if !p.is_empty() && p.len() < ends.len() {
            ends[p.len()] |= 1 << bit;
            all |= 1 << bit;
        }
    }
    Some((ends, all))
}

/// The bits set in `bits`, lowest first.
fn bits_of(mut bits: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (bits != 0).then(|| {
            let bit = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            bit
        })
    })
}

struct Walk<'a> {
    l: &'a [u8],
    c: &'a [u8],
    i: usize,
    j: usize,
    rules: &'a Rules,
    now: f64,
    /// By depth: the ignore pointers that many segments long.
    ends: Vec<u64>,
    /// `l[i..same_until]` equals the candidate's bytes at `j` onwards (for the current
    /// `j - i`): tokens that end before it are the same on both sides without a look.
    same_until: usize,
    /// `j - i` when `same_until` was measured.
    same_offset: usize,
    /// Whether differences are listed (and the walk goes on), or the first one ends it.
    report: bool,
    /// Most differences that may be listed.
    room: usize,
    /// The differences found so far, in the tree comparison's order.
    found: Vec<Difference>,
    /// The path from the root to the value being walked.
    path: Vec<Seg>,
    /// The keys of the objects being walked (each object's after its parent's).
    keys: Vec<Seg>,
    /// Whether the value being walked has a pair that is not the same after the rules
    /// (a difference, or numbers within the tolerance): what makes an array element count
    /// in the tree comparison's reordering check.
    differing: bool,
    /// By depth: how many containers to walk before trying to skip one as the same bytes
    /// again (each miss doubles it), so that containers that hold a difference each are not
    /// scanned twice.
    skips_missed: [u8; MAX_DEPTH + 2],
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

/// Bytes that end a run of plain string content: the quote, the backslash, and the control
/// bytes serde_json refuses inside strings.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// End (past the closing quote) of the string opening at `i`, and whether it has escapes.
/// Refuses what serde_json refuses (control bytes, bad escapes) and, to stay on the safe
/// side, surrogate escapes.
fn lex_string(b: &[u8], i: usize) -> Result<(usize, bool), Undecided> {
    let mut k = i + 1;
    let mut escaped = false;
    loop {
        while k < b.len() && !STRING_STOP[b[k] as usize] {
            k += 1;
        }
        match b.get(k) {
            Some(b'"') => return Ok((k + 1, escaped)),
            Some(b'\\') => {}
            _ => return Err(Undecided),
        }
        escaped = true;
        match b.get(k + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => k += 2,
            Some(b'u') => {
                let hex = b.get(k + 2..k + 6).ok_or(Undecided)?;
                let text = std::str::from_utf8(hex).map_err(|_| Undecided)?;
                let code = u16::from_str_radix(text, 16).map_err(|_| Undecided)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) || (0xD800..=0xDFFF).contains(&code) {
                    return Err(Undecided);
                }
                k += 6;
            }
            _ => return Err(Undecided),
        }
    }
}

/// End of the number starting at `i`, with serde_json's grammar; numbers it could not hold
/// (out of range) are left undecided.
fn lex_number(b: &[u8], i: usize) -> Result<usize, Undecided> {
    let digits = |mut k: usize| {
        let s = k;
        while k < b.len() && b[k].is_ascii_digit() {
            k += 1;
        }
        (k, k - s)
    };
    let mut k = i;
    if b.get(k) == Some(&b'-') {
        k += 1;
    }
    match b.get(k) {
        Some(b'0') => k += 1,
        Some(b'1'..=b'9') => k = digits(k).0,
        _ => return Err(Undecided),
    }
    let mut exponent = false;
    if b.get(k) == Some(&b'.') {
        let (e, n) = digits(k + 1);
        if n == 0 {
            return Err(Undecided);
        }
        k = e;
    }
    if matches!(b.get(k), Some(b'e' | b'E')) {
        k += 1;
        if matches!(b.get(k), Some(b'+' | b'-')) {
            k += 1;
        }
        let (e, n) = digits(k);
        if n == 0 {
            return Err(Undecided);
        }
        k = e;
        exponent = true;
    }
    // Without an exponent a number under 300 digits is finite; others are checked as
    // serde_json would read them.
    if exponent || k - i > 300 {
        let text = std::str::from_utf8(&b[i..k]).map_err(|_| Undecided)?;
        if !text.parse::<f64>().is_ok_and(f64::is_finite) {
            return Err(Undecided);
        }
    }
    Ok(k)
}

/// Whether serde_json prints the number `token` (as `lex_number` takes it) back as the same
/// bytes after reading it as an f64: a decimal with a fraction not ending in 0, no exponent,
/// at most 15 significant digits and at least 0.0001. Such a decimal is read exactly
/// rounded (under 2^53 times a power of ten of at most 22, serde_json's exact case), and no
/// shorter decimal reads as the same f64 (two decimals of at most 15 digits never do), so
/// the shortest printing is the token, which serde_json writes without an exponent at this
/// size.
fn prints_as_read(token: &[u8]) -> bool {
    let digits = token.strip_prefix(b"-").unwrap_or(token);
    let Some(point) = memchr::memchr(b'.', digits) else {
        return false;
    };
    let (whole, fraction) = (&digits[..point], &digits[point + 1..]);
    if !fraction.iter().all(u8::is_ascii_digit) || fraction.last().is_none_or(|&d| d == b'0') {
        return false;
    }
    let significant = if whole == b"0" {
        let zeros = fraction.iter().take_while(|&&d| d == b'0').count();
        if zeros > 3 {
            return false;
        }
        fraction.len() - zeros
    } else {
        whole.len() + fraction.len()
    };
    significant <= 15
}

/// End of the scalar (string, number, literal) starting at `i`.
fn lex_scalar(b: &[u8], i: usize) -> Result<usize, Undecided> {
    match b.get(i) {
        Some(b'"') => Ok(lex_string(b, i)?.0),
        Some(b'-' | b'0'..=b'9') => lex_number(b, i),
        Some(b't') if b.get(i..i + 4) == Some(b"true") => Ok(i + 4),
        Some(b'f') if b.get(i..i + 5) == Some(b"false") => Ok(i + 5),
        Some(b'n') if b.get(i..i + 4) == Some(b"null") => Ok(i + 4),
        _ => Err(Undecided),
    }
}

/// Skips (and checks) the value starting at `i` on one side; returns its end.
fn skip_value(b: &[u8], i: usize, depth: usize) -> Result<usize, Undecided> {
    if depth > MAX_DEPTH {
        return Err(Undecided);
    }
    let (open, close) = match b.get(i) {
        Some(b'{') => (b'{', b'}'),
        Some(b'[') => (b'[', b']'),
        _ => return lex_scalar(b, i),
    };
    let mut k = skip_ws(b, i + 1);
    if b.get(k) == Some(&close) {
        return Ok(k + 1);
    }
    loop {
        if open == b'{' {
            if b.get(k) != Some(&b'"') {
                return Err(Undecided);
            }
            k = skip_ws(b, lex_string(b, k)?.0);
            if b.get(k) != Some(&b':') {
                return Err(Undecided);
            }
            k = skip_ws(b, k + 1);
        }
        k = skip_ws(b, skip_value(b, k, depth + 1)?);
        match b.get(k) {
            Some(b',') => k = skip_ws(b, k + 1),
            Some(&x) if x == close => return Ok(k + 1),
            _ => return Err(Undecided),
        }
    }
}

/// Whether a pointer segment names `seg` (`*` names every key and index; an index is named
/// by any segment that parses to it, as in the tree comparison).
fn segment_matches(pattern: &str, seg: Seg, legacy: &[u8]) -> bool {
    if pattern == "*" {
        return true;
    }
    match seg {
        Seg::Index(n) => pattern.parse::<usize>() == Ok(n),
        Seg::Key {
            start,
            end,
            escaped,
        } => {
            let raw = &legacy[start..end];
            if !escaped {
                return pattern.as_bytes() == raw;
            }
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == pattern)
        }
    }
}

/// The pointers of `parent` (matching the path so far, `depth` segments) that also match
/// `seg`, the next segment (a key's bytes in `body`).
fn descend(rules: &Rules, parent: u64, depth: usize, seg: Seg, body: &[u8]) -> u64 {
    let mut out = 0;
    for bit in bits_of(parent) {
        let p = &rules.json_ignore[bit];
        if p.len() > depth && segment_matches(&p[depth], seg, body) {
            out |= 1 << bit;
        }
    }
    out
}

/// One scalar or document as serde_json reads it.
fn parse(token: &[u8]) -> Result<serde_json::Value, Undecided> {
    serde_json::from_slice::<serde_json::Value>(token).map_err(|_| Undecided)
}

/// A key's text (escapes decoded).
fn key_text(seg: Seg, body: &[u8]) -> Result<std::borrow::Cow<'_, str>, Undecided> {
    let Seg::Key {
        start,
        end,
        escaped,
    } = seg
    else {
        return Ok(std::borrow::Cow::Borrowed(""));
    };
    let raw = body.get(start..end).ok_or(Undecided)?;
    if !escaped {
        return std::str::from_utf8(raw)
            .map(std::borrow::Cow::Borrowed)
            .map_err(|_| Undecided);
    }
    let quoted = body.get(start - 1..end + 1).ok_or(Undecided)?;
    serde_json::from_slice::<String>(quoted)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| Undecided)
}

/// Whether two of an object's keys are the same text (undecided for escaped keys, which
/// could spell one key two ways).
fn has_duplicate_key(keys: &[Seg], body: &[u8]) -> Result<bool, Undecided> {
    let raw = |seg: Seg| match seg {
        Seg::Key {
            escaped: false,
            start,
            end,
        } => body.get(start..end).ok_or(Undecided),
        _ => Err(Undecided),
    };
    // Most objects have a handful of keys: each against the ones before it, no allocation.
    if keys.len() <= 8 {
        for (n, &seg) in keys.iter().enumerate() {
            let key = raw(seg)?;
            for &earlier in &keys[..n] {
                if raw(earlier)? == key {
                    return Ok(true);
                }
            }
        }
        return Ok(false);
    }
    let mut sorted = keys
        .iter()
        .map(|&seg| raw(seg))
        .collect::<Result<Vec<_>, _>>()?;
    sorted.sort_unstable();
    Ok(sorted.windows(2).any(|w| w[0] == w[1]))
}

impl Walk<'_> {
    fn document(&mut self, pointers: u64) -> Step {
        self.i = skip_ws(self.l, 0);
        self.j = skip_ws(self.c, 0);
        self.value(0, false, pointers)?;
        if skip_ws(self.l, self.i) == self.l.len() && skip_ws(self.c, self.j) == self.c.len() {
            Ok(())
        } else {
            Err(Undecided)
        }
    }

    /// Whether the next `n` bytes are the same on both sides (from `i` and `j`).
    fn same_for(&mut self, n: usize) -> bool {
        let offset = self.j.wrapping_sub(self.i);
        if offset == self.same_offset && self.i + n <= self.same_until {
            return true;
        }
        // Measure the run of equal bytes from here, once per offset.
        let k = super::common_prefix(&self.l[self.i..], self.c.get(self.j..).unwrap_or(&[]));
        self.same_until = self.i + k;
        self.same_offset = offset;
        n <= k
    }

    /// Past the value at `i` / `j` when it is the same bytes on both sides (and valid): the same
    /// value, equal after any rules, whatever its path. A container is scanned on the legacy
    /// side only up to where the two sides differ.
    fn skip_same_value(&mut self, depth: usize) -> bool {
        let container = matches!(self.l.get(self.i), Some(b'{' | b'['));
        let end = if container {
            let d = depth.min(MAX_DEPTH + 1);
            let missed = self.skips_missed[d];
            if missed & 0x0f != 0 {
                // Still backing off: the high bits keep the length of the back-off.
                self.skips_missed[d] = missed - 1;
                return false;
            }
            self.same_for(1);
            let limit = self.same_until.max(self.i);
            match skip_value(&self.l[..limit], self.i, depth) {
                Ok(end) => {
                    self.skips_missed[d] = 0;
                    end
                }
                Err(Undecided) => {
                    // Back off for 1, 3, 7, then 15 containers (the count in the low bits,
                    // the next length in the high ones).
                    let next = ((missed >> 4) * 2 + 1).min(15);
                    self.skips_missed[d] = (next << 4) | next;
                    return false;
                }
            }
        } else {
            match lex_scalar(self.l, self.i) {
                Ok(end) => end,
                Err(Undecided) => return false,
            }
        };
        let n = end - self.i;
        let runs_on =
            |b: Option<&u8>| matches!(b, Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'));
        // A number on the candidate's side must end where the legacy one does.
        if !self.same_for(n) || (!container && runs_on(self.c.get(self.j + n))) {
            return false;
        }
        self.i = end;
        self.j += n;
        true
    }

    /// The pointer of the value being walked, as the tree comparison spells it.
    fn pointer(&self) -> Result<String, Undecided> {
        use std::fmt::Write;
        let mut p = String::from("body");
        for &seg in &self.path {
            match seg {
                Seg::Index(n) => {
                    let _ = write!(p, "/{n}");
                }
                Seg::Key { .. } => {
                    p.push('/');
                    p.push_str(&crate::diff::escape_pointer(&key_text(seg, self.l)?));
                }
            }
        }
        Ok(p)
    }

    /// The value at `self.i` / `self.j` (whitespace skipped). `in_array`: some ancestor is an
    /// array, where (when the walk stops at the first difference) only differences that fold
    /// to the same value are equal: a tolerance would let the tree comparison call the array
    /// reordered. `pointers`: the ignore pointers matching the path so far.
    fn value(&mut self, depth: usize, in_array: bool, pointers: u64) -> Step {
        if depth > MAX_DEPTH {
            return Err(Undecided);
        }
        if pointers & self.ends[depth] != 0 {
            self.i = skip_value(self.l, self.i, depth)?;
            self.j = skip_value(self.c, self.j, depth)?;
            return Ok(());
        }
        match (self.l.get(self.i), self.c.get(self.j)) {
            (Some(b'{'), Some(b'{')) => self.object(depth, in_array, pointers),
            (Some(b'['), Some(b'[')) => self.array(depth, pointers),
            (Some(b'{' | b'['), _) | (_, Some(b'{' | b'[')) => Err(Undecided),
            _ => self.scalar(in_array),
        }
    }

    fn scalar(&mut self, in_array: bool) -> Step {
        let end = lex_scalar(self.l, self.i)?;
        let token = &self.l[self.i..end];
        let n = token.len();
        let runs_on =
            |b: Option<&u8>| matches!(b, Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'));
        if self.same_for(n) && !runs_on(self.c.get(self.j + n)) {
            // The same bytes: the same token (a string ends at its quote; a number on the
            // candidate's side must end where the legacy one does).
            self.i = end;
            self.j += n;
            return Ok(());
        }
        let c_end = lex_scalar(self.c, self.j)?;
        let (mut a, mut b) = (parse(token)?, parse(&self.c[self.j..c_end])?);
        if self.rules.times.any() {
            self.rules.times.fold(&mut a, self.now);
            self.rules.times.fold(&mut b, self.now);
        }
        if a != b {
            if !self.report && in_array {
                return Err(Undecided);
            }
            let mut found = Vec::new();
            crate::diff::diff_json("", &a, &b, &self.rules.tolerance, &mut found);
            if !self.report && !found.is_empty() {
                return Err(Undecided);
            }
            self.differing = true;
            for mut d in found {
                if self.found.len() >= self.room {
                    return Err(Undecided);
                }
                d.path = self.pointer()?;
                self.found.push(d);
            }
        }
        self.i = end;
        self.j = c_end;
        Ok(())
    }

    fn object(&mut self, depth: usize, in_array: bool, pointers: u64) -> Step {
        if self.enter(b'}')? {
            return Ok(());
        }
        if self.l.get(self.i) != Some(&b'"') || self.c.get(self.j) != Some(&b'"') {
            return Err(Undecided);
        }
        let outer = std::mem::replace(&mut self.differing, false);
        let first_key = self.keys.len();
        loop {
            // The same key on both sides, byte for byte (another order or spelling is left
            // to the tree comparison).
            let (end, escaped) = lex_string(self.l, self.i)?;
            let key = &self.l[self.i..end];
            if !self.same_for(key.len()) {
                return Err(Undecided);
            }
            let seg = Seg::Key {
                start: self.i + 1,
                end: end - 1,
                escaped,
            };
            self.i = skip_ws(self.l, end);
            self.j = skip_ws(self.c, self.j + key.len());
            if self.l.get(self.i) != Some(&b':') || self.c.get(self.j) != Some(&b':') {
                return Err(Undecided);
            }
            self.i = skip_ws(self.l, self.i + 1);
            self.j = skip_ws(self.c, self.j + 1);
            if self.report {
                self.keys.push(seg);
            }
            if !self.skip_same_value(depth + 1) {
                let below = if pointers == 0 {
                    0
                } else {
                    descend(self.rules, pointers, depth, seg, self.l)
                };
                if self.report {
                    self.path.push(seg);
                }
                self.value(depth + 1, in_array, below)?;
                if self.report {
                    self.path.pop();
                }
            }
            if self.separator(b'}')? {
                break;
            }
            if self.l.get(self.i) != Some(&b'"') || self.c.get(self.j) != Some(&b'"') {
                return Err(Undecided);
            }
        }
        // A key given twice keeps its last value, at its first place: where that matters
        // (something differs below), the trees decide.
        if self.differing && has_duplicate_key(&self.keys[first_key..], self.l)? {
            return Err(Undecided);
        }
        self.keys.truncate(first_key);
        self.differing |= outer;
        Ok(())
    }

    fn array(&mut self, depth: usize, pointers: u64) -> Step {
        if self.enter(b']')? {
            return Ok(());
        }
        let outer = std::mem::replace(&mut self.differing, false);
        // The elements that are not the same after the rules: spans on both sides, and the
        // pointers below them.
        let mut differing: Vec<(usize, usize, usize, usize, u64)> = Vec::new();
        let mut index = 0;
        loop {
            if !self.skip_same_value(depth + 1) {
                let below = if pointers == 0 {
                    0
                } else {
                    descend(self.rules, pointers, depth, Seg::Index(index), self.l)
                };
                let (i, j) = (self.i, self.j);
                if self.report {
                    self.path.push(Seg::Index(index));
                }
                self.value(depth + 1, true, below)?;
                if self.report {
                    self.path.pop();
                }
                if std::mem::take(&mut self.differing) {
                    differing.push((i, self.i, j, self.j, below));
                }
            }
            if self.separator(b']')? {
                break;
            }
            index += 1;
        }
        // The tree comparison first asks whether the elements are the same ones in another
        // order (one `order` difference for the array): only elements that differ can tell.
        if differing.len() > 1 {
            let element = |b: &[u8], start: usize, end: usize, below: u64| {
                let mut v = parse(b.get(start..end).ok_or(Undecided)?)?;
                if self.rules.times.any() {
                    self.rules.times.fold(&mut v, self.now);
                }
                for bit in bits_of(below) {
                    super::remove_pointer(&mut v, &self.rules.json_ignore[bit][depth + 1..]);
                }
                Ok::<String, Undecided>(v.to_string())
            };
            let mut legacy = Vec::with_capacity(differing.len());
            let mut candidate = Vec::with_capacity(differing.len());
            for &(i, i_end, j, j_end, below) in &differing {
                legacy.push(element(self.l, i, i_end, below)?);
                candidate.push(element(self.c, j, j_end, below)?);
            }
            legacy.sort();
            candidate.sort();
            if legacy == candidate {
                return Err(Undecided);
            }
        }
        self.differing = outer || !differing.is_empty();
        Ok(())
    }

    /// Past the opening bracket on both sides: true (and past `close` too) when both are
    /// empty; undecided when only one is.
    fn enter(&mut self, close: u8) -> Result<bool, Undecided> {
        self.i = skip_ws(self.l, self.i + 1);
        self.j = skip_ws(self.c, self.j + 1);
        match (
            self.l.get(self.i) == Some(&close),
            self.c.get(self.j) == Some(&close),
        ) {
            (true, true) => {
                self.i += 1;
                self.j += 1;
                Ok(true)
            }
            (false, false) => Ok(false),
            _ => Err(Undecided),
        }
    }

    /// After a member: `,` (false, the next member's start reached) or `close` (true, past it)
    /// on both sides.
    fn separator(&mut self, close: u8) -> Result<bool, Undecided> {
        self.i = skip_ws(self.l, self.i);
        self.j = skip_ws(self.c, self.j);
        match (self.l.get(self.i), self.c.get(self.j)) {
            (Some(b','), Some(b',')) => {
                self.i = skip_ws(self.l, self.i + 1);
                self.j = skip_ws(self.c, self.j + 1);
                Ok(false)
            }
            (Some(&a), Some(&b)) if a == close && b == close => {
                self.i += 1;
                self.j += 1;
                Ok(true)
            }
            _ => Err(Undecided),
        }
    }
}

/// The text `serde_json::to_string_pretty` gives for `body` normalized by `rules` (times
/// folded, ignored pointers removed), made from the bytes without building a tree; for the
/// unified diff of a difference the walk found. Undecided with `[json] unordered` rules, a key
/// given twice, or anything the walk leaves to the trees.
pub(super) fn json_pretty(body: &[u8], rules: &Rules, now: f64) -> Result<String, Undecided> {
    let plan = PrettyRules::new(rules, now)?;
    // Indentation makes the pretty text of nested documents two to three times the body.
    let mut printer = Printer::new(body, &plan, body.len() * 5 / 2 + 64);
    while printer.next != Next::Done {
        printer.step()?;
    }
    printer.finish()?;
    String::from_utf8(printer.out).map_err(|_| Undecided)
}

/// The pretty texts ([`json_pretty`]) of two documents around where they differ: what comes
/// before is the same text on both sides and only its lines are counted; what comes after
/// (when `cut_after`) is the same text too and is left out. Each text starts at a line's start;
/// with `cut_after` its last line is cut short, and so the same on both sides only when the
/// whole lines are (the same text follows both).
#[derive(Debug)]
pub(super) struct PrettyWindow {
    pub legacy: String,
    pub candidate: String,
    pub lines_before: usize,
    pub cut_after: bool,
}

/// How far before the window's start the printer keeps the state it could start the
/// candidate's printing from (a step past the start limit falls back to the last kept one).
const SNAPSHOT_ZONE: usize = 4096;

/// The [`PrettyWindow`] of `a` and `b`. It starts at the last printer step that read only
/// bytes both start with and ended at least `margin` bytes before the first byte they differ
/// in: every step before it prints the same text in the same state on both sides, so they are
/// taken once, on `a`. It ends where both printers stand in the same state as many bytes from
/// their document's end, in the bytes both end with and at least `margin` after the last byte
/// they differ in: the same bytes printed from the same state print the same text. Undecided
/// as [`json_pretty`] is (for the bytes it prints).
pub(super) fn json_pretty_window(
    a: &[u8],
    b: &[u8],
    rules: &Rules,
    now: f64,
    margin: usize,
) -> Result<PrettyWindow, Undecided> {
    let plan = PrettyRules::new(rules, now)?;
    let shared = crate::diff::common_prefix(a, b);
    let limit = shared.saturating_sub(margin.max(1));
    let mut pa = Printer::new(a, &plan, a.len() * 5 / 2 + 64);
    // The last state reached by reading bytes before `limit` only, and its text's length
    // (None: the candidate's printing starts from its own start).
    let mut kept = PrinterState::default();
    let mut kept_out = 0;
    while pa.next != Next::Done {
        pa.step()?;
        if pa.k >= limit {
            break;
        }
        if pa.k + SNAPSHOT_ZONE >= limit {
            pa.save(&mut kept);
            kept_out = pa.out.len();
        }
    }
    // The text before the kept state's line is counted; the rest of its line starts both texts.
    let line_start = memchr::memrchr(b'\n', &pa.out[..kept_out]).map_or(0, |n| n + 1);
    let lines_before = memchr::memchr_iter(b'\n', &pa.out[..line_start]).count();
    let mut pb = Printer::new(b, &plan, 0);
    if kept.next.is_some() {
        pb.restore(&kept);
    }
    pb.out.extend_from_slice(&pa.out[line_start..kept_out]);
    // Past the window's start on `a` already: its printing goes on from where it is.
    let suffix = crate::diff::common_suffix(a, b);
    let mut cut_after = false;
    loop {
        let (da, db) = (a.len() - pa.k, b.len() - pb.k);
        if da == db && da.saturating_add(margin) <= suffix && pa.same_state(&pb) {
            cut_after = true;
            break;
        }
        match (pa.next == Next::Done, pb.next == Next::Done) {
            (true, true) => break,
            (false, true) => pa.step()?,
            (true, false) => pb.step()?,
            (false, false) if da >= db => pa.step()?,
            (false, false) => pb.step()?,
        }
    }
    if !cut_after {
        pa.finish()?;
        pb.finish()?;
    }
    let legacy = std::str::from_utf8(&pa.out[line_start..]).map_err(|_| Undecided)?;
    Ok(PrettyWindow {
        legacy: legacy.to_owned(),
        candidate: String::from_utf8(pb.out).map_err(|_| Undecided)?,
        lines_before,
        cut_after,
    })
}

/// What the printer needs of the rules, worked out once per comparison.
struct PrettyRules<'a> {
    rules: &'a Rules,
    now: f64,
    /// By depth: the ignore pointers that many segments long.
    ends: Vec<u64>,
    /// All the ignore pointers.
    all: u64,
    /// The pointers that end in `*`: they empty the container they name the members of.
    wildcard_last: u64,
}

impl<'a> PrettyRules<'a> {
    fn new(rules: &'a Rules, now: f64) -> Result<Self, Undecided> {
        if !rules.json_unordered.is_empty() {
            return Err(Undecided);
        }
        let (ends, all) = pointer_ends(rules).ok_or(Undecided)?;
        let mut wildcard_last = 0u64;
        for (bit, p) in rules.json_ignore.iter().enumerate().take(64) {
            if p.last().is_some_and(|s| s == "*") {
                wildcard_last |= 1 << bit;
            }
        }
        Ok(PrettyRules {
            rules,
            now,
            ends,
            all,
            wildcard_last,
        })
    }
}

/// What the printer reads next.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Next {
    /// A value, `depth` containers deep, with the ignore pointers matching its path.
    Value { depth: usize, pointers: u64 },
    /// A member of the innermost open container (its key first, in an object).
    Member,
    /// A `,` or the innermost open container's end.
    AfterMember,
    /// Nothing: the document's value is printed.
    Done,
}

/// A container being printed.
#[derive(Clone, Copy, PartialEq, Debug)]
struct Frame {
    is_object: bool,
    depth: usize,
    /// The ignore pointers matching the container's path.
    pointers: u64,
    /// Members printed so far (removed ones are not).
    members: usize,
    /// The member being read (removed ones count).
    index: usize,
    /// Where its keys start in the printer's keys.
    first_key: usize,
}

/// The printer's state between two steps, without its body and text: what lets another
/// printer go on in the same state on another body that starts with the same bytes.
#[derive(Clone, Default)]
struct PrinterState {
    k: usize,
    /// None until a state is saved.
    next: Option<Next>,
    frames: Vec<Frame>,
    keys: Vec<Seg>,
}

/// The pretty printer, one token at a time with its containers on a stack of its own, so its
/// state can be copied to the other side's printer and compared with it.
struct Printer<'a> {
    b: &'a [u8],
    k: usize,
    plan: &'a PrettyRules<'a>,
    next: Next,
    frames: Vec<Frame>,
    /// The keys of the open objects (each object's after its parent's).
    keys: Vec<Seg>,
    out: Vec<u8>,
}

/// serde_json's pretty printer's indentation.
const INDENT: &[u8] = b"  ";

impl<'a> Printer<'a> {
    fn new(b: &'a [u8], plan: &'a PrettyRules<'a>, capacity: usize) -> Self {
        Printer {
            b,
            k: skip_ws(b, 0),
            plan,
            next: Next::Value {
                depth: 0,
                pointers: plan.all,
            },
            frames: Vec::new(),
            keys: Vec::new(),
            out: Vec::with_capacity(capacity),
        }
    }

    /// Its state into `into` (whose buffers are reused).
    fn save(&self, into: &mut PrinterState) {
        into.k = self.k;
        into.next = Some(self.next);
        into.frames.clone_from(&self.frames);
        into.keys.clone_from(&self.keys);
    }

    fn restore(&mut self, state: &PrinterState) {
        self.k = state.k;
        if let Some(next) = state.next {
            self.next = next;
        }
        self.frames.clone_from(&state.frames);
        self.keys.clone_from(&state.keys);
    }

    /// Whether `other` (on its own body) prints from here what this printer prints, given the
    /// same bytes from here to the end: the same next step and open containers, and the same
    /// keys in the open objects (which decide whether a later key is given twice). Indexes
    /// matter only where pointers could name them.
    fn same_state(&self, other: &Printer<'_>) -> bool {
        // Comparing many keys at every step would cost more than it saves.
        const MOST_KEYS: usize = 64;
        let frames_match = self.frames.len() == other.frames.len()
            && self.frames.iter().zip(&other.frames).all(|(x, y)| {
                x.is_object == y.is_object
                    && x.depth == y.depth
                    && x.pointers == y.pointers
                    && (x.members == 0) == (y.members == 0)
                    && (x.pointers == 0 || x.index == y.index)
                    && x.first_key == y.first_key
            });
        fn key<'b>(seg: &Seg, b: &'b [u8]) -> (Option<&'b [u8]>, bool) {
            match *seg {
                Seg::Key {
                    start,
                    end,
                    escaped,
                } => (b.get(start..end), escaped),
                Seg::Index(_) => (None, false),
            }
        }
        self.next == other.next
            && frames_match
            && self.keys.len() == other.keys.len()
            && self.keys.len() <= MOST_KEYS
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(x, y)| key(x, self.b) == key(y, other.b))
    }

    /// After the document's value: only whitespace.
    fn finish(&self) -> Step {
        if skip_ws(self.b, self.k) == self.b.len() {
            Ok(())
        } else {
            Err(Undecided)
        }
    }

    fn newline(&mut self, depth: usize) {
        // A newline and the indentation of most depths in one copy.
        const LINE: &[u8; 65] =
            b"\n                                                                ";
        match LINE.get(..1 + depth * INDENT.len()) {
            Some(line) => self.out.extend_from_slice(line),
            None => {
                self.out.push(b'\n');
                for _ in 0..depth {
                    self.out.extend_from_slice(INDENT);
                }
            }
        }
    }

    /// One step: a value (a scalar, or a container's opening), a member's key, or what follows
    /// a member.
    fn step(&mut self) -> Step {
        match self.next {
            Next::Value { depth, pointers } => self.value(depth, pointers),
            Next::Member => self.member(),
            Next::AfterMember => self.after_member(),
            Next::Done => Ok(()),
        }
    }

    /// A value is printed: the innermost container's member, or the document.
    fn printed(&mut self) {
        self.next = if self.frames.is_empty() {
            Next::Done
        } else {
            Next::AfterMember
        };
    }

    fn value(&mut self, depth: usize, pointers: u64) -> Step {
        if depth > MAX_DEPTH {
            return Err(Undecided);
        }
        let (is_object, close) = match self.b.get(self.k) {
            Some(b'{') => (true, b'}'),
            Some(b'[') => (false, b']'),
            _ => {
                self.scalar()?;
                self.printed();
                return Ok(());
            }
        };
        // An ignore pointer ending in `*` here leaves the container empty.
        if pointers & self.plan.ends[depth + 1] & self.plan.wildcard_last != 0 {
            self.k = skip_value(self.b, self.k, depth)?;
            self.out
                .extend_from_slice(if is_object { b"{}" } else { b"[]" });
            self.printed();
            return Ok(());
        }
        self.out.push(self.b[self.k]);
        self.k = skip_ws(self.b, self.k + 1);
        if self.b.get(self.k) == Some(&close) {
            self.k += 1;
            self.out.push(close);
            self.printed();
            return Ok(());
        }
        self.frames.push(Frame {
            is_object,
            depth,
            pointers,
            members: 0,
            index: 0,
            first_key: self.keys.len(),
        });
        self.next = Next::Member;
        Ok(())
    }

    fn member(&mut self) -> Step {
        let frame = *self.frames.last().ok_or(Undecided)?;
        let depth = frame.depth;
        let seg = if frame.is_object {
            if self.b.get(self.k) != Some(&b'"') {
                return Err(Undecided);
            }
            let (end, escaped) = lex_string(self.b, self.k)?;
            let seg = Seg::Key {
                start: self.k + 1,
                end: end - 1,
                escaped,
            };
            self.keys.push(seg);
            self.k = skip_ws(self.b, end);
            if self.b.get(self.k) != Some(&b':') {
                return Err(Undecided);
            }
            self.k = skip_ws(self.b, self.k + 1);
            seg
        } else {
            Seg::Index(frame.index)
        };
        let below = if frame.pointers == 0 {
            0
        } else {
            descend(self.plan.rules, frame.pointers, depth, seg, self.b)
        };
        let ignored = below & self.plan.ends[depth + 1] != 0;
        if ignored && frame.is_object {
            // Removed: neither key nor value is printed.
            self.k = skip_value(self.b, self.k, depth + 1)?;
            self.next = Next::AfterMember;
            return Ok(());
        }
        if frame.members > 0 {
            self.out.push(b',');
        }
        self.newline(depth + 1);
        if let Some(top) = self.frames.last_mut() {
            top.members += 1;
        }
        if let Seg::Key {
            start,
            end,
            escaped,
        } = seg
        {
            if escaped {
                let text = key_text(seg, self.b)?;
                serde_json::to_writer(&mut self.out, &text).map_err(|_| Undecided)?;
            } else {
                self.out.extend_from_slice(&self.b[start - 1..end + 1]);
            }
            self.out.extend_from_slice(b": ");
        }
        if ignored {
            // An ignored element is replaced, so later indexes keep their meaning.
            self.k = skip_value(self.b, self.k, depth + 1)?;
            self.out.extend_from_slice(b"null");
            self.next = Next::AfterMember;
        } else {
            self.next = Next::Value {
                depth: depth + 1,
                pointers: below,
            };
        }
        Ok(())
    }

    fn after_member(&mut self) -> Step {
        let frame = *self.frames.last().ok_or(Undecided)?;
        let close = if frame.is_object { b'}' } else { b']' };
        self.k = skip_ws(self.b, self.k);
        match self.b.get(self.k) {
            Some(b',') => {
                self.k = skip_ws(self.b, self.k + 1);
                if let Some(top) = self.frames.last_mut() {
                    top.index += 1;
                }
                self.next = Next::Member;
                Ok(())
            }
            Some(&x) if x == close => {
                self.k += 1;
                if frame.is_object && has_duplicate_key(&self.keys[frame.first_key..], self.b)? {
                    return Err(Undecided);
                }
                self.keys.truncate(frame.first_key);
                self.frames.pop();
                if frame.members > 0 {
                    self.newline(frame.depth);
                }
                self.out.push(close);
                self.printed();
                Ok(())
            }
            _ => Err(Undecided),
        }
    }

    fn scalar(&mut self) -> Step {
        let start = self.k;
        let times = self.plan.rules.times;
        let (end, plain) = match self.b.get(start) {
            Some(b'"') => {
                let (end, escaped) = lex_string(self.b, start)?;
                // What time folding could change is a string of 19 bytes or more with a `:`.
                let datelike = times.date_strings
                    && end - start >= 21
                    && memchr::memchr(b':', &self.b[start..end]).is_some();
                (end, !escaped && !datelike)
            }
            Some(b'-' | b'0'..=b'9') => {
                let end = lex_number(self.b, start)?;
                let token = &self.b[start..end];
                // Digits alone that fit a u64, and short decimals, print as they are read,
                // unless they are a time.
                let integer = token.len() <= 19 && token.iter().all(u8::is_ascii_digit);
                let plain = (integer || prints_as_read(token))
                    && (!(times.epoch_seconds || times.epoch_millis)
                        || std::str::from_utf8(token)
                            .ok()
                            .and_then(|t| t.parse::<f64>().ok())
                            .is_some_and(|x| times.placeholder(x, self.plan.now).is_none()));
                (end, plain)
            }
            _ => (lex_scalar(self.b, start)?, true),
        };
        if plain {
            self.out.extend_from_slice(&self.b[start..end]);
        } else {
            let mut v = parse(&self.b[start..end])?;
            if times.any() {
                times.fold(&mut v, self.plan.now);
            }
            serde_json::to_writer(&mut self.out, &v).map_err(|_| Undecided)?;
        }
        self.k = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{Captured, Comparator};
    use crate::normalize::RuleSet;
    use serde_json::{json, Value};
    use std::sync::Arc;

    /// Response time of the corpus: epoch values near it fold, others do not.
    const NOW: i64 = 1_795_000_000;

    const IGNORE: &str = "[json]\nignore = ['/a/*/b', '/x', '/*/0', '/token', '', '/list/*', '/items/1']\nfloat_absolute = 1e-9\nfloat_relative = 1e-6\n";

    fn rules_from(text: &str) -> Rules {
        Rules::compile(&[
            Arc::new(RuleSet::builtin().expect("builtin")),
            Arc::new(RuleSet::parse(text, "t.toml").expect("rules")),
        ])
    }

    /// With unordered arrays: the walk stops at the first difference.
    fn rules() -> Rules {
        rules_from(&format!("{IGNORE}unordered = ['/list', '/*/items']\n"))
    }

    /// Without: the walk lists the differences.
    fn listing_rules() -> Rules {
        rules_from(IGNORE)
    }

    fn captured(body: Vec<u8>) -> Captured {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::DATE,
            http::HeaderValue::from_static("Tue, 18 Nov 2026 07:33:20 GMT"),
        );
        Captured {
            status: 200,
            headers: h,
            body: bytes::Bytes::from(body),
        }
    }

    /// xorshift64*: a reproducible corpus without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    const KEYS: &[&str] = &[
        "a", "b", "x", "id", "list", "items", "token", "t", "0", "a/b", "é",
    ];

    fn scalar(r: &mut Rng) -> Value {
        match r.below(9) {
            0 => json!(r.below(100)),
            1 => json!(r.below(1000) as f64 / 8.0),
            2 => json!(NOW + r.below(1000) as i64),
            3 => json!((NOW + r.below(1000) as i64) * 1000),
            4 => json!(format!("2026-11-{:02}T10:00:00Z", 1 + r.below(28))),
            5 => json!(format!("s{}", r.below(5))),
            6 => json!(r.below(2) == 0),
            7 => Value::Null,
            _ => json!(format!("tok-{:x}", r.next())),
        }
    }

    fn value(r: &mut Rng, depth: usize) -> Value {
        match if depth > 3 { 0 } else { r.below(4) } {
            0 | 1 => scalar(r),
            2 => {
                let n = r.below(4);
                Value::Array((0..n).map(|_| value(r, depth + 1)).collect())
            }
            _ => {
                let mut m = serde_json::Map::new();
                for _ in 0..r.below(5) {
                    let k = r.pick(KEYS).to_string();
                    m.insert(k, value(r, depth + 1));
                }
                Value::Object(m)
            }
        }
    }

    /// A copy of `v` with some scalars changed: to a value the rules fold or tolerate, or to
    /// a real difference.
    fn mutate(r: &mut Rng, v: &Value) -> Value {
        match v {
            Value::Array(items) => {
                let mut items: Vec<Value> = items.iter().map(|x| mutate(r, x)).collect();
                if items.len() > 1 && r.below(12) == 0 {
                    items.swap(0, 1);
                }
                if r.below(20) == 0 {
                    items.pop();
                }
                Value::Array(items)
            }
            Value::Object(m) => {
                let mut out = serde_json::Map::new();
                for (k, x) in m {
                    if r.below(25) == 0 {
                        continue;
                    }
                    out.insert(k.clone(), mutate(r, x));
                }
                Value::Object(out)
            }
            scalar_value if r.below(6) == 0 => match (scalar_value, r.below(5)) {
                (Value::Number(n), 0) => json!(n.as_f64().unwrap_or(0.0) * (1.0 + 1e-9)),
                (Value::Number(n), 1) => json!(n.as_i64().map_or(0, |x| x + 1)),
                (Value::Number(n), 2) => json!(n.as_f64().unwrap_or(0.0)),
                (Value::String(s), 0) if s.starts_with("2026") => json!("2026-12-01T00:00:00Z"),
                _ => scalar(r),
            },
            other => other.clone(),
        }
    }

    /// Text-level changes the tree comparison does not see (spacing, escapes) or that make
    /// one side something serde_json refuses.
    fn render(r: &mut Rng, v: &Value) -> Vec<u8> {
        let mut text = if r.below(3) == 0 {
            serde_json::to_vec_pretty(v).unwrap_or_default()
        } else {
            serde_json::to_vec(v).unwrap_or_default()
        };
        match r.below(20) {
            0 => {
                if let Some(p) = text.iter().position(|&b| b == b's') {
                    text.splice(p..p + 1, b"\\u0073".iter().copied());
                }
            }
            1 => text.truncate(text.len() / 2),
            2 => text.extend_from_slice(b" x"),
            3 => {
                if let Some(p) = text.iter().position(|&b| b == b'{') {
                    text.splice(p + 1..p + 1, b"\"x\":1,\"x\":2,".iter().copied());
                }
            }
            4 => text.insert(0, b' '),
            _ => {}
        }
        text
    }

    /// The corpus compared both ways under `rules`: the same report whichever engine made it.
    /// Returns how many pairs the walk found equal with different bytes, and how many it
    /// listed differences for (with their unified diff).
    fn corpus_reports_agree(rules: &Rules, seed: u64) -> (usize, usize) {
        let mut r = Rng(seed);
        let (mut walked_equal, mut noisy_equal, mut listed) = (0, 0, 0);
        for _ in 0..20_000 {
            let v = value(&mut r, 0);
            let w = mutate(&mut r, &v);
            let (a, b) = (render(&mut r, &v), render(&mut r, &w));
            let (l, c) = (captured(a.clone()), captured(b.clone()));
            let fast = rules.compare(&l, &c);
            let exhaustive = rules.compare_exhaustive(&l, &c);
            assert_eq!(
                fast,
                exhaustive,
                "{}\n{}",
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b)
            );
            match json_differences(&a, &b, rules, NOW as f64, crate::diff::MAX_DIFFERENCES) {
                Ok(found) if found.is_empty() => {
                    assert!(exhaustive.is_match());
                    walked_equal += 1;
                    if a != b {
                        noisy_equal += 1;
                    }
                }
                Ok(_) => {
                    if json_pretty(&a, rules, NOW as f64).is_ok()
                        && json_pretty(&b, rules, NOW as f64).is_ok()
                    {
                        listed += 1;
                    }
                }
                Err(Undecided) => {}
            }
        }
        assert!(walked_equal > noisy_equal, "{walked_equal}");
        (noisy_equal, listed)
    }

    #[test]
    fn the_walk_gives_the_tree_comparisons_report_on_a_generated_corpus() {
        let (noisy_equal, listed) = corpus_reports_agree(&rules(), 0x9E37_79B9_7F4A_7C15);
        // The corpus reaches the walk's every branch often enough to mean something.
        assert!(
            noisy_equal > 1000,
            "{noisy_equal} noisy pairs decided by the walk"
        );
        assert_eq!(
            listed, 0,
            "with unordered arrays the trees list differences"
        );
        let (noisy_equal, listed) = corpus_reports_agree(&listing_rules(), 0x2545_F491_4F6C_DD1D);
        assert!(
            noisy_equal > 1000,
            "{noisy_equal} noisy pairs decided by the walk"
        );
        assert!(listed > 2000, "{listed} pairs listed by the walk");
    }

    #[test]
    fn the_pretty_text_made_from_the_bytes_is_serde_jsons_of_the_normalized_tree() {
        let rules = listing_rules();
        let mut r = Rng(0x1234_5678_9ABC_DEF1);
        let mut made = 0;
        for _ in 0..20_000 {
            let v = value(&mut r, 0);
            let text = render(&mut r, &v);
            let Ok(pretty) = json_pretty(&text, &rules, NOW as f64) else {
                continue;
            };
            let mut tree: Value = serde_json::from_slice(&text).expect("the walk takes only JSON");
            rules.normalize_json(&mut tree, NOW as f64);
            let expected = serde_json::to_string_pretty(&tree).expect("pretty");
            assert_eq!(pretty, expected, "{}", String::from_utf8_lossy(&text));
            made += 1;
        }
        assert!(made > 15_000, "{made}");
        // Removed keys, emptied and nulled containers (`/*/0` nulls both first elements),
        // folded times, escapes, numbers as serde_json prints them.
        let pretty = |s: &str| json_pretty(s.as_bytes(), &rules, NOW as f64).ok();
        assert_eq!(
            pretty(r#"{"x":1,"k":"\u0073","a":[{"b":2,"c":[]}],"list":[1,2],"items":[0,1,2],"t":1795000001,"f":1.50,"n":-0}"#).as_deref(),
            Some("{\n  \"k\": \"s\",\n  \"a\": [\n    null\n  ],\n  \"list\": [],\n  \"items\": [\n    null,\n    null,\n    2\n  ],\n  \"t\": \"{epoch}\",\n  \"f\": 1.5,\n  \"n\": -0.0\n}")
        );
        assert!(pretty(r#"{"k":1,"k":2}"#).is_none(), "a key given twice");
        assert!(pretty("[1,]").is_none());
    }

    /// The unified diff of the pretty texts from their window, if it gives one.
    fn windowed(
        a: &[u8],
        b: &[u8],
        rules: &Rules,
        margin: usize,
    ) -> Result<Option<String>, Undecided> {
        let w = json_pretty_window(a, b, rules, NOW as f64, margin)?;
        Ok(crate::diff::unified_text_after(
            &w.legacy,
            &w.candidate,
            w.lines_before,
            w.cut_after,
        ))
    }

    #[test]
    fn the_pretty_window_gives_the_whole_texts_unified_diff() {
        let rules = listing_rules();
        let mut r = Rng(0x005E_ED0F_1A2B_3C4D);
        let (mut compared, mut cut_before, mut cut_after, mut cut_both) = (0, 0, 0, 0);
        for _ in 0..4_000 {
            // Documents of a few to a few hundred lines, so that margins this small cut.
            let v = Value::Array((0..r.below(40)).map(|_| value(&mut r, 0)).collect());
            let w = mutate(&mut r, &v);
            let (a, b) = (render(&mut r, &v), render(&mut r, &w));
            if a == b {
                continue;
            }
            let whole = match (
                json_pretty(&a, &rules, NOW as f64),
                json_pretty(&b, &rules, NOW as f64),
            ) {
                (Ok(pa), Ok(pb)) => Some(crate::diff::unified_text(&pa, &pb)),
                _ => None,
            };
            for margin in [0, 1, 4, 16, 40, 100, 512] {
                match windowed(&a, &b, &rules, margin) {
                    Ok(Some(unified)) => {
                        // The window's printing may skip (in the shared end) what the whole
                        // printing refuses, a key given twice; when both print, they agree.
                        if let Some(whole) = &whole {
                            assert_eq!(
                                &unified,
                                whole,
                                "margin {margin}\n{}\n{}",
                                String::from_utf8_lossy(&a),
                                String::from_utf8_lossy(&b)
                            );
                            compared += 1;
                            let w = json_pretty_window(&a, &b, &rules, NOW as f64, margin)
                                .expect("printed once");
                            cut_before += usize::from(w.lines_before > 0);
                            cut_after += usize::from(w.cut_after);
                            cut_both += usize::from(w.lines_before > 0 && w.cut_after);
                        }
                    }
                    // A change near a cut: the whole texts are diffed instead.
                    Ok(None) => {}
                    Err(Undecided) => assert!(
                        whole.is_none(),
                        "the window refused what the whole texts print: margin {margin}\n{}\n{}",
                        String::from_utf8_lossy(&a),
                        String::from_utf8_lossy(&b)
                    ),
                }
            }
        }
        assert!(
            compared > 10_000 && cut_before > 1_000 && cut_after > 2_500 && cut_both > 450,
            "{compared} {cut_before} {cut_after} {cut_both}"
        );
    }

    #[test]
    fn one_difference_in_a_long_document_is_printed_in_its_window() {
        let rules = listing_rules();
        let doc = |changed: usize| {
            let items: Vec<Value> = (0..5_000)
                .map(|i| json!({"id": i, "price": if i == changed { 2.5 } else { 1.25 }, "tags": ["a", "b"]}))
                .collect();
            serde_json::to_vec(&json!({"items": items, "x": 1})).expect("rendered")
        };
        let (a, b) = (doc(usize::MAX), doc(2_500));
        let w = json_pretty_window(&a, &b, &rules, NOW as f64, 512).expect("printed");
        assert!(w.cut_after && w.lines_before > 10_000, "{}", w.lines_before);
        assert!(w.legacy.len() < 4_000 && w.candidate.len() < 4_000, "{w:?}");
        let whole = crate::diff::unified_text(
            &json_pretty(&a, &rules, NOW as f64).expect("printed"),
            &json_pretty(&b, &rules, NOW as f64).expect("printed"),
        );
        assert_eq!(
            windowed(&a, &b, &rules, 512).expect("printed").as_deref(),
            Some(&*whole)
        );
        assert!(
            whole.contains("-      \"price\": 1.25,\n+      \"price\": 2.5,"),
            "{whole}"
        );
        let report = rules.compare(&captured(a.clone()), &captured(b.clone()));
        assert_eq!(report, rules.compare_exhaustive(&captured(a), &captured(b)));
        assert_eq!(report.differences.len(), 1);
        assert_eq!(report.differences[0].path, "body/items/2500/price");
    }

    #[test]
    fn decimals_said_to_print_as_read_do_so_in_serde_json() {
        let mut r = Rng(0x0DEC_1A55_0000_0001);
        let mut taken = 0;
        let mut check = |token: &str| {
            if prints_as_read(token.as_bytes()) {
                let v: Value = serde_json::from_str(token).expect("a number");
                assert_eq!(serde_json::to_string(&v).expect("printed"), token);
                taken += 1;
            }
        };
        for edge in [
            "0.0001",
            "0.00012",
            "-0.0001",
            "0.5",
            "1.25",
            "-1.25",
            "999999999999999.9",
            "99999999999999.9",
            "123456789012345.6",
            "12345678901234.5",
            "0.123456789012345",
            "0.000123456789012345",
            "9007199254740.993",
            "1.7976931348623157",
            "0.1",
            "0.3",
            "1700000000.123",
        ] {
            check(edge);
        }
        for _ in 0..200_000 {
            let whole = match r.below(4) {
                0 => "0".to_string(),
                1 => r.below(1000).max(1).to_string(),
                _ => (r.next() % 10u64.pow(r.below(16) as u32 + 1))
                    .max(1)
                    .to_string(),
            };
            let zeros = "0".repeat(r.below(5) as usize);
            let tail = r.next() % 10u64.pow(r.below(16) as u32 + 1);
            let sign = if r.below(2) == 0 { "" } else { "-" };
            check(&format!("{sign}{whole}.{zeros}{tail}"));
        }
        assert!(taken > 50_000, "{taken}");
        for refused in [
            "1.50",
            "1e5",
            "1.5e2",
            "0.00001",
            "1234567890123456.5",
            "12",
            "0.0",
        ] {
            assert!(!prints_as_read(refused.as_bytes()), "{refused}");
        }
    }

    #[test]
    fn the_walk_decides_noise_and_leaves_the_rest() {
        let rules = rules();
        let now = NOW as f64;
        let eq = |a: &str, b: &str| json_equal(a.as_bytes(), b.as_bytes(), &rules, now);
        // Ignored pointers, folded times, tolerated floats: equal.
        assert!(eq(r#"{"token":"abc","n":1}"#, r#"{"token":"xyz","n":1}"#));
        assert!(eq(r#"{"at":1795000001}"#, r#"{"at":1795000999}"#));
        assert!(eq(r#"{"f":1.0}"#, r#"{"f":1.0000000001}"#));
        assert!(eq(
            r#"{"a":[{"b":1},{"b":2}]}"#,
            r#"{"a":[{"b":3},{"b":4}]}"#
        ));
        assert!(eq("[1, 2]", "[1,2]"));
        // Real differences, other orders, refused documents: left to the tree comparison.
        assert!(!eq(r#"{"n":1}"#, r#"{"n":2}"#));
        assert!(!eq(r#"{"n":1,"m":2}"#, r#"{"m":2,"n":1}"#));
        assert!(
            !eq(r#"[1.0]"#, r#"[1.0000000001]"#),
            "tolerance inside arrays"
        );
        assert!(!eq(r#"{"n":1}"#, r#"{"n":1} x"#));
        assert!(!eq(r#"{"n":12}"#, r#"{"n":123}"#));
        assert!(!eq(r#"{"s":"a"}"#, "{\"s\":\"a\u{1}\"}"));
        assert!(!eq(r#"{"s":"\ud800"}"#, r#"{"s":"\ud800 "}"#));
        // The empty pointer in the rules removes nothing.
        assert!(!eq(r#"{"n":1}"#, r#"{"n":5}"#));
    }
}
