//! Fleet state: the route modes that promote and rollback changed, shared by every proxy of a
//! fleet through a store — a JSON file (atomic writes, a lock file so several local proxies can
//! share it) or a DynamoDB table (one item per route, conditional writes on a version number so
//! two proxies cannot both flip a route from the same version). The config gives the start;
//! the store holds only changes. Every proxy polls it and applies what changed.

use crate::config::{Mode, State as StateConfig, StateStoreKind};
use crate::proxy::App;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

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
    Failed(String),
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

fn read_file(path: &std::path::Path) -> Result<FileState, String> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => Ok(FileState::default()),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileState::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

impl Store {
    /// Opens the configured store; DynamoDB tables are created if missing.
    pub async fn open(cfg: &StateConfig, base: &std::path::Path) -> Result<Store, String> {
        match cfg.store {
            StateStoreKind::File => {
                let p = PathBuf::from(&cfg.path);
                Ok(Store::File(if p.is_absolute() { p } else { base.join(p) }))
            }
            StateStoreKind::Dynamodb => {
                let sdk = crate::session::store::aws_config(
                    cfg.region.as_deref(),
                    cfg.endpoint.as_deref(),
                )
                .await;
                let client = aws_sdk_dynamodb::Client::new(&sdk);
                let store = Store::Dynamo {
                    client,
                    table: cfg.table.clone(),
                };
                store.ensure_table().await?;
                Ok(store)
            }
        }
    }

    async fn ensure_table(&self) -> Result<(), String> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let Store::Dynamo { client, table } = self else {
            return Ok(());
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
                    .map_err(|e| e.to_string())?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("route")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another proxy created it at the same moment.
            Err(e) if format!("{e:?}").contains("ResourceInUse") => Ok(()),
            Err(e) => Err(format!(
                "creating table {table}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            )),
        }
    }

    /// Every stored route state.
    pub async fn load_all(&self) -> Result<BTreeMap<String, RouteState>, String> {
        match self {
            Store::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path).map(|f| f.routes))
                    .await
                    .map_err(|e| e.to_string())?
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
                        .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
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
                    .map_err(|e| WriteError::Failed(e.to_string()))?
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
                            Err(WriteError::Failed(
                                aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
                            ))
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
    let fail = |e: String| WriteError::Failed(e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    // The lock file serialises read-modify-write between proxies on this machine; the
    // rename makes each write atomic for readers, who take no lock.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(path))
        .map_err(|e| fail(e.to_string()))?;
    lock.lock().map_err(|e| fail(e.to_string()))?;
    let mut state = read_file(path).map_err(fail)?;
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
    let bytes = serde_json::to_vec_pretty(&state).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))?;
    Ok(version)
}

/// Records a mode change in the shared store (a no-op without `[state]`), conditional on the
/// version this proxy last saw.
pub async fn record(
    app: &App,
    route: &str,
    mode: Mode,
    percent: u8,
    reason: &str,
) -> Result<(), String> {
    let Some(store) = &app.state else {
        return Ok(());
    };
    let expected = app.state_version_of(route);
    match store.write(route, mode, percent, reason, expected).await {
        Ok(v) => {
            app.set_state_version(route, v);
            Ok(())
        }
        Err(e) => {
            // Pick up what the other proxy wrote, so the next attempt starts from it.
            let _ = poll_once(app).await;
            Err(e.to_string())
        }
    }
}

/// Applies every stored state newer than what this proxy has.
pub async fn poll_once(app: &App) -> Result<usize, String> {
    let Some(store) = &app.state else {
        return Ok(0);
    };
    let all = store.load_all().await?;
    let mut applied = 0;
    for (route, s) in all {
        if s.version <= app.state_version_of(&route) {
            continue;
        }
        let Some(mode) = Mode::parse(&s.mode) else {
            continue;
        };
        app.set_state_version(&route, s.version);
        if let Some(e) = app.routes.by_label(&route) {
            if e.mode() != mode || e.percent() != s.percent {
                crate::control::apply_mode(app, &e, mode, s.percent);
                app.events.push(crate::control::Event {
                    at: crate::stats::now_secs(),
                    kind: "state_applied".into(),
                    route: Some(route.clone()),
                    reason: format!("version {} from the state store: {}", s.version, s.reason),
                    mode: Some(mode.as_str()),
                    percent: Some(s.percent),
                    verdict: None,
                });
                applied += 1;
            }
        }
    }
    Ok(applied)
}

/// Polls the store every `poll_ms` until `stop` changes.
pub async fn poll_loop(
    app: std::sync::Arc<App>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                if let Err(e) = poll_once(&app).await {
                    tracing::warn!(error = %e, "state store poll failed; keeping the current modes");
                }
            }
            _ = stop.changed() => break,
        }
    }
}
