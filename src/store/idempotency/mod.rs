//! Idempotent submission (§7.2): a key, scoped to its principal, names the first job submitted
//! with it, a digest of that submission's parameters, and the `job.accepted` frame it got. The
//! key keeps the frame itself, so it answers for its whole window even after the job is
//! forgotten, and a repeat racing the first acceptance waits for it.
//!
//! Claiming a key is one atomic step, so of two submissions racing with a new key exactly one
//! starts a job. [`memory::MemoryIdempotencyStore`] is the embedded store;
//! [`redis::RedisIdempotencyStore`] one that replicas share.
//!
//! A principal holds a bounded number of keys ([`KeyTerms::max_per_principal`]). Claiming a
//! new key beyond the bound forgets the principal's oldest accepted key, rather than refusing
//! the submission: the bound then shortens the window for a principal that submits faster than
//! the bound allows per window, and a retry of a forgotten key starts a new job. Retries come
//! soon after the submission they repeat, so the oldest key is the one least likely to be
//! repeated; refusing instead would stop every keyed submission of a busy principal until its
//! keys expired. Keys whose job is still being accepted are never forgotten (a repeat racing
//! the first acceptance must find it); if all of a principal's keys are, the claim is refused
//! with `INVALID_REQUEST`.

pub mod memory;
pub mod redis;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{JobId, Principal},
};

/// An `idempotency_key` in its principal's key space.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct IdempotencyKey {
    /// Whose key it is.
    pub principal: Principal,
    /// The key the client chose.
    pub key: String,
}

/// The digest of a submission's parameters: two submissions are "identical" (§7.2) when their
/// fingerprints are equal.
pub type Fingerprint = [u8; 32];

/// What a claim of a key is held to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KeyTerms {
    /// How long the key keeps naming its job.
    pub window: Duration,
    /// The most keys one principal holds; at least 1.
    pub max_per_principal: usize,
}

/// What claiming a key found.
#[derive(Clone, Debug)]
pub enum Claim {
    /// The key was free: the caller's job now holds it and must call
    /// [`IdempotencyStore::accepted`] or [`IdempotencyStore::release`].
    New,
    /// The key names an earlier submission with the same parameters: its job, and its
    /// `job.accepted` frame once it was accepted.
    Existing {
        /// The job holding the key.
        job: JobId,
        /// Its acceptance, or `None` while it is still being accepted.
        accepted: Option<StoredFrame>,
    },
    /// The key names an earlier submission with other parameters (`DUPLICATE_KEY`).
    Conflict {
        /// The job holding the key.
        job: JobId,
    },
}

/// The store of idempotency keys.
///
/// Every call may suspend and may be cancelled by dropping its future; a dropped call has
/// either taken full effect or none.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for `job` for `terms.window`, or reports who holds it. A new key beyond
    /// `terms.max_per_principal` of its principal's makes the store forget the principal's
    /// oldest accepted key (see the module documentation).
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        job: &JobId,
        terms: KeyTerms,
    ) -> Result<Claim, ArcpError>;

    /// Records the `job.accepted` frame of `job`, which holds `key`, for repeats.
    async fn accepted(
        &self,
        key: &IdempotencyKey,
        job: &JobId,
        frame: StoredFrame,
    ) -> Result<(), ArcpError>;

    /// Gives `key` back because `job`, which holds it, was never accepted. A no-op if another
    /// job holds it.
    async fn release(&self, key: &IdempotencyKey, job: &JobId) -> Result<(), ArcpError>;

    /// Waits until `job`'s claim of `key` is accepted (its frame) or released (`None`).
    async fn wait_accepted(
        &self,
        key: &IdempotencyKey,
        job: &JobId,
    ) -> Result<Option<StoredFrame>, ArcpError>;

    /// Forgets keys whose window closed before `now`.
    async fn sweep(&self, now: SystemTime) -> Result<(), ArcpError>;
}
