//! phpredis' session layout: `<prefix><id>` holds the serializer's bytes, written with `SETEX`;
//! with `redis.session.locking_enabled` PHP holds `<prefix><id>_LOCK` for the request and deletes
//! it after its write.

use crate::store::{Lookup, StoreError};
use std::time::{Duration, Instant};

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed {
        store: "redis",
        message: e.to_string(),
    }
}

/// A phpredis session store. Cheap to clone: clones share one multiplexed connection.
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
    /// A store for `url` (`redis://host:port/db`) and key `prefix` (phpredis' default is
    /// `PHPREDIS_SESSION:`). Connects on first use.
    pub fn open(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            client: redis::Client::open(url).map_err(failed)?,
            conn: std::sync::Arc::new(tokio::sync::Mutex::new(None)),
            prefix: prefix.to_string(),
        })
    }

    /// The same server and connection, another key prefix (a twin's copy of the sessions).
    pub fn with_prefix(&self, prefix: &str) -> RedisStore {
        RedisStore {
            client: self.client.clone(),
            conn: self.conn.clone(),
            prefix: prefix.to_string(),
        }
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
            .map_err(failed)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets a broken connection so the next call reconnects.
    async fn reset(&self) {
        *self.conn.lock().await = None;
    }

    fn key(&self, id: &str) -> Result<String, StoreError> {
        if crate::cookie::valid_session_id(id).as_deref() != Some(id) {
            return Err(StoreError::InvalidId);
        }
        Ok(format!("{}{id}", self.prefix))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut c = self.connection().await?;
        match cmd.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.reset().await;
                Err(failed(e))
            }
        }
    }

    /// `PING`: the server answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(failed(format!("PING answered {pong}")))
        }
    }

    /// Reads a session without taking PHP's lock.
    pub async fn load(&self, id: &str) -> Result<Lookup, StoreError> {
        let key = self.key(id)?;
        let got: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&key)).await?;
        Ok(match got {
            Some(v) => Lookup::Found(v),
            None => Lookup::Absent,
        })
    }

    /// Reads a session once PHP's lock key (`<key>_LOCK`, with phpredis session locking) is
    /// gone, waiting at most `wait`: then PHP's write at the end of its request is done.
    pub async fn load_after_lock(&self, id: &str, wait: Duration) -> Result<Lookup, StoreError> {
        let key = self.key(id)?;
        let lock = format!("{key}_LOCK");
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let locked: bool = self.query(redis::cmd("EXISTS").arg(&lock)).await?;
            if !locked {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Locked {
                    store: "redis",
                    waited: wait,
                });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        self.load(id).await
    }

    /// Writes a session as phpredis does (`SETEX` with `lifetime`, PHP's gc_maxlifetime).
    pub async fn save(&self, id: &str, data: &[u8], lifetime: Duration) -> Result<(), StoreError> {
        let key = self.key(id)?;
        self.query::<()>(
            redis::cmd("SETEX")
                .arg(&key)
                .arg(lifetime.as_secs().max(1))
                .arg(data),
        )
        .await
    }

    /// Deletes a session (`session_destroy()`).
    pub async fn destroy(&self, id: &str) -> Result<(), StoreError> {
        let key = self.key(id)?;
        self.query::<()>(redis::cmd("DEL").arg(&key)).await
    }
}
