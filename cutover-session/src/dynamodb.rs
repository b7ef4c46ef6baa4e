//! aws-sdk-php's `DynamoDb\SessionHandler` item layout: hash key `<session_name>_<id>`, `data`
//! (S, or B) the serializer's bytes, `expires` (N) epoch seconds; with its locking on, `lock` is
//! set while a request runs and removed by the write. Reads are consistent `GetItem`s that never
//! touch `lock`; writes are `UpdateItem`s as `StandardSessionConnection::write` makes them.

use crate::store::{Lookup, StoreError};
use aws_sdk_dynamodb::types::AttributeValue;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed {
        store: "dynamodb",
        message: e.to_string(),
    }
}

fn sdk_failed<E: std::error::Error>(e: E) -> StoreError {
    failed(aws_sdk_dynamodb::error::DisplayErrorContext(e))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Where sessions live in the table.
#[derive(Debug, Clone)]
pub struct Layout {
    pub table: String,
    /// aws-sdk-php's `hash_key`, default `id`.
    pub hash_key: String,
    /// aws-sdk-php's `data_attribute`, default `data`.
    pub data_attribute: String,
    /// `session_name()`: the key is `<session_name>_<id>`.
    pub session_name: String,
}

/// A DynamoDB session store.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    layout: Layout,
    /// Write `data` as `B` instead of `S` (aws-sdk-php's `data_attribute_type = binary`).
    pub binary: bool,
}

/// What one read of an item gave.
struct Item {
    lookup: Lookup,
    locked: bool,
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, layout: Layout) -> DynamoStore {
        DynamoStore {
            client,
            layout,
            binary: false,
        }
    }

    /// The same client and layout in another table (a twin's copy of the sessions).
    pub fn with_table(&self, table: &str) -> DynamoStore {
        let mut layout = self.layout.clone();
        layout.table = table.to_string();
        DynamoStore {
            client: self.client.clone(),
            layout,
            binary: self.binary,
        }
    }

    pub fn client(&self) -> &aws_sdk_dynamodb::Client {
        &self.client
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn key(&self, id: &str) -> Result<AttributeValue, StoreError> {
        if crate::cookie::valid_session_id(id).as_deref() != Some(id) {
            return Err(StoreError::InvalidId);
        }
        Ok(AttributeValue::S(format!(
            "{}_{id}",
            self.layout.session_name
        )))
    }

    /// The table exists and its hash key is the layout's, as a string.
    pub async fn check_table(&self) -> Result<(), StoreError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.layout.table)
            .send()
            .await
            .map_err(sdk_failed)?;
        let table = out
            .table()
            .ok_or_else(|| failed(format!("table {} not described", self.layout.table)))?;
        let hash = table
            .key_schema()
            .iter()
            .find(|k| k.key_type() == &aws_sdk_dynamodb::types::KeyType::Hash)
            .map(|k| k.attribute_name().to_string());
        if hash.as_deref() != Some(self.layout.hash_key.as_str()) {
            return Err(failed(format!(
                "table {}: hash key is {}, not {}",
                self.layout.table,
                hash.as_deref().unwrap_or("missing"),
                self.layout.hash_key
            )));
        }
        Ok(())
    }

    async fn read(&self, id: &str) -> Result<Item, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.layout.table)
            .key(&self.layout.hash_key, self.key(id)?)
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_failed)?;
        let Some(item) = out.item else {
            return Ok(Item {
                lookup: Lookup::Absent,
                locked: false,
            });
        };
        let expires = match item.get("expires") {
            Some(AttributeValue::N(n)) => n.parse::<f64>().ok().map(|x| x as i64),
            _ => None,
        };
        let data = match item.get(&self.layout.data_attribute) {
            Some(AttributeValue::S(s)) => Some(s.as_bytes().to_vec()),
            Some(AttributeValue::B(b)) => Some(b.as_ref().to_vec()),
            _ => None,
        };
        let lookup = match (data, expires) {
            (Some(d), Some(e)) if e > now_secs() => Lookup::Found(d),
            (Some(_), Some(_)) => Lookup::Expired,
            // Without `data` or `expires` aws-sdk-php's read returns '' — no session.
            _ => Lookup::Absent,
        };
        Ok(Item {
            lookup,
            locked: item.contains_key("lock"),
        })
    }

    /// Reads a session (consistent, never touching `lock`).
    pub async fn load(&self, id: &str) -> Result<Lookup, StoreError> {
        Ok(self.read(id).await?.lookup)
    }

    /// Reads a session once its `lock` attribute (aws-sdk-php's locking) is gone, waiting at
    /// most `wait`: then PHP's write at the end of its request is done.
    pub async fn load_after_lock(&self, id: &str, wait: Duration) -> Result<Lookup, StoreError> {
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let item = self.read(id).await?;
            if !item.locked {
                return Ok(item.lookup);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Locked {
                    store: "dynamodb",
                    waited: wait,
                });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Writes a session as `StandardSessionConnection::write` does: set `expires`, set `data`
    /// (removed when empty), remove `lock`. `lifetime` is PHP's `session.gc_maxlifetime`.
    pub async fn save(&self, id: &str, data: &[u8], lifetime: Duration) -> Result<(), StoreError> {
        let expires = now_secs() + lifetime.as_secs() as i64;
        let mut req = self
            .client
            .update_item()
            .table_name(&self.layout.table)
            .key(&self.layout.hash_key, self.key(id)?)
            .expression_attribute_names("#e", "expires")
            .expression_attribute_names("#l", "lock")
            .expression_attribute_names("#d", &self.layout.data_attribute)
            .expression_attribute_values(":e", AttributeValue::N(expires.to_string()));
        if data.is_empty() {
            req = req.update_expression("SET #e = :e REMOVE #l, #d");
        } else {
            let blob = || AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(data.to_vec()));
            let value = if self.binary {
                blob()
            } else {
                // S must be UTF-8; PHP strings need not be. Those are stored as B.
                std::str::from_utf8(data)
                    .map(|s| AttributeValue::S(s.to_string()))
                    .unwrap_or_else(|_| blob())
            };
            req = req
                .update_expression("SET #e = :e, #d = :d REMOVE #l")
                .expression_attribute_values(":d", value);
        }
        req.send().await.map(|_| ()).map_err(sdk_failed)
    }

    /// Deletes a session (`session_destroy()`).
    pub async fn destroy(&self, id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.layout.table)
            .key(&self.layout.hash_key, self.key(id)?)
            .send()
            .await
            .map(|_| ())
            .map_err(sdk_failed)
    }
}
