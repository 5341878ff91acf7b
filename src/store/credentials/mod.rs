//! The ledger of outstanding provisioned credentials (§9.8.2, §14): every credential an
//! upstream issued to a job and has not yet accepted the revocation of, so that a credential
//! outlives neither its job nor the process that issued it.
//!
//! An entry is written before its credential reaches the job (its `job.accepted`), and
//! removed only once the upstream accepted its revocation. It holds the credential's id, never
//! its value (a secret the ledger has no use for), with the job, the replica instance that
//! issued it, when, and how its revocation is going ([`Revocation`]).
//!
//! Each replica keeps its entries in a part of its own, named by its [`ReplicaId`]: the
//! instance running the job revokes its credential when the job ends (the fast path), and
//! what is left there (a revocation the upstream kept refusing, a predecessor's entries after a
//! restart under the same id) the replica's sweep retries with back-off. When a replica is
//! declared lost, the one taking it over moves the lost replica's part into its own
//! ([`CredentialLedger::adopt`]) and revokes them from there.
//!
//! [`memory::MemoryCredentialLedger`] is the ledger of one process, which dies with it;
//! [`redis::RedisCredentialLedger`] outlives every replica.

pub mod memory;
pub mod redis;

use std::time::SystemTime;

use async_trait::async_trait;

use crate::{
    error::ArcpError,
    ids::{CredentialId, JobId, ReplicaId, ReplicaInstance},
};

/// One outstanding credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outstanding {
    /// The credential, as its upstream names it.
    pub id: CredentialId,
    /// The job it was issued to.
    pub job: JobId,
    /// The replica instance that issued it, where its job ran.
    pub issued_by: ReplicaInstance,
    /// When it was recorded, to the millisecond.
    pub issued_at: SystemTime,
    /// Whose it is to revoke, and how that went.
    pub revocation: Revocation,
}

/// Where a credential's revocation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// Its job holds it: the instance that issued it revokes it when the job ends, unless that
    /// instance is gone (a predecessor of this replica, or a lost replica taken over).
    Held,
    /// The job ended and the upstream refused its revocation `attempts` times; the sweep tries
    /// again from `next` (to the millisecond).
    Failing {
        /// Failed revocation attempts so far.
        attempts: u32,
        /// When the next one is due.
        next: SystemTime,
    },
}

/// The ledger, as one replica instance sees it: its own part, and the parts of the replicas it
/// takes over.
///
/// Every call may suspend and may be cancelled by dropping its future; a dropped call has
/// either taken full effect or none.
#[async_trait]
pub trait CredentialLedger: Send + Sync + 'static {
    /// Records credential `id`, issued to `job` by this instance at `issued_at`, as
    /// [`Revocation::Held`] in this replica's part. Refused (retryable) if this instance was
    /// declared lost: nobody would take over what it records.
    async fn record(
        &self,
        id: &CredentialId,
        job: &JobId,
        issued_at: SystemTime,
    ) -> Result<(), ArcpError>;

    /// Records that `failures` more revocation attempts of `id` failed and the next is due at
    /// `next`; returns the attempts so far, or `None` if this replica's part no longer has the
    /// entry (it was revoked, or moved to another replica's part).
    async fn failed(
        &self,
        id: &CredentialId,
        failures: u32,
        next: SystemTime,
    ) -> Result<Option<u32>, ArcpError>;

    /// Forgets `id` once the upstream accepted its revocation; `false` if this replica's part
    /// did not have it.
    async fn revoked(&self, id: &CredentialId) -> Result<bool, ArcpError>;

    /// Every entry in this replica's part, in no particular order.
    async fn outstanding(&self) -> Result<Vec<Outstanding>, ArcpError>;

    /// Moves every entry of `lost`'s part into this replica's, as they are; returns how many
    /// moved. For the replica that claimed `lost` (`store::replicas`), before it says the
    /// takeover is done. A call dropped halfway may leave an entry in both parts until the
    /// takeover is done again, never in neither. Adopting this replica's own part changes
    /// nothing.
    async fn adopt(&self, lost: &ReplicaId) -> Result<usize, ArcpError>;
}
