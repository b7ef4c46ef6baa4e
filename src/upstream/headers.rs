//! The headers that cross the proxy: hop-by-hop header removal in both directions (the fixed
//! list, `Proxy` and `Proxy-*`, and what `Connection` names — but never, for a client's
//! request, a header that says who the client is or what it sent), `x-cutover-*` stripping, and
//! the `X-Forwarded-*` headers, taken from a client only when it is a trusted proxy.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::net::{IpAddr, SocketAddr};

/// Headers that belong to one connection (RFC 9110 §7.6.1) and are never forwarded.
static HOP_BY_HOP: [HeaderName; 7] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    // `Proxy` is not hop-by-hop, but a CGI-style backend reads it as HTTP_PROXY (httpoxy).
    HeaderName::from_static("proxy"),
];

/// Headers a client's `Connection` cannot remove: deleting them would make PHP see another
/// host, another body framing, or lose what the proxy itself says about the client (Apache's
/// CVE-2022-31813 was the `X-Forwarded-*` case).
static PROTECTED: [HeaderName; 9] = [
    http::header::HOST,
    http::header::COOKIE,
    http::header::AUTHORIZATION,
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_TYPE,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    http::header::FORWARDED,
];

/// Whose message the headers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A client's request: `Connection` may not remove [`PROTECTED`] headers.
    Request,
    /// An upstream's response: whatever its `Connection` names goes.
    Response,
}

fn is_hop_by_hop(k: &HeaderName) -> bool {
    let name = k.as_str();
    // Most names have a length no listed name has and do not start with "proxy": skip the
    // comparisons for those (this runs on every request and response).
    (matches!(name.len(), 2 | 5 | 7 | 10 | 17) && HOP_BY_HOP.iter().any(|h| h == k))
        || name.starts_with("proxy-")
}

/// Removes hop-by-hop headers, including those named by `Connection` (for a request, except
/// the [`PROTECTED`] ones).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, direction: Direction) {
    // One pass over the names finds what is there, and only that is removed: a removal hashes
    // the name, and removing every listed name cost more than the rest of the header handling.
    let mut found: Vec<HeaderName> = Vec::new();
    for k in headers.keys() {
        if is_hop_by_hop(k) {
            found.push(k.clone());
        }
    }
    if found.is_empty() {
        return;
    }
    // Headers of this message named in `Connection` (`keep-alive` and `close` usually name
    // none), found by comparing names rather than building one per token.
    for token in headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let token = token.trim();
        if let Some(k) = headers
            .keys()
            .find(|k| k.as_str().eq_ignore_ascii_case(token))
        {
            let protected = direction == Direction::Request && PROTECTED.contains(k);
            if !protected && !found.contains(k) {
                found.push(k.clone());
            }
        }
    }
    for n in found {
        headers.remove(n);
    }
}

/// Removes every `x-cutover-*` header: only the proxy may set those.
pub fn strip_cutover_headers(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-cutover-"))
        .cloned()
        .collect();
    for n in spoofed {
        headers.remove(n);
    }
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

/// An address block: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A `trusted_proxies` entry that is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an address or an address block like 10.0.0.0/8")]
pub struct IpBlockError(pub String);

impl std::str::FromStr for IpBlock {
    type Err = IpBlockError;

    fn from_str(s: &str) -> Result<IpBlock, IpBlockError> {
        let bad = || IpBlockError(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(IpBlock { addr, prefix })
    }
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What a client connection says about the client, made once per connection: its address as
/// `X-Forwarded-For` names it (formatting an address cost as much as the rest of a request's
/// header handling), and whether it is a trusted proxy whose `X-Forwarded-*` headers are kept.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: HeaderValue,
    pub trusted: bool,
    /// The client's address and the proxy's, on this connection (what a FastCGI upstream is
    /// told as REMOTE_ADDR and SERVER_ADDR).
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl ClientInfo {
    pub fn new(client: SocketAddr, local: SocketAddr, trusted: &[IpBlock]) -> ClientInfo {
        ClientInfo {
            // An IP address always makes a valid header value; "unknown" is RFC 7239's word.
            ip: HeaderValue::from_str(&client.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            trusted: trusted.iter().any(|b| b.contains(client.ip())),
            peer: client,
            local,
        }
    }
}

/// The CGI view of a request's peers, from the `ClientInfo` the proxy put in its extensions
/// (loopback when there is none: a request made by cutover itself).
pub fn peers_of(parts: &http::request::Parts) -> super::fastcgi::Peers {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let info = parts.extensions.get::<ClientInfo>();
    let (peer, local) = info.map_or((loopback, loopback), |c| (c.peer, c.local));
    let https = info.is_some_and(|c| c.trusted)
        && parts
            .headers
            .get(&XFP)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    // From a trusted proxy, the client it names (as nginx's real_ip module gives PHP): the
    // address before the proxy's own, which `add_forwarded` appended last.
    let named = info.filter(|c| c.trusted).and_then(|_| {
        let xff = parts.headers.get(&XFF)?.to_str().ok()?;
        let mut hops = xff.rsplit(',').map(str::trim);
        hops.next()?;
        hops.next()?.parse::<std::net::IpAddr>().ok()
    });
    super::fastcgi::Peers {
        remote_addr: named.unwrap_or(peer.ip()),
        remote_port: if named.is_some() { 0 } else { peer.port() },
        server_addr: local.ip(),
        server_port: local.port(),
        https,
    }
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`. From a trusted proxy the client is appended to
/// its `X-Forwarded-For` and its `-Proto`/`-Host` are kept; from anyone else all three are
/// cutover's own (what a client claims there is not passed on).
pub fn add_forwarded(headers: &mut HeaderMap, client: &ClientInfo) {
    let appended = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(prev) if client.trusted && !prev.trim().is_empty() => client
            .ip
            .to_str()
            .ok()
            .and_then(|ip| HeaderValue::from_str(&format!("{prev}, {ip}")).ok()),
        _ => None,
    };
    headers.insert(XFF.clone(), appended.unwrap_or_else(|| client.ip.clone()));
    if !client.trusted || !headers.contains_key(&XFP) {
        headers.insert(XFP.clone(), HeaderValue::from_static("http"));
    }
    if !client.trusted || !headers.contains_key(&XFH) {
        match headers.get(http::header::HOST).cloned() {
            Some(host) => {
                headers.insert(XFH.clone(), host);
            }
            None => {
                headers.remove(&XFH);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_go_but_not_protected_ones_in_requests() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret, Host, cookie"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("host", HeaderValue::from_static("shop.example"));
        h.insert("cookie", HeaderValue::from_static("a=1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut response = h.clone();
        strip_hop_by_hop(&mut h, Direction::Request);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["cookie", "host", "x-kept"]);
        strip_hop_by_hop(&mut response, Direction::Response);
        assert_eq!(
            response.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-kept"]
        );
    }

    #[test]
    fn address_blocks() {
        let b: IpBlock = "10.0.0.0/8".parse().expect("block");
        assert!(b.contains("10.1.2.3".parse().expect("ip")));
        assert!(!b.contains("11.0.0.1".parse().expect("ip")));
        assert!(b.contains("::ffff:10.9.9.9".parse().expect("ip")));
        let one: IpBlock = "127.0.0.1".parse().expect("one address");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let v6: IpBlock = "fd00::/8".parse().expect("v6");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpBlock>().is_err());
        assert!("nope".parse::<IpBlock>().is_err());
        let all: IpBlock = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
    }

    #[test]
    fn forwarded_headers_from_trusted_and_untrusted_clients() {
        let base = || {
            let mut h = HeaderMap::new();
            h.insert("host", HeaderValue::from_static("shop.example"));
            h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
            h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
            h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
            h
        };
        let addr: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let mut h = base();
        add_forwarded(&mut h, &ClientInfo::new(addr, local, &[]));
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        let mut h = base();
        let trusted = ["127.0.0.0/8".parse().expect("block")];
        add_forwarded(&mut h, &ClientInfo::new(addr, local, &trusted));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil.example");
    }

    #[test]
    fn cutover_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x-cutover-session", HeaderValue::from_static("v1.x.y"));
        h.insert("X-Cutover-Shadow", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_cutover_headers(&mut h);
        assert_eq!(h.len(), 1);
    }
}
