//! PHP-FPM spoken to in FastCGI, as nginx's `fastcgi_pass` does: the record protocol (pure:
//! [`RecordReader`], [`encode_record`], [`encode_params`] — fuzzed), the parameters of nginx's
//! `fastcgi_params`, the CGI response head (`Status:`, repeated `Set-Cookie`), the choice between
//! a PHP script, the front controller and a static file under `document_root`, and the exchange
//! over a pooled connection (`FCGI_KEEP_CONN`), streaming the response body as PHP writes it.

pub mod client;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::path::{Path, PathBuf};

pub const VERSION: u8 = 1;
pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
const RESPONDER: u16 = 1;
const KEEP_CONN: u8 = 1;
/// The largest record content.
pub const MAX_CONTENT: usize = 65_535;
/// The largest CGI response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// A FastCGI peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("FastCGI record of version {0}")]
    Version(u8),
    #[error("FastCGI END_REQUEST record of {0} bytes")]
    EndRequest(usize),
    #[error("the CGI response head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("CGI response header line `{0}` is not `Name: value`")]
    HeaderLine(String),
    #[error("CGI Status `{0}` is not a status code")]
    Status(String),
    #[error("PHP-FPM ended the request with protocol status {0}")]
    Refused(u8),
    #[error("PHP-FPM closed the connection before the end of the request")]
    Closed,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub request_id: u16,
    pub content: Bytes,
}

/// Splits a byte stream into records; feed it bytes, take records out.
#[derive(Debug, Default)]
pub struct RecordReader {
    buf: BytesMut,
}

impl RecordReader {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete record, if the bytes so far hold one.
    pub fn next_record(&mut self) -> Result<Option<Record>, ProtocolError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let version = self.buf[0];
        if version != VERSION {
            return Err(ProtocolError::Version(version));
        }
        let kind = self.buf[1];
        let request_id = u16::from_be_bytes([self.buf[2], self.buf[3]]);
        let len = usize::from(u16::from_be_bytes([self.buf[4], self.buf[5]]));
        let padding = usize::from(self.buf[6]);
        if self.buf.len() < 8 + len + padding {
            return Ok(None);
        }
        self.buf.advance(8);
        let content = self.buf.split_to(len).freeze();
        self.buf.advance(padding);
        Ok(Some(Record {
            kind,
            request_id,
            content,
        }))
    }

    /// The buffer to read into, with room for at least `room` more bytes.
    pub fn buffer(&mut self, room: usize) -> &mut BytesMut {
        self.buf.reserve(room);
        &mut self.buf
    }

    /// Bytes read but not yet part of a record.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// One record's bytes (content at most [`MAX_CONTENT`]; padded to a multiple of 8).
pub fn encode_record(out: &mut BytesMut, kind: u8, request_id: u16, content: &[u8]) {
    let len = content.len().min(MAX_CONTENT);
    let padding = (8 - len % 8) % 8;
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u16(request_id);
    out.put_u16(len as u16);
    out.put_u8(padding as u8);
    out.put_u8(0);
    out.put_slice(&content[..len]);
    out.put_bytes(0, padding);
}

/// A stream's content as records (an empty one ends the stream).
pub fn encode_stream(out: &mut BytesMut, kind: u8, request_id: u16, content: &[u8]) {
    for chunk in content.chunks(MAX_CONTENT) {
        encode_record(out, kind, request_id, chunk);
    }
}

fn put_length(out: &mut BytesMut, n: usize) {
    if n < 128 {
        out.put_u8(n as u8);
    } else {
        out.put_u32((n as u32) | 0x8000_0000);
    }
}

/// Name-value pairs in FastCGI's encoding.
pub fn encode_params(pairs: &[(String, Vec<u8>)]) -> BytesMut {
    let mut out = BytesMut::new();
    for (name, value) in pairs {
        put_length(&mut out, name.len());
        put_length(&mut out, value.len());
        out.put_slice(name.as_bytes());
        out.put_slice(value);
    }
    out
}

/// Name-value pairs read back (`None` if a length runs past the end).
pub fn decode_params(mut b: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    fn length(b: &mut &[u8]) -> Option<usize> {
        let first = *b.first()?;
        if first < 128 {
            *b = &b[1..];
            return Some(usize::from(first));
        }
        let bytes: [u8; 4] = b.get(..4)?.try_into().ok()?;
        *b = &b[4..];
        usize::try_from(u32::from_be_bytes(bytes) & 0x7fff_ffff).ok()
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = length(&mut b)?;
        let v = length(&mut b)?;
        let name = b.get(..n)?;
        let value = b.get(n..n.checked_add(v)?)?;
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
        b = &b[n + v..];
    }
    Some(out)
}

/// BEGIN_REQUEST for a responder; `keep`: PHP-FPM keeps the connection open after it.
pub fn begin_request(out: &mut BytesMut, request_id: u16, keep: bool) {
    let mut body = [0u8; 8];
    body[..2].copy_from_slice(&RESPONDER.to_be_bytes());
    body[2] = if keep { KEEP_CONN } else { 0 };
    encode_record(out, BEGIN_REQUEST, request_id, &body);
}

/// END_REQUEST's protocol status (0: the request is complete).
pub fn end_status(content: &[u8]) -> Result<u8, ProtocolError> {
    if content.len() < 8 {
        return Err(ProtocolError::EndRequest(content.len()));
    }
    Ok(content[4])
}

/// A CGI response head: `Status:` (else 302 with a `Location`, else 200) and the headers in
/// order, repeated ones (`Set-Cookie`) kept.
pub fn parse_cgi_head(head: &[u8]) -> Result<(StatusCode, HeaderMap), ProtocolError> {
    let mut headers = HeaderMap::new();
    let mut status = None;
    let shown = |line: &[u8]| String::from_utf8_lossy(line).chars().take(80).collect();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| ProtocolError::HeaderLine(shown(line)))?;
        let name = line[..colon].trim_ascii();
        // Values as PHP wrote them, bytes and all (a UTF-8 file name), as nginx passes them.
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"status") {
            let text = String::from_utf8_lossy(value);
            let code = text.split_whitespace().next().unwrap_or("");
            status = Some(
                code.parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| ProtocolError::Status(text.chars().take(80).collect()))?,
            );
            continue;
        }
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            return Err(ProtocolError::HeaderLine(shown(line)));
        };
        headers.append(name, value);
    }
    let status = status.unwrap_or(if headers.contains_key(http::header::LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok((status, headers))
}

/// Where the head ends in `buf` (the index just past the blank line), if it does.
pub fn head_end(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|p| p + 4);
    let lf = memchr::memmem::find(buf, b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Ok(Some(a.min(b))),
        (a, b) => match a.or(b) {
            Some(end) => Ok(Some(end)),
            None if buf.len() > MAX_HEAD => Err(ProtocolError::HeadTooLarge),
            None => Ok(None),
        },
    }
}

/// The PHP application behind a FastCGI upstream (`[upstreams.fastcgi]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastCgiApp {
    /// SCRIPT_FILENAME = document_root + script.
    pub document_root: PathBuf,
    /// The front controller: paths that are not a .php file (nor a static file) run it.
    pub index: String,
    /// Connections kept open between requests (`FCGI_KEEP_CONN`) by each proxy worker; 0: a
    /// connection per request. A kept connection holds a PHP-FPM worker for itself.
    pub keep_connections: usize,
}

/// What a request path is, under the document root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A PHP script: its SCRIPT_NAME, the file, and PATH_INFO.
    Script {
        script_name: String,
        filename: PathBuf,
        path_info: String,
    },
    /// A file served from disk.
    Static(PathBuf),
    /// A path that tries to leave the document root.
    Forbidden,
}

impl FastCgiApp {
    /// The script (or file) for a request path, as an nginx config with `try_files $uri
    /// /index.php?$query_string` and `location ~ \.php$` chooses it.
    pub fn target(&self, path: &str) -> Target {
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        if decoded.contains('\0')
            || decoded.split('/').any(|seg| seg == "..")
            || !decoded.starts_with('/')
        {
            return Target::Forbidden;
        }
        if let Some(i) = decoded.find(".php") {
            let end = i + 4;
            if decoded.len() == end || decoded[end..].starts_with('/') {
                let script_name = decoded[..end].to_string();
                return Target::Script {
                    filename: self.document_root.join(script_name.trim_start_matches('/')),
                    path_info: decoded[end..].to_string(),
                    script_name,
                };
            }
        }
        let file = self.document_root.join(decoded.trim_start_matches('/'));
        if file.is_file() {
            return Target::Static(file);
        }
        let index_dir = file.join(&self.index);
        if decoded.ends_with('/') && index_dir.is_file() {
            let script_name = format!("{}{}", decoded, self.index);
            return Target::Script {
                filename: index_dir,
                path_info: String::new(),
                script_name,
            };
        }
        Target::Script {
            script_name: format!("/{}", self.index),
            filename: self.document_root.join(&self.index),
            path_info: String::new(),
        }
    }
}

/// Who the request is from and to, as the CGI parameters name them.
#[derive(Debug, Clone)]
pub struct Peers {
    pub remote_addr: std::net::IpAddr,
    pub remote_port: u16,
    pub server_addr: std::net::IpAddr,
    pub server_port: u16,
    pub https: bool,
}

/// Name-value pairs written straight into a FastCGI parameter block (no pair is kept).
struct ParamWriter<'a> {
    out: &'a mut BytesMut,
}

impl ParamWriter<'_> {
    fn pair(&mut self, name: &[u8], value: &[u8]) {
        put_length(self.out, name.len());
        put_length(self.out, value.len());
        self.out.put_slice(name);
        self.out.put_slice(value);
    }

    fn number(&mut self, name: &[u8], n: u64) {
        let mut digits = itoa::Buffer::new();
        self.pair(name, digits.format(n).as_bytes());
    }

    /// A request header as CGI passes it (`HTTP_` and its name in capitals, `-` as `_`), its
    /// values joined, as a CGI server does.
    fn header<'v, I: Iterator<Item = &'v HeaderValue>>(
        &mut self,
        name: &http::HeaderName,
        values: impl Fn() -> I,
    ) {
        let sep: &[u8] = if name == http::header::COOKIE {
            b"; "
        } else {
            b", "
        };
        let (count, len) = values().fold((0usize, 0usize), |(c, l), v| (c + 1, l + v.len()));
        let name = name.as_str().as_bytes();
        put_length(self.out, 5 + name.len());
        put_length(self.out, len + sep.len() * count.saturating_sub(1));
        self.out.put_slice(b"HTTP_");
        self.out.extend(name.iter().map(|&b| match b {
            b'-' => b'_',
            b => b.to_ascii_uppercase(),
        }));
        for (i, v) in values().enumerate() {
            if i > 0 {
                self.out.put_slice(sep);
            }
            self.out.put_slice(v.as_bytes());
        }
    }

    /// An address as text, formatted on the stack.
    fn ip(&mut self, name: &[u8], ip: std::net::IpAddr) {
        use std::io::Write;
        // The longest IPv6 text (an IPv4-mapped address in full) is 45 bytes.
        let mut text = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = write!(cursor, "{ip}");
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        self.pair(name, &text[..len]);
    }
}

/// The value of `HTTP_HOST` and `SERVER_NAME`: nginx's `$host`, the host of an absolute-form
/// target, else of the Host header, lowercased, without the port.
fn host_of(parts: &http::request::Parts) -> String {
    if let Some(h) = parts.uri.host() {
        return h.to_ascii_lowercase();
    }
    let raw = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = match raw.strip_prefix('[') {
        // [v6]:port
        Some(v6) => v6
            .split(']')
            .next()
            .map_or(raw.to_string(), |a| format!("[{a}]")),
        None => raw.rsplit_once(':').map_or(raw, |(h, _)| h).to_string(),
    };
    bare.to_ascii_lowercase()
}

/// The request's parameter block: the parameters of nginx's `fastcgi_params` (and
/// `SCRIPT_FILENAME`), in FastCGI's name-value encoding.
pub fn encode_request_params(
    app: &FastCgiApp,
    parts: &http::request::Parts,
    script: (&str, &Path, &str),
    peers: &Peers,
    body_len: Option<u64>,
) -> BytesMut {
    let (script_name, filename, path_info) = script;
    let root = app.document_root.as_os_str().as_encoded_bytes();
    let filename = filename.as_os_str().as_encoded_bytes();
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 16)
        .sum();
    let mut out = BytesMut::with_capacity(
        640 + header_bytes + root.len() + filename.len() + 2 * parts.uri.path().len(),
    );
    let mut w = ParamWriter { out: &mut out };
    let header = |n: &http::HeaderName| parts.headers.get(n).map_or(&b""[..], |v| v.as_bytes());
    let host = host_of(parts);
    w.pair(b"QUERY_STRING", parts.uri.query().unwrap_or("").as_bytes());
    w.pair(b"REQUEST_METHOD", parts.method.as_str().as_bytes());
    w.pair(b"CONTENT_TYPE", header(&http::header::CONTENT_TYPE));
    // The body's exact length when the proxy knows it (a chunked request's was read before it
    // came here), as nginx buffers one to tell PHP its length.
    match body_len {
        Some(n) if n > 0 => w.number(b"CONTENT_LENGTH", n),
        _ => w.pair(b"CONTENT_LENGTH", header(&http::header::CONTENT_LENGTH)),
    }
    w.pair(b"SCRIPT_NAME", script_name.as_bytes());
    w.pair(b"SCRIPT_FILENAME", filename);
    let request_uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    w.pair(b"REQUEST_URI", request_uri.as_bytes());
    w.pair(b"DOCUMENT_URI", script_name.as_bytes());
    w.pair(b"DOCUMENT_ROOT", root);
    let protocol: &[u8] = match parts.version {
        http::Version::HTTP_09 => b"HTTP/0.9",
        http::Version::HTTP_10 => b"HTTP/1.0",
        http::Version::HTTP_2 => b"HTTP/2.0",
        http::Version::HTTP_3 => b"HTTP/3.0",
        _ => b"HTTP/1.1",
    };
    w.pair(b"SERVER_PROTOCOL", protocol);
    let scheme: &[u8] = if peers.https { b"https" } else { b"http" };
    w.pair(b"REQUEST_SCHEME", scheme);
    w.pair(b"GATEWAY_INTERFACE", b"CGI/1.1");
    w.pair(b"SERVER_SOFTWARE", b"cutover");
    w.ip(b"REMOTE_ADDR", peers.remote_addr);
    w.number(b"REMOTE_PORT", u64::from(peers.remote_port));
    w.ip(b"SERVER_ADDR", peers.server_addr);
    w.number(b"SERVER_PORT", u64::from(peers.server_port));
    w.pair(b"SERVER_NAME", host.as_bytes());
    // PHP's cgi.force_redirect wants it (nginx's fastcgi_params sets it too).
    w.pair(b"REDIRECT_STATUS", b"200");
    // Set even when empty, as the usual `fastcgi_param PATH_INFO $fastcgi_path_info` does.
    w.pair(b"PATH_INFO", path_info.as_bytes());
    w.pair(b"HTTP_HOST", host.as_bytes());
    if peers.https {
        w.pair(b"HTTPS", b"on");
    }
    let passed = |name: &http::HeaderName| {
        // A name with `_` would pass for one with `-` (`X_Forwarded_For` as
        // HTTP_X_FORWARDED_FOR): dropped, as nginx drops them by default.
        name != http::header::CONTENT_TYPE
            && name != http::header::CONTENT_LENGTH
            && name != http::header::HOST
            && !name.as_str().contains('_')
    };
    if parts.headers.keys_len() == parts.headers.len() {
        // No header repeated (most requests): each value as it is, no lookups.
        for (name, value) in parts.headers.iter().filter(|(n, _)| passed(n)) {
            w.header(name, || std::iter::once(value));
        }
    } else {
        for name in parts.headers.keys().filter(|n| passed(n)) {
            w.header(name, || parts.headers.get_all(name).iter());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_any_split() {
        let mut out = BytesMut::new();
        encode_record(&mut out, STDOUT, 1, b"Status: 302\r\n\r\n");
        encode_record(&mut out, STDERR, 1, b"PHP Warning");
        encode_record(&mut out, STDOUT, 1, b"");
        let bytes = out.freeze();
        for split in 0..bytes.len() {
            let mut r = RecordReader::default();
            r.feed(&bytes[..split]);
            let mut got = Vec::new();
            while let Some(rec) = r.next_record().expect("valid") {
                got.push(rec);
            }
            r.feed(&bytes[split..]);
            while let Some(rec) = r.next_record().expect("valid") {
                got.push(rec);
            }
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(got[0].content.as_ref(), b"Status: 302\r\n\r\n");
            assert_eq!(got[1].kind, STDERR);
            assert!(got[2].content.is_empty());
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn long_params_use_four_byte_lengths() {
        let long = vec![b'x'; 300];
        let p = encode_params(&[("A".into(), long.clone()), ("B".into(), b"1".to_vec())]);
        assert_eq!(p[0], 1);
        assert_eq!(&p[1..5], &(300u32 | 0x8000_0000).to_be_bytes());
        assert_eq!(&p[5..6], b"A");
        assert_eq!(&p[6..306], long.as_slice());
        assert_eq!(&p[306..], b"\x01\x01B1");
    }

    #[test]
    fn cgi_heads() {
        let (s, h) = parse_cgi_head(
            b"Status: 302 Found\r\nLocation: /x\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n",
        )
        .expect("head");
        assert_eq!(s, StatusCode::FOUND);
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
        let (s, _) = parse_cgi_head(b"Location: /y\n").expect("head");
        assert_eq!(s, StatusCode::FOUND);
        let (s, h) = parse_cgi_head(b"Content-type: text/html; charset=UTF-8\r\n").expect("head");
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h["content-type"], "text/html; charset=UTF-8");
        // Bytes PHP wrote in a value (a UTF-8 file name) pass as they are.
        let (_, h) =
            parse_cgi_head("Content-Disposition: attachment; filename=\"ü.txt\"\n".as_bytes())
                .expect("head");
        assert_eq!(
            h["content-disposition"].as_bytes(),
            "attachment; filename=\"ü.txt\"".as_bytes()
        );
        let params =
            decode_params(&encode_params(&[("A".into(), vec![b'x'; 300])])).expect("decodes");
        assert_eq!(params, vec![("A".to_string(), vec![b'x'; 300])]);
        assert_eq!(decode_params(&[5, 1, b'a']), None);
        assert!(parse_cgi_head(b"Status: nope\r\n").is_err());
        assert_eq!(head_end(b"A: 1\r\n\r\nbody").expect("ok"), Some(8));
        assert_eq!(head_end(b"A: 1\n\nbody").expect("ok"), Some(6));
        assert_eq!(head_end(b"A: 1\r\n").expect("ok"), None);
    }

    fn request_params(headers: &[(&str, &str)], body_len: Option<u64>) -> Vec<(String, String)> {
        let mut req = http::Request::builder().uri("/shop/cart.php/more?x=1&y=%20");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let (parts, ()) = req.body(()).expect("request").into_parts();
        let app = FastCgiApp {
            document_root: PathBuf::from("/srv/app"),
            index: "index.php".into(),
            keep_connections: 0,
        };
        let peers = Peers {
            remote_addr: "2001:db8::7".parse().expect("ip"),
            remote_port: 51234,
            server_addr: "127.0.0.1".parse().expect("ip"),
            server_port: 8080,
            https: false,
        };
        let block = encode_request_params(
            &app,
            &parts,
            (
                "/shop/cart.php",
                Path::new("/srv/app/shop/cart.php"),
                "/more",
            ),
            &peers,
            body_len,
        );
        decode_params(&block)
            .expect("decodes")
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).expect("utf-8")))
            .collect()
    }

    fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        let mut found = params.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{name} is passed once");
        first
    }

    #[test]
    fn request_parameters_are_those_of_nginx_fastcgi_params() {
        let long = "v".repeat(300);
        for repeated in [false, true] {
            let mut headers = vec![
                ("host", "Shop.Example:8080"),
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", "a=1"),
                ("x-a", "1"),
                ("x_sneaky", "no"),
                ("x-long", long.as_str()),
            ];
            if repeated {
                headers.push(("cookie", "b=2"));
                headers.push(("x-a", "2"));
            }
            let p = request_params(&headers, Some(5));
            let expect = [
                ("QUERY_STRING", "x=1&y=%20"),
                ("REQUEST_METHOD", "GET"),
                ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
                ("CONTENT_LENGTH", "5"),
                ("SCRIPT_NAME", "/shop/cart.php"),
                ("SCRIPT_FILENAME", "/srv/app/shop/cart.php"),
                ("REQUEST_URI", "/shop/cart.php/more?x=1&y=%20"),
                ("DOCUMENT_URI", "/shop/cart.php"),
                ("DOCUMENT_ROOT", "/srv/app"),
                ("SERVER_PROTOCOL", "HTTP/1.1"),
                ("REQUEST_SCHEME", "http"),
                ("REMOTE_ADDR", "2001:db8::7"),
                ("REMOTE_PORT", "51234"),
                ("SERVER_ADDR", "127.0.0.1"),
                ("SERVER_PORT", "8080"),
                ("SERVER_NAME", "shop.example"),
                ("HTTP_HOST", "shop.example"),
                ("PATH_INFO", "/more"),
                ("REDIRECT_STATUS", "200"),
                ("HTTP_X_LONG", long.as_str()),
            ];
            for (name, value) in expect {
                assert_eq!(
                    param(&p, name),
                    Some(value),
                    "{name} (repeated: {repeated})"
                );
            }
            let (cookie, x_a) = if repeated {
                ("a=1; b=2", "1, 2")
            } else {
                ("a=1", "1")
            };
            assert_eq!(param(&p, "HTTP_COOKIE"), Some(cookie));
            assert_eq!(param(&p, "HTTP_X_A"), Some(x_a));
            assert_eq!(param(&p, "HTTP_X_SNEAKY"), None);
            assert_eq!(param(&p, "HTTP_CONTENT_TYPE"), None);
            assert_eq!(param(&p, "HTTPS"), None);
        }
        // Without a known body length, the request's own header.
        let p = request_params(&[("content-length", "12")], None);
        assert_eq!(param(&p, "CONTENT_LENGTH"), Some("12"));
        assert_eq!(param(&p, "HTTP_CONTENT_LENGTH"), None);
    }

    #[test]
    fn scripts_front_controller_and_static_files() {
        let root = std::env::temp_dir().join(format!("cutover-fcgi-{}", std::process::id()));
        std::fs::create_dir_all(root.join("css")).expect("dir");
        std::fs::write(root.join("css/app.css"), "body{}").expect("file");
        std::fs::write(root.join("index.php"), "<?php").expect("file");
        let app = FastCgiApp {
            keep_connections: 0,
            document_root: root.clone(),
            index: "index.php".into(),
        };
        assert_eq!(
            app.target("/css/app.css"),
            Target::Static(root.join("css/app.css"))
        );
        assert_eq!(
            app.target("/info.php/extra"),
            Target::Script {
                script_name: "/info.php".into(),
                filename: root.join("info.php"),
                path_info: "/extra".into(),
            }
        );
        assert_eq!(
            app.target("/users/7"),
            Target::Script {
                script_name: "/index.php".into(),
                filename: root.join("index.php"),
                path_info: String::new(),
            }
        );
        assert_eq!(app.target("/../etc/passwd"), Target::Forbidden);
        assert_eq!(app.target("/%2e%2e/etc/passwd"), Target::Forbidden);
        let _ = std::fs::remove_dir_all(&root);
    }
}
