//! The least a tokio + hyper proxy does per request, as a floor for `scripts/bench-proxy`: how
//! close cutover is to what its own stack allows on this machine, apart from what cutover adds
//! (routes, hop-by-hop headers, sessions, timeouts, limits, statistics, the comparison).
//!
//! `cargo run --release --example hyper_floor -- proxy <listen> <upstream>`
//! `cargo run --release --example hyper_floor -- mirror <listen> <upstream> <candidate>`
//!
//! Both are built the way cutover's proxy is (a thread per core with a current-thread runtime and
//! an SO_REUSEPORT listener, HTTP/1.1 keep-alive to the upstreams over hyper's client connections
//! kept in a per-thread pool), and nothing else: headers go through untouched, nothing is timed
//! out or counted. `mirror` also sends each request to the candidate from a task of its own and
//! reads that answer to its end, as nginx's `mirror` does; it compares nothing.
//! Not a proxy to run in front of anything: it has no limits and no error handling beyond 502.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Upstream = SendRequest<Full<Bytes>>;

thread_local! {
    /// Idle connections of this thread: to the upstream, to the candidate.
    static POOLS: RefCell<[Vec<Upstream>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

const LEGACY: usize = 0;
const CANDIDATE: usize = 1;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mirror, listen, upstream, candidate) = match args.as_slice() {
        [m, l, u] if m == "proxy" => (false, l, u, u),
        [m, l, u, c] if m == "mirror" => (true, l, u, c),
        _ => {
            return Err("usage: hyper_floor proxy <listen> <upstream> | \
                        hyper_floor mirror <listen> <upstream> <candidate>"
                .into())
        }
    };
    let parse = |s: &String| s.parse::<SocketAddr>().map_err(|e| format!("{s}: {e}"));
    let (listen, upstream, candidate) = (parse(listen)?, parse(upstream)?, parse(candidate)?);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let listener = bind_reuseport(listen).map_err(|e| format!("bind {listen}: {e}"))?;
            Ok(std::thread::spawn(move || {
                worker(listener, mirror, upstream, candidate)
            }))
        })
        .collect::<Result<_, String>>()?;
    println!("hyper_floor listening on {listen}");
    for w in workers {
        w.join().map_err(|_| "a worker panicked".to_string())??;
    }
    Ok(())
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

fn worker(
    listener: std::net::TcpListener,
    mirror: bool,
    upstream: SocketAddr,
    candidate: SocketAddr,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        loop {
            let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let service = hyper::service::service_fn(move |req| async move {
                Ok::<_, Infallible>(handle(req, mirror, upstream, candidate).await)
            });
            tokio::task::spawn_local(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    })
}

type Reply = Response<ReturnOnEnd>;

async fn handle(
    req: Request<Incoming>,
    mirror: bool,
    upstream: SocketAddr,
    candidate: SocketAddr,
) -> Reply {
    let (parts, body) = req.into_parts();
    // The request body is read whole (a GET's is empty), so that it can be sent twice.
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad_gateway(),
    };
    if mirror {
        let copy = Request::from_parts(parts.clone(), Full::new(body.clone()));
        tokio::task::spawn_local(async move {
            if let Some(resp) = send(CANDIDATE, candidate, copy).await {
                let _ = resp.into_body().collect().await;
            }
        });
    }
    send(
        LEGACY,
        upstream,
        Request::from_parts(parts, Full::new(body)),
    )
    .await
    .unwrap_or_else(bad_gateway)
}

fn bad_gateway() -> Reply {
    let mut r = Response::new(ReturnOnEnd {
        body: None,
        conn: None,
    });
    *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
    r
}

/// Sends on an idle connection of `pool` (or a new one); the response's body gives the
/// connection back when it ends. `None` when the upstream cannot be reached or fails.
async fn send(pool: usize, addr: SocketAddr, req: Request<Full<Bytes>>) -> Option<Reply> {
    let mut conn = loop {
        match POOLS.with(|p| p.borrow_mut()[pool].pop()) {
            Some(mut c) => {
                if c.ready().await.is_ok() {
                    break c;
                }
            }
            None => break connect(addr).await?,
        }
    };
    let resp = conn.send_request(req).await.ok()?;
    Some(resp.map(|body| ReturnOnEnd {
        body: Some(body),
        conn: Some((pool, conn)),
    }))
}

async fn connect(addr: SocketAddr) -> Option<Upstream> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::task::spawn_local(conn);
    Some(sender)
}

/// An upstream response body that puts its connection back into the pool once read to its end.
struct ReturnOnEnd {
    body: Option<Incoming>,
    conn: Option<(usize, Upstream)>,
}

impl Body for ReturnOnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        // hyper stops polling a body with a known length after its last byte, so the end is
        // either that or the end of the stream.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
            _ => false,
        };
        if ended {
            this.body = None;
            if let Some((pool, conn)) = this.conn.take() {
                POOLS.with(|p| p.borrow_mut()[pool].push(conn));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
