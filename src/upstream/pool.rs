//! Upstream connections. Each worker thread has its own pool of HTTP/1.1 connections (plain or
//! TLS) to every upstream: reused newest first, at most `max_open` open to one upstream — a
//! request beyond that waits, first come first served, for one to come back — and given back
//! when the response body ends. Per worker, so a request, its upstream connection and the
//! connection's task stay on one thread and one runtime; capped, so a thousand clients do not
//! become a thousand upstream connections (nginx's `max_conns`, PHP-FPM's `max_children`).

use super::body::{BoxError, ProxyBody};
use super::UpstreamUrl;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tower_service::Service;

/// Why an upstream request failed, and on which step.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {authority}: {source}")]
    Connect { authority: String, source: BoxError },
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    FastCgi(#[from] super::fastcgi::ProtocolError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a FastCGI upstream without [upstreams.fastcgi]")]
    NoApplication,
}

/// How many connections a pool keeps, per upstream.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections (busy, idle or connecting) to one upstream; idle ones count, so this
    /// also bounds how many are kept for reuse.
    pub max_open: usize,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
}

/// A connection pool; cheap to clone (clones share the connections).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: HttpsConnector<HttpConnector>,
    /// PHP-FPM upstreams' connections (same limits).
    fcgi: super::fastcgi::client::FcgiPool,
    limits: Limits,
    /// One entry per upstream ever used; never removed (a proxy has a handful of upstreams),
    /// so an index names an upstream for the life of the pool.
    hosts: Mutex<Vec<Host>>,
}

struct Host {
    scheme: Scheme,
    authority: Authority,
    transport: super::Transport,
    /// Newest at the back.
    idle: VecDeque<Idle>,
    open: usize,
    waiters: VecDeque<oneshot::Sender<Grant>>,
}

struct Idle {
    conn: SendRequest<ProxyBody>,
    since: Instant,
}

/// What a waiting request is handed: a connection, or the right to open one.
enum Grant {
    Conn(SendRequest<ProxyBody>),
    Connect(ConnectSlot),
}

enum Checkout {
    Reuse(SendRequest<ProxyBody>),
    Connect(ConnectSlot),
    Wait(oneshot::Receiver<Grant>),
}

/// One counted place in `Host::open` that has no connection task yet. Dropped unused (the
/// connect failed, the request went away), it frees the place for the next waiter.
struct ConnectSlot {
    inner: Arc<Inner>,
    host: usize,
    armed: bool,
}

impl Drop for ConnectSlot {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.inner.release(self.host);
        }
    }
}

type ConnTask = tokio::task::JoinHandle<Result<(), hyper::Error>>;

/// A new HTTP/1.1 connection to `url` (TCP, TLS or a Unix socket), its task spawned; with
/// `upgrades` the task hands the connection over when a response upgrades it.
async fn open(
    connector: &HttpsConnector<HttpConnector>,
    url: &UpstreamUrl,
    upgrades: bool,
) -> Result<(SendRequest<ProxyBody>, ConnTask), UpstreamError> {
    async fn handshake<I>(
        io: I,
        upgrades: bool,
    ) -> Result<(SendRequest<ProxyBody>, ConnTask), hyper::Error>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (conn, task) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await?;
        let task = if upgrades {
            tokio::spawn(async move { task.with_upgrades().await })
        } else {
            tokio::spawn(task)
        };
        Ok((conn, task))
    }
    let failed = |source: BoxError| UpstreamError::Connect {
        authority: url.authority.to_string(),
        source,
    };
    match &url.transport {
        super::Transport::Unix(path) => {
            let io = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| failed(e.into()))?;
            handshake(hyper_util::rt::TokioIo::new(io), upgrades)
                .await
                .map_err(|e| failed(e.into()))
        }
        super::Transport::Tcp => {
            let uri = Uri::builder()
                .scheme(url.scheme.clone())
                .authority(url.authority.clone())
                .path_and_query("/")
                .build()
                .map_err(|e| failed(e.into()))?;
            let mut connector = connector.clone();
            std::future::poll_fn(|cx| connector.poll_ready(cx))
                .await
                .map_err(failed)?;
            let io = connector.call(uri).await.map_err(failed)?;
            handshake(io, upgrades).await.map_err(|e| failed(e.into()))
        }
    }
}

impl Pool {
    pub fn new(connector: HttpsConnector<HttpConnector>, limits: Limits) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                connector,
                fcgi: super::fastcgi::client::FcgiPool::new(Limits {
                    max_open: limits.max_open.max(1),
                    idle_timeout: limits.idle_timeout,
                }),
                limits: Limits {
                    max_open: limits.max_open.max(1),
                    idle_timeout: limits.idle_timeout,
                },
                hosts: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Sends `req` (origin-form URI: path and query) to `url`'s host and returns the response
    /// head; the body gives the connection back when it ends. A request that finds a pooled
    /// connection closed under it, before anything was written, is retried on another.
    pub async fn send(
        &self,
        url: &UpstreamUrl,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if url.protocol == super::Protocol::FastCgi {
            let (parts, body) = req.into_parts();
            let peers = super::headers::peers_of(&parts);
            // Boxed: FastCGI's future is large and most requests never take this way.
            return Box::pin(self.inner.fcgi.send(url, parts, body, peers)).await;
        }
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = http::HeaderValue::from_str(url.authority.as_str()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        let mut host = None;
        loop {
            let (h, checkout) = self.inner.checkout(url, host);
            host = Some(h);
            let (mut conn, reused) = match checkout {
                Checkout::Reuse(c) => (c, true),
                // Boxed: connecting is rare and its future large; every request's future
                // would carry (and move) its size otherwise.
                Checkout::Connect(slot) => (Box::pin(self.inner.connect(url, slot)).await?, false),
                Checkout::Wait(rx) => {
                    // It may wait long (every connection busy): not on the client
                    // connection's read buffer (see `detach`).
                    super::detach::headers(req.headers_mut());
                    match rx.await {
                        Ok(Grant::Conn(c)) => (c, true),
                        Ok(Grant::Connect(slot)) => {
                            (Box::pin(self.inner.connect(url, slot)).await?, false)
                        }
                        Err(_) => continue,
                    }
                }
            };
            if reused && conn.ready().await.is_err() {
                // Closed while idle (the upstream's keep-alive timeout): its task frees the place.
                continue;
            }
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = UpstreamBody::http(body, self.inner.clone(), h, conn);
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Nothing was written: safe to send again, whatever the method.
                    Some(back) if reused => req = back,
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    /// Sends a request that upgrades (a WebSocket handshake) on a connection of its own: not
    /// pooled nor counted among `max_connections`, as a tunnel stays open for as long as its
    /// client wants and must not hold a place requests wait for. The response's upgrade (see
    /// `hyper::upgrade::on`) is the upstream's side of the tunnel.
    pub async fn send_upgrade(
        &self,
        url: &UpstreamUrl,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = http::HeaderValue::from_str(url.authority.as_str()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        let (mut conn, task) = open(&self.inner.connector, url, true).await?;
        tokio::spawn(async move {
            if let Ok(Err(e)) = task.await {
                tracing::debug!(error = %e, "upgraded upstream connection ended with an error");
            }
        });
        Ok(conn.send_request(req).await?)
    }

    /// Starts closing idle connections older than the idle timeout on the current runtime,
    /// checked four times per timeout; it ends with the pool. Without it an idle connection
    /// would only be noticed as stale when next checked out, and kept open until then.
    pub fn start_reaper(&self) {
        let inner = Arc::downgrade(&self.inner);
        let every = (self.inner.limits.idle_timeout / 4).max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = inner.upgrade() else { return };
                inner.reap();
            }
        });
    }

    /// Connections open to `url` now (busy, idle or connecting).
    pub fn open_to(&self, url: &UpstreamUrl) -> usize {
        if url.protocol == super::Protocol::FastCgi {
            return self.inner.fcgi.open_to(url);
        }
        let hosts = self.inner.hosts();
        position(&hosts, url).map_or(0, |i| hosts[i].open)
    }
}

fn position(hosts: &[Host], url: &UpstreamUrl) -> Option<usize> {
    hosts.iter().position(|h| {
        h.scheme == url.scheme && h.authority == url.authority && h.transport == url.transport
    })
}

impl Inner {
    fn hosts(&self) -> MutexGuard<'_, Vec<Host>> {
        match self.hosts.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        }
    }

    /// A connection to `url`'s host, the right to open one, or a place in its queue; with the
    /// host's index (`known`: from an earlier round of the same request), all under one lock.
    fn checkout(self: &Arc<Self>, url: &UpstreamUrl, known: Option<usize>) -> (usize, Checkout) {
        let mut hosts = self.hosts();
        let h = match known.or_else(|| position(&hosts, url)) {
            Some(h) => h,
            None => {
                hosts.push(Host {
                    scheme: url.scheme.clone(),
                    authority: url.authority.clone(),
                    transport: url.transport.clone(),
                    idle: VecDeque::new(),
                    open: 0,
                    waiters: VecDeque::new(),
                });
                hosts.len() - 1
            }
        };
        (h, self.checkout_at(&mut hosts[h], h))
    }

    fn checkout_at(self: &Arc<Self>, host: &mut Host, h: usize) -> Checkout {
        let now = Instant::now();
        while let Some(idle) = host.idle.pop_back() {
            // Dropping a stale one closes it; its task then frees its place.
            if !idle.conn.is_closed() && now.duration_since(idle.since) < self.limits.idle_timeout {
                return Checkout::Reuse(idle.conn);
            }
        }
        if host.open < self.limits.max_open {
            host.open += 1;
            return Checkout::Connect(ConnectSlot {
                inner: self.clone(),
                host: h,
                armed: true,
            });
        }
        // Requests that stopped waiting (timed out, client gone) are the oldest: drop them
        // here, or under a hung upstream the queue would grow with every timeout.
        while host.waiters.front().is_some_and(|w| w.is_closed()) {
            host.waiters.pop_front();
        }
        let (tx, rx) = oneshot::channel();
        host.waiters.push_back(tx);
        Checkout::Wait(rx)
    }

    async fn connect(
        self: &Arc<Self>,
        url: &UpstreamUrl,
        mut slot: ConnectSlot,
    ) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let (conn, task) = open(&self.connector, url, false).await?;
        // From here the connection task holds the place and frees it when the connection ends.
        slot.armed = false;
        let inner = self.clone();
        let host = slot.host;
        tokio::spawn(async move {
            if let Ok(Err(e)) = task.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            inner.release(host);
        });
        Ok(conn)
    }

    /// Closes the idle connections that have been idle longer than the timeout (dropping the
    /// last handle of a connection closes it; its task then frees its place).
    fn reap(&self) {
        self.fcgi.reap();
        let now = Instant::now();
        let mut stale = Vec::new();
        for host in self.hosts().iter_mut() {
            let timeout = self.limits.idle_timeout;
            let (keep, old): (VecDeque<Idle>, VecDeque<Idle>) = host
                .idle
                .drain(..)
                .partition(|i| !i.conn.is_closed() && now.duration_since(i.since) < timeout);
            host.idle = keep;
            stale.extend(old);
        }
        // Dropped outside the lock.
        drop(stale);
    }

    /// A connection ended or a connect was abandoned: its place goes to the first request still
    /// waiting, or back to the count.
    fn release(self: &Arc<Self>, h: usize) {
        let mut hosts = self.hosts();
        let host = &mut hosts[h];
        while let Some(waiter) = host.waiters.pop_front() {
            let slot = ConnectSlot {
                inner: self.clone(),
                host: h,
                armed: true,
            };
            match waiter.send(Grant::Connect(slot)) {
                Ok(()) => return,
                // That request went away; the place is not released twice.
                Err(Grant::Connect(mut s)) => s.armed = false,
                Err(Grant::Conn(_)) => {}
            }
        }
        host.open = host.open.saturating_sub(1);
    }

    /// A connection whose response is done: to the first waiting request, else idle.
    fn give_back(&self, h: usize, mut conn: SendRequest<ProxyBody>) {
        if conn.is_closed() {
            return;
        }
        let mut hosts = self.hosts();
        let host = &mut hosts[h];
        while let Some(waiter) = host.waiters.pop_front() {
            match waiter.send(Grant::Conn(conn)) {
                Ok(()) => return,
                Err(Grant::Conn(c)) => conn = c,
                Err(Grant::Connect(_)) => return,
            }
        }
        host.idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

/// An upstream response body: an HTTP response's (giving its connection back to the pool when
/// it ends), a FastCGI response's (as PHP-FPM writes it), or a static file's.
pub struct UpstreamBody {
    kind: Kind,
}

enum Kind {
    Http {
        inner: Incoming,
        lease: Option<Lease>,
    },
    FastCgi(super::fastcgi::client::ResponseBody),
    File(super::body::FileBody),
    Empty,
}

struct Lease {
    pool: Arc<Inner>,
    host: usize,
    conn: SendRequest<ProxyBody>,
}

impl UpstreamBody {
    fn http(
        inner: Incoming,
        pool: Arc<Inner>,
        host: usize,
        conn: SendRequest<ProxyBody>,
    ) -> UpstreamBody {
        let mut body = UpstreamBody {
            kind: Kind::Http {
                inner,
                lease: Some(Lease { pool, host, conn }),
            },
        };
        if body.is_end_stream() {
            body.done();
        }
        body
    }

    /// PHP's response, read from PHP-FPM as it is taken.
    pub fn fastcgi(body: super::fastcgi::client::ResponseBody) -> UpstreamBody {
        UpstreamBody {
            kind: Kind::FastCgi(body),
        }
    }

    pub fn file(f: super::body::FileBody) -> UpstreamBody {
        UpstreamBody {
            kind: Kind::File(f),
        }
    }

    pub fn empty() -> UpstreamBody {
        UpstreamBody { kind: Kind::Empty }
    }

    fn done(&mut self) {
        if let Kind::Http { lease, .. } = &mut self.kind {
            if let Some(l) = lease.take() {
                l.pool.give_back(l.host, l.conn);
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Dropped before its end: the connection is reusable only if hyper already read the
        // whole response; otherwise hyper closes it.
        if let Kind::Http { lease, .. } = &mut self.kind {
            if let Some(l) = lease.take() {
                if l.conn.is_ready() {
                    l.pool.give_back(l.host, l.conn);
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Http { inner, lease } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => self.done(),
                    Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => self.done(),
                    Poll::Ready(Some(Err(_))) => *lease = None,
                    _ => {}
                }
                polled.map(|f| f.map(|r| r.map_err(Into::into)))
            }
            Kind::FastCgi(b) => Pin::new(b).poll_frame(cx),
            Kind::File(f) => Pin::new(f)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            Kind::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Http { inner, .. } => inner.is_end_stream(),
            Kind::FastCgi(b) => b.is_end_stream(),
            Kind::File(f) => f.is_end_stream(),
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Http { inner, .. } => inner.size_hint(),
            Kind::FastCgi(_) => SizeHint::default(),
            Kind::File(f) => f.size_hint(),
            Kind::Empty => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    /// Polls `fut` once, as the runtime would, and says whether it is still waiting.
    async fn pending_after_one_poll<F: Future + Unpin>(fut: &mut F) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx).is_pending())).await
    }

    fn get(headers: http::HeaderMap) -> Request<ProxyBody> {
        let mut req = Request::new(crate::upstream::body::full(Bytes::new()));
        *req.uri_mut() = Uri::from_static("/x");
        *req.headers_mut() = headers;
        req
    }

    #[tokio::test]
    async fn a_request_waiting_for_a_connection_holds_no_slice_of_its_read_buffer() {
        // An upstream that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let limits = Limits {
            max_open: 1,
            idle_timeout: Duration::from_secs(60),
        };
        let pool = crate::upstream::pool(None, limits).expect("client");
        let url = UpstreamUrl::parse(&format!("http://{addr}")).expect("url");

        // The first request takes the only place (it is connecting) ...
        let mut first = Box::pin(pool.send(&url, get(http::HeaderMap::new())));
        assert!(pending_after_one_poll(&mut first).await);
        // ... so the second, whose header values are slices of a read buffer as hyper parses
        // them, has to wait.
        let wire = Bytes::from(b"keep-alivesession=abc".to_vec());
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-a",
            http::HeaderValue::from_maybe_shared(wire.slice(0..10)).expect("value"),
        );
        headers.insert(
            http::header::COOKIE,
            http::HeaderValue::from_maybe_shared(wire.slice(10..)).expect("value"),
        );
        assert!(!wire.is_unique(), "the request holds slices of the buffer");
        let mut second = Box::pin(pool.send(&url, get(headers)));
        assert!(pending_after_one_poll(&mut second).await, "it waits");
        assert!(
            wire.is_unique(),
            "the waiting request still holds a slice of the read buffer"
        );
        drop((first, second));
        held.abort();
    }
}
