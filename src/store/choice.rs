//! Which stores a gateway keeps its state in, as chosen at start-up (`--store`).

use std::{fmt, str::FromStr, sync::Arc};

use crate::{error::ArcpError, ids::ReplicaId};

use super::{
    idempotency::redis::RedisIdempotencyStore,
    jobs::redis::RedisJobDirectory,
    log::{redis::RedisEventLog, LogLimits},
    redis::{Redis, RedisSettings},
    resume::redis::RedisResumeRegistry,
    session::redis::RedisSessionStore,
    Stores,
};

/// Where the state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// In this process: nothing to run beside it, and nothing survives it or is shared.
    Memory,
    /// In the Redis at this `redis://` or `rediss://` URL, shared by every replica using it.
    Redis(String),
}

impl FromStr for StoreChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            Ok(StoreChoice::Memory)
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(StoreChoice::Redis(s.to_owned()))
        } else {
            Err("expected `memory`, `redis://HOST:PORT/DB` or `rediss://HOST:PORT/DB`".into())
        }
    }
}

impl fmt::Debug for StoreChoice {
    /// Without the URL's password, which may be in it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreChoice::Memory => f.write_str("memory"),
            StoreChoice::Redis(url) => match url.rsplit_once('@') {
                Some((_, host)) => write!(f, "redis (…@{host})"),
                None => write!(f, "redis ({url})"),
            },
        }
    }
}

impl Stores {
    /// The stores `choice` names, for replica `replica`, with logs within `limits`; Redis keys
    /// start with `prefix`, and Redis outages are ridden out as `settings` say. Connects on
    /// first use, so this fails only on a malformed address.
    pub fn open(
        choice: &StoreChoice,
        prefix: &str,
        settings: RedisSettings,
        replica: &ReplicaId,
        limits: LogLimits,
    ) -> Result<Stores, ArcpError> {
        let memory = Stores::memory_with_limits(limits);
        match choice {
            StoreChoice::Memory => Ok(memory),
            StoreChoice::Redis(url) => {
                let redis = Redis::open_with(url, prefix, settings)?;
                Ok(memory.in_redis(&redis, replica, limits))
            }
        }
    }

    /// These stores with every kind that has a Redis implementation replaced by it, in
    /// `redis`, as replica `replica` uses them, with event logs within `limits`; their health
    /// is whether `redis` answers.
    pub fn in_redis(self, redis: &Redis, replica: &ReplicaId, limits: LogLimits) -> Stores {
        // Every kind has one now, so none of these is kept; a kind added without one would be.
        drop(self);
        Stores {
            sessions: Arc::new(RedisSessionStore::new(redis)),
            resume: Arc::new(RedisResumeRegistry::new(redis)),
            logs: Arc::new(RedisEventLog::new(redis, limits)),
            idempotency: Arc::new(RedisIdempotencyStore::new(redis)),
            jobs: Arc::new(RedisJobDirectory::new(redis, replica.clone())),
            health: Some(Arc::new(redis.clone())),
        }
    }
}
