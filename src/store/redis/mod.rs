//! What the Redis stores share: one [`Redis`] per replica, holding a multiplexed connection
//! made on first use (so that building a gateway needs no Redis yet) that then reconnects by
//! itself, the [`notify::Notifier`] the stores listen to each other's changes on, and the
//! prefix every key starts with; and how Redis reaches a client when it fails.

pub(crate) mod notify;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ::redis::{aio::ConnectionManager, Client, FromRedisValue, Pipeline, RedisError, Script};
use tokio::sync::OnceCell;

use crate::{error::ArcpError, ids::ReplicaId};

use self::notify::Notifier;

/// One Redis server (or primary), as every Redis store of one replica reaches it.
#[derive(Clone)]
pub struct Redis(Arc<Shared>);

struct Shared {
    client: Client,
    connection: OnceCell<ConnectionManager>,
    notifier: Arc<Notifier>,
    prefix: String,
}

impl Redis {
    /// The Redis at `url` (`redis://HOST:PORT/DB`, or `rediss://` for TLS), with every key
    /// under `prefix`, so that several deployments (or test runs) can share one server.
    /// Connects on first use.
    pub fn open(url: &str, prefix: &str) -> Result<Redis, ArcpError> {
        let bad = |e: RedisError| ArcpError::InvalidRequest(format!("redis address: {e}"));
        let client = Client::open(url).map_err(bad)?;
        let notifier = Notifier::new(&client).map_err(bad)?;
        Ok(Redis(Arc::new(Shared {
            client,
            connection: OnceCell::new(),
            notifier: Arc::new(notifier),
            prefix: prefix.to_owned(),
        })))
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.0.prefix
    }

    /// The connection as `store` uses it, naming itself in its errors.
    pub(crate) fn for_store(&self, store: &'static str) -> RedisConnection {
        RedisConnection {
            redis: self.clone(),
            store,
        }
    }

    /// The channels this replica listens on.
    pub(crate) fn notifier(&self) -> &Arc<Notifier> {
        &self.0.notifier
    }
}

/// The shared connection, as one store uses it.
pub(crate) struct RedisConnection {
    redis: Redis,
    /// The store, as its errors name it.
    store: &'static str,
}

impl RedisConnection {
    /// The connection, made on first use.
    pub(crate) async fn get(&self) -> Result<ConnectionManager, ArcpError> {
        let shared = &self.redis.0;
        shared
            .connection
            .get_or_try_init(|| ConnectionManager::new(shared.client.clone()))
            .await
            .cloned()
            .map_err(|e| self.unavailable(e))
    }

    /// The prefix of every key.
    pub(crate) fn prefix(&self) -> &str {
        self.redis.prefix()
    }

    /// The channels this replica listens on.
    pub(crate) fn notifier(&self) -> &Arc<Notifier> {
        self.redis.notifier()
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

/// The key of kind `kind` that one replica's state keeps under the hash tag
/// `{replica:REPLICA}`: its lease (`store::replicas::redis`), its running jobs and pending
/// cancels (`store::jobs::redis`), the sessions it attached (`store::session::redis`). On a
/// Redis Cluster they share a slot, so a script on one may check another.
pub(crate) fn replica_key(prefix: &str, replica: &ReplicaId, kind: &str) -> String {
    format!("{prefix}:{{replica:{replica}}}:{kind}")
}

/// Runs `pipe`, whose scripts called by hash are among `scripts`, loading them and trying
/// again if Redis did not have one (after a restart, a failover, a `SCRIPT FLUSH`): unlike a
/// script called alone, a pipelined one is not loaded on demand. A refused script has no
/// effect, but the rest of the pipeline ran, and the retry sends it all again: so the scripts
/// a pipeline calls by hash must all be one script (which Redis has or has not) unless they
/// are idempotent, and every other command must be idempotent (a plain one, or an `EVAL` of
/// an idempotent script).
pub(crate) async fn query_loading<T: FromRedisValue>(
    conn: &mut ConnectionManager,
    pipe: &Pipeline,
    scripts: &[&Script],
) -> ::redis::RedisResult<T> {
    match pipe.query_async(conn).await {
        Err(e) if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) => {
            for script in scripts {
                script.load_async(conn).await?;
            }
            pipe.query_async(conn).await
        }
        other => other,
    }
}
