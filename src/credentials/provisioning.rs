//! [`Provisioning`]: an upstream ([`CredentialProvisioner`]) and the ledger of the credentials
//! it issued and has not revoked (`store::credentials`), which make revocation a durability
//! concern (§14) rather than a job's last act.
//!
//! A credential is recorded in the ledger after the upstream issued it and before its job
//! can see it; one that cannot be recorded is revoked at once and its job refused (a
//! retryable error), since nothing would revoke it after a crash. When the job ends, the
//! replica running it revokes it, retrying for a few seconds (the fast path), and forgets it
//! only once the upstream accepted. What the fast path could not revoke stays in the ledger,
//! and [`Provisioning::sweep`] tries again with back-off until the upstream accepts: its own
//! job's credentials the upstream refused, those a predecessor of the same replica id left,
//! and those of lost replicas this one took over. Every attempt is logged by the credential's
//! id and job, never its value; one still refused at the longest back-off is logged as an
//! error for operators.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use parking_lot::Mutex;

use crate::{
    error::ArcpError,
    ids::{CredentialId, JobId, ReplicaInstance},
    protocol::{credential::Credential, Json},
    store::credentials::{CredentialLedger, Outstanding, Revocation},
};

use super::provisioner::CredentialProvisioner;

/// How many times a job's end tries to revoke its credential before it leaves it to the sweep.
pub const IN_JOB_ATTEMPTS: u32 = 5;

/// The sweep's first delay after the fast path gave up, doubled after each failed attempt of
/// its own up to [`SWEEP_RETRY_MOST`].
pub const SWEEP_RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest delay between two of the sweep's attempts on one credential.
pub const SWEEP_RETRY_MOST: Duration = Duration::from_secs(60);

/// How many revocations one sweep has in flight at once: an upstream that hangs slows the
/// sweep down, it does not stop it.
const SWEEP_CONCURRENCY: usize = 8;

/// The most credentials one sweep tries; the rest wait for the next.
const SWEEP_BATCH: usize = 256;

/// Issues credentials through an upstream, keeping each in the ledger until it is revoked.
pub struct Provisioning {
    upstream: Arc<dyn CredentialProvisioner>,
    ledger: Arc<dyn CredentialLedger>,
    /// This process's instance, as the ledger names the issuer of what it records.
    instance: ReplicaInstance,
    /// Credentials whose ledger entry could not be brought up to date (the ledger failed when
    /// it was written to): the sweep settles them before it reads the ledger.
    unsettled: Mutex<HashMap<CredentialId, Unsettled>>,
}

/// A credential whose ledger entry says less than what happened to it.
#[derive(Clone)]
struct Unsettled {
    job: JobId,
    /// The upstream accepted its revocation; only the ledger entry is left to remove.
    revoked: bool,
}

impl Provisioning {
    /// Credentials from `upstream`, recorded in `ledger` as issued by `instance`.
    pub fn new(
        upstream: Arc<dyn CredentialProvisioner>,
        ledger: Arc<dyn CredentialLedger>,
        instance: ReplicaInstance,
    ) -> Self {
        Provisioning {
            upstream,
            ledger,
            instance,
            unsettled: Mutex::new(HashMap::new()),
        }
    }

    /// Issues a credential for `job` and records it in the ledger; only then may the job see
    /// it. If it cannot be recorded, it is revoked and the error returned.
    pub async fn issue(
        &self,
        job: &JobId,
        constraints: serde_json::Map<String, Json>,
    ) -> Result<Credential, ArcpError> {
        let credential = self.upstream.issue(job, constraints).await?;
        let id = CredentialId::new(credential.id.as_str());
        if let Err(e) = self.ledger.record(&id, job, SystemTime::now()).await {
            tracing::warn!(job = %job, credential = %id, "credential not recorded in the ledger; revoking it and refusing the job: {e}");
            if self.revoke_with_retries(job, &id).await.is_err() {
                self.unsettle(&id, job, false);
            }
            return Err(e);
        }
        Ok(credential)
    }

    /// Rotates credential `id` (§9.8.2), which keeps its id and so its ledger entry.
    pub async fn rotate(&self, id: &str) -> Result<Credential, ArcpError> {
        let rotated = self.upstream.rotate(id).await?;
        if rotated.id != id {
            // Nothing records the other credential: revoked at once rather than left live.
            let _ = self.upstream.revoke(&rotated.id).await;
            return Err(ArcpError::Internal(format!(
                "the credential upstream answered the rotation of {id} with another credential, {}",
                rotated.id
            )));
        }
        Ok(rotated)
    }

    /// Revokes the credentials `ids` of `job`, which ended: each is tried a few times and
    /// forgotten once the upstream accepted; one it keeps refusing is left to the sweep.
    pub async fn revoke_job(&self, job: &JobId, ids: impl IntoIterator<Item = CredentialId>) {
        for id in ids {
            match self.revoke_with_retries(job, &id).await {
                Ok(()) => self.forget(job, &id).await,
                Err(e) => {
                    tracing::warn!(job = %job, credential = %id, attempts = IN_JOB_ATTEMPTS, "credential revocation failed; the sweep retries it: {e}");
                    let next = SystemTime::now() + SWEEP_RETRY_FIRST;
                    if let Err(e) = self.ledger.failed(&id, IN_JOB_ATTEMPTS, next).await {
                        tracing::warn!(job = %job, credential = %id, "the credential's failed revocation is not recorded in the ledger: {e}");
                        self.unsettle(&id, job, false);
                    }
                }
            }
        }
    }

    /// How many credentials this replica has yet to see revoked: its part of the ledger, and
    /// those the ledger could not be told about.
    pub async fn outstanding(&self) -> Result<usize, ArcpError> {
        let recorded = self.ledger.outstanding().await?.len();
        Ok(recorded + self.unsettled.lock().len())
    }

    /// Settles what the ledger could not be told, then tries to revoke every entry of this
    /// replica's part that is due: one its job's end left (at its next attempt), and one whose
    /// issuing instance is gone (at once).
    pub async fn sweep(&self) {
        self.settle().await;
        let entries = match self.ledger.outstanding().await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("could not read the credential ledger: {e}");
                return;
            }
        };
        let now = SystemTime::now();
        let due: Vec<Outstanding> = {
            let unsettled = self.unsettled.lock();
            entries
                .into_iter()
                .filter(|entry| self.is_due(entry, now) && !unsettled.contains_key(&entry.id))
                .take(SWEEP_BATCH)
                .collect()
        };
        futures::stream::iter(due)
            .for_each_concurrent(SWEEP_CONCURRENCY, |entry| self.retry(entry))
            .await;
    }

    /// Whether the sweep should try to revoke `entry` now.
    fn is_due(&self, entry: &Outstanding, now: SystemTime) -> bool {
        match entry.revocation {
            // Its job runs here; or its instance is gone, and so is its job.
            Revocation::Held => entry.issued_by != self.instance,
            Revocation::Failing { next, .. } => next <= now,
        }
    }

    /// One sweep attempt at `entry`.
    async fn retry(&self, entry: Outstanding) {
        let before = match entry.revocation {
            Revocation::Held => 0,
            Revocation::Failing { attempts, .. } => attempts,
        };
        let (id, job) = (&entry.id, &entry.job);
        match self.upstream.revoke(id.as_str()).await {
            Ok(()) => {
                tracing::info!(job = %job, credential = %id, issued_by = %entry.issued_by, attempts = before + 1, "credential revoked by the sweep");
                self.forget(job, id).await;
            }
            Err(e) => {
                let delay = back_off(before + 1);
                let next = SystemTime::now() + delay;
                let attempts = match self.ledger.failed(id, 1, next).await {
                    Ok(Some(attempts)) => attempts,
                    // Revoked meanwhile by another replica that holds a copy.
                    Ok(None) => return,
                    Err(le) => {
                        tracing::warn!(job = %job, credential = %id, "the credential's failed revocation is not recorded in the ledger: {le}");
                        before + 1
                    }
                };
                let issued = seconds_ago(entry.issued_at);
                if delay >= SWEEP_RETRY_MOST {
                    tracing::error!(job = %job, credential = %id, issued_by = %entry.issued_by, attempts, issued, "credential still live upstream; retrying every {}s; revoke it at the upstream by hand if it keeps refusing: {e}", delay.as_secs());
                } else {
                    tracing::warn!(job = %job, credential = %id, issued_by = %entry.issued_by, attempts, issued, retry_in_ms = delay.as_millis() as u64, "credential revocation failed again: {e}");
                }
            }
        }
    }

    /// Tries to revoke `id` up to [`IN_JOB_ATTEMPTS`] times, backing off a little between
    /// tries; the last error if every one failed.
    async fn revoke_with_retries(&self, job: &JobId, id: &CredentialId) -> Result<(), ArcpError> {
        let mut attempt = 1;
        loop {
            match self.upstream.revoke(id.as_str()).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < IN_JOB_ATTEMPTS => {
                    tracing::warn!(job = %job, credential = %id, attempt, "credential revocation failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes `id`, revoked, from the ledger; if the ledger fails, the sweep removes it.
    async fn forget(&self, job: &JobId, id: &CredentialId) {
        match self.ledger.revoked(id).await {
            Ok(_) => {
                self.unsettled.lock().remove(id);
            }
            Err(e) => {
                tracing::warn!(job = %job, credential = %id, "revoked credential not removed from the ledger: {e}");
                self.unsettle(id, job, true);
            }
        }
    }

    fn unsettle(&self, id: &CredentialId, job: &JobId, revoked: bool) {
        self.unsettled.lock().insert(
            id.clone(),
            Unsettled {
                job: job.clone(),
                revoked,
            },
        );
    }

    /// Brings the ledger up to date with what it could not be told.
    async fn settle(&self) {
        let unsettled: Vec<(CredentialId, Unsettled)> = self
            .unsettled
            .lock()
            .iter()
            .map(|(id, u)| (id.clone(), u.clone()))
            .collect();
        for (id, unsettled) in unsettled {
            let job = &unsettled.job;
            if !unsettled.revoked {
                if let Err(e) = self.upstream.revoke(id.as_str()).await {
                    tracing::warn!(job = %job, credential = %id, "credential revocation failed again: {e}");
                    // Handed to the ledger's back-off once the ledger takes it.
                    let next = SystemTime::now() + SWEEP_RETRY_FIRST;
                    if let Ok(Some(_)) = self.ledger.failed(&id, 1, next).await {
                        self.unsettled.lock().remove(&id);
                    }
                    continue;
                }
                tracing::info!(job = %job, credential = %id, "credential revoked by the sweep");
            }
            self.forget(job, &id).await;
        }
    }
}

/// The sweep's delay after `attempts` failed attempts in all: [`SWEEP_RETRY_FIRST`], doubled
/// for each of its own beyond the fast path's, at most [`SWEEP_RETRY_MOST`].
fn back_off(attempts: u32) -> Duration {
    let own = attempts.saturating_sub(IN_JOB_ATTEMPTS).min(16);
    (SWEEP_RETRY_FIRST * (1u32 << own)).min(SWEEP_RETRY_MOST)
}

/// How long ago `at` was, in whole seconds, for a log line.
fn seconds_ago(at: SystemTime) -> String {
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    format!("{}s ago", age.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_backs_off_from_its_first_delay_to_its_longest() {
        assert_eq!(back_off(1), SWEEP_RETRY_FIRST);
        assert_eq!(back_off(IN_JOB_ATTEMPTS), SWEEP_RETRY_FIRST);
        assert_eq!(back_off(IN_JOB_ATTEMPTS + 1), 2 * SWEEP_RETRY_FIRST);
        assert_eq!(back_off(IN_JOB_ATTEMPTS + 3), 8 * SWEEP_RETRY_FIRST);
        assert_eq!(back_off(IN_JOB_ATTEMPTS + 6), SWEEP_RETRY_MOST);
        assert_eq!(back_off(u32::MAX), SWEEP_RETRY_MOST);
    }
}
