//! The ledger of one process, in its memory: the only replica there is, so every entry is in
//! its part, and none outlives it.

use std::{collections::HashMap, time::SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{
    error::ArcpError,
    ids::{CredentialId, JobId, ReplicaId, ReplicaInstance},
};

use super::{CredentialLedger, Outstanding, Revocation};

/// Outstanding credentials held in this process's memory.
pub struct MemoryCredentialLedger {
    instance: ReplicaInstance,
    entries: Mutex<HashMap<CredentialId, Outstanding>>,
}

impl MemoryCredentialLedger {
    /// An empty ledger, whose entries `instance` issues.
    pub fn new(instance: ReplicaInstance) -> Self {
        MemoryCredentialLedger {
            instance,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How many credentials are outstanding.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether no credential is outstanding.
    pub fn is_empty(&self) -> bool {
        self.entries.lock().is_empty()
    }
}

#[async_trait]
impl CredentialLedger for MemoryCredentialLedger {
    async fn record(
        &self,
        id: &CredentialId,
        job: &JobId,
        issued_at: SystemTime,
    ) -> Result<(), ArcpError> {
        let entry = Outstanding {
            id: id.clone(),
            job: job.clone(),
            issued_by: self.instance.clone(),
            issued_at: to_millis(issued_at),
            revocation: Revocation::Held,
        };
        self.entries.lock().insert(id.clone(), entry);
        Ok(())
    }

    async fn failed(
        &self,
        id: &CredentialId,
        failures: u32,
        next: SystemTime,
    ) -> Result<Option<u32>, ArcpError> {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(id) else {
            return Ok(None);
        };
        let before = match entry.revocation {
            Revocation::Held => 0,
            Revocation::Failing { attempts, .. } => attempts,
        };
        let attempts = before.saturating_add(failures);
        entry.revocation = Revocation::Failing {
            attempts,
            next: to_millis(next),
        };
        Ok(Some(attempts))
    }

    async fn revoked(&self, id: &CredentialId) -> Result<bool, ArcpError> {
        Ok(self.entries.lock().remove(id).is_some())
    }

    async fn outstanding(&self) -> Result<Vec<Outstanding>, ArcpError> {
        Ok(self.entries.lock().values().cloned().collect())
    }

    async fn adopt(&self, _lost: &ReplicaId) -> Result<usize, ArcpError> {
        // One process is one replica: there is no other part to move.
        Ok(0)
    }
}

/// `at`, to the millisecond, as a shared ledger keeps it: both answer the same.
fn to_millis(at: SystemTime) -> SystemTime {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let millis = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(millis)
}
