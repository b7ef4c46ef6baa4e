//! The origin behind `scripts/bench-noisy`: pages that differ on every request, as real PHP pages
//! do (a CSRF token, the time in milliseconds), made cheaply, so that what the benchmark measures
//! is the proxy in front and not the origin's templating.
//!
//! `cargo run --release --example noisy_origin -- <listen> <directory>`
//!
//! Every file of `directory` is a template: `__TOKEN__` and `__TIME__` are its holes. `GET
//! /noisy/<file>` fills them with a fresh 32-hex-digit token and the time as nginx's `$msec`
//! prints it (`1764000000.123`); `GET /same/<file>` fills them with fixed values by the same code,
//! so that a byte-identical page costs the origin exactly what a noisy one does. Anything else is
//! a 404. A thread per core with a current-thread runtime and an SO_REUSEPORT listener, HTTP/1.1
//! keep-alive. Not a server to run in front of anything.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A page split at its holes.
struct Template {
    content_type: &'static str,
    /// Literal text and holes in order: `pieces[0] hole[0] pieces[1] hole[1] ... pieces[n]`.
    pieces: Vec<Vec<u8>>,
    holes: Vec<Hole>,
    len: usize,
}

#[derive(Clone, Copy)]
enum Hole {
    Token,
    Time,
}

impl Template {
    fn parse(name: &str, text: &[u8]) -> Template {
        let mut pieces = Vec::new();
        let mut holes = Vec::new();
        let mut rest = text;
        loop {
            let token = memchr::memmem::find(rest, b"__TOKEN__").map(|i| (i, Hole::Token, 9));
            let time = memchr::memmem::find(rest, b"__TIME__").map(|i| (i, Hole::Time, 8));
            let next = match (token, time) {
                (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            let Some((at, hole, width)) = next else {
                pieces.push(rest.to_vec());
                break;
            };
            pieces.push(rest[..at].to_vec());
            holes.push(hole);
            rest = &rest[at + width..];
        }
        let content_type = if name.ends_with(".json") {
            "application/json"
        } else if name.ends_with(".html") {
            "text/html"
        } else {
            "text/plain"
        };
        let len = pieces.iter().map(Vec::len).sum::<usize>() + holes.len() * 32;
        Template {
            content_type,
            pieces,
            holes,
            len,
        }
    }

    fn render(&self, token: &[u8; 32], time: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(self.len);
        for (i, piece) in self.pieces.iter().enumerate() {
            out.extend_from_slice(piece);
            match self.holes.get(i) {
                Some(Hole::Token) => out.extend_from_slice(token),
                Some(Hole::Time) => out.extend_from_slice(time),
                None => {}
            }
        }
        Bytes::from(out)
    }
}

type Pages = Arc<HashMap<String, Template>>;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, dir] = args.as_slice() else {
        return Err("usage: noisy_origin <listen> <directory>".into());
    };
    let listen: SocketAddr = listen.parse().map_err(|e| format!("{listen}: {e}"))?;
    let mut pages = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{dir}: {e}"))? {
        let path = entry.map_err(|e| format!("{dir}: {e}"))?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        pages.insert(name.clone(), Template::parse(&name, &text));
    }
    let pages: Pages = Arc::new(pages);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let listener = bind_reuseport(listen).map_err(|e| format!("bind {listen}: {e}"))?;
            let pages = pages.clone();
            Ok(std::thread::spawn(move || {
                worker(listener, pages, i as u64)
            }))
        })
        .collect::<Result<_, String>>()?;
    println!("noisy_origin listening on {listen}");
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

fn worker(listener: std::net::TcpListener, pages: Pages, seed: u64) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let tokens = std::rc::Rc::new(std::cell::Cell::new(
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ now_nanos(),
    ));
    local.block_on(&rt, async move {
        let listener = TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        loop {
            let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let pages = pages.clone();
            let tokens = tokens.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let reply = answer(&pages, req.uri().path(), &tokens);
                async move { Ok::<_, Infallible>(reply) }
            });
            tokio::task::spawn_local(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    })
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// splitmix64: a different token on every request, no two alike in a run.
fn next_token(state: &std::cell::Cell<u64>) -> [u8; 32] {
    let mut out = [0u8; 32];
    for half in out.chunks_mut(16) {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        for (i, b) in half.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((z >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    out
}

fn answer(pages: &Pages, path: &str, tokens: &std::cell::Cell<u64>) -> Response<Full<Bytes>> {
    let (noisy, name) = match (path.strip_prefix("/noisy/"), path.strip_prefix("/same/")) {
        (Some(name), _) => (true, name),
        (_, Some(name)) => (false, name),
        _ => return not_found(),
    };
    let Some(page) = pages.get(name) else {
        return not_found();
    };
    let (token, time) = if noisy {
        let ms = now_nanos() / 1_000_000;
        (
            next_token(tokens),
            format!("{}.{:03}", ms / 1000, ms % 1000),
        )
    } else {
        // The same work as a noisy page's, with values that never change.
        let _ = next_token(tokens);
        let _ = now_nanos();
        (
            *b"0123456789abcdef0123456789abcdef",
            "1764000000.123".to_string(),
        )
    };
    let mut r = Response::new(Full::new(page.render(&token, time.as_bytes())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(page.content_type),
    );
    r
}

fn not_found() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}
