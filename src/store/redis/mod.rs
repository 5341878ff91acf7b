//! What the Redis stores share: one [`Redis`] per replica, holding a multiplexed connection
//! made on first use (so that building a gateway needs no Redis yet) that then reconnects by
//! itself, the [`notify::Notifier`] the stores listen to each other's changes on, the prefix
//! every key starts with, and the [`probe::Probe`] that tells gRPC health whether Redis
//! answers; and how Redis reaches a client when it fails.
//!
//! # When Redis is in trouble
//!
//! Every connection times out (see `config.rs`), so a call against a Redis that is
//! down, stopped or cut off fails within about three seconds, with a retryable
//! `INTERNAL_ERROR` naming the store ([`RedisConnection::unavailable`]), rather than holding
//! its caller for ever. A call that timed out may still have been applied (its command was
//! sent; only the answer is missing): every change is one script, so it was applied whole or
//! not at all, and the event log's appends, which its committer tries again, are numbered so
//! that a second try is not applied twice (see `store::log::redis`). For how long those are
//! tried again, see [`RedisSettings::append_retry`].

mod config;
pub(crate) mod connection;
pub(crate) mod notify;
mod probe;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ::redis::{
    aio::ConnectionManager,
    cluster::{ClusterClient, ClusterClientBuilder},
    Client, ErrorKind, FromRedisValue, Pipeline, RedisError, Script, ServerErrorKind, Value,
};
use async_trait::async_trait;
use tokio::sync::{watch, OnceCell};

use crate::{
    error::ArcpError,
    ids::ReplicaId,
    store::health::{Reachability, StoreHealth},
};

pub(crate) use self::connection::Connection;
use self::{
    config::{cluster_config, connection_config},
    notify::Notifier,
    probe::{Probe, Target},
};

/// How a replica rides out a Redis that does not answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RedisSettings {
    /// How long the event log's committer keeps trying a batch of appends Redis does not
    /// answer, counted from the first failure of the outage (see `store::log::redis`). Within
    /// it a short outage costs a job nothing but time; past it appends fail, so jobs end with
    /// a retryable `INTERNAL_ERROR` (the frames that end jobs are still tried until Redis
    /// answers). The sessions' streams wait as long for their logs
    /// ([`GatewayConfig::store_retry`](crate::config::GatewayConfig::store_retry)).
    pub append_retry: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            append_retry: Duration::from_secs(10),
        }
    }
}

/// One Redis server (or primary), or one Redis Cluster, as every Redis store of one replica
/// reaches it.
#[derive(Clone)]
pub struct Redis(Arc<Shared>);

/// What the stores' commands go to.
// One per process, never moved: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Single(Client),
    Cluster(ClusterClient),
}

struct Shared {
    backend: Backend,
    connection: OnceCell<Connection>,
    notifier: Arc<Notifier>,
    prefix: String,
    settings: RedisSettings,
    probe: Probe,
}

impl Shared {
    /// The connection, made on first use.
    async fn connection(&self) -> Result<Connection, RedisError> {
        self.connection
            .get_or_try_init(|| async {
                Ok(match &self.backend {
                    Backend::Single(client) => Connection::Single(
                        ConnectionManager::new_with_config(client.clone(), connection_config())
                            .await?,
                    ),
                    Backend::Cluster(client) => {
                        Connection::Cluster(client.get_async_connection().await?)
                    }
                })
            })
            .await
            .cloned()
    }
}

impl Redis {
    /// The Redis at `url` (`redis://HOST:PORT/DB`, or `rediss://` for TLS), or the Redis
    /// Cluster whose nodes (some of them: the rest are found) `redis-cluster://HOST:PORT,...`
    /// names (`rediss-cluster://` for TLS), with every key under `prefix`, so that several
    /// deployments (or test runs) can share one server. Connects on first use.
    pub fn open(url: &str, prefix: &str) -> Result<Redis, ArcpError> {
        Redis::open_with(url, prefix, RedisSettings::default())
    }

    /// [`Redis::open`], riding out outages as `settings` say.
    pub fn open_with(url: &str, prefix: &str, settings: RedisSettings) -> Result<Redis, ArcpError> {
        let bad = |e: RedisError| ArcpError::InvalidRequest(format!("redis address: {e}"));
        let (backend, notified) = match cluster_nodes(url) {
            Some(nodes) => {
                let client = cluster_config(ClusterClientBuilder::new(nodes.clone()))
                    .build()
                    .map_err(bad)?;
                // Pub/sub reaches every node of a Cluster: one node carries every channel.
                (Backend::Cluster(client), Client::open(nodes[0].as_str()))
            }
            None => {
                let client = Client::open(url).map_err(bad)?;
                (Backend::Single(client.clone()), Ok(client))
            }
        };
        let notifier = Notifier::new(&notified.map_err(bad)?).map_err(bad)?;
        Ok(Redis(Arc::new(Shared {
            backend,
            connection: OnceCell::new(),
            notifier: Arc::new(notifier),
            prefix: prefix.to_owned(),
            settings,
            probe: Probe::new(),
        })))
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.0.prefix
    }

    /// How this replica rides out outages.
    pub fn settings(&self) -> &RedisSettings {
        &self.0.settings
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

#[async_trait]
impl Target for Shared {
    async fn ping(&self) -> Result<(), String> {
        let mut conn = self.connection().await.map_err(|e| e.to_string())?;
        let _: Value = ::redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn ping_notifier(&self) {
        let _ = self.notifier.ping().await;
    }

    fn probe(&self) -> &Probe {
        &self.probe
    }
}

impl StoreHealth for Redis {
    fn watch(&self) -> watch::Receiver<Reachability> {
        self.0.probe.watch(&self.0)
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
    pub(crate) async fn get(&self) -> Result<Connection, ArcpError> {
        self.redis
            .0
            .connection()
            .await
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

    /// A Redis failure, as the retryable error a client may try again after; the probe looks
    /// at Redis at once, so that health reflects an outage as soon as a call meets it.
    pub(crate) fn unavailable(&self, e: RedisError) -> ArcpError {
        self.redis.0.probe.nudge();
        ArcpError::Internal(format!("the {} is unavailable: {e}", self.store))
    }
}

/// Whether `e` says that Redis did not take the call, for now: no answer (a connection that
/// failed or timed out; the call may have been applied all the same), or an answer that it
/// cannot serve yet (loading its data after a restart, a failover under way). Trying again
/// later may succeed; any other error would come back the same.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
            )
        )
        // A script that runs past Redis's busy limit holds every other call up.
        || e.code() == Some("BUSY")
}

/// The node addresses of a `redis-cluster://` or `rediss-cluster://` URL, as `redis://` or
/// `rediss://` URLs; `None` for any other URL.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, nodes) = url.split_once("://")?;
    let scheme = scheme.strip_suffix("-cluster")?;
    let nodes = nodes.split('/').next().unwrap_or_default();
    Some(
        nodes
            .split(',')
            .filter(|node| !node.is_empty())
            .map(|node| format!("{scheme}://{node}"))
            .collect(),
    )
    .filter(|nodes: &Vec<String>| !nodes.is_empty())
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
    conn: &mut Connection,
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
