//! The proxy's side of the PHP session: the configured store ([`stores`]) and the per-request
//! resolution — cookie → store → PHP decode → signed `x-cutover-session` header — made once,
//! before PHP sees the request, and bounded by `session.timeout_ms` (a slow or dead store costs
//! the client at most that, never its response). The codec, the header and the store layouts
//! are the `cutover-session` crate's; this module wires them to the config and the counters.

pub mod stores;

use crate::config::{Session as SessionConfig, StoreKind};
use cutover_session::header::{self, Keyring, Snapshot};
use cutover_session::php::{self, Serializer};
use cutover_session::store::Lookup;
use http::HeaderValue;
use prometheus::IntCounter;
use std::time::Duration;
use stores::Stores;

/// Largest header sent; a bigger session is not mirrored (counted as `undecodable`).
pub const MAX_HEADER_BYTES: usize = 256 * 1024;

/// Sessions up to this size are decoded on the proxy's IO thread (well under a millisecond);
/// larger ones on the blocking pool, so one huge session cannot hold every client of a worker.
pub const INLINE_DECODE_BYTES: usize = 16 * 1024;

/// The session a request carried, as resolved before PHP saw it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: String,
    /// The header to send to the candidate.
    pub header: HeaderValue,
    /// The stored bytes (what a twin's copy of the store gets).
    pub raw: Vec<u8>,
    /// The session in its JSON form (`{}` when PHP could not decode it either).
    pub data: serde_json::Value,
}

/// What the resolution gave.
pub enum Resolution {
    /// No cookie, no session stored, or expired: no header.
    None,
    Found(Resolved),
    /// The store failed or was too slow: the comparison is skipped; the cause says why.
    Failed(String),
}

/// `cutover_session_resolutions_total{store, outcome}` handles, made once.
struct Outcomes {
    found: IntCounter,
    absent: IntCounter,
    expired: IntCounter,
    undecodable: IntCounter,
    error: IntCounter,
}

pub struct Resolver {
    stores: Stores,
    /// The twin's own copy of the store (`[session.twin]`), when there is a twin.
    twin: Option<Stores>,
    /// How long the read after PHP's response waits for PHP's lock.
    after_wait: Duration,
    keys: Keyring,
    cookie: String,
    serializer: Serializer,
    timeout: Duration,
    outcomes: Outcomes,
}

/// Why the session side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("session: the session header needs a secret: set the environment variable {0}")]
    NoSecret(String),
    #[error("session: {0} is empty")]
    EmptySecret(String),
    #[error("session: {0}")]
    Store(#[from] stores::OpenError),
}

impl Resolver {
    /// Builds and connects the configured store (None for `store = "none"`). Connection
    /// problems are logged, not fatal: the proxy must serve even while the store is down.
    pub async fn start(
        cfg: &SessionConfig,
        metrics: &crate::stats::Metrics,
    ) -> Result<Option<Resolver>, SetupError> {
        if cfg.store == StoreKind::None {
            return Ok(None);
        }
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let secret = std::env::var(&cfg.secret_env)
            .map_err(|_| SetupError::NoSecret(cfg.secret_env.clone()))?;
        if secret.is_empty() {
            return Err(SetupError::EmptySecret(cfg.secret_env.clone()));
        }
        let stores = Stores::open(cfg, timeout).await?;
        let twin = cfg.twin.as_ref().map(|t| stores.twin(t));
        // Connects the client now rather than on the first request; a store that is down (or
        // never answers) is reported, not fatal: the proxy must serve while it is down.
        let wait = timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(wait, stores.probe()).await {
            Ok(Ok(())) => {}
            // The start-up probe reports it as a warning (see `probe`).
            Ok(Err(problem)) => {
                tracing::debug!(%problem, "session store not ready at start-up; requests will retry")
            }
            Err(_) => tracing::debug!(
                "session store did not answer within {wait:?} at start-up; requests will retry"
            ),
        }
        let name = stores.name();
        let c = |o: &str| metrics.session_resolutions.with_label_values(&[name, o]);
        Ok(Some(Resolver {
            twin,
            after_wait: Duration::from_millis(cfg.after_read_wait_ms),
            keys: Keyring::single(secret.into_bytes()),
            cookie: cfg.cookie.clone(),
            serializer: cfg.serializer.serializer(),
            timeout,
            outcomes: Outcomes {
                found: c("found"),
                absent: c("absent"),
                expired: c("expired"),
                undecodable: c("undecodable"),
                error: c("error"),
            },
            stores,
        }))
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// How the sessions are serialized (`session.serialize_handler`).
    pub fn serializer(&self) -> cutover_session::php::Serializer {
        self.serializer
    }

    /// The session cookie's name (`session_name()`).
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Resolves the session of a request whose session id (already validated) is `id` (None:
    /// no cookie) for `req_line` (`METHOD /path?query`), within `session.timeout_ms` — the
    /// store read and the decoding together.
    pub async fn resolve(&self, id: Option<String>, req_line: String) -> Resolution {
        let Some(id) = id else {
            // No cookie, or one PHP would not accept: PHP starts a new session.
            return Resolution::None;
        };
        match tokio::time::timeout(self.timeout, self.resolve_id(id, req_line)).await {
            Ok(r) => r,
            Err(_) => {
                self.outcomes.error.inc();
                Resolution::Failed(format!(
                    "session: {} store and decoding took more than {:?}",
                    self.stores.name(),
                    self.timeout
                ))
            }
        }
    }

    async fn resolve_id(&self, id: String, req_line: String) -> Resolution {
        let raw = match self.stores.load(&id).await {
            Ok(Lookup::Found(raw)) => raw,
            Ok(Lookup::Absent) => {
                self.outcomes.absent.inc();
                return Resolution::None;
            }
            Ok(Lookup::Expired) => {
                self.outcomes.expired.inc();
                return Resolution::None;
            }
            Err(e) => {
                self.outcomes.error.inc();
                return Resolution::Failed(format!("session: {e}"));
            }
        };
        let snapshot = Snapshot {
            name: self.cookie.clone(),
            id: id.clone(),
            store: self.stores.name().to_string(),
            serializer: self.serializer,
            raw,
            resolved_at: crate::stats::now_secs(),
            req: req_line,
        };
        let keys = self.keys.clone();
        let signed = if snapshot.raw.len() <= INLINE_DECODE_BYTES {
            sign(snapshot, &keys)
        } else {
            // Off the IO thread: decoding is linear, but a 1 MB session still takes
            // milliseconds, and every client of this worker would wait for them.
            match tokio::task::spawn_blocking(move || sign(snapshot, &keys)).await {
                Ok(s) => s,
                Err(_) => Signed::TooLarge,
            }
        };
        match signed {
            Signed::Header {
                header,
                decoded,
                raw,
                data,
            } => {
                if decoded {
                    self.outcomes.found.inc();
                } else {
                    self.outcomes.undecodable.inc();
                }
                Resolution::Found(Resolved {
                    id,
                    header,
                    raw,
                    data,
                })
            }
            Signed::TooLarge => {
                self.outcomes.undecodable.inc();
                Resolution::Failed(format!(
                    "session: the session's header would be over {MAX_HEADER_BYTES} bytes"
                ))
            }
        }
    }
}

/// What signing a snapshot gave.
enum Signed {
    Header {
        header: HeaderValue,
        decoded: bool,
        raw: Vec<u8>,
        data: serde_json::Value,
    },
    TooLarge,
}

/// The JSON form of a stored session: `{}` when PHP could not decode it either (PHP starts
/// such a session empty). The bool says whether it decoded.
fn session_json(raw: &[u8], serializer: Serializer) -> (serde_json::Value, bool) {
    match php::decode_session(raw, serializer, php::DEFAULT_MAX_BYTES).and_then(|s| s.to_json()) {
        Ok(d) => (d, true),
        Err(e) => {
            tracing::debug!(error = %e, "session does not decode");
            (serde_json::Value::Object(serde_json::Map::new()), false)
        }
    }
}

/// Decodes the snapshot's session and signs the header. A session PHP could not decode goes
/// out as `"data": {}` with its raw bytes.
fn sign(snapshot: Snapshot, keys: &Keyring) -> Signed {
    let (data, ok) = session_json(&snapshot.raw, snapshot.serializer);
    match header::sign_decoded(&snapshot, data.clone(), keys) {
        Ok(h) if h.len() <= MAX_HEADER_BYTES => match HeaderValue::from_str(&h) {
            Ok(header) => Signed::Header {
                header,
                decoded: ok,
                raw: snapshot.raw,
                data,
            },
            Err(_) => Signed::TooLarge,
        },
        _ => Signed::TooLarge,
    }
}

/// Why the session PHP left could not be read.
#[derive(Debug, thiserror::Error)]
#[error("session after the request: {0}")]
pub struct AfterError(#[from] cutover_session::store::StoreError);

impl Resolver {
    /// The session PHP left under `id` once its request is over: waits for PHP's lock (see
    /// [`Stores::load_after`]), then decodes. None: there is none (never written, destroyed,
    /// expired).
    pub async fn after(&self, id: &str) -> Result<Option<serde_json::Value>, AfterError> {
        let raw = match self.stores.load_after(id, self.after_wait).await? {
            Lookup::Found(raw) => raw,
            Lookup::Absent | Lookup::Expired => return Ok(None),
        };
        let serializer = self.serializer;
        let data = if raw.len() <= INLINE_DECODE_BYTES {
            session_json(&raw, serializer).0
        } else {
            tokio::task::spawn_blocking(move || session_json(&raw, serializer).0)
                .await
                .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()))
        };
        Ok(Some(data))
    }

    /// Whether a twin runs on a copy of the store.
    pub fn has_twin_store(&self) -> bool {
        self.twin.is_some()
    }

    /// Writes the pre-request session into the twin's own store under the same id, so the twin
    /// sees the same user and whatever it writes stays in its copy.
    pub async fn copy_to_twin(&self, id: &str, raw: &[u8]) -> Result<(), AfterError> {
        match &self.twin {
            Some(t) => Ok(t.save(id, raw, TWIN_COPY_LIFETIME).await?),
            None => Ok(()),
        }
    }
}

/// How long a twin's copy of a session lives (PHP's default `session.gc_maxlifetime`).
const TWIN_COPY_LIFETIME: Duration = Duration::from_secs(1440);
