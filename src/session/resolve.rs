//! Resolving a request's session once, before PHP sees the request: cookie → store → PHP
//! decode → signed header for the candidate. Bounded by `session.timeout_ms`: a slow or dead
//! store costs the client at most that, never its response.

use super::header::{self, Keyring, Snapshot};
use super::php::{self, Serializer};
use super::store::{AnyStore, DynamoStore, FilesStore, Lookup, RedisStore, SessionStore};
use crate::config::{Session as SessionConfig, StoreKind};
use http::HeaderValue;
use prometheus::IntCounter;
use std::time::Duration;

/// Largest header sent; a bigger session is not mirrored (counted as `undecodable`).
pub const MAX_HEADER_BYTES: usize = 256 * 1024;

/// What the resolution gave.
pub enum Resolution {
    /// No cookie, no session stored, or expired: no header.
    None,
    /// The header to send to the candidate.
    Header(HeaderValue),
    /// The store failed or was too slow: the comparison is skipped.
    Failed,
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
    store: AnyStore,
    keys: Keyring,
    cookie: String,
    serializer: Serializer,
    timeout: Duration,
    outcomes: Outcomes,
}

/// Why the session side could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("session: {0}")]
pub struct SetupError(pub String);

impl Resolver {
    /// Builds and connects the configured store (None for `store = "none"`). Connection
    /// problems are logged, not fatal: the proxy must serve even while the store is down.
    pub async fn start(
        cfg: &SessionConfig,
        metrics: &crate::stats::Metrics,
    ) -> Result<Option<Resolver>, SetupError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let store = match cfg.store {
            StoreKind::None => return Ok(None),
            StoreKind::Files => {
                let path = cfg
                    .files
                    .as_ref()
                    .map(|f| f.path.get_ref().clone())
                    .unwrap_or_default();
                AnyStore::Files(FilesStore::new(&path, timeout).map_err(SetupError)?)
            }
            StoreKind::Dynamodb => {
                let d = cfg.dynamodb.clone().ok_or_else(|| {
                    SetupError("store = \"dynamodb\" needs [session.dynamodb]".into())
                })?;
                let (store, problem) = DynamoStore::connect(&d, &cfg.cookie).await;
                if let Some(p) = problem {
                    tracing::warn!(problem = %p, "session store not ready at start-up; requests will retry");
                }
                AnyStore::Dynamo(store)
            }
            StoreKind::Redis => {
                let r = cfg
                    .redis
                    .clone()
                    .ok_or_else(|| SetupError("store = \"redis\" needs [session.redis]".into()))?;
                let (store, problem) =
                    RedisStore::connect(&r, timeout).await.map_err(SetupError)?;
                if let Some(p) = problem {
                    tracing::warn!(problem = %p, "session store not ready at start-up; requests will retry");
                }
                AnyStore::Redis(store)
            }
        };
        let secret = std::env::var(&cfg.secret_env).map_err(|_| {
            SetupError(format!(
                "the session header needs a secret: set the environment variable {}",
                cfg.secret_env
            ))
        })?;
        if secret.is_empty() {
            return Err(SetupError(format!("{} is empty", cfg.secret_env)));
        }
        let name = store.name();
        let c = |o: &str| metrics.session_resolutions.with_label_values(&[name, o]);
        Ok(Some(Resolver {
            keys: Keyring::single(secret.into_bytes()),
            cookie: cfg.cookie.clone(),
            serializer: cfg.serializer.into(),
            timeout,
            outcomes: Outcomes {
                found: c("found"),
                absent: c("absent"),
                expired: c("expired"),
                undecodable: c("undecodable"),
                error: c("error"),
            },
            store,
        }))
    }

    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// Resolves the session of a request with cookie value `raw_cookie` (None: no cookie) for
    /// `req_line` (`METHOD /path?query`).
    pub async fn resolve(&self, raw_cookie: Option<&str>, req_line: String) -> Resolution {
        let Some(id) = raw_cookie.and_then(super::valid_session_id) else {
            // No cookie, or one PHP would not accept: PHP starts a new session.
            return Resolution::None;
        };
        let lookup = match tokio::time::timeout(self.timeout, self.store.load(&id)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "session store failed");
                self.outcomes.error.inc();
                return Resolution::Failed;
            }
            Err(_) => {
                self.outcomes.error.inc();
                return Resolution::Failed;
            }
        };
        let raw = match lookup {
            Lookup::Found(raw) => raw,
            Lookup::Absent => {
                self.outcomes.absent.inc();
                return Resolution::None;
            }
            Lookup::Expired => {
                self.outcomes.expired.inc();
                return Resolution::None;
            }
        };
        let data = php::decode_session(&raw, self.serializer, php::DEFAULT_MAX_BYTES)
            .and_then(|s| s.to_json());
        let data = match data {
            Ok(d) => {
                self.outcomes.found.inc();
                d
            }
            Err(e) => {
                // PHP starts such a session empty; the candidate gets the same (and the raw bytes).
                tracing::debug!(error = %e, "session does not decode");
                self.outcomes.undecodable.inc();
                serde_json::Value::Object(serde_json::Map::new())
            }
        };
        let snapshot = Snapshot {
            name: self.cookie.clone(),
            id,
            store: self.store.name().to_string(),
            serializer: self.serializer,
            raw,
            resolved_at: crate::stats::now_secs(),
            req: req_line,
        };
        match header::sign_decoded(&snapshot, data, &self.keys) {
            Ok(h) if h.len() <= MAX_HEADER_BYTES => match HeaderValue::from_str(&h) {
                Ok(v) => Resolution::Header(v),
                Err(_) => Resolution::Failed,
            },
            _ => {
                self.outcomes.undecodable.inc();
                Resolution::Failed
            }
        }
    }
}
