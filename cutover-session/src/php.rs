//! PHP's value format (`serialize()` / `unserialize()`) and the three session serializers
//! (`php`, `php_binary`, `php_serialize`), on bytes. Pure: no IO.
//!
//! Decoding keeps the tree as PHP wrote it — `r:`/`R:` references stay references — so that
//! encoding gives back the same bytes for everything PHP itself produces. References are
//! resolved when a value is read ([`Session::resolve`]) or turned into JSON ([`Session::to_json`]),
//! with the slot numbering PHP uses: every value parsed takes the next slot (scalars too, `r:`
//! too), keys take none, `R:` takes none, and one counter runs across the whole session blob.
//!
//! Hostile input is bounded: nesting deeper than [`MAX_DEPTH`] (PHP's `unserialize_max_depth`),
//! a declared count larger than the remaining input could hold, a blob over the size cap, and
//! a JSON expansion of references over [`MAX_JSON_NODES`] are errors that say what and where.
//! The codec recurses once per nesting level: decode PHP's deepest blobs on a thread with a
//! generous stack (cutover's own runtime threads have [`STACK_BYTES`]).
//!
//! ## The JSON form
//! null, booleans, ints (exact), floats as numbers (`"NAN"`, `"INF"`, `"-INF"` as strings),
//! UTF-8 strings as strings; an array whose keys are exactly 0..n-1 in order as a JSON array,
//! any other array as an object (int keys written in decimal). Tagged forms:
//! - a string that is not UTF-8: `{"$bytes": "<base64>"}`;
//! - an object: `{"$class": "App\\User", "$props": {public…}, "$protected": {…},
//!   "$private": {"DeclaringClass": {…}}}` (empty sections left out);
//! - a `C:` custom-serialized object: `{"$class": "ArrayObject", "$serialized": "<data>"}` (the
//!   data as a string, or `{"$bytes": …}`);
//! - an enum case: `{"$enum": "Suit", "case": "Hearts"}`;
//! - a reference back into a value that contains it: `{"$recursion": <slot>}`.

use base64::Engine;
use serde_json::{json, Map, Value as Json};
use std::fmt;

/// Stack size cutover gives the threads that decode sessions (4096 levels need a few MiB).
pub const STACK_BYTES: usize = 32 << 20;

/// PHP's default `unserialize_max_depth`.
pub const MAX_DEPTH: usize = 4096;
/// Largest blob decoded by default (PHP itself has no limit; a session this large is an attack).
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Most JSON nodes a decoded session may expand to (references can multiply a small blob).
pub const MAX_JSON_NODES: usize = 1_000_000;

/// An array key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Int(i64),
    Str(Vec<u8>),
}

/// A PHP value as serialized.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    /// Ordered entries, as PHP keeps them.
    Array(Vec<(Key, Value)>),
    /// `O:`: properties by their mangled names (`name`, `\0*\0name`, `\0Class\0name`).
    Object {
        class: Vec<u8>,
        props: Vec<(Key, Value)>,
    },
    /// `C:`: a class with its own `serialize()`; the data is kept opaque.
    Custom {
        class: Vec<u8>,
        data: Vec<u8>,
    },
    /// `E:` (PHP 8.1): `Enum:Case`.
    Enum {
        class: Vec<u8>,
        case: Vec<u8>,
    },
    /// `r:N;` (`php_ref == false`, same object) or `R:N;` (a PHP reference).
    Ref {
        slot: u32,
        php_ref: bool,
    },
}

/// A decoding error: what was wrong and at which byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {what}")]
pub struct DecodeError {
    pub offset: usize,
    pub what: String,
}

/// An encoding error (a value PHP could not have in a session).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

/// `session.serialize_handler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serializer {
    Php,
    PhpBinary,
    PhpSerialize,
}

impl Serializer {
    pub fn parse(s: &str) -> Option<Serializer> {
        match s {
            "php" => Some(Serializer::Php),
            "php_binary" => Some(Serializer::PhpBinary),
            "php_serialize" => Some(Serializer::PhpSerialize),
            _ => None,
        }
    }
}

impl Serializer {
    /// The name `session.serialize_handler` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Serializer::Php => "php",
            Serializer::PhpBinary => "php_binary",
            Serializer::PhpSerialize => "php_serialize",
        }
    }
}

/// A decoded session: the variables of `$_SESSION` in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub serializer: Serializer,
    pub vars: Vec<(Key, Value)>,
}

/// Array entries in PHP's order, with a later duplicate key overwriting the value in the first
/// one's place (as PHP does). A list (keys 0, 1, 2, … in order, what PHP writes for most
/// arrays) is kept without any index: a key is either the next one or names its position.
/// Otherwise small arrays are searched in place, and past [`INDEX_FROM`] entries a hash index
/// keeps every insertion O(1), so a 200,000-element session decodes in linear time.
struct Entries {
    items: Vec<(Key, Value)>,
    /// Every key so far is its own position.
    list: bool,
    index: Option<std::collections::HashMap<Key, usize>>,
}

/// Entries searched by scanning before a hash index is built.
const INDEX_FROM: usize = 16;

impl Entries {
    fn with_capacity(n: usize) -> Entries {
        Entries {
            items: Vec::with_capacity(n),
            list: true,
            index: None,
        }
    }

    /// Adds an entry; true when it replaced the value of an earlier duplicate key.
    fn insert(&mut self, key: Key, value: Value) -> bool {
        if self.list {
            let at = match key {
                Key::Int(k) => usize::try_from(k).ok().filter(|k| *k <= self.items.len()),
                Key::Str(_) => None,
            };
            match at {
                Some(k) if k == self.items.len() => {
                    self.items.push((key, value));
                    return false;
                }
                Some(k) => {
                    self.items[k].1 = value;
                    return true;
                }
                None => self.list = false,
            }
        }
        if self.index.is_none() && self.items.len() >= INDEX_FROM {
            let index = self
                .items
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            self.index = Some(index);
        }
        let found = match &self.index {
            Some(index) => index.get(&key).copied(),
            None => self.items.iter().position(|(k, _)| *k == key),
        };
        match found {
            Some(i) => {
                self.items[i].1 = value;
                true
            }
            None => {
                if let Some(index) = &mut self.index {
                    index.insert(key.clone(), self.items.len());
                }
                self.items.push((key, value));
                false
            }
        }
    }

    fn into_vec(self) -> Vec<(Key, Value)> {
        self.items
    }
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    depth: usize,
    /// Slots assigned so far (the next value takes `slots + 1`).
    slots: u32,
    /// A duplicate key replaced a value (whose slots then point nowhere in the tree).
    overwrote: bool,
    /// An `r:`/`R:` was seen.
    referenced: bool,
}

fn err<T>(offset: usize, what: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError {
        offset,
        what: what.into(),
    })
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Parser<'a> {
        Parser {
            input,
            pos: 0,
            depth: 0,
            slots: 0,
            overwrote: false,
            referenced: false,
        }
    }

    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), DecodeError> {
        match self.peek() {
            Some(c) if c == b => {
                self.pos += 1;
                Ok(())
            }
            Some(c) => err(
                self.pos,
                format!(
                    "expected `{}`, found `{}`",
                    b as char,
                    (c as char).escape_default()
                ),
            ),
            None => err(
                self.pos,
                format!("expected `{}`, found the end of the input", b as char),
            ),
        }
    }

    /// Digits (with an optional sign) up to `end`.
    fn number_text(&mut self, end: u8) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let rest = &self.input[start..];
        let len = rest
            .iter()
            .position(|&c| c == end)
            .ok_or_else(|| DecodeError {
                offset: start,
                what: format!("missing `{}`", end as char),
            })?;
        self.pos = start + len + 1;
        Ok(&rest[..len])
    }

    fn int(&mut self, end: u8) -> Result<i64, DecodeError> {
        let at = self.pos;
        let text = self.number_text(end)?;
        let digits = text
            .strip_prefix(b"-")
            .or_else(|| text.strip_prefix(b"+"))
            .unwrap_or(text);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return err(
                at,
                format!("`{}` is not an integer", String::from_utf8_lossy(text)),
            );
        }
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.trim_start_matches('+').parse::<i64>().ok())
            .ok_or_else(|| DecodeError {
                offset: at,
                what: format!(
                    "integer `{}` overflows 64 bits",
                    String::from_utf8_lossy(text)
                ),
            })
    }

    fn length(&mut self, end: u8) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.int(end)?;
        usize::try_from(n).map_err(|_| DecodeError {
            offset: at,
            what: format!("negative length {n}"),
        })
    }

    fn float(&mut self) -> Result<f64, DecodeError> {
        let at = self.pos;
        let text = self.number_text(b';')?;
        match text {
            b"NAN" => return Ok(f64::NAN),
            b"INF" => return Ok(f64::INFINITY),
            b"-INF" => return Ok(f64::NEG_INFINITY),
            _ => {}
        }
        let ok = !text.is_empty()
            && text
                .iter()
                .all(|c| c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.' | b'e' | b'E'))
            && text.iter().any(u8::is_ascii_digit);
        let parsed = if ok {
            std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
        } else {
            None
        };
        parsed.ok_or_else(|| DecodeError {
            offset: at,
            what: format!("`{}` is not a float", String::from_utf8_lossy(text)),
        })
    }

    /// `LEN:"bytes"` (after the type letter and colon); the closing quote is checked.
    fn quoted(&mut self) -> Result<Vec<u8>, DecodeError> {
        let at = self.pos;
        let len = self.length(b':')?;
        self.expect(b'"')?;
        if len > self.remaining() {
            return err(
                at,
                format!("string of {len} bytes runs past the end of the input"),
            );
        }
        let bytes = self.input[self.pos..self.pos + len].to_vec();
        self.pos += len;
        self.expect(b'"')?;
        Ok(bytes)
    }

    fn key(&mut self) -> Result<Key, DecodeError> {
        let at = self.pos;
        match self.input.get(self.pos..self.pos + 2) {
            Some(b"i:") => {
                self.pos += 2;
                Ok(Key::Int(self.int(b';')?))
            }
            Some(b"s:") => {
                self.pos += 2;
                let s = self.quoted()?;
                self.expect(b';')?;
                Ok(canonical_key(s))
            }
            _ => err(at, "an array key must be i: or s:"),
        }
    }

    /// `N:{key value …}` entries (after the type's header); `N` already read.
    fn entries(&mut self, count_at: usize, count: usize) -> Result<Vec<(Key, Value)>, DecodeError> {
        // Smallest entry: `i:0;N;` — 6 bytes. Refuse a count the input cannot hold before allocating.
        if count > self.remaining() / 6 {
            return err(
                count_at,
                format!(
                    "declares {count} elements but only {} bytes remain",
                    self.remaining()
                ),
            );
        }
        self.expect(b'{')?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(self.pos, format!("nesting deeper than {MAX_DEPTH}"));
        }
        let mut out = Entries::with_capacity(count);
        for _ in 0..count {
            let key = self.key()?;
            let value = self.value()?;
            self.overwrote |= out.insert(key, value);
        }
        self.expect(b'}')?;
        self.depth -= 1;
        Ok(out.into_vec())
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        let at = self.pos;
        let tag = self.peek().ok_or_else(|| DecodeError {
            offset: at,
            what: "expected a value, found the end of the input".into(),
        })?;
        if tag != b'R' {
            self.slots = self.slots.checked_add(1).ok_or_else(|| DecodeError {
                offset: at,
                what: "too many values".into(),
            })?;
        }
        if tag == b'N' {
            self.pos += 1;
            self.expect(b';')?;
            return Ok(Value::Null);
        }
        self.pos += 1;
        self.expect(b':')?;
        match tag {
            b'b' => match self.input.get(self.pos..self.pos + 2) {
                Some(b"0;") => {
                    self.pos += 2;
                    Ok(Value::Bool(false))
                }
                Some(b"1;") => {
                    self.pos += 2;
                    Ok(Value::Bool(true))
                }
                _ => err(self.pos, "a bool must be b:0; or b:1;"),
            },
            b'i' => Ok(Value::Int(self.int(b';')?)),
            b'd' => Ok(Value::Float(self.float()?)),
            b's' => {
                let s = self.quoted()?;
                self.expect(b';')?;
                Ok(Value::Str(s))
            }
            b'a' => {
                let count_at = self.pos;
                let n = self.length(b':')?;
                Ok(Value::Array(self.entries(count_at, n)?))
            }
            b'O' => {
                let class = self.quoted()?;
                self.expect(b':')?;
                let count_at = self.pos;
                let n = self.length(b':')?;
                let props = self.entries(count_at, n)?;
                Ok(Value::Object { class, props })
            }
            b'C' => {
                let class = self.quoted()?;
                self.expect(b':')?;
                let len_at = self.pos;
                let len = self.length(b':')?;
                self.expect(b'{')?;
                if len > self.remaining() {
                    return err(
                        len_at,
                        format!("custom data of {len} bytes runs past the end of the input"),
                    );
                }
                let data = self.input[self.pos..self.pos + len].to_vec();
                self.pos += len;
                self.expect(b'}')?;
                Ok(Value::Custom { class, data })
            }
            b'E' => {
                let name_at = self.pos;
                let name = self.quoted()?;
                self.expect(b';')?;
                let colon = name
                    .iter()
                    .position(|&c| c == b':')
                    .ok_or_else(|| DecodeError {
                        offset: name_at,
                        what: "an enum must be `Class:Case`".into(),
                    })?;
                Ok(Value::Enum {
                    class: name[..colon].to_vec(),
                    case: name[colon + 1..].to_vec(),
                })
            }
            b'r' | b'R' => {
                let n_at = self.pos;
                let n = self.int(b';')?;
                // `r:` took its own slot above, so it may only point at earlier ones.
                let limit = if tag == b'r' {
                    self.slots - 1
                } else {
                    self.slots
                };
                if n < 1 || n > i64::from(limit) {
                    return err(
                        n_at,
                        format!("reference to slot {n}, but only {limit} values came before"),
                    );
                }
                self.referenced = true;
                Ok(Value::Ref {
                    slot: n as u32,
                    php_ref: tag == b'R',
                })
            }
            other => err(
                at,
                format!("unknown type `{}`", (other as char).escape_default()),
            ),
        }
    }
}

/// `"5"` → `Int(5)`; `"05"`, `"-0"`, `"+5"` stay strings (PHP's ZEND_HANDLE_NUMERIC_STR).
fn canonical_key(s: Vec<u8>) -> Key {
    let digits = s.strip_prefix(b"-").unwrap_or(&s);
    let canonical = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || (digits.len() == 1 && s.len() == 1));
    if canonical {
        if let Some(n) = std::str::from_utf8(&s)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
        {
            return Key::Int(n);
        }
    }
    Key::Str(s)
}

/// `unserialize()` of one value; the whole input must be used.
pub fn unserialize(input: &[u8]) -> Result<Value, DecodeError> {
    let mut p = Parser::new(input);
    let v = p.value()?;
    if p.pos != input.len() {
        return err(p.pos, "trailing bytes after the value");
    }
    p.check_references()?;
    Ok(v)
}

impl Parser<'_> {
    /// Slot numbers count every value parsed, the overwritten ones too; once a duplicate key
    /// dropped a value, references can no longer be kept as references. PHP never writes such
    /// a blob, so it is refused rather than guessed at.
    fn check_references(&self) -> Result<(), DecodeError> {
        if self.overwrote && self.referenced {
            return err(
                0,
                "duplicate keys together with references (not something PHP writes)",
            );
        }
        Ok(())
    }
}

/// Decodes a session blob with `serializer`, refusing blobs over `max_bytes`.
pub fn decode_session(
    input: &[u8],
    serializer: Serializer,
    max_bytes: usize,
) -> Result<Session, DecodeError> {
    if input.len() > max_bytes {
        return err(
            0,
            format!(
                "session of {} bytes is over the {max_bytes}-byte cap",
                input.len()
            ),
        );
    }
    let mut p = Parser::new(input);
    let mut vars = Entries::with_capacity(0);
    let set = |p: &mut Parser, vars: &mut Entries, k: Key, v: Value| {
        p.overwrote |= vars.insert(k, v);
    };
    match serializer {
        Serializer::Php => {
            while p.pos < input.len() {
                // The name runs to the first `|`; a rest without one ends the session, as in PHP.
                let Some(bar) = input[p.pos..].iter().position(|&c| c == b'|') else {
                    break;
                };
                let name = input[p.pos..p.pos + bar].to_vec();
                p.pos += bar + 1;
                let v = p.value()?;
                set(&mut p, &mut vars, Key::Str(name), v);
            }
        }
        Serializer::PhpBinary => {
            while p.pos < input.len() {
                let len_byte = input[p.pos];
                let len = usize::from(len_byte & 0x7f);
                p.pos += 1;
                if len > p.remaining() {
                    return err(
                        p.pos - 1,
                        format!("name of {len} bytes runs past the end of the input"),
                    );
                }
                let name = input[p.pos..p.pos + len].to_vec();
                p.pos += len;
                if len_byte & 0x80 != 0 {
                    // PS_BIN_UNDEF: a name without a value.
                    continue;
                }
                let v = p.value()?;
                set(&mut p, &mut vars, Key::Str(name), v);
            }
        }
        Serializer::PhpSerialize => {
            if input.is_empty() {
                return Ok(Session::new(serializer));
            }
            let Value::Array(entries) = p.value()? else {
                return err(0, "php_serialize data must be an array");
            };
            if p.pos != input.len() {
                return err(p.pos, "trailing bytes after the session array");
            }
            p.check_references()?;
            return Ok(Session {
                serializer,
                vars: entries,
            });
        }
    }
    p.check_references()?;
    Ok(Session {
        serializer,
        vars: vars.into_vec(),
    })
}

/// PHP's float text at `serialize_precision = -1`: the shortest digits that round-trip, in
/// positional form for decimal exponents -4..=16, else `d.dddE+X` (with `.0` for one digit).
pub fn format_float(x: f64) -> String {
    if x.is_nan() {
        return "NAN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "INF".into() } else { "-INF".into() };
    }
    let sci = format!("{x:e}"); // shortest round-trip digits, e.g. "-1.2345e-7"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if !(-4..17).contains(&exp) {
        out.push_str(&digits[..1]);
        out.push('.');
        out.push_str(if digits.len() > 1 { &digits[1..] } else { "0" });
        out.push('E');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&exp.abs().to_string());
    } else if exp < 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-exp - 1) as usize));
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            out.push_str(&"0".repeat(int_len - digits.len()));
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

fn write_str(out: &mut Vec<u8>, tag: u8, s: &[u8]) {
    out.push(tag);
    out.push(b':');
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.extend_from_slice(b":\"");
    out.extend_from_slice(s);
    out.push(b'"');
}

fn write_key(out: &mut Vec<u8>, k: &Key) {
    match k {
        Key::Int(i) => {
            out.extend_from_slice(b"i:");
            out.extend_from_slice(i.to_string().as_bytes());
            out.push(b';');
        }
        Key::Str(s) => {
            write_str(out, b's', s);
            out.push(b';');
        }
    }
}

fn write_entries(out: &mut Vec<u8>, entries: &[(Key, Value)]) {
    out.extend_from_slice(entries.len().to_string().as_bytes());
    out.extend_from_slice(b":{");
    for (k, v) in entries {
        write_key(out, k);
        write_value(out, v);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"N;"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"b:1;" } else { b"b:0;" }),
        Value::Int(i) => {
            out.extend_from_slice(b"i:");
            out.extend_from_slice(i.to_string().as_bytes());
            out.push(b';');
        }
        Value::Float(f) => {
            out.extend_from_slice(b"d:");
            out.extend_from_slice(format_float(*f).as_bytes());
            out.push(b';');
        }
        Value::Str(s) => {
            write_str(out, b's', s);
            out.push(b';');
        }
        Value::Array(entries) => {
            out.extend_from_slice(b"a:");
            write_entries(out, entries);
        }
        Value::Object { class, props } => {
            write_str(out, b'O', class);
            out.push(b':');
            write_entries(out, props);
        }
        Value::Custom { class, data } => {
            write_str(out, b'C', class);
            out.push(b':');
            out.extend_from_slice(data.len().to_string().as_bytes());
            out.extend_from_slice(b":{");
            out.extend_from_slice(data);
            out.push(b'}');
        }
        Value::Enum { class, case } => {
            let mut name = class.clone();
            name.push(b':');
            name.extend_from_slice(case);
            write_str(out, b'E', &name);
            out.push(b';');
        }
        Value::Ref { slot, php_ref } => {
            out.extend_from_slice(if *php_ref { b"R:" } else { b"r:" });
            out.extend_from_slice(slot.to_string().as_bytes());
            out.push(b';');
        }
    }
}

/// `serialize()` of one value.
pub fn serialize(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(&mut out, v);
    out
}

impl Session {
    /// An empty session for `serializer`.
    pub fn new(serializer: Serializer) -> Session {
        Session {
            serializer,
            vars: Vec::new(),
        }
    }

    /// The bytes PHP's `session_encode()` gives for these variables.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        match self.serializer {
            Serializer::Php => {
                for (k, v) in &self.vars {
                    // PHP's encoder skips integer keys of $_SESSION.
                    let Key::Str(name) = k else { continue };
                    if name.contains(&b'|') {
                        return Err(EncodeError(format!(
                            "session variable `{}` contains `|`",
                            String::from_utf8_lossy(name)
                        )));
                    }
                    out.extend_from_slice(name);
                    out.push(b'|');
                    write_value(&mut out, v);
                }
            }
            Serializer::PhpBinary => {
                for (k, v) in &self.vars {
                    let Key::Str(name) = k else { continue };
                    let len = u8::try_from(name.len())
                        .ok()
                        .filter(|l| *l <= 127)
                        .ok_or_else(|| {
                            EncodeError(format!(
                                "session variable name of {} bytes is over 127",
                                name.len()
                            ))
                        })?;
                    out.push(len);
                    out.extend_from_slice(name);
                    write_value(&mut out, v);
                }
            }
            Serializer::PhpSerialize => {
                out.extend_from_slice(b"a:");
                write_entries(&mut out, &self.vars);
            }
        }
        Ok(out)
    }

    /// The variable `name` of `$_SESSION`, references followed.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let v = self
            .vars
            .iter()
            .find(|(k, _)| matches!(k, Key::Str(s) if s == name.as_bytes()))
            .map(|(_, v)| v)?;
        Some(self.resolve(v))
    }

    /// Sets (or replaces) a variable.
    pub fn set(&mut self, name: &str, v: Value) {
        let key = Key::Str(name.as_bytes().to_vec());
        match self.vars.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 = v,
            None => self.vars.push((key, v)),
        }
    }

    /// Removes a variable; true if it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.vars.len();
        self.vars
            .retain(|(k, _)| !matches!(k, Key::Str(s) if s == name.as_bytes()));
        self.vars.len() != before
    }

    /// Every value by slot, in PHP's numbering (index 0 unused): a pre-order walk visits values
    /// in the order the parser gave them slots.
    fn slot_table(&self) -> Vec<&Value> {
        fn walk<'v>(v: &'v Value, table: &mut Vec<&'v Value>) {
            if let Value::Ref { php_ref: true, .. } = v {
                return; // R: takes no slot
            }
            table.push(v);
            match v {
                Value::Array(entries) | Value::Object { props: entries, .. } => {
                    for (_, child) in entries {
                        walk(child, table);
                    }
                }
                _ => {}
            }
        }
        static NULL: Value = Value::Null;
        let mut table: Vec<&Value> = vec![&NULL];
        if self.serializer == Serializer::PhpSerialize {
            // The outer array is slot 1. It is not stored as a Value, so stand in for it.
            table.push(&NULL);
        }
        for (_, v) in &self.vars {
            walk(v, &mut table);
        }
        table
    }

    /// Follows references (a chain of them too) to the value they name; a reference to the
    /// session array itself, or one that loops, gives `Null`.
    pub fn resolve<'s>(&'s self, v: &'s Value) -> &'s Value {
        let Value::Ref { .. } = v else { return v };
        let table = self.slot_table();
        let mut current = v;
        for _ in 0..table.len() {
            match current {
                Value::Ref { slot, .. } => match table.get(*slot as usize) {
                    Some(next) => current = next,
                    None => return &Value::Null,
                },
                other => return other,
            }
        }
        &Value::Null
    }

    /// The contract's JSON form of the session: an object keyed by variable name.
    pub fn to_json(&self) -> Result<Json, DecodeError> {
        let table = self.slot_table();
        // Containers are identified by address so that a reference back into one that is being
        // expanded (an object holding itself) is seen; only needed when there are references.
        let has_refs = table.iter().any(|v| matches!(v, Value::Ref { .. }))
            || self
                .vars
                .iter()
                .any(|(_, v)| matches!(v, Value::Ref { php_ref: true, .. }));
        let slot_of: std::collections::HashMap<usize, u32> = if has_refs {
            table
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, v)| (*v as *const Value as usize, i as u32))
                .collect()
        } else {
            std::collections::HashMap::new()
        };
        let mut ctx = JsonCtx {
            table: &table,
            slot_of,
            stack: Vec::new(),
            nodes: 0,
        };
        let mut map = Map::new();
        for (k, v) in &self.vars {
            map.insert(key_text(k), ctx.value(v)?);
        }
        Ok(Json::Object(map))
    }
}

fn key_text(k: &Key) -> String {
    match k {
        Key::Int(i) => i.to_string(),
        Key::Str(s) => String::from_utf8_lossy(s).into_owned(),
    }
}

fn bytes_json(b: &[u8]) -> Json {
    match std::str::from_utf8(b) {
        Ok(s) => Json::String(s.to_string()),
        Err(_) => json!({ "$bytes": base64::engine::general_purpose::STANDARD.encode(b) }),
    }
}

struct JsonCtx<'t, 'v> {
    table: &'t [&'v Value],
    slot_of: std::collections::HashMap<usize, u32>,
    /// Slots being expanded (to stop at a reference into its own container).
    stack: Vec<u32>,
    nodes: usize,
}

impl JsonCtx<'_, '_> {
    fn value(&mut self, v: &Value) -> Result<Json, DecodeError> {
        self.nodes += 1;
        if self.nodes > MAX_JSON_NODES {
            return err(
                0,
                format!("the session expands to more than {MAX_JSON_NODES} values"),
            );
        }
        let container = matches!(v, Value::Array(_) | Value::Object { .. });
        let slot = if container {
            self.slot_of.get(&(v as *const Value as usize)).copied()
        } else {
            None
        };
        if let Some(s) = slot {
            self.stack.push(s);
        }
        let out = self.expand(v);
        if slot.is_some() {
            self.stack.pop();
        }
        out
    }

    fn expand(&mut self, v: &Value) -> Result<Json, DecodeError> {
        Ok(match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::Float(f) => {
                if f.is_nan() {
                    Json::String("NAN".into())
                } else if f.is_infinite() {
                    Json::String(if *f > 0.0 { "INF" } else { "-INF" }.into())
                } else {
                    serde_json::Number::from_f64(*f)
                        .map(Json::Number)
                        .unwrap_or(Json::Null)
                }
            }
            Value::Str(s) => bytes_json(s),
            Value::Array(entries) => {
                let is_list = entries
                    .iter()
                    .enumerate()
                    .all(|(i, (k, _))| *k == Key::Int(i as i64));
                if is_list {
                    let mut items = Vec::with_capacity(entries.len());
                    for (_, child) in entries {
                        items.push(self.value(child)?);
                    }
                    Json::Array(items)
                } else {
                    let mut map = Map::new();
                    for (k, child) in entries {
                        map.insert(key_text(k), self.value(child)?);
                    }
                    Json::Object(map)
                }
            }
            Value::Object { class, props } => {
                let mut public = Map::new();
                let mut protected = Map::new();
                let mut private: Map<String, Json> = Map::new();
                for (k, child) in props {
                    let value = self.value(child)?;
                    match k {
                        Key::Str(name) if name.starts_with(b"\0*\0") => {
                            protected
                                .insert(String::from_utf8_lossy(&name[3..]).into_owned(), value);
                        }
                        Key::Str(name) if name.first() == Some(&0) => {
                            let rest = &name[1..];
                            let split = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
                            let declaring = String::from_utf8_lossy(&rest[..split]).into_owned();
                            let prop =
                                String::from_utf8_lossy(rest.get(split + 1..).unwrap_or(b""))
                                    .into_owned();
                            let section = private
                                .entry(declaring)
                                .or_insert_with(|| Json::Object(Map::new()));
                            if let Json::Object(m) = section {
                                m.insert(prop, value);
                            }
                        }
                        other => {
                            public.insert(key_text(other), value);
                        }
                    }
                }
                let mut o = Map::new();
                o.insert("$class".into(), bytes_json(class));
                if !public.is_empty() {
                    o.insert("$props".into(), Json::Object(public));
                }
                if !protected.is_empty() {
                    o.insert("$protected".into(), Json::Object(protected));
                }
                if !private.is_empty() {
                    o.insert("$private".into(), Json::Object(private));
                }
                Json::Object(o)
            }
            Value::Custom { class, data } => {
                json!({ "$class": bytes_json(class), "$serialized": bytes_json(data) })
            }
            Value::Enum { class, case } => {
                json!({ "$enum": bytes_json(class), "case": bytes_json(case) })
            }
            Value::Ref { slot, .. } => {
                if self.stack.contains(slot) {
                    return Ok(json!({ "$recursion": slot }));
                }
                let Some(target) = self.table.get(*slot as usize).copied() else {
                    return Ok(Json::Null);
                };
                self.value(target)?
            }
        })
    }
}

/// Builds a PHP value from the JSON form (the inverse of [`Session::to_json`] for what JSON
/// can say: references come back as copies, numbers with a fraction or exponent as floats).
pub fn from_json(j: &Json) -> Value {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => match s.as_str() {
            "NAN" => Value::Float(f64::NAN),
            "INF" => Value::Float(f64::INFINITY),
            "-INF" => Value::Float(f64::NEG_INFINITY),
            _ => Value::Str(s.as_bytes().to_vec()),
        },
        Json::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| (Key::Int(i as i64), from_json(v)))
                .collect(),
        ),
        Json::Object(m) => {
            let raw = |v: &Json| -> Vec<u8> {
                match v {
                    Json::String(s) => s.as_bytes().to_vec(),
                    Json::Object(b) => b
                        .get("$bytes")
                        .and_then(Json::as_str)
                        .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
                        .unwrap_or_default(),
                    _ => Vec::new(),
                }
            };
            if m.len() == 1 {
                if let Some(b) = m.get("$bytes") {
                    return Value::Str(raw(&json!({ "$bytes": b })));
                }
            }
            if let (Some(e), Some(case)) = (m.get("$enum"), m.get("case")) {
                return Value::Enum {
                    class: raw(e),
                    case: raw(case),
                };
            }
            if let Some(class) = m.get("$class") {
                if let Some(data) = m.get("$serialized") {
                    return Value::Custom {
                        class: raw(class),
                        data: raw(data),
                    };
                }
                let class = raw(class);
                let mut props = Vec::new();
                if let Some(Json::Object(p)) = m.get("$props") {
                    props.extend(
                        p.iter()
                            .map(|(k, v)| (canonical_key(k.as_bytes().to_vec()), from_json(v))),
                    );
                }
                if let Some(Json::Object(p)) = m.get("$protected") {
                    props.extend(p.iter().map(|(k, v)| {
                        let mut name = b"\0*\0".to_vec();
                        name.extend_from_slice(k.as_bytes());
                        (Key::Str(name), from_json(v))
                    }));
                }
                if let Some(Json::Object(p)) = m.get("$private") {
                    for (declaring, section) in p {
                        if let Json::Object(s) = section {
                            for (k, v) in s {
                                let mut name = vec![0];
                                name.extend_from_slice(declaring.as_bytes());
                                name.push(0);
                                name.extend_from_slice(k.as_bytes());
                                props.push((Key::Str(name), from_json(v)));
                            }
                        }
                    }
                }
                return Value::Object { class, props };
            }
            Value::Array(
                m.iter()
                    .map(|(k, v)| (canonical_key(k.as_bytes().to_vec()), from_json(v)))
                    .collect(),
            )
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&serialize(self)))
    }
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The bytes of a string value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A string value that is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The element `key` of an array (or public property of an object).
    pub fn get(&self, key: &str) -> Option<&Value> {
        let k = canonical_key(key.as_bytes().to_vec());
        match self {
            Value::Array(entries) | Value::Object { props: entries, .. } => {
                entries.iter().find(|(ek, _)| *ek == k).map(|(_, v)| v)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) {
        let v = unserialize(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(String::from_utf8_lossy(&serialize(&v)), s);
    }

    #[test]
    fn scalars_round_trip() {
        for s in [
            "N;",
            "b:0;",
            "b:1;",
            "i:0;",
            "i:-9223372036854775808;",
            "i:9223372036854775807;",
            "d:0.1;",
            "d:1.0E+25;",
            "d:-0;",
            "d:NAN;",
            "d:INF;",
            "d:-INF;",
            "s:0:\"\";",
            "s:3:\"a;\"\";",
        ] {
            rt(s);
        }
    }

    #[test]
    fn floats_print_as_php_does() {
        let cases = [
            (1.0, "1"),
            (-0.0, "-0"),
            (0.1, "0.1"),
            (0.30000000000000004, "0.30000000000000004"),
            (0.0001, "0.0001"),
            (1e-5, "1.0E-5"),
            (1e16, "10000000000000000"),
            (1e17, "1.0E+17"),
            (1.2345678901234568e17, "1.2345678901234568E+17"),
            (1e25, "1.0E+25"),
            (-1.5e-7, "-1.5E-7"),
            (123.456, "123.456"),
        ];
        for (x, want) in cases {
            assert_eq!(format_float(x), want, "{x:e}");
        }
    }

    #[test]
    fn integer_overflow_is_an_error() {
        let e = unserialize(b"i:9223372036854775808;").expect_err("overflow");
        assert!(e.what.contains("overflows"), "{e}");
        assert_eq!(e.offset, 2);
    }

    #[test]
    fn canonical_string_keys_become_ints() {
        let v = unserialize(b"a:4:{s:1:\"5\";i:1;s:2:\"05\";i:2;s:2:\"-0\";i:3;s:2:\"-7\";i:4;}")
            .expect("valid");
        let Value::Array(e) = v else { panic!("array") };
        let keys: Vec<Key> = e.into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec![
                Key::Int(5),
                Key::Str(b"05".to_vec()),
                Key::Str(b"-0".to_vec()),
                Key::Int(-7)
            ]
        );
    }

    #[test]
    fn duplicates_overwrite_in_place() {
        let v = unserialize(b"a:3:{i:0;s:1:\"a\";i:1;s:1:\"b\";i:0;s:1:\"c\";}").expect("valid");
        assert_eq!(
            v,
            Value::Array(vec![
                (Key::Int(0), Value::Str(b"c".to_vec())),
                (Key::Int(1), Value::Str(b"b".to_vec()))
            ])
        );
    }

    #[test]
    fn duplicates_in_large_arrays_overwrite_in_place() {
        // Past the size where the decoder indexes keys: the same answer as a scan.
        let mut blob = String::from("a:200:{");
        for i in 0..200 {
            // Keys 0..99 twice; the second value of each wins, in the first one's place.
            let k = i % 100;
            blob.push_str(&format!("i:{k};i:{i};"));
        }
        blob.push('}');
        let v = unserialize(blob.as_bytes()).expect("decodes");
        let Value::Array(entries) = v else {
            panic!("an array")
        };
        assert_eq!(entries.len(), 100);
        for (k, (key, value)) in entries.iter().enumerate() {
            assert_eq!(*key, Key::Int(k as i64));
            assert_eq!(*value, Value::Int(k as i64 + 100));
        }
        let mut s = String::new();
        for i in 0..40 {
            s.push_str(&format!("v{}|i:{i};", i % 20));
        }
        let session = decode_session(s.as_bytes(), Serializer::Php, 1 << 20).expect("decodes");
        assert_eq!(session.vars.len(), 20);
        assert_eq!(session.get("v3").and_then(Value::as_i64), Some(23));
    }

    #[test]
    fn arrays_that_stop_being_lists_are_indexed() {
        // Keys 0, 2, 4, …: a list for one entry, then the hash index past 16 entries.
        let mut blob = String::from("a:300:{");
        for i in 0..300 {
            let k = (i % 150) * 2;
            blob.push_str(&format!("i:{k};i:{i};"));
        }
        blob.push('}');
        let Value::Array(entries) = unserialize(blob.as_bytes()).expect("decodes") else {
            panic!("an array")
        };
        assert_eq!(entries.len(), 150);
        for (i, (key, value)) in entries.iter().enumerate() {
            assert_eq!(*key, Key::Int(i as i64 * 2));
            assert_eq!(*value, Value::Int(i as i64 + 150));
        }
        // A list, then a string key, then a list key again.
        let v = unserialize(b"a:4:{i:0;i:1;i:1;i:2;s:1:\"x\";i:3;i:1;i:4;}").expect("valid");
        assert_eq!(
            v,
            Value::Array(vec![
                (Key::Int(0), Value::Int(1)),
                (Key::Int(1), Value::Int(4)),
                (Key::Str(b"x".to_vec()), Value::Int(3)),
            ])
        );
    }

    #[test]
    fn hostile_counts_are_refused_before_allocating() {
        let e = unserialize(b"a:999999999999:{}").expect_err("huge count");
        assert!(e.what.contains("declares 999999999999 elements"), "{e}");
        assert_eq!(e.offset, 2);
        let e = unserialize(b"s:99999:\"abc\";").expect_err("long string");
        assert!(e.what.contains("runs past the end"), "{e}");
    }

    /// Runs `f` on a thread with a stack deep enough for 4096 levels in a debug build.
    fn with_big_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(512 << 20)
            .spawn(f)
            .expect("thread")
            .join()
            .expect("no panic");
    }

    #[test]
    fn depth_is_limited() {
        with_big_stack(depth_is_limited_inner);
    }

    fn depth_is_limited_inner() {
        let deep = "a:1:{i:0;".repeat(MAX_DEPTH + 1) + "N;" + &"}".repeat(MAX_DEPTH + 1);
        let e = unserialize(deep.as_bytes()).expect_err("too deep");
        assert!(e.what.contains("nesting deeper than 4096"), "{e}");
        let ok = "a:1:{i:0;".repeat(MAX_DEPTH) + "N;" + &"}".repeat(MAX_DEPTH);
        unserialize(ok.as_bytes()).expect("4096 levels are allowed");
    }

    #[test]
    fn size_cap() {
        let e = decode_session(b"a|i:1;", Serializer::Php, 3).expect_err("over the cap");
        assert!(e.what.contains("over the 3-byte cap"));
    }

    #[test]
    fn php_handler_does_not_split_on_bars() {
        let s = decode_session(b"a|s:3:\"x|y\";b|i:2;", Serializer::Php, DEFAULT_MAX_BYTES)
            .expect("valid");
        assert_eq!(s.get("a").and_then(Value::as_str), Some("x|y"));
        assert_eq!(s.get("b").and_then(Value::as_i64), Some(2));
        assert_eq!(s.encode().expect("encode"), b"a|s:3:\"x|y\";b|i:2;");
    }

    #[test]
    fn references_resolve_with_php_slots() {
        // $a = [1]; $_SESSION['x'] = &$a; $_SESSION['y'] = &$a;  (slots: x=1, its element=2)
        let s = decode_session(
            b"x|a:1:{i:0;i:1;}y|R:1;",
            Serializer::Php,
            DEFAULT_MAX_BYTES,
        )
        .expect("valid");
        assert_eq!(s.to_json().expect("json"), json!({"x": [1], "y": [1]}));
        let s = decode_session(
            b"a:2:{s:1:\"x\";s:2:\"hi\";s:1:\"y\";R:2;}",
            Serializer::PhpSerialize,
            DEFAULT_MAX_BYTES,
        )
        .expect("valid");
        assert_eq!(s.get("y").and_then(Value::as_str), Some("hi"));
        let e =
            decode_session(b"x|R:5;", Serializer::Php, DEFAULT_MAX_BYTES).expect_err("dangling");
        assert!(e.what.contains("slot 5"), "{e}");
    }

    #[test]
    fn duplicates_with_references_are_refused() {
        // Found by the fuzzer: the overwritten value's slot no longer exists when re-encoded.
        let e = decode_session(
            b"a|a:1:{i:0;i:1;}a|N;b|R:2;",
            Serializer::Php,
            DEFAULT_MAX_BYTES,
        )
        .expect_err("refused");
        assert!(
            e.what.contains("duplicate keys together with references"),
            "{e}"
        );
        decode_session(b"a|i:1;a|i:2;", Serializer::Php, DEFAULT_MAX_BYTES)
            .expect("duplicates alone are fine");
    }

    #[test]
    fn self_reference_is_tagged_not_expanded_forever() {
        let s = decode_session(
            b"o|O:8:\"stdClass\":1:{s:4:\"self\";r:1;}",
            Serializer::Php,
            DEFAULT_MAX_BYTES,
        )
        .expect("valid");
        assert_eq!(
            s.to_json().expect("json"),
            json!({"o": {"$class": "stdClass", "$props": {"self": {"$recursion": 1}}}})
        );
    }

    #[test]
    fn reference_bombs_are_bounded() {
        // Each level holds the previous one twice: 2^40 values when expanded.
        let mut blob = String::from("a:41:{i:0;a:0:{}");
        for i in 1..41 {
            blob.push_str(&format!(
                "i:{i};a:2:{{i:0;R:{};i:1;R:{};}}",
                slot_of(i - 1),
                slot_of(i - 1)
            ));
        }
        blob.push('}');
        fn slot_of(level: usize) -> usize {
            // outer array = 1, level 0 = 2, each later level takes one slot (R: take none).
            2 + level
        }
        let s = decode_session(blob.as_bytes(), Serializer::PhpSerialize, DEFAULT_MAX_BYTES)
            .expect("decodes");
        let e = s.to_json().expect_err("expansion is capped");
        assert!(e.what.contains("expands to more than"), "{e}");
    }

    #[test]
    fn binary_handler() {
        let mut blob = vec![4u8];
        blob.extend_from_slice(b"useri:7;");
        blob.push(0x80 | 3);
        blob.extend_from_slice(b"old");
        let s = decode_session(&blob, Serializer::PhpBinary, DEFAULT_MAX_BYTES).expect("valid");
        assert_eq!(s.get("user").and_then(Value::as_i64), Some(7));
        assert_eq!(s.vars.len(), 1);
    }

    #[test]
    fn json_forms() {
        let blob = b"o|O:4:\"User\":3:{s:2:\"id\";i:1;s:7:\"\0*\0role\";s:5:\"admin\";s:10:\"\0User\0hash\";s:1:\"h\";}e|E:11:\"Suit:Hearts\";b|s:2:\"\xff\xfe\";m|a:2:{i:1;s:1:\"a\";i:0;s:1:\"b\";}";
        let s = decode_session(blob, Serializer::Php, DEFAULT_MAX_BYTES).expect("valid");
        let j = s.to_json().expect("json");
        assert_eq!(
            j["o"],
            json!({"$class": "User", "$props": {"id": 1}, "$protected": {"role": "admin"}, "$private": {"User": {"hash": "h"}}})
        );
        assert_eq!(j["e"], json!({"$enum": "Suit", "case": "Hearts"}));
        assert_eq!(j["b"], json!({"$bytes": "//4="}));
        assert_eq!(j["m"], json!({"1": "a", "0": "b"}));
        // And back: the JSON form re-encodes to the same bytes (no references here).
        let mut back = Session::new(Serializer::Php);
        for (k, v) in j.as_object().expect("object") {
            back.set(k, from_json(v));
        }
        assert_eq!(back.encode().expect("encode"), blob);
    }
}
