//! Everything a replica must share with the others about sessions and jobs, behind one trait
//! per kind of state, each with an embedded in-memory implementation:
//!
//! - [`session`]: session records (principal, features, attachment epoch, flow state).
//! - [`resume`]: the resume-token registry, fenced by attachment epoch.
//! - [`log`]: each session's event log, the single source of what a stream delivers.
//! - [`jobs`]: the job directory: lookups, listing, and cancel and subscribe by id.
//! - [`idempotency`]: idempotency keys with an atomic claim (§7.2).
//! - [`replicas`]: which replicas sharing the stores are alive, and who takes over a lost one.
//! - [`credentials`]: the ledger of provisioned credentials not yet revoked (§9.8.2, §14).
//! - [`caps`]: the error every store answers a request over one of its caps with.
//! - [`health`]: whether a shared store answers, for gRPC health.
//!
//! The session and job code reach state only through these traits, so a store shared between
//! replicas can stand in for the memory ones. Their contract (what every implementation must
//! do, including when its calls suspend or are cancelled) is tested generically in
//! `tests/store_contract.rs`.

pub mod caps;
mod choice;
pub mod credentials;
pub mod health;
pub mod idempotency;
pub mod jobs;
pub mod log;
pub mod redis;
pub mod replicas;
pub mod resume;
pub mod session;
pub mod timed;

use std::sync::Arc;

pub use self::choice::StoreChoice;

use self::{
    credentials::{memory::MemoryCredentialLedger, redis::RedisCredentialLedger, CredentialLedger},
    health::StoreHealth,
    idempotency::{memory::MemoryIdempotencyStore, redis::RedisIdempotencyStore, IdempotencyStore},
    jobs::{memory::MemoryJobDirectory, redis::RedisJobDirectory, JobDirectory},
    log::{memory::MemoryEventLog, redis::RedisEventLog, EventLog, LogLimits},
    redis::{Redis, RedisSettings},
    replicas::{memory::MemoryReplicas, redis::RedisReplicaRegistry, ReplicaRegistry},
    resume::{memory::MemoryResumeRegistry, redis::RedisResumeRegistry, ResumeRegistry},
    session::{memory::MemorySessionStore, redis::RedisSessionStore, SessionStore},
    timed::{TimedResume, TimedSessions},
};
use crate::{
    error::ArcpError,
    ids::{ReplicaId, ReplicaInstance},
    metrics::store_latency::Store,
};

/// One of each store.
#[derive(Clone)]
pub struct Stores {
    /// Session records.
    pub sessions: Arc<dyn SessionStore>,
    /// The resume-token registry.
    pub resume: Arc<dyn ResumeRegistry>,
    /// Sessions' event logs.
    pub logs: Arc<dyn EventLog>,
    /// The job directory.
    pub jobs: Arc<dyn JobDirectory>,
    /// Idempotency keys.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// The replicas sharing these stores, and this one among them.
    pub replicas: Arc<dyn ReplicaRegistry>,
    /// Whether the stores answer, if they can fail to: `None` for stores in this process,
    /// which always do.
    pub health: Option<Arc<dyn StoreHealth>>,
    /// The provisioned credentials not yet revoked.
    pub credentials: Arc<dyn CredentialLedger>,
}

impl Stores {
    /// The embedded stores, with event logs bounded to `max_log_frames` frames each.
    pub fn memory(max_log_frames: usize) -> Stores {
        MemoryStores::new(max_log_frames).stores()
    }

    /// The embedded stores, with event logs within `limits`.
    pub fn memory_with_limits(limits: LogLimits) -> Stores {
        MemoryStores::with_limits(limits).stores()
    }
}

/// The embedded stores, by their own types, for callers that inspect them.
#[derive(Clone)]
pub struct MemoryStores {
    /// Session records.
    pub sessions: Arc<MemorySessionStore>,
    /// The resume-token registry.
    pub resume: Arc<MemoryResumeRegistry>,
    /// Sessions' event logs.
    pub logs: Arc<MemoryEventLog>,
    /// The job directory.
    pub jobs: Arc<MemoryJobDirectory>,
    /// Idempotency keys.
    pub idempotency: Arc<MemoryIdempotencyStore>,
    /// The one replica.
    pub replicas: Arc<MemoryReplicas>,
    /// The provisioned credentials not yet revoked.
    pub credentials: Arc<MemoryCredentialLedger>,
}

impl MemoryStores {
    /// Empty stores, with event logs bounded to `max_log_frames` frames each and in nothing
    /// else.
    pub fn new(max_log_frames: usize) -> MemoryStores {
        MemoryStores::with_limits(LogLimits::frames(max_log_frames))
    }

    /// Empty stores, with event logs within `limits`.
    pub fn with_limits(limits: LogLimits) -> MemoryStores {
        let replicas = Arc::new(MemoryReplicas::default());
        MemoryStores {
            sessions: Arc::new(MemorySessionStore::new()),
            resume: Arc::new(MemoryResumeRegistry::new()),
            logs: Arc::new(MemoryEventLog::with_limits(limits)),
            jobs: Arc::new(MemoryJobDirectory::new()),
            idempotency: Arc::new(MemoryIdempotencyStore::new()),
            credentials: Arc::new(MemoryCredentialLedger::new(replicas.instance().clone())),
            replicas,
        }
    }

    /// The same stores, as the traits the gateway takes.
    pub fn stores(&self) -> Stores {
        Stores {
            sessions: self.sessions.clone(),
            resume: self.resume.clone(),
            logs: self.logs.clone(),
            jobs: self.jobs.clone(),
            idempotency: self.idempotency.clone(),
            replicas: self.replicas.clone(),
            health: None,
            credentials: self.credentials.clone(),
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
        let (kind, stores) = match choice {
            StoreChoice::Memory => (Store::Memory, Stores::memory_with_limits(limits)),
            StoreChoice::Redis(url) => {
                let redis = Redis::open_with(url, prefix, settings)?;
                (Store::Redis, Stores::redis(&redis, replica, limits))
            }
        };
        Ok(stores.timed(kind))
    }

    /// These stores with their session and resume operations timed, as `kind`, in the store
    /// latency metrics ([`timed`]); the event logs time themselves.
    pub fn timed(self, kind: Store) -> Stores {
        Stores {
            sessions: Arc::new(TimedSessions::new(kind, self.sessions)),
            resume: Arc::new(TimedResume::new(kind, self.resume)),
            ..self
        }
    }

    /// Every store in `redis`, as replica `replica` uses them, with event logs within
    /// `limits`. They are one new instance of the replica ([`ReplicaInstance::start`]): what
    /// they write names it, and the registry ([`Stores::replicas`]) keeps its lease. Their
    /// health is whether `redis` answers.
    pub fn redis(redis: &Redis, replica: &ReplicaId, limits: LogLimits) -> Stores {
        let instance = ReplicaInstance::start(replica.clone());
        Stores {
            sessions: Arc::new(RedisSessionStore::new(redis, instance.clone())),
            resume: Arc::new(RedisResumeRegistry::new(redis)),
            logs: Arc::new(RedisEventLog::new(redis, limits, &instance)),
            idempotency: Arc::new(RedisIdempotencyStore::new(redis)),
            jobs: Arc::new(RedisJobDirectory::new(redis, instance.clone())),
            credentials: Arc::new(RedisCredentialLedger::new(redis, instance.clone())),
            replicas: Arc::new(RedisReplicaRegistry::new(redis, instance)),
            health: Some(Arc::new(redis.clone())),
        }
    }
}
