//! What the Redis stores share: a connection made on first use, so that building a gateway
//! needs no Redis yet, which then reconnects by itself; and how Redis reaches a client when it
//! fails.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::{aio::ConnectionManager, Client, RedisError};
use tokio::sync::OnceCell;

use crate::error::ArcpError;

/// A multiplexed connection to one Redis, shared by a store's calls.
pub(crate) struct RedisConnection {
    client: Client,
    connection: OnceCell<ConnectionManager>,
    /// The store, as its errors name it.
    store: &'static str,
}

impl RedisConnection {
    /// A connection to the Redis at `url` (`redis://HOST:PORT/DB`) for `store`.
    pub(crate) fn open(url: &str, store: &'static str) -> Result<Self, ArcpError> {
        let client = Client::open(url)
            .map_err(|e| ArcpError::InvalidRequest(format!("{store} address: {e}")))?;
        Ok(RedisConnection {
            client,
            connection: OnceCell::new(),
            store,
        })
    }

    /// The connection, made on first use.
    pub(crate) async fn get(&self) -> Result<ConnectionManager, ArcpError> {
        self.connection
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
            .await
            .cloned()
            .map_err(|e| self.unavailable(e))
    }

    /// A Redis failure, as the retryable error a client may try again after.
    pub(crate) fn unavailable(&self, e: RedisError) -> ArcpError {
        ArcpError::Internal(format!("the {} is unavailable: {e}", self.store))
    }
}

/// `at` as whole milliseconds since the Unix epoch, as the stores keep times in Redis.
pub(crate) fn unix_millis(at: SystemTime) -> u64 {
    millis(at.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Whole milliseconds, as Redis takes durations.
pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
