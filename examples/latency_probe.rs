//! The latency probe behind `scripts/bench-proxy`'s one-connection rounds: GET requests one
//! after another on a single keep-alive connection for a fixed time, every latency appended (in
//! nanoseconds, one per line) to a file, so that the rounds of one target can be merged into one
//! distribution before its percentiles are taken. (wrk prints percentiles per run, which cannot
//! be merged, and Debian's wrk 4.1 does not expose its histogram to Lua scripts.)
//!
//! `cargo run --release --example latency_probe -- <http://host:port/path> <seconds> <out file> [every ms]`
//!
//! With `every ms`, a request starts every that many milliseconds (a paced client beside a
//! loaded proxy, as `scripts/bench-noisy` uses it) instead of back to back.
//!
//! Prints `<requests per second> <p50 ms> <p99 ms>` for this run. A response is read by its
//! Content-Length or its chunked encoding (PHP's answers through FastCGI are chunked); anything
//! else ends the probe with an error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (url, secs, out, every) = match args.as_slice() {
        [_, url, secs, out] => (url, secs, out, None),
        [_, url, secs, out, every] => {
            let ms: f64 = every.parse().map_err(|e| format!("every {every:?}: {e}"))?;
            (url, secs, out, Some(Duration::from_secs_f64(ms / 1000.0)))
        }
        _ => {
            return Err(
                "usage: latency_probe <http://host:port/path> <seconds> <out file> [every ms]"
                    .into(),
            )
        }
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let secs: f64 = secs.parse().map_err(|e| format!("seconds {secs:?}: {e}"))?;

    let stream = TcpStream::connect(authority).map_err(|e| format!("connect {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // A hung target must not hold the probe past its time by much.
    stream
        .set_read_timeout(Some(Duration::from_secs_f64(secs.max(1.0) + 10.0)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n");

    let mut latencies: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut line = String::new();
    let mut body = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut next = start;
    while Instant::now() < end {
        if let Some(every) = every {
            // Paced: the next request starts on its tick, whatever the last one took.
            next += every;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let sent = Instant::now();
        writer
            .write_all(request.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut content_length = None;
        let mut chunked = false;
        let mut first = true;
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed by the server".into());
            }
            if first {
                if !line.starts_with("HTTP/1.1 200") {
                    return Err(format!("unexpected status line {line:?}"));
                }
                first = false;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse::<usize>().ok();
                }
                if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.trim().eq_ignore_ascii_case("chunked")
                {
                    chunked = true;
                }
            }
        }
        if chunked {
            read_chunked(&mut reader, &mut line, &mut body)?;
        } else {
            let len = content_length.ok_or("response without Content-Length or chunks")?;
            body.resize(len, 0);
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
        }
        latencies.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let elapsed = start.elapsed().as_secs_f64();

    let mut text = String::with_capacity(latencies.len() * 8);
    for l in &latencies {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{out}: {e}"))?;

    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies.get(i - 1).copied().unwrap_or(0) as f64 / 1e6
    };
    println!(
        "{:.1} {:.3} {:.3}",
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

/// Reads a chunked body to its last chunk (trailers, if any, to the blank line).
fn read_chunked(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
    body: &mut Vec<u8>,
) -> Result<(), String> {
    loop {
        line.clear();
        reader
            .read_line(line)
            .map_err(|e| format!("read chunk size: {e}"))?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size =
            usize::from_str_radix(size, 16).map_err(|e| format!("chunk size {line:?}: {e}"))?;
        if size == 0 {
            loop {
                line.clear();
                let n = reader
                    .read_line(line)
                    .map_err(|e| format!("read trailer: {e}"))?;
                if n == 0 || line == "\r\n" {
                    return Ok(());
                }
            }
        }
        body.resize(size + 2, 0);
        reader
            .read_exact(body)
            .map_err(|e| format!("read chunk: {e}"))?;
    }
}
