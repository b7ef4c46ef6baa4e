//! The headers that cross the proxy: hop-by-hop header removal in both directions,
//! `x-cutover-*` stripping, and the `X-Forwarded-*` headers.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::net::SocketAddr;

/// Headers that belong to one connection (RFC 9110 §7.6.1) and are never forwarded.
static HOP_BY_HOP: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Runs on every request and response (most responses carry `Connection: keep-alive`), so
    // one pass over the names finds what is there, and only that is removed: a removal hashes
    // the name, and removing all nine names cost more than the rest of the header handling.
    let mut present = [false; HOP_BY_HOP.len()];
    for k in headers.keys() {
        // Most names have a length no hop-by-hop name has: skip the comparisons for those.
        if !matches!(k.as_str().len(), 2 | 7 | 10 | 16..=19) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // Headers of this message named in `Connection` (`keep-alive` and `close` usually name
    // none), found by comparing names rather than building one per token.
    let mut named: Vec<HeaderName> = Vec::new();
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
            named.push(k.clone());
        }
    }
    for n in named {
        headers.remove(n);
    }
    for (n, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
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

/// The client's address as `X-Forwarded-For` names it: made once per client connection
/// (formatting an address cost as much as the rest of a request's header handling).
pub fn client_ip_header(client: SocketAddr) -> HeaderValue {
    // An IP address always makes a valid header value; "unknown" is RFC 7239's word otherwise.
    HeaderValue::from_str(&client.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Appends the client (from `client_ip_header`) to `X-Forwarded-For`; sets `-Proto` and
/// `-Host` unless a proxy in front of this one already did.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    let appended = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => client_ip
            .to_str()
            .ok()
            .and_then(|ip| HeaderValue::from_str(&format!("{prev}, {ip}")).ok()),
        _ => None,
    };
    headers.insert(XFF.clone(), appended.unwrap_or_else(|| client_ip.clone()));
    if !headers.contains_key(&XFP) {
        headers.insert(XFP.clone(), HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&XFH) {
        if let Some(host) = headers.get(http::header::HOST).cloned() {
            headers.insert(XFH.clone(), host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hop_by_hop_name_passes_the_length_filter() {
        for n in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(n.clone(), HeaderValue::from_static("x"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(n), "{n} was not stripped");
            assert!(h.contains_key("x-kept"));
        }
    }

    #[test]
    fn connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("shop.example"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            &client_ip_header("127.0.0.1:5000".parse().expect("addr")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
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
