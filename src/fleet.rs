//! Fleet state: the route modes that promote and rollback changed, shared by every proxy of a
//! fleet through a store — a JSON file (atomic writes, a lock file so several local proxies can
//! share it) or a DynamoDB table (one item per route, conditional writes on a version number so
//! two proxies cannot both flip a route from the same version). The config gives the start;
//! the store holds only changes. The control loop polls it and applies what changed; this
//! module only reads and writes it, and remembers which version of each route was applied.

use crate::config::{State as StateConfig, StateStoreKind};
use crate::mode::Mode;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// One route's stored state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteState {
    pub mode: String,
    pub percent: u8,
    pub version: u64,
    pub reason: String,
    pub updated_at: u64,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "another proxy changed `{route}` first (now at version {current}); look again and retry"
    )]
    Conflict { route: String, current: u64 },
    #[error("state store: {0}")]
    Failed(#[from] StoreError),
}

/// The state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("dynamodb table {table}: {why}")]
    Dynamo { table: String, why: String },
    #[error("{0}")]
    Task(String),
}

fn file_err(path: &std::path::Path, why: impl std::fmt::Display) -> StoreError {
    StoreError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

#[derive(Debug, Clone)]
pub enum Store {
    File(PathBuf),
    Dynamo {
        client: aws_sdk_dynamodb::Client,
        table: String,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct FileState {
    routes: BTreeMap<String, RouteState>,
}

fn lock_path(p: &std::path::Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn read_file(path: &std::path::Path) -> Result<FileState, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => Ok(FileState::default()),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| file_err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileState::default()),
        Err(e) => Err(file_err(path, e)),
    }
}

impl Store {
    /// Opens the configured store; DynamoDB tables are created if missing.
    pub async fn open(cfg: &StateConfig, base: &std::path::Path) -> Result<Store, StoreError> {
        match cfg.store {
            StateStoreKind::File => {
                let p = PathBuf::from(&cfg.path);
                Ok(Store::File(if p.is_absolute() { p } else { base.join(p) }))
            }
            StateStoreKind::Dynamodb => {
                let client =
                    crate::aws::dynamodb(cfg.region.as_deref(), cfg.endpoint.as_deref()).await;
                let store = Store::Dynamo {
                    client,
                    table: cfg.table.clone(),
                };
                store.ensure_table().await?;
                Ok(store)
            }
        }
    }

    async fn ensure_table(&self) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let Store::Dynamo { client, table } = self else {
            return Ok(());
        };
        let fail = |why: String| StoreError::Dynamo {
            table: table.clone(),
            why,
        };
        if client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        let created = client
            .create_table()
            .table_name(table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("route")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| fail(e.to_string()))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("route")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| fail(e.to_string()))?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another proxy created it at the same moment.
            Err(e) if format!("{e:?}").contains("ResourceInUse") => Ok(()),
            Err(e) => Err(fail(format!(
                "creating it: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            ))),
        }
    }

    /// Every stored route state.
    pub async fn load_all(&self) -> Result<BTreeMap<String, RouteState>, StoreError> {
        match self {
            Store::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path).map(|f| f.routes))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))?
            }
            Store::Dynamo { client, table } => {
                let mut out = BTreeMap::new();
                let mut start: Option<std::collections::HashMap<String, AttributeValue>> = None;
                loop {
                    let page = client
                        .scan()
                        .table_name(table)
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|e| StoreError::Dynamo {
                            table: table.clone(),
                            why: aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
                        })?;
                    for item in page.items() {
                        let s = |k: &str| match item.get(k) {
                            Some(AttributeValue::S(s)) => s.clone(),
                            _ => String::new(),
                        };
                        let n = |k: &str| match item.get(k) {
                            Some(AttributeValue::N(n)) => n.parse::<u64>().unwrap_or(0),
                            _ => 0,
                        };
                        out.insert(
                            s("route"),
                            RouteState {
                                mode: s("mode"),
                                percent: n("percent").min(100) as u8,
                                version: n("version"),
                                reason: s("reason"),
                                updated_at: n("updated_at"),
                            },
                        );
                    }
                    match page.last_evaluated_key() {
                        Some(k) if !k.is_empty() => start = Some(k.clone()),
                        _ => break,
                    }
                }
                Ok(out)
            }
        }
    }

    /// Writes a route's new mode if its stored version is still `expected` (0: never written).
    /// Returns the new version.
    pub async fn write(
        &self,
        route: &str,
        mode: Mode,
        percent: u8,
        reason: &str,
        expected: u64,
    ) -> Result<u64, WriteError> {
        let now = crate::stats::now_secs();
        let next = RouteState {
            mode: mode.as_str().into(),
            percent,
            version: expected + 1,
            reason: reason.into(),
            updated_at: now,
        };
        match self {
            Store::File(path) => {
                let path = path.clone();
                let route = route.to_string();
                tokio::task::spawn_blocking(move || write_file(&path, &route, next, expected))
                    .await
                    .map_err(|e| WriteError::Failed(StoreError::Task(e.to_string())))?
            }
            Store::Dynamo { client, table } => {
                let r = client
                    .put_item()
                    .table_name(table)
                    .item("route", AttributeValue::S(route.into()))
                    .item("mode", AttributeValue::S(next.mode.clone()))
                    .item("percent", AttributeValue::N(percent.to_string()))
                    .item("version", AttributeValue::N(next.version.to_string()))
                    .item(
                        "reason",
                        AttributeValue::S(if reason.is_empty() {
                            "-".into()
                        } else {
                            reason.into()
                        }),
                    )
                    .item("updated_at", AttributeValue::N(now.to_string()))
                    .condition_expression("attribute_not_exists(#r) OR #v = :expected")
                    .expression_attribute_names("#r", "route")
                    .expression_attribute_names("#v", "version")
                    .expression_attribute_values(
                        ":expected",
                        AttributeValue::N(expected.to_string()),
                    )
                    .send()
                    .await;
                match r {
                    Ok(_) => Ok(next.version),
                    Err(e) => {
                        let text = format!("{e:?}");
                        if text.contains("ConditionalCheckFailed") {
                            let current = self
                                .load_all()
                                .await
                                .ok()
                                .and_then(|m| m.get(route).map(|s| s.version))
                                .unwrap_or(0);
                            Err(WriteError::Conflict {
                                route: route.into(),
                                current,
                            })
                        } else {
                            Err(WriteError::Failed(StoreError::Dynamo {
                                table: table.clone(),
                                why: aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
                            }))
                        }
                    }
                }
            }
        }
    }
}

fn write_file(
    path: &std::path::Path,
    route: &str,
    next: RouteState,
    expected: u64,
) -> Result<u64, WriteError> {
    let fail = |e: std::io::Error| WriteError::Failed(file_err(path, e));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    // The lock file serialises read-modify-write between proxies on this machine; the
    // rename makes each write atomic for readers, who take no lock.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(path))
        .map_err(fail)?;
    lock.lock().map_err(fail)?;
    let mut state = read_file(path)?;
    let current = state.routes.get(route).map(|s| s.version).unwrap_or(0);
    if current != expected {
        return Err(WriteError::Conflict {
            route: route.into(),
            current,
        });
    }
    let version = next.version;
    state.routes.insert(route.to_string(), next);
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let bytes =
        serde_json::to_vec_pretty(&state).map_err(|e| WriteError::Failed(file_err(path, e)))?;
    std::fs::write(&tmp, bytes).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(version)
}

/// The fleet's store and the version of each route this proxy has applied.
pub struct Fleet {
    pub store: Store,
    versions: Mutex<HashMap<String, u64>>,
}

impl Fleet {
    pub fn new(store: Store) -> Fleet {
        Fleet {
            store,
            versions: Mutex::new(HashMap::new()),
        }
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        match self.versions.lock() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        }
    }

    /// The state-store version of a route this proxy has applied (0: none).
    pub fn version_of(&self, route: &str) -> u64 {
        self.versions().get(route).copied().unwrap_or(0)
    }

    pub fn set_version(&self, route: &str, v: u64) {
        self.versions().insert(route.to_string(), v);
    }

    /// The sum of every route's version: changes whenever any route's stored mode does.
    pub fn state_version(&self) -> u64 {
        self.versions().values().sum()
    }
}

/// A proxy's route windows as saved beside the state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedWindows {
    pub proxy: String,
    pub saved_at: u64,
    pub routes: BTreeMap<String, crate::stats::SavedWindow>,
}

/// Where a proxy's windows are saved: next to the state file, or in the `<table>_windows`
/// DynamoDB table (hash key `proxy`, range key `route`).
impl Store {
    fn windows_file(path: &std::path::Path, proxy: &str) -> PathBuf {
        let safe: String = proxy
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".windows.{safe}.json"));
        PathBuf::from(s)
    }

    fn windows_table(table: &str) -> String {
        format!("{table}_windows")
    }

    async fn ensure_windows_table(
        client: &aws_sdk_dynamodb::Client,
        table: &str,
    ) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        if client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        let fail = |why: String| StoreError::Dynamo {
            table: table.to_string(),
            why,
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| fail(e.to_string()))
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| fail(e.to_string()))
        };
        let created = client
            .create_table()
            .table_name(table)
            .attribute_definitions(attr("proxy")?)
            .attribute_definitions(attr("route")?)
            .key_schema(key("proxy", KeyType::Hash)?)
            .key_schema(key("route", KeyType::Range)?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if format!("{e:?}").contains("ResourceInUse") => Ok(()),
            Err(e) => Err(fail(format!(
                "creating it: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            ))),
        }
    }

    /// Saves a proxy's windows (replacing what it saved before).
    pub async fn save_windows(&self, w: &SavedWindows) -> Result<(), StoreError> {
        match self {
            Store::File(path) => {
                let file = Store::windows_file(path, &w.proxy);
                let bytes = serde_json::to_vec(w).map_err(|e| file_err(&file, e))?;
                tokio::task::spawn_blocking(move || {
                    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
                    std::fs::write(&tmp, bytes).map_err(|e| file_err(&tmp, e))?;
                    std::fs::rename(&tmp, &file).map_err(|e| file_err(&file, e))
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
            }
            Store::Dynamo { client, table } => {
                let table = Store::windows_table(table);
                Store::ensure_windows_table(client, &table).await?;
                for (route, window) in &w.routes {
                    let json = serde_json::to_string(window).map_err(|e| StoreError::Dynamo {
                        table: table.clone(),
                        why: e.to_string(),
                    })?;
                    client
                        .put_item()
                        .table_name(&table)
                        .item("proxy", AttributeValue::S(w.proxy.clone()))
                        .item("route", AttributeValue::S(route.clone()))
                        .item("window", AttributeValue::S(json))
                        .item("saved_at", AttributeValue::N(w.saved_at.to_string()))
                        .send()
                        .await
                        .map_err(|e| StoreError::Dynamo {
                            table: table.clone(),
                            why: aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
                        })?;
                }
                Ok(())
            }
        }
    }

    /// What a proxy saved (empty when it never did).
    pub async fn load_windows(&self, proxy: &str) -> Result<SavedWindows, StoreError> {
        match self {
            Store::File(path) => {
                let file = Store::windows_file(path, proxy);
                tokio::task::spawn_blocking(move || match std::fs::read(&file) {
                    Ok(b) => serde_json::from_slice(&b).map_err(|e| file_err(&file, e)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Ok(SavedWindows::default())
                    }
                    Err(e) => Err(file_err(&file, e)),
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
            }
            Store::Dynamo { client, table } => {
                let table = Store::windows_table(table);
                let fail = |why: String| StoreError::Dynamo {
                    table: table.clone(),
                    why,
                };
                if client
                    .describe_table()
                    .table_name(&table)
                    .send()
                    .await
                    .is_err()
                {
                    return Ok(SavedWindows::default());
                }
                let mut out = SavedWindows {
                    proxy: proxy.to_string(),
                    ..SavedWindows::default()
                };
                let mut start = None;
                loop {
                    let page = client
                        .query()
                        .table_name(&table)
                        .key_condition_expression("#p = :p")
                        .expression_attribute_names("#p", "proxy")
                        .expression_attribute_values(":p", AttributeValue::S(proxy.into()))
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|e| {
                            fail(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
                        })?;
                    for item in page.items() {
                        let (Some(AttributeValue::S(route)), Some(AttributeValue::S(json))) =
                            (item.get("route"), item.get("window"))
                        else {
                            continue;
                        };
                        if let Ok(w) = serde_json::from_str(json) {
                            out.routes.insert(route.clone(), w);
                        }
                    }
                    match page.last_evaluated_key() {
                        Some(k) if !k.is_empty() => start = Some(k.clone()),
                        _ => break,
                    }
                }
                Ok(out)
            }
        }
    }

    /// Whether the store can be used: the file's folder is there and writable; the DynamoDB
    /// table exists.
    pub async fn probe(&self) -> Result<(), StoreError> {
        match self {
            Store::File(path) => {
                let dir = path
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                let meta = std::fs::metadata(&dir).map_err(|e| file_err(&dir, e))?;
                if meta.permissions().readonly() {
                    return Err(file_err(&dir, "read-only folder"));
                }
                read_file(path).map(|_| ())
            }
            Store::Dynamo { client, table } => client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| StoreError::Dynamo {
                    table: table.clone(),
                    why: aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
                }),
        }
    }
}
