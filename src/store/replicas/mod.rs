//! Replica liveness: which of the replicas sharing a store are alive, and which one takes over
//! the jobs and sessions of a replica that died.
//!
//! Each replica holds a lease on its [`ReplicaId`], renewed by a heartbeat
//! ([`ReplicaRegistry::heartbeat`]) well within the lease. A replica whose lease ran out is
//! lost: every surviving replica's sweep asks [`ReplicaRegistry::claim_lost`] for the lost
//! replicas it may take over, and the claim is atomic, so of several survivors exactly one
//! takes each lost replica over. The claimant ends the lost replica's jobs and starts the
//! resume windows of its sessions (`crate::takeover`, through the other stores), then says so
//! ([`ReplicaRegistry::taken_over`]). A claimant that dies before it says so loses its claim
//! after a lease, and another survivor does the takeover again; every step of it is
//! idempotent.
//!
//! What is claimed and fenced out is one [`ReplicaInstance`], one process's run under the id:
//! a process restarted under the same `--replica-id` is another instance, which registers only
//! once its predecessor was taken over ([`Registration::Predecessor`]), so that nothing the
//! predecessor left is mistaken for its own. A lost instance that was only paused (SIGSTOP, a
//! long GC-like stall, a partition) and comes back learns it was lost from its next heartbeat
//! ([`Heartbeat::Lost`]); by then the stores refuse its writes to what was taken over, and it
//! must stop (the gateway binary exits non-zero, for its orchestrator to start it again).
//!
//! [`memory::MemoryReplicas`] is the registry of stores no other replica shares: one replica,
//! which never outlives itself. [`redis::RedisReplicaRegistry`] is the one replicas share.

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use crate::{error::ArcpError, ids::ReplicaInstance};

/// What a registration found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Registration {
    /// This instance holds its replica id now, with a lease.
    Registered,
    /// Another instance of the same replica id holds a lease that runs for `remaining` more: a
    /// restart that came too early, or a second process given the same id.
    Held {
        /// How long the other instance's lease runs, unless it renews it.
        remaining: Duration,
    },
    /// Another instance of the same replica id held it and its lease ran out, but nobody has
    /// taken it over yet: [`ReplicaRegistry::claim_lost`] finds it, and once it is taken over
    /// this instance may register.
    Predecessor,
    /// This instance was declared lost: it may never hold its id again.
    Lost,
}

/// What a heartbeat found.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Heartbeat {
    /// The lease is renewed.
    Alive,
    /// This instance is no longer its replica's: it was declared lost (its lease ran out and a
    /// survivor claimed it), or another instance of the id registered since. Its jobs and
    /// sessions are, or are being, taken over; it must stop.
    Lost {
        /// Who took it over (a replica id), or the instance that replaced it.
        by: String,
    },
}

/// The registry of the replicas sharing a store.
///
/// Every call may suspend and may be cancelled by dropping its future; a dropped call has
/// either taken full effect or none.
#[async_trait]
pub trait ReplicaRegistry: Send + Sync + 'static {
    /// This process's instance, whose lease the registry keeps.
    fn instance(&self) -> &ReplicaInstance;

    /// Takes this instance's replica id with a lease of `lease`, unless another instance of
    /// the id still holds it or was not taken over yet, or this one was declared lost.
    async fn register(&self, lease: Duration) -> Result<Registration, ArcpError>;

    /// Renews the lease for `lease` from now, unless this instance was declared lost.
    async fn heartbeat(&self, lease: Duration) -> Result<Heartbeat, ArcpError>;

    /// Claims every other replica instance whose lease ran out and that nobody has taken over
    /// (or whose claimant did not finish within its claim): each is this replica's to take
    /// over, for `claim` from now; no other caller gets it in that time. Returns them.
    async fn claim_lost(&self, claim: Duration) -> Result<Vec<ReplicaInstance>, ArcpError>;

    /// Records that this replica finished taking over `lost`, which it claimed: nobody claims
    /// it again, and another instance of its id may register.
    async fn taken_over(&self, lost: &ReplicaInstance) -> Result<(), ArcpError>;

    /// Gives up this instance's lease, after a clean shutdown that left it nothing to take
    /// over. A no-op for an instance that was declared lost.
    async fn leave(&self) -> Result<(), ArcpError>;
}
