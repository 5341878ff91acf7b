//! The registry of stores in this process's memory: there is one replica, this process,
//! which never outlives itself, so its lease never runs out and nothing is ever lost.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    error::ArcpError,
    ids::{ReplicaId, ReplicaInstance},
};

use super::{Heartbeat, Registration, ReplicaRegistry};

/// The one replica of an embedded store.
pub struct MemoryReplicas {
    instance: ReplicaInstance,
}

impl MemoryReplicas {
    /// The registry of this process, as an instance of `replica`.
    pub fn new(replica: ReplicaId) -> Self {
        MemoryReplicas {
            instance: ReplicaInstance::start(replica),
        }
    }
}

impl Default for MemoryReplicas {
    fn default() -> Self {
        MemoryReplicas::new(ReplicaId::new("memory"))
    }
}

#[async_trait]
impl ReplicaRegistry for MemoryReplicas {
    fn instance(&self) -> &ReplicaInstance {
        &self.instance
    }

    async fn register(&self, _lease: Duration) -> Result<Registration, ArcpError> {
        Ok(Registration::Registered)
    }

    async fn heartbeat(&self, _lease: Duration) -> Result<Heartbeat, ArcpError> {
        Ok(Heartbeat::Alive)
    }

    async fn claim_lost(&self, _claim: Duration) -> Result<Vec<ReplicaInstance>, ArcpError> {
        Ok(Vec::new())
    }

    async fn taken_over(&self, _lost: &ReplicaInstance) -> Result<(), ArcpError> {
        Ok(())
    }

    async fn leave(&self) -> Result<(), ArcpError> {
        Ok(())
    }
}
