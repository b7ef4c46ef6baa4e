//! The FastCGI exchange: a connection per request at a time, kept open between requests
//! (`FCGI_KEEP_CONN`) under the same bounds as HTTP upstream connections. The request goes out
//! in one write when it has no body, else its body is streamed as STDIN by a task of its own
//! while the response is read; the response is read as the client takes it (no task, no
//! channel): the CGI head first, then the body as PHP writes it, PHP's STDERR logged, and
//! END_REQUEST — sent by PHP-FPM after the request's shutdown, so after PHP has written its
//! session — ends the body and gives the connection back.

use super::{
    begin_request, encode_params, encode_record, encode_request_params, encode_stream, end_status,
    head_end, parse_cgi_head, Peers, ProtocolError, RecordReader, Target, END_REQUEST, PARAMS,
    STDERR, STDIN, STDOUT,
};
use crate::upstream::body::{BoxError, FileBody, ProxyBody};
use crate::upstream::pool::{Limits, UpstreamBody, UpstreamError};
use crate::upstream::{Transport, UpstreamUrl};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;

/// A connection to PHP-FPM, TCP or Unix.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection with its place among the upstream's `max_open`, and the buffer its records
/// are read into: kept with it, so that a kept connection reads into the same memory once the
/// client has taken the last response's chunks.
struct Conn {
    io: Box<dyn Io>,
    place: Place,
    records: RecordReader,
}

/// A place among `max_open`; given back when the connection closes, and a waiting request told.
struct Place {
    permit: Option<OwnedSemaphorePermit>,
    /// Weak: the host's idle list holds places.
    host: std::sync::Weak<Host>,
}

impl Drop for Place {
    fn drop(&mut self) {
        // The permit first, so that the waiter woken finds it.
        drop(self.permit.take());
        if let Some(h) = self.host.upgrade() {
            h.changed.notify_one();
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One PHP-FPM pool's connections.
struct Host {
    permits: Arc<Semaphore>,
    idle: Mutex<VecDeque<Idle>>,
    /// A connection went idle or closed: what a request waiting for one waits on.
    changed: tokio::sync::Notify,
}

/// Connections to PHP-FPM upstreams, per worker (as HTTP ones are).
pub struct FcgiPool {
    limits: Limits,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Room made in the read buffer before each read from PHP-FPM.
const READ_CHUNK: usize = 16 * 1024;

/// Only one request runs on a connection at a time: its id is always 1.
const REQUEST_ID: u16 = 1;

impl FcgiPool {
    pub fn new(limits: Limits) -> FcgiPool {
        FcgiPool {
            limits,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    fn host(&self, url: &UpstreamUrl) -> Arc<Host> {
        lock(&self.hosts)
            .entry(url.to_string())
            .or_insert_with(|| {
                Arc::new(Host {
                    permits: Arc::new(Semaphore::new(self.open_limit(url))),
                    idle: Mutex::new(VecDeque::new()),
                    changed: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    /// Connections open to `url` at once: with kept connections no more than are kept (each
    /// holds a PHP-FPM worker; one more would wait for a worker that never frees), else the
    /// pool's bound.
    fn open_limit(&self, url: &UpstreamUrl) -> usize {
        let keep = url.fastcgi.as_ref().map_or(0, |a| a.keep_connections);
        match keep {
            0 => self.limits.max_open.max(1),
            k => k.min(self.limits.max_open).max(1),
        }
    }

    /// Closes connections idle longer than the idle timeout.
    pub fn reap(&self) {
        let now = Instant::now();
        let hosts: Vec<Arc<Host>> = lock(&self.hosts).values().cloned().collect();
        for h in hosts {
            lock(&h.idle).retain(|i| now.duration_since(i.since) < self.limits.idle_timeout);
        }
    }

    /// Connections open to `url` now, busy or idle.
    pub fn open_to(&self, url: &UpstreamUrl) -> usize {
        let h = self.host(url);
        self.open_limit(url) - h.permits.available_permits()
    }

    async fn checkout(&self, url: &UpstreamUrl) -> Result<(Conn, Arc<Host>), UpstreamError> {
        let host = self.host(url);
        // An idle connection, else a new one while there is room, else wait until a
        // connection goes idle or closes. Registered before looking, so no change is missed.
        let permit = loop {
            let changed = host.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            loop {
                let idle = lock(&host.idle).pop_back();
                match idle {
                    Some(mut i) if now.duration_since(i.since) < self.limits.idle_timeout => {
                        // PHP-FPM closes a kept connection when its worker is recycled: reuse
                        // only one that is still open (it would fail at once otherwise).
                        if still_open(&mut i.conn.io).await {
                            return Ok((i.conn, host.clone()));
                        }
                    }
                    Some(_) => {} // too old: dropped, closed
                    None => break,
                }
            }
            if let Ok(p) = host.permits.clone().try_acquire_owned() {
                break p;
            }
            changed.await;
        };
        let connect_failed = |e: std::io::Error| UpstreamError::Connect {
            authority: url.to_string(),
            source: Box::new(e),
        };
        let io: Box<dyn Io> = match &url.transport {
            Transport::Unix(path) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_failed)?,
            ),
            Transport::Tcp => {
                let s = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect(url.authority.as_str()),
                )
                .await
                .map_err(|_| connect_failed(std::io::ErrorKind::TimedOut.into()))?
                .map_err(connect_failed)?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
        };
        Ok((
            Conn {
                io,
                place: Place {
                    permit: Some(permit),
                    host: Arc::downgrade(&host),
                },
                records: RecordReader::default(),
            },
            host,
        ))
    }

    /// Serves a request from the PHP application behind `url`: a static file from disk, or the
    /// script's response from PHP-FPM.
    pub async fn send(
        &self,
        url: &UpstreamUrl,
        parts: http::request::Parts,
        body: ProxyBody,
        peers: Peers,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let app = url.fastcgi.clone().ok_or(UpstreamError::NoApplication)?;
        let (script_name, filename, path_info) = match app.target(parts.uri.path()) {
            Target::Forbidden => return Ok(plain(StatusCode::FORBIDDEN)),
            Target::Static(path) => return static_file(&parts.method, &path).await,
            Target::Script {
                script_name,
                filename,
                path_info,
            } => (script_name, filename, path_info),
        };
        let body_len = http_body::Body::size_hint(&body).exact();
        let params = encode_request_params(
            &app,
            &parts,
            (&script_name, &filename, &path_info),
            &peers,
            body_len,
        );
        drop(parts);
        let keep = app.keep_connections > 0;
        // Without a body (most requests), the request and its end of STDIN go out in one write.
        let bodiless = http_body::Body::is_end_stream(&body);
        let records = params.len().div_ceil(super::MAX_CONTENT).max(1) + 3;
        let mut request = BytesMut::with_capacity(params.len() + 16 * records);
        begin_request(&mut request, REQUEST_ID, keep);
        encode_stream(&mut request, PARAMS, REQUEST_ID, &params);
        encode_record(&mut request, PARAMS, REQUEST_ID, b"");
        if bodiless {
            encode_record(&mut request, STDIN, REQUEST_ID, b"");
        }
        let (conn, host) = self.checkout(url).await?;
        let Conn { io, place, records } = conn;
        let wire = if bodiless {
            let mut io = io;
            io.write_all(&request).await.map_err(UpstreamError::Io)?;
            io.flush().await.map_err(UpstreamError::Io)?;
            Wire::Whole(io)
        } else {
            let (rd, wr) = tokio::io::split(io);
            let writer = tokio::spawn(write_body(wr, request.freeze(), body));
            Wire::Split {
                rd,
                writer: AbortOnDropHandle::new(writer),
            }
        };
        let mut exchange = Exchange {
            wire,
            place,
            host,
            keep,
            response: ResponseRecords {
                records,
                head: Some(BytesMut::new()),
                rest: None,
                ended: None,
            },
        };
        match std::future::poll_fn(|cx| exchange.poll_event(cx)).await? {
            Event::Head((status, headers)) => {
                let mut resp = Response::new(UpstreamBody::fastcgi(ResponseBody {
                    exchange: Some(exchange),
                }));
                *resp.status_mut() = status;
                *resp.headers_mut() = headers;
                Ok(resp)
            }
            // The head always comes first.
            Event::Chunk(_) | Event::End => Err(UpstreamError::FastCgi(ProtocolError::Closed)),
        }
    }
}

fn plain(status: StatusCode) -> Response<UpstreamBody> {
    let mut r = Response::new(UpstreamBody::empty());
    *r.status_mut() = status;
    r
}

/// A file under the document root, as nginx serves it: GET and HEAD, its type by extension.
async fn static_file(
    method: &Method,
    path: &std::path::Path,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(plain(StatusCode::NOT_FOUND))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Ok(plain(StatusCode::FORBIDDEN))
        }
        Err(e) => return Err(UpstreamError::Io(e)),
    };
    let meta = file.metadata().await.map_err(UpstreamError::Io)?;
    let len = meta.len();
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let body = if method == Method::HEAD {
        UpstreamBody::empty()
    } else {
        UpstreamBody::file(FileBody::new(file, len))
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.essence_str()) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(modified) = meta.modified() {
        if let Ok(v) = HeaderValue::from_str(&httpdate(modified)) {
            h.insert(http::header::LAST_MODIFIED, v);
        }
    }
    Ok(r)
}

/// An HTTP date (RFC 9110 §5.6.7).
fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Whether an idle connection is still open: a read that would wait means it is; an end of
/// stream (or stray bytes) means it is not to be used.
async fn still_open(io: &mut Box<dyn Io>) -> bool {
    let mut byte = [0u8; 1];
    std::future::poll_fn(|cx| {
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        match std::pin::Pin::new(&mut **io).poll_read(cx, &mut buf) {
            std::task::Poll::Pending => std::task::Poll::Ready(true),
            std::task::Poll::Ready(_) => std::task::Poll::Ready(false),
        }
    })
    .await
}

type Head = (StatusCode, http::HeaderMap);

/// Writes a request and streams its body as STDIN; gives the write half back when all of it is
/// written.
async fn write_body(
    mut wr: WriteHalf<Box<dyn Io>>,
    request: Bytes,
    mut body: ProxyBody,
) -> std::io::Result<WriteHalf<Box<dyn Io>>> {
    wr.write_all(&request).await?;
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(std::io::Error::other("the request body failed"));
        };
        if let Ok(data) = frame.into_data() {
            out.clear();
            encode_stream(&mut out, STDIN, REQUEST_ID, &data);
            wr.write_all(&out).await?;
        }
    }
    out.clear();
    encode_record(&mut out, STDIN, REQUEST_ID, b"");
    wr.write_all(&out).await?;
    wr.flush().await?;
    Ok(wr)
}

/// The connection during an exchange.
enum Wire {
    /// The request was written whole: the response is read from the connection itself.
    Whole(Box<dyn Io>),
    /// The request body is still being written by its own task while the response is read
    /// (PHP may answer before it has read all of it).
    Split {
        rd: ReadHalf<Box<dyn Io>>,
        writer: AbortOnDropHandle<std::io::Result<WriteHalf<Box<dyn Io>>>>,
    },
}

/// What a response's records say, in order: the head, body chunks, the end.
enum Event {
    Head(Head),
    Chunk(Bytes),
    End,
}

/// One response's records, read off its connection.
struct ResponseRecords {
    records: RecordReader,
    /// The CGI head so far, until it is complete (PHP may write it in pieces).
    head: Option<BytesMut>,
    /// Body bytes that came in the record that ended the head.
    rest: Option<Bytes>,
    /// END_REQUEST came: whether nothing followed it (the connection may serve another).
    ended: Option<bool>,
}

impl ResponseRecords {
    fn poll_event<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut R,
    ) -> Poll<Result<Event, UpstreamError>> {
        if let Some(rest) = self.rest.take() {
            return Poll::Ready(Ok(Event::Chunk(rest)));
        }
        if self.ended.is_some() {
            return Poll::Ready(Ok(Event::End));
        }
        let fcgi = UpstreamError::FastCgi;
        loop {
            while let Some(rec) = self.records.next_record().map_err(fcgi)? {
                if rec.request_id != REQUEST_ID {
                    continue;
                }
                match rec.kind {
                    STDOUT if !rec.content.is_empty() => {
                        let Some(buf) = &mut self.head else {
                            return Poll::Ready(Ok(Event::Chunk(rec.content)));
                        };
                        // Most heads come whole in the first record: parsed there, not copied.
                        let (head, rest) = if buf.is_empty() {
                            match head_end(&rec.content).map_err(fcgi)? {
                                Some(end) => (rec.content.slice(..end), rec.content.slice(end..)),
                                None => {
                                    buf.extend_from_slice(&rec.content);
                                    continue;
                                }
                            }
                        } else {
                            buf.extend_from_slice(&rec.content);
                            match head_end(buf).map_err(fcgi)? {
                                Some(end) => {
                                    let rest = buf.split_off(end).freeze();
                                    (std::mem::take(buf).freeze(), rest)
                                }
                                None => continue,
                            }
                        };
                        self.head = None;
                        if !rest.is_empty() {
                            self.rest = Some(rest);
                        }
                        return Poll::Ready(parse_cgi_head(&head).map(Event::Head).map_err(fcgi));
                    }
                    STDERR if !rec.content.is_empty() => {
                        let text = String::from_utf8_lossy(&rec.content);
                        tracing::warn!(target: "cutover::php", stderr = %text.trim_end(), "PHP-FPM stderr");
                    }
                    END_REQUEST => {
                        let status = end_status(&rec.content).map_err(fcgi)?;
                        if status != 0 {
                            return Poll::Ready(Err(fcgi(ProtocolError::Refused(status))));
                        }
                        self.ended = Some(self.records.pending() == 0);
                        return Poll::Ready(match self.head.take() {
                            // Output without a blank line: all of it is the head.
                            Some(head) => parse_cgi_head(&head).map(Event::Head).map_err(fcgi),
                            None => Ok(Event::End),
                        });
                    }
                    _ => {}
                }
            }
            // Straight into the reader's buffer: no copy, no zeroed scratch buffer.
            let buf = self.records.buffer(READ_CHUNK);
            let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf))
                .map_err(UpstreamError::Io)?;
            if n == 0 {
                return Poll::Ready(Err(fcgi(ProtocolError::Closed)));
            }
        }
    }
}

/// A request in progress on its connection.
struct Exchange {
    wire: Wire,
    place: Place,
    host: Arc<Host>,
    /// The connection was asked to stay open (and may go back to the pool).
    keep: bool,
    response: ResponseRecords,
}

impl Exchange {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event, UpstreamError>> {
        match &mut self.wire {
            Wire::Whole(io) => self.response.poll_event(cx, io),
            Wire::Split { rd, .. } => self.response.poll_event(cx, rd),
        }
    }

    /// The response ended: the connection goes back to the pool if it was asked to stay open,
    /// nothing followed the response, and all of the request was written.
    fn finish(self, cx: &mut Context<'_>) {
        if !self.keep || self.response.ended != Some(true) {
            return;
        }
        let io = match self.wire {
            Wire::Whole(io) => io,
            Wire::Split { rd, mut writer } => match Pin::new(&mut writer).poll(cx) {
                Poll::Ready(Ok(Ok(wr))) => rd.unsplit(wr),
                // PHP ended the request before reading all of its body, or writing it failed.
                _ => return,
            },
        };
        lock(&self.host.idle).push_back(Idle {
            conn: Conn {
                io,
                place: self.place,
                records: self.response.records,
            },
            since: Instant::now(),
        });
        self.host.changed.notify_one();
    }
}

/// The body of PHP's response, read from PHP-FPM as the client takes it. Dropped before its
/// end, it closes the connection (as nginx does when its client goes away).
pub struct ResponseBody {
    exchange: Option<Exchange>,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(exchange) = &mut self.exchange else {
            return Poll::Ready(None);
        };
        match ready!(exchange.poll_event(cx)) {
            Ok(Event::Chunk(chunk)) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            Ok(Event::End) => {
                if let Some(exchange) = self.exchange.take() {
                    exchange.finish(cx);
                }
                Poll::Ready(None)
            }
            Ok(Event::Head(_)) => {
                self.exchange = None;
                Poll::Ready(Some(Err(Box::new(UpstreamError::FastCgi(
                    ProtocolError::Closed,
                )))))
            }
            // Mid-body: the client sees the response cut short, as with an HTTP upstream.
            Err(e) => {
                self.exchange = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.exchange.is_none()
    }
}

/// Asks PHP-FPM for its limits (`FCGI_GET_VALUES`, a management record no script runs for):
/// proof that a FastCGI server listens there.
pub async fn probe(url: &UpstreamUrl) -> Result<String, UpstreamError> {
    let pool = FcgiPool::new(Limits {
        max_open: 1,
        idle_timeout: Duration::from_secs(1),
    });
    let (conn, _) = pool.checkout(url).await?;
    let mut io = conn.io;
    let mut out = BytesMut::new();
    encode_record(
        &mut out,
        super::GET_VALUES,
        0,
        &encode_params(&[
            ("FCGI_MAX_CONNS".into(), Vec::new()),
            ("FCGI_MPXS_CONNS".into(), Vec::new()),
        ]),
    );
    io.write_all(&out).await.map_err(UpstreamError::Io)?;
    let mut reader = RecordReader::default();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(rec) = reader.next_record().map_err(UpstreamError::FastCgi)? {
            if rec.kind == super::GET_VALUES_RESULT {
                let values = super::decode_params(&rec.content).unwrap_or_default();
                let max = values
                    .iter()
                    .find(|(k, _)| k == "FCGI_MAX_CONNS")
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                return Ok(match max {
                    Some(m) => format!("FastCGI server, FCGI_MAX_CONNS {m}"),
                    None => "FastCGI server".into(),
                });
            }
            continue;
        }
        let n = io.read(&mut buf).await.map_err(UpstreamError::Io)?;
        if n == 0 {
            return Err(UpstreamError::FastCgi(ProtocolError::Closed));
        }
        reader.feed(&buf[..n]);
    }
}
