//! The embedded, in-process idempotency store.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{encoding::StoredFrame, error::ArcpError, ids::JobId};

use super::{Claim, Fingerprint, IdempotencyKey, IdempotencyStore};

/// Idempotency keys held in this process's memory.
#[derive(Default)]
pub struct MemoryIdempotencyStore {
    keys: Mutex<HashMap<IdempotencyKey, Entry>>,
}

struct Entry {
    fingerprint: Fingerprint,
    job: JobId,
    expires_at: SystemTime,
    /// `None` while the job is being accepted; closed (sender dropped) if it was released.
    accepted: watch::Sender<Option<StoredFrame>>,
}

impl MemoryIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        job: &JobId,
        window: Duration,
    ) -> Result<Claim, ArcpError> {
        let now = SystemTime::now();
        let mut keys = self.keys.lock();
        if let Some(entry) = keys.get(key).filter(|e| e.expires_at > now) {
            if entry.fingerprint != fingerprint {
                return Ok(Claim::Conflict {
                    job: entry.job.clone(),
                });
            }
            return Ok(Claim::Existing {
                job: entry.job.clone(),
                accepted: entry.accepted.borrow().clone(),
            });
        }
        keys.insert(
            key.clone(),
            Entry {
                fingerprint,
                job: job.clone(),
                expires_at: now + window,
                accepted: watch::Sender::new(None),
            },
        );
        Ok(Claim::New)
    }

    async fn accepted(
        &self,
        key: &IdempotencyKey,
        job: &JobId,
        frame: StoredFrame,
    ) -> Result<(), ArcpError> {
        if let Some(entry) = self.keys.lock().get(key).filter(|e| &e.job == job) {
            entry.accepted.send_replace(Some(frame));
        }
        Ok(())
    }

    async fn release(&self, key: &IdempotencyKey, job: &JobId) -> Result<(), ArcpError> {
        let mut keys = self.keys.lock();
        if keys.get(key).is_some_and(|e| &e.job == job) {
            keys.remove(key);
        }
        Ok(())
    }

    async fn wait_accepted(
        &self,
        key: &IdempotencyKey,
        job: &JobId,
    ) -> Result<Option<StoredFrame>, ArcpError> {
        let receiver = match self.keys.lock().get(key).filter(|e| &e.job == job) {
            Some(entry) => entry.accepted.subscribe(),
            None => return Ok(None),
        };
        let mut receiver = receiver;
        // An error means the sender is gone: the key was released or swept.
        Ok(receiver
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|frame| frame.clone()))
    }

    async fn sweep(&self, now: SystemTime) -> Result<(), ArcpError> {
        self.keys.lock().retain(|_, e| e.expires_at > now);
        Ok(())
    }
}
