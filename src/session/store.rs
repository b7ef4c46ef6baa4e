//! The stores PHP keeps sessions in, behind one trait: PHP's `files` handler, aws-sdk-php's
//! `DynamoDb\SessionHandler` item layout, and phpredis. Each reads without taking PHP's lock
//! (a shared `flock` for files, a consistent `GetItem` that never touches `lock` for DynamoDB, a
//! plain `GET` for Redis) and writes the way PHP's handler writes, so a promoted Rust route can
//! log a user in or out and PHP sees it.

use super::files::SavePath;
use crate::config::{SessionDynamo, SessionRedis};
use aws_sdk_dynamodb::types::AttributeValue;
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a store holds for a session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The serializer's bytes.
    Found(Vec<u8>),
    /// Nothing stored under this id.
    Absent,
    /// Stored but past its expiry (DynamoDB's `expires`; Redis and files expire by deletion).
    Expired,
}

/// A store that failed (as opposed to one that answered "no session").
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: {message}")]
    Failed {
        store: &'static str,
        message: String,
    },
    #[error("{store}: no answer within {timeout:?}")]
    Timeout {
        store: &'static str,
        timeout: Duration,
    },
}

fn failed(store: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed {
        store,
        message: e.to_string(),
    }
}

/// One interface over PHP's session stores. `id` is an already validated session id.
pub trait SessionStore: Send + Sync {
    /// The store's name in metrics (`files`, `dynamodb`, `redis`).
    fn name(&self) -> &'static str;
    /// Reads a session without taking PHP's lock.
    fn load(&self, id: &str) -> impl Future<Output = Result<Lookup, StoreError>> + Send;
    /// Writes a session as PHP's handler does; `lifetime` is PHP's `session.gc_maxlifetime`.
    fn save(
        &self,
        id: &str,
        data: &[u8],
        lifetime: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes a session (`session_destroy()`).
    fn destroy(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// PHP's `files` handler.
#[derive(Debug, Clone)]
pub struct FilesStore {
    pub save_path: SavePath,
    /// How long to wait for a lock PHP holds before giving up.
    pub lock_wait: Duration,
}

impl FilesStore {
    pub fn new(save_path: &str, lock_wait: Duration) -> Result<FilesStore, String> {
        Ok(FilesStore {
            save_path: SavePath::parse(save_path)?,
            lock_wait,
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf, StoreError> {
        if super::valid_session_id(id).as_deref() != Some(id) {
            return Err(failed("files", "invalid session id"));
        }
        self.save_path
            .file_for(id)
            .ok_or_else(|| failed("files", "session id shorter than the save_path depth"))
    }
}

/// Polls a non-blocking lock until it is had or `wait` passes: a blocking `flock` in a pool
/// thread could wait for as long as a PHP request runs.
fn lock_within(file: &std::fs::File, exclusive: bool, wait: Duration) -> Result<(), StoreError> {
    let deadline = Instant::now() + wait;
    loop {
        let attempt = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                if Instant::now() >= deadline {
                    return Err(StoreError::Timeout {
                        store: "files",
                        timeout: wait,
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed("files", e)),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| failed("files", e))?
}

impl SessionStore for FilesStore {
    fn name(&self) -> &'static str {
        "files"
    }

    fn load(&self, id: &str) -> impl Future<Output = Result<Lookup, StoreError>> + Send {
        let path = self.path(id);
        let wait = self.lock_wait;
        async move {
            let path = path?;
            blocking(move || {
                let mut file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(Lookup::Absent)
                    }
                    Err(e) => return Err(failed("files", format!("{}: {e}", path.display()))),
                };
                lock_within(&file, false, wait)?;
                let mut data = Vec::new();
                file.read_to_end(&mut data)
                    .map_err(|e| failed("files", e))?;
                // PHP creates the file when a session starts; an empty one is an empty session.
                Ok(Lookup::Found(data))
            })
            .await
        }
    }

    fn save(
        &self,
        id: &str,
        data: &[u8],
        _lifetime: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let path = self.path(id);
        let data = data.to_vec();
        let wait = self.lock_wait;
        async move {
            let path = path?;
            blocking(move || {
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| failed("files", format!("{}: {e}", path.display())))?;
                // As PHP's mod_files: exclusive lock, then truncate and write on the locked file.
                // Readers take the shared lock, so they see the old or the new content, never half.
                lock_within(&file, true, wait)?;
                file.set_len(0).map_err(|e| failed("files", e))?;
                file.seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| failed("files", e))?;
                file.write_all(&data).map_err(|e| failed("files", e))?;
                file.flush().map_err(|e| failed("files", e))?;
                Ok(())
            })
            .await
        }
    }

    fn destroy(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let path = self.path(id);
        async move {
            let path = path?;
            blocking(move || match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(failed("files", e)),
            })
            .await
        }
    }
}

/// aws-sdk-php's `DynamoDb\SessionHandler` layout.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    hash_key: String,
    data_attribute: String,
    /// `session_name()`: the key is `<name>_<id>`.
    session_name: String,
    /// Write `data` as `B` instead of `S` (aws-sdk-php's `data_attribute_type = binary`).
    pub binary: bool,
}

/// An AWS SDK config for DynamoDB: the normal credential chain and region, an endpoint override
/// for DynamoDB-compatible servers, and the rustls/ring HTTP client.
pub async fn aws_config(region: Option<&str>, endpoint: Option<&str>) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

impl DynamoStore {
    /// Builds the client and makes one call (DescribeTable) so credentials and a connection are
    /// ready before the first request; a failure is reported but the store is still returned.
    pub async fn connect(cfg: &SessionDynamo, session_name: &str) -> (DynamoStore, Option<String>) {
        let sdk = aws_config(
            cfg.region.as_deref(),
            cfg.endpoint.as_ref().map(|e| e.get_ref().as_str()),
        )
        .await;
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        let store = DynamoStore {
            client,
            table: cfg.table.clone(),
            hash_key: cfg.hash_key.clone(),
            data_attribute: cfg.data_attribute.clone(),
            session_name: session_name.to_string(),
            binary: false,
        };
        let warm = store
            .client
            .describe_table()
            .table_name(&store.table)
            .send()
            .await;
        let problem = warm.err().map(|e| {
            format!(
                "dynamodb: DescribeTable {}: {}",
                store.table,
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            )
        });
        (store, problem)
    }

    pub fn client(&self) -> &aws_sdk_dynamodb::Client {
        &self.client
    }

    fn key(&self, id: &str) -> AttributeValue {
        AttributeValue::S(format!("{}_{id}", self.session_name))
    }
}

impl SessionStore for DynamoStore {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    fn load(&self, id: &str) -> impl Future<Output = Result<Lookup, StoreError>> + Send {
        let req = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(&self.hash_key, self.key(id))
            .consistent_read(true);
        let data_attribute = self.data_attribute.clone();
        async move {
            let out = req
                .send()
                .await
                .map_err(|e| failed("dynamodb", aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
            let Some(item) = out.item else {
                return Ok(Lookup::Absent);
            };
            let expires = match item.get("expires") {
                Some(AttributeValue::N(n)) => n.parse::<f64>().ok().map(|x| x as i64),
                _ => None,
            };
            let data = match item.get(&data_attribute) {
                Some(AttributeValue::S(s)) => Some(s.as_bytes().to_vec()),
                Some(AttributeValue::B(b)) => Some(b.as_ref().to_vec()),
                _ => None,
            };
            match (data, expires) {
                (Some(d), Some(e)) if e > now_secs() => Ok(Lookup::Found(d)),
                (Some(_), Some(_)) => Ok(Lookup::Expired),
                // Without `data` or `expires` aws-sdk-php's read returns '' — no session.
                _ => Ok(Lookup::Absent),
            }
        }
    }

    fn save(
        &self,
        id: &str,
        data: &[u8],
        lifetime: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        // As StandardSessionConnection::write: set `expires`, set `data` (removed when empty),
        // and remove `lock`.
        let expires = now_secs() + lifetime.as_secs() as i64;
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(&self.hash_key, self.key(id))
            .expression_attribute_names("#e", "expires")
            .expression_attribute_names("#l", "lock")
            .expression_attribute_values(":e", AttributeValue::N(expires.to_string()));
        if data.is_empty() {
            req = req
                .update_expression("SET #e = :e REMOVE #l, #d")
                .expression_attribute_names("#d", &self.data_attribute);
        } else {
            let value = if self.binary {
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(data.to_vec()))
            } else {
                match std::str::from_utf8(data) {
                    Ok(s) => AttributeValue::S(s.to_string()),
                    // S must be UTF-8; PHP strings need not be. Store those as B.
                    Err(_) => {
                        AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(data.to_vec()))
                    }
                }
            };
            req = req
                .update_expression("SET #e = :e, #d = :d REMOVE #l")
                .expression_attribute_names("#d", &self.data_attribute)
                .expression_attribute_values(":d", value);
        }
        async move {
            req.send()
                .await
                .map(|_| ())
                .map_err(|e| failed("dynamodb", aws_sdk_dynamodb::error::DisplayErrorContext(e)))
        }
    }

    fn destroy(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let req = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(&self.hash_key, self.key(id));
        async move {
            req.send()
                .await
                .map(|_| ())
                .map_err(|e| failed("dynamodb", aws_sdk_dynamodb::error::DisplayErrorContext(e)))
        }
    }
}

/// phpredis' layout: `<prefix><id>` holds the serializer's bytes, written with `SETEX`.
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: std::sync::Arc<tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>,
    prefix: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// Parses the URL and connects; a failed first connection is reported and retried on use.
    pub async fn connect(
        cfg: &SessionRedis,
        timeout: Duration,
    ) -> Result<(RedisStore, Option<String>), String> {
        let client = redis::Client::open(cfg.url.get_ref().as_str())
            .map_err(|e| format!("session.redis.url: {e}"))?;
        let store = RedisStore {
            client,
            conn: std::sync::Arc::new(tokio::sync::Mutex::new(None)),
            prefix: cfg.prefix.clone(),
        };
        let problem =
            match tokio::time::timeout(timeout.max(Duration::from_secs(1)), store.connection())
                .await
            {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("redis: no connection within the timeout".to_string()),
            };
        Ok((store, problem))
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| failed("redis", e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets a broken connection so the next call reconnects.
    async fn reset(&self) {
        *self.conn.lock().await = None;
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }
}

impl SessionStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn load(&self, id: &str) -> impl Future<Output = Result<Lookup, StoreError>> + Send {
        let key = self.key(id);
        async move {
            let mut c = self.connection().await?;
            let got: Result<Option<Vec<u8>>, _> =
                redis::cmd("GET").arg(&key).query_async(&mut c).await;
            match got {
                Ok(Some(v)) => Ok(Lookup::Found(v)),
                Ok(None) => Ok(Lookup::Absent),
                Err(e) => {
                    self.reset().await;
                    Err(failed("redis", e))
                }
            }
        }
    }

    fn save(
        &self,
        id: &str,
        data: &[u8],
        lifetime: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let key = self.key(id);
        let data = data.to_vec();
        async move {
            let mut c = self.connection().await?;
            let r: Result<(), _> = redis::cmd("SETEX")
                .arg(&key)
                .arg(lifetime.as_secs().max(1))
                .arg(data)
                .query_async(&mut c)
                .await;
            if r.is_err() {
                self.reset().await;
            }
            r.map_err(|e| failed("redis", e))
        }
    }

    fn destroy(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let key = self.key(id);
        async move {
            let mut c = self.connection().await?;
            let r: Result<(), _> = redis::cmd("DEL").arg(&key).query_async(&mut c).await;
            r.map_err(|e| failed("redis", e))
        }
    }
}

/// The configured store.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Files(FilesStore),
    Dynamo(DynamoStore),
    Redis(RedisStore),
}

impl SessionStore for AnyStore {
    fn name(&self) -> &'static str {
        match self {
            AnyStore::Files(s) => s.name(),
            AnyStore::Dynamo(s) => s.name(),
            AnyStore::Redis(s) => s.name(),
        }
    }

    async fn load(&self, id: &str) -> Result<Lookup, StoreError> {
        match self {
            AnyStore::Files(s) => s.load(id).await,
            AnyStore::Dynamo(s) => s.load(id).await,
            AnyStore::Redis(s) => s.load(id).await,
        }
    }

    async fn save(&self, id: &str, data: &[u8], lifetime: Duration) -> Result<(), StoreError> {
        match self {
            AnyStore::Files(s) => s.save(id, data, lifetime).await,
            AnyStore::Dynamo(s) => s.save(id, data, lifetime).await,
            AnyStore::Redis(s) => s.save(id, data, lifetime).await,
        }
    }

    async fn destroy(&self, id: &str) -> Result<(), StoreError> {
        match self {
            AnyStore::Files(s) => s.destroy(id).await,
            AnyStore::Dynamo(s) => s.destroy(id).await,
            AnyStore::Redis(s) => s.destroy(id).await,
        }
    }
}
