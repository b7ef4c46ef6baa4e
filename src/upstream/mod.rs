//! The upstream side, used by both the proxy (the client's request to PHP or to a promoted
//! candidate) and the mirror (the candidate and the twin): upstream addresses, the connector
//! (TCP, rustls TLS), the per-worker connection pool, the bodies on the client's path, copies out
//! of hyper's read buffers, the headers that cross the proxy, and the request sent upstream.

pub mod body;
pub mod detach;
pub mod fastcgi;
pub mod headers;
pub mod pool;

use body::ProxyBody;
use http::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use std::path::Path;
use std::time::Duration;

pub use pool::{Limits, Pool, UpstreamBody, UpstreamError};

/// Why an upstream URL is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("`{url}` is not a URL: {why}")]
    NotAUrl { url: String, why: String },
    #[error(
        "`{0}` has no scheme (use http://, https://, http+unix://, fastcgi:// or fastcgi+unix://)"
    )]
    NoScheme(String),
    #[error("`{0}`: the scheme is not one of http://, https://, http+unix://, fastcgi://, fastcgi+unix://")]
    Scheme(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}`: an upstream URL cannot have a query")]
    Query(String),
    #[error("`{0}`: a Unix socket needs an absolute path, as in http+unix:///run/app.sock")]
    SocketPath(String),
}

/// How an upstream is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
    /// PHP-FPM, as nginx's `fastcgi_pass`.
    FastCgi,
}

/// Where an upstream is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Unix(std::path::PathBuf),
}

/// A validated upstream, parsed once when the config loads: `http://host:port[/base]`,
/// `https://…`, `http+unix:///path.sock`, `fastcgi://host:port`, `fastcgi+unix:///path.sock`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamUrl {
    pub protocol: Protocol,
    pub transport: Transport,
    /// `http` or `https` (what the TLS connector goes by).
    pub scheme: http::uri::Scheme,
    /// host:port over TCP; `localhost` for a Unix socket (the `Host` sent when a client sent none).
    pub authority: http::uri::Authority,
    /// Path prefix prepended to the request path (without a trailing slash).
    pub base_path: String,
    /// FastCGI: the PHP application behind it (`[upstreams.fastcgi]`), set when the config loads.
    pub fastcgi: Option<std::sync::Arc<fastcgi::FastCgiApp>>,
    text: String,
}

impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<UpstreamUrl, AddressError> {
        let unix = |rest: &str, protocol| {
            if !rest.starts_with('/') || rest.len() < 2 {
                return Err(AddressError::SocketPath(s.to_string()));
            }
            Ok(UpstreamUrl {
                protocol,
                transport: Transport::Unix(std::path::PathBuf::from(rest)),
                scheme: http::uri::Scheme::HTTP,
                authority: http::uri::Authority::from_static("localhost"),
                base_path: String::new(),
                fastcgi: None,
                text: s.to_string(),
            })
        };
        if let Some(rest) = s.strip_prefix("http+unix://") {
            return unix(rest, Protocol::Http);
        }
        if let Some(rest) = s.strip_prefix("fastcgi+unix://") {
            return unix(rest, Protocol::FastCgi);
        }
        let (protocol, as_http) = match s.split_once("://") {
            Some(("fastcgi", rest)) => (Protocol::FastCgi, format!("http://{rest}")),
            Some(("http", _)) => (Protocol::Http, s.to_string()),
            Some(("https", _)) => (Protocol::Https, s.to_string()),
            Some(_) => return Err(AddressError::Scheme(s.to_string())),
            None => return Err(AddressError::NoScheme(s.to_string())),
        };
        let uri: http::Uri =
            as_http
                .parse()
                .map_err(|e: http::uri::InvalidUri| AddressError::NotAUrl {
                    url: s.to_string(),
                    why: e.to_string(),
                })?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| AddressError::NoScheme(s.to_string()))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| AddressError::NoHost(s.to_string()))?;
        if uri.query().is_some() {
            return Err(AddressError::Query(s.to_string()));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(UpstreamUrl {
            protocol,
            transport: Transport::Tcp,
            scheme,
            authority,
            base_path,
            fastcgi: None,
            text: s.to_string(),
        })
    }

    /// The same upstream, with the FastCGI application behind it.
    pub fn with_fastcgi(mut self, app: std::sync::Arc<fastcgi::FastCgiApp>) -> UpstreamUrl {
        self.fastcgi = Some(app);
        self
    }

    /// The origin-form URI (path and query) of a request to this upstream, for the path and
    /// query of the client's request: the upstream's base path, if any, goes in front.
    pub fn origin_form(
        &self,
        path_and_query: Option<&http::uri::PathAndQuery>,
    ) -> Result<http::Uri, http::Error> {
        match path_and_query {
            // The common case: the client's path as it came, without copying it.
            Some(pq) if self.base_path.is_empty() => Ok(http::Uri::from(pq.clone())),
            pq => {
                let pq = pq.map_or("/", |p| p.as_str());
                let mut joined = String::with_capacity(self.base_path.len() + pq.len());
                joined.push_str(&self.base_path);
                joined.push_str(pq);
                Ok(http::Uri::try_from(joined)?)
            }
        }
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why the upstream connector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    CaFile { path: String, why: String },
    #[error("{path}: no PEM certificates found")]
    NoCertificates { path: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The request to send upstream for the client's `parts`: its method, its path and query behind
/// the upstream's base path, and `headers` — a copy of `parts.headers`, or the headers themselves
/// (`std::mem::take`) for the last request built from them.
pub fn forward_request(
    url: &UpstreamUrl,
    parts: &http::request::Parts,
    headers: http::HeaderMap,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, http::Error> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = url.origin_form(parts.uri.path_and_query())?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Safe methods (RFC 9110 §9.2.1): a twin may run them, and the legacy app may answer them
/// again when a promoted candidate cannot.
pub fn is_safe(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// Builds an upstream connection pool. `ca_file`: extra PEM roots for `https://` upstreams.
pub fn pool(ca_file: Option<&Path>, limits: Limits) -> Result<Pool, TlsError> {
    Ok(Pool::new(connector(ca_file)?, limits))
}

/// The connector upstream connections are made with: TCP (no Nagle, keep-alive probes, a 5 s
/// connect timeout), then TLS for `https://` (system roots plus `ca_file`).
pub fn connector(ca_file: Option<&Path>) -> Result<HttpsConnector<HttpConnector>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system certificate rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let ca_err = |why: String| TlsError::CaFile {
            path: path.display().to_string(),
            why,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::NoCertificates {
                path: path.display().to_string(),
            });
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
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

thread_local! {
    /// The pool of the worker thread this code runs on: connections, their pool and their
    /// tasks stay on one thread, so a request never wakes another core.
    static WORKER_POOL: std::cell::RefCell<Option<Pool>> = const { std::cell::RefCell::new(None) };
}

/// Makes `pool` the calling worker thread's own.
pub fn set_worker_pool(pool: Pool) {
    WORKER_POOL.with(|w| *w.borrow_mut() = Some(pool));
}

/// The calling thread's pool when it is a worker, else `shared`.
pub fn pool_for_this_thread(shared: &Pool) -> Pool {
    WORKER_POOL
        .with(|c| c.borrow().clone())
        .unwrap_or_else(|| shared.clone())
}
