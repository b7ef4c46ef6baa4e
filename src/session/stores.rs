//! The configured session store, one interface over PHP's three: `files` (run on the blocking
//! pool: a `flock` can wait), phpredis, and aws-sdk-php's DynamoDB layout. Clients are created
//! and connected at start-up, not on first use.

use crate::config::{Session as SessionConfig, StoreKind};
use cutover_session::dynamodb::{DynamoStore, Layout};
use cutover_session::files::{FilesStore, SavePathError};
use cutover_session::redis::RedisStore;
use cutover_session::store::{Lookup, StoreError};
use std::time::Duration;

/// Why the configured store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("session.files.path: {0}")]
    SavePath(#[from] SavePathError),
    #[error("session.redis.url: {0}")]
    Redis(StoreError),
    #[error("store = \"{0}\" needs its [session.{0}] table")]
    Missing(&'static str),
}

/// The configured store.
#[derive(Debug, Clone)]
pub enum Stores {
    Files(FilesStore),
    Dynamo(DynamoStore),
    Redis(RedisStore),
}

impl Stores {
    pub async fn open(cfg: &SessionConfig, timeout: Duration) -> Result<Stores, OpenError> {
        Ok(match cfg.store {
            StoreKind::None | StoreKind::Files => {
                let f = cfg.files.as_ref().ok_or(OpenError::Missing("files"))?;
                Stores::Files(FilesStore::new(f.path.get_ref(), timeout)?)
            }
            StoreKind::Redis => {
                let r = cfg.redis.as_ref().ok_or(OpenError::Missing("redis"))?;
                Stores::Redis(
                    RedisStore::open(r.url.get_ref(), &r.prefix).map_err(OpenError::Redis)?,
                )
            }
            StoreKind::Dynamodb => {
                let d = cfg
                    .dynamodb
                    .as_ref()
                    .ok_or(OpenError::Missing("dynamodb"))?;
                let client = crate::aws::dynamodb(d.region.as_deref(), d.endpoint.as_deref()).await;
                Stores::Dynamo(DynamoStore::new(
                    client,
                    Layout {
                        table: d.table.clone(),
                        hash_key: d.hash_key.clone(),
                        data_attribute: d.data_attribute.clone(),
                        session_name: cfg.cookie.clone(),
                    },
                ))
            }
        })
    }

    /// Where the store is, for a person: the folder, the key prefix, the table.
    pub fn describe(&self) -> String {
        match self {
            Stores::Files(s) => format!("files {}", s.save_path.dir.display()),
            Stores::Dynamo(s) => format!("dynamodb table {}", s.layout().table),
            Stores::Redis(s) => format!("redis {s:?}"),
        }
    }

    /// The store's name in metrics (`files`, `dynamodb`, `redis`).
    pub fn name(&self) -> &'static str {
        match self {
            Stores::Files(_) => "files",
            Stores::Dynamo(_) => "dynamodb",
            Stores::Redis(_) => "redis",
        }
    }

    /// Reads a session without taking PHP's lock (files: a shared lock, waited for at most
    /// the store's timeout).
    pub async fn load(&self, id: &str) -> Result<Lookup, StoreError> {
        match self {
            Stores::Files(s) => {
                let s = s.clone();
                let id = id.to_string();
                blocking(move || s.load(&id)).await
            }
            Stores::Dynamo(s) => s.load(id).await,
            Stores::Redis(s) => s.load(id).await,
        }
    }

    /// Reads a session once PHP's request is over: files wait (at most `wait`) for PHP's
    /// exclusive lock, which PHP holds from `session_start()` until its write at the end of the
    /// request; redis and dynamodb wait while PHP's lock key or `lock` attribute is there (with
    /// PHP's session locking on; without it the read comes after the response has ended).
    pub async fn load_after(&self, id: &str, wait: Duration) -> Result<Lookup, StoreError> {
        match self {
            Stores::Files(s) => {
                let s = s.clone();
                let id = id.to_string();
                blocking(move || s.load_waiting(&id, wait)).await
            }
            Stores::Dynamo(s) => s.load_after_lock(id, wait).await,
            Stores::Redis(s) => s.load_after_lock(id, wait).await,
        }
    }

    /// The twin's copy of this store: the same kind, at `[session.twin]`'s path, prefix or
    /// table (what it does not name stays as it is here).
    pub fn twin(&self, t: &crate::config::SessionTwin) -> Stores {
        match self {
            Stores::Files(s) => {
                let mut twin = s.clone();
                if let Some(p) = t
                    .path
                    .as_ref()
                    .and_then(|p| cutover_session::files::SavePath::parse(p).ok())
                {
                    twin.save_path = p;
                }
                Stores::Files(twin)
            }
            Stores::Redis(s) => Stores::Redis(match &t.prefix {
                Some(p) => s.with_prefix(p),
                None => s.clone(),
            }),
            Stores::Dynamo(s) => Stores::Dynamo(match &t.table {
                Some(table) => s.with_table(table),
                None => s.clone(),
            }),
        }
    }

    /// Writes a session as PHP's handler does; `lifetime` is PHP's `session.gc_maxlifetime`.
    pub async fn save(&self, id: &str, data: &[u8], lifetime: Duration) -> Result<(), StoreError> {
        match self {
            Stores::Files(s) => {
                let s = s.clone();
                let id = id.to_string();
                let data = data.to_vec();
                blocking(move || s.save(&id, &data)).await
            }
            Stores::Dynamo(s) => s.save(id, data, lifetime).await,
            Stores::Redis(s) => s.save(id, data, lifetime).await,
        }
    }

    /// Deletes a session (`session_destroy()`).
    pub async fn destroy(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Stores::Files(s) => {
                let s = s.clone();
                let id = id.to_string();
                blocking(move || s.destroy(&id)).await
            }
            Stores::Dynamo(s) => s.destroy(id).await,
            Stores::Redis(s) => s.destroy(id).await,
        }
    }

    /// Whether the store can be used: the folder is readable (files), the server answers
    /// PING (redis), the table exists with the layout's hash key (dynamodb).
    pub async fn probe(&self) -> Result<(), StoreError> {
        match self {
            Stores::Files(s) => {
                let s = s.clone();
                blocking(move || s.check_folder()).await
            }
            Stores::Dynamo(s) => s.check_table().await,
            Stores::Redis(s) => s.ping().await,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Failed {
            store: "files",
            message: e.to_string(),
        })?
}
