//! `cutover check --probe`, and the same findings logged at start-up: does every part a config
//! names answer? The legacy app, the candidate(s) and the twin (an HTTP request each), the session
//! store (files: the folder is readable and a stored session decodes; redis: PING; dynamodb: the
//! table and its key schema), the twin's copy of it, and the state store. Nothing is created or
//! changed.

use crate::config::{Config, StateStoreKind};
use std::time::{Duration, Instant};

/// How long each part has to answer.
const WAIT: Duration = Duration::from_secs(5);

/// What probing one part found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok(String),
    Failed(String),
}

/// One line of the probe's report.
#[derive(Debug, Clone)]
pub struct Finding {
    /// `legacy`, `candidate`, `legacy_twin`, `session store`, `twin session store`, `state store`.
    pub part: String,
    /// Its address (a URL, a folder, a table).
    pub target: String,
    pub status: Status,
}

impl Finding {
    pub fn ok(&self) -> bool {
        matches!(self.status, Status::Ok(_))
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (word, detail) = match &self.status {
            Status::Ok(d) => ("ok  ", d),
            Status::Failed(d) => ("FAIL", d),
        };
        write!(f, "{word}  {:<20} {}  {detail}", self.part, self.target)
    }
}

async fn within<F: std::future::Future<Output = Status>>(f: F) -> Status {
    match tokio::time::timeout(WAIT, f).await {
        Ok(s) => s,
        Err(_) => Status::Failed(format!("no answer within {WAIT:?}")),
    }
}

async fn http(pool: &crate::upstream::Pool, url: &crate::upstream::UpstreamUrl) -> Status {
    let started = Instant::now();
    if url.protocol == crate::upstream::Protocol::FastCgi {
        return fastcgi(url, started).await;
    }
    let mut req = http::Request::new(crate::upstream::body::empty());
    *req.method_mut() = http::Method::HEAD;
    *req.uri_mut() = match url.origin_form(None) {
        Ok(u) => u,
        Err(e) => return Status::Failed(e.to_string()),
    };
    match pool.send(url, req).await {
        Ok(resp) => Status::Ok(format!(
            "HTTP {} in {} ms",
            resp.status().as_u16(),
            started.elapsed().as_millis()
        )),
        Err(e) => Status::Failed(crate::mirror::CallError::from(e).to_string()),
    }
}

/// PHP-FPM answers a management record, and the application's front controller is there.
async fn fastcgi(url: &crate::upstream::UpstreamUrl, started: Instant) -> Status {
    match crate::upstream::fastcgi::client::probe(url).await {
        Ok(what) => {
            if let Some(app) = &url.fastcgi {
                let index = app.document_root.join(&app.index);
                if !index.is_file() {
                    return Status::Ok(format!(
                        "{what}; note: {} is not a file on this machine (fine only if PHP-FPM runs on another machine; static files are served from this one's document_root)",
                        index.display()
                    ));
                }
            }
            Status::Ok(format!("{what} in {} ms", started.elapsed().as_millis()))
        }
        Err(e) => Status::Failed(crate::mirror::CallError::from(e).to_string()),
    }
}

/// A stored session to decode, if the folder holds one (looked for `depth` folders down).
fn a_stored_session(dir: &std::path::Path, depth: usize) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if depth == 0 && name.starts_with("sess_") && path.is_file() {
            return Some(path);
        }
        if depth > 0 && path.is_dir() {
            if let Some(found) = a_stored_session(&path, depth - 1) {
                return Some(found);
            }
        }
    }
    None
}

async fn session_store(config: &Config, twin: bool) -> Option<Finding> {
    use crate::config::StoreKind;
    let cfg = &config.session;
    if cfg.store == StoreKind::None {
        return None;
    }
    let part = if twin {
        "twin session store"
    } else {
        "session store"
    };
    let stores = match crate::session::stores::Stores::open(
        cfg,
        Duration::from_millis(cfg.timeout_ms),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            return Some(Finding {
                part: part.into(),
                target: cfg.store.as_str().into(),
                status: Status::Failed(e.to_string()),
            })
        }
    };
    let stores = match (twin, &cfg.twin) {
        (false, _) => stores,
        (true, Some(t)) => stores.twin(t),
        (true, None) => return None,
    };
    let target = stores.describe();
    let serializer = cfg.serializer.serializer();
    let status = within(async {
        if let Err(e) = stores.probe().await {
            return Status::Failed(e.to_string());
        }
        let crate::session::stores::Stores::Files(files) = &stores else {
            return Status::Ok("answers".into());
        };
        match a_stored_session(&files.save_path.dir, files.save_path.depth) {
            None => Status::Ok("readable; no stored session to decode yet".into()),
            Some(path) => match std::fs::read(&path) {
                Ok(raw) => match cutover_session::php::decode_session(
                    &raw,
                    serializer,
                    cutover_session::php::DEFAULT_MAX_BYTES,
                ) {
                    Ok(s) => Status::Ok(format!(
                        "readable; {} decodes ({} variables)",
                        path.display(),
                        s.vars.len()
                    )),
                    Err(e) => Status::Failed(format!(
                        "{} does not decode with session.serializer = {:?}: {e}",
                        path.display(),
                        cfg.serializer
                    )),
                },
                Err(e) => Status::Failed(format!("{}: {e}", path.display())),
            },
        }
    })
    .await;
    Some(Finding {
        part: part.into(),
        target,
        status,
    })
}

async fn state_store(config: &Config) -> Option<Finding> {
    let s = config.state.as_ref()?;
    let (target, status) = match s.store {
        StateStoreKind::File => {
            let path = config.resolve(&s.path);
            let store = crate::fleet::Store::File(path.clone());
            let status = match store.probe().await {
                Ok(()) => Status::Ok("readable".into()),
                Err(e) => Status::Failed(e.to_string()),
            };
            (path.display().to_string(), status)
        }
        StateStoreKind::Dynamodb => {
            let client = crate::aws::dynamodb(s.region.as_deref(), s.endpoint.as_deref()).await;
            let store = crate::fleet::Store::Dynamo {
                client,
                table: s.table.clone(),
            };
            let status = within(async {
                match store.probe().await {
                    Ok(()) => Status::Ok("the table exists".into()),
                    Err(e) => Status::Failed(e.to_string()),
                }
            })
            .await;
            (format!("dynamodb table {}", s.table), status)
        }
    };
    Some(Finding {
        part: "state store".into(),
        target,
        status,
    })
}

/// Probes every part the config names, in order.
/// How far the upstreams are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A `HEAD /` answered (`cutover check --probe`).
    Request,
    /// A connection opened, no request sent (at start-up: an application sees no request it
    /// did not get from a client).
    Connect,
}

/// A connection to the upstream opens (FastCGI: the management record, which runs no script).
async fn connect(url: &crate::upstream::UpstreamUrl) -> Status {
    use crate::upstream::{Protocol, Transport};
    let started = Instant::now();
    if url.protocol == Protocol::FastCgi {
        return fastcgi(url, started).await;
    }
    let opened = match &url.transport {
        Transport::Unix(path) => tokio::net::UnixStream::connect(path).await.map(drop),
        Transport::Tcp => {
            let port = url.authority.port_u16().unwrap_or(match url.protocol {
                Protocol::Https => 443,
                _ => 80,
            });
            tokio::net::TcpStream::connect((url.authority.host(), port))
                .await
                .map(drop)
        }
    };
    match opened {
        Ok(()) => Status::Ok(format!("connected in {} ms", started.elapsed().as_millis())),
        Err(e) => Status::Failed(
            crate::mirror::CallError::from(crate::upstream::UpstreamError::Connect {
                authority: url.to_string(),
                source: Box::new(e),
            })
            .to_string(),
        ),
    }
}

pub async fn probe(config: &Config, reach: Reach) -> Vec<Finding> {
    let mut out = Vec::new();
    let pool = match crate::upstream::pool(
        config.ca_file().as_deref(),
        crate::app::pool_limits(config, 1),
    ) {
        Ok(p) => p,
        Err(e) => {
            out.push(Finding {
                part: "upstreams".into(),
                target: "-".into(),
                status: Status::Failed(e.to_string()),
            });
            return out;
        }
    };
    let mut upstreams = vec![
        ("legacy", config.upstreams.legacy.get_ref().clone()),
        ("candidate", config.upstreams.candidate.get_ref().clone()),
    ];
    if let Some(t) = &config.upstreams.legacy_twin {
        upstreams.push(("legacy_twin", t.get_ref().clone()));
    }
    for r in &config.routes {
        if let Some(c) = &r.candidate {
            if !upstreams.iter().any(|(_, u)| u == c.get_ref()) {
                upstreams.push(("route candidate", c.get_ref().clone()));
            }
        }
    }
    for (part, url) in upstreams {
        out.push(Finding {
            part: part.into(),
            target: url.to_string(),
            status: match reach {
                Reach::Request => within(http(&pool, &url)).await,
                Reach::Connect => within(connect(&url)).await,
            },
        });
    }
    out.extend(session_store(config, false).await);
    out.extend(session_store(config, true).await);
    out.extend(state_store(config).await);
    out
}
