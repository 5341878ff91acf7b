//! Idempotent submission (§7.2): a key, scoped to its principal, maps to the first job
//! submitted with it, a digest of that submission's parameters, and the `job.accepted` frame
//! it got. The key keeps the frame itself, so it answers for its whole window even after the
//! job is forgotten, and a repeat racing the first acceptance waits for it.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::{
    error::ArcpError,
    ids::{JobId, Principal},
    protocol::{client::JobSubmit, server::JobFrame},
};

/// What a key resolved to.
pub enum Claim {
    /// The key is new: the caller's job now owns it and must call
    /// [`IdempotencyKeys::accepted`] or [`IdempotencyKeys::release`].
    New,
    /// The key names an earlier submission with identical parameters; this resolves to its
    /// `job.accepted` frame, or fails if that submission was refused after all.
    Existing(watch::Receiver<Option<JobFrame>>),
}

/// Keys per principal, each kept for `window` after it was first used.
pub struct IdempotencyKeys {
    window: Duration,
    keys: Mutex<HashMap<(Principal, String), Entry>>,
}

struct Entry {
    fingerprint: [u8; 32],
    job: JobId,
    expires_at: SystemTime,
    accepted: watch::Sender<Option<JobFrame>>,
}

impl IdempotencyKeys {
    /// Keys live for `window`.
    pub fn new(window: Duration) -> Self {
        IdempotencyKeys {
            window,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Claims `key` for `job`, or finds the job that already holds it. A key reused with other
    /// parameters is `DUPLICATE_KEY`.
    pub fn claim(
        &self,
        principal: &Principal,
        key: &str,
        submit: &JobSubmit,
        job: &JobId,
    ) -> Result<Claim, ArcpError> {
        let fingerprint = fingerprint(submit);
        let now = SystemTime::now();
        let mut keys = self.keys.lock();
        let slot = (principal.clone(), key.to_owned());
        if let Some(entry) = keys.get(&slot).filter(|e| e.expires_at > now) {
            if entry.fingerprint != fingerprint {
                return Err(ArcpError::DuplicateKey(format!(
                    "idempotency_key {key:?} was used for job {} with different parameters",
                    entry.job
                )));
            }
            return Ok(Claim::Existing(entry.accepted.subscribe()));
        }
        keys.insert(
            slot,
            Entry {
                fingerprint,
                job: job.clone(),
                expires_at: now + self.window,
                accepted: watch::Sender::new(None),
            },
        );
        Ok(Claim::New)
    }

    /// Records the `job.accepted` frame of the job that claimed `key`, for repeats.
    pub fn accepted(&self, principal: &Principal, key: &str, frame: JobFrame) {
        if let Some(entry) = self.keys.lock().get(&(principal.clone(), key.to_owned())) {
            entry.accepted.send_replace(Some(frame));
        }
    }

    /// Gives a key back when the job that claimed it was never accepted.
    pub fn release(&self, principal: &Principal, key: &str) {
        self.keys
            .lock()
            .remove(&(principal.clone(), key.to_owned()));
    }

    /// Forgets keys older than the window.
    pub fn sweep(&self, now: SystemTime) {
        self.keys.lock().retain(|_, e| e.expires_at > now);
    }
}

/// The parameters that make two submissions "identical" (§7.2), as a digest of their canonical
/// JSON (object keys sorted).
fn fingerprint(submit: &JobSubmit) -> [u8; 32] {
    let canonical = serde_json::json!({
        "agent": submit.agent,
        "input": submit.input,
        "lease_request": submit.lease_request,
        "expires_at": submit.expires_at,
        "max_runtime_sec": submit.max_runtime_sec,
    });
    Sha256::digest(canonical.to_string().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn submit(input: serde_json::Value) -> JobSubmit {
        JobSubmit {
            agent: "echo".into(),
            input,
            lease_request: Default::default(),
            expires_at: None,
            idempotency_key: Some("k".into()),
            max_runtime_sec: None,
        }
    }

    #[test]
    fn keys_are_per_principal_and_detect_conflicts() {
        let keys = IdempotencyKeys::new(Duration::from_secs(60));
        let (alice, bob) = (Principal::new("alice"), Principal::new("bob"));
        let (j1, j2) = (JobId::generate(), JobId::generate());
        let a = submit(serde_json::json!({"x": 1, "y": 2}));
        assert!(matches!(keys.claim(&alice, "k", &a, &j1), Ok(Claim::New)));
        // Same parameters, keys in another order: the same job.
        let same = submit(serde_json::json!({"y": 2, "x": 1}));
        assert!(matches!(
            keys.claim(&alice, "k", &same, &j2),
            Ok(Claim::Existing(_))
        ));
        let other = submit(serde_json::json!({"x": 2}));
        let err = keys.claim(&alice, "k", &other, &j2).err().map(|e| e.code());
        assert_eq!(err, Some(ErrorCode::DuplicateKey));
        // Another principal's key space is separate.
        assert!(matches!(keys.claim(&bob, "k", &other, &j2), Ok(Claim::New)));
    }
}
