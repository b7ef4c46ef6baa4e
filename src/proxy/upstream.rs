//! Upstream connections and the headers that cross the proxy: the connector and pool of
//! upstream connections (plain HTTP and rustls HTTPS, system roots plus an optional CA file),
//! hop-by-hop header removal in both directions, `x-cutover-*` stripping, and the `X-Forwarded-*` headers.

use super::pool::Limits;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub type UpstreamClient = super::pool::Pool;

/// Builds an upstream connection pool. `ca_file`: extra PEM roots for `https://` upstreams.
pub fn client(ca_file: Option<&Path>, limits: Limits) -> Result<UpstreamClient, String> {
    Ok(super::pool::Pool::new(connector(ca_file)?, limits))
}

/// The connector upstream connections are made with: TCP (no Nagle, keep-alive probes, a 5 s
/// connect timeout), then TLS for `https://` (system roots plus `ca_file`).
pub fn connector(ca_file: Option<&Path>) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system certificate rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no PEM certificates found", path.display()));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

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
