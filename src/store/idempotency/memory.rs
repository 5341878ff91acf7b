//! The embedded, in-process idempotency store.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{JobId, Principal},
};

use super::{Claim, Fingerprint, IdempotencyKey, IdempotencyStore, KeyTerms};

/// Idempotency keys held in this process's memory.
#[derive(Default)]
pub struct MemoryIdempotencyStore {
    keys: Mutex<Keys>,
}

/// Every key, and each principal's keys in the order they were claimed.
#[derive(Default)]
struct Keys {
    entries: HashMap<IdempotencyKey, Entry>,
    by_principal: HashMap<Principal, BTreeMap<u64, String>>,
    next: u64,
}

struct Entry {
    fingerprint: Fingerprint,
    job: JobId,
    expires_at: SystemTime,
    /// Its place in its principal's claim order.
    order: u64,
    /// `None` while the job is being accepted; closed (sender dropped) if it was released.
    accepted: watch::Sender<Option<StoredFrame>>,
}

impl Entry {
    fn is_accepted(&self) -> bool {
        self.accepted.borrow().is_some()
    }
}

impl Keys {
    fn insert(&mut self, key: IdempotencyKey, mut entry: Entry) {
        entry.order = self.next;
        self.next += 1;
        self.by_principal
            .entry(key.principal.clone())
            .or_default()
            .insert(entry.order, key.key.clone());
        if let Some(old) = self.entries.insert(key.clone(), entry) {
            self.forget_order(&key.principal, old.order);
        }
    }

    fn remove(&mut self, key: &IdempotencyKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.forget_order(&key.principal, entry.order);
        Some(entry)
    }

    fn forget_order(&mut self, principal: &Principal, order: u64) {
        if let Some(keys) = self.by_principal.get_mut(principal) {
            keys.remove(&order);
            if keys.is_empty() {
                self.by_principal.remove(principal);
            }
        }
    }

    /// Makes room for one more key of `principal` within `max`: forgets its oldest accepted
    /// keys while it holds `max` or more.
    fn make_room(&mut self, principal: &Principal, max: usize) -> Result<(), ArcpError> {
        loop {
            let Some(keys) = self.by_principal.get(principal) else {
                return Ok(());
            };
            if keys.len() < max {
                return Ok(());
            }
            let oldest_accepted = keys.values().find_map(|key| {
                let key = IdempotencyKey {
                    principal: principal.clone(),
                    key: key.clone(),
                };
                self.entries
                    .get(&key)
                    .is_some_and(Entry::is_accepted)
                    .then_some(key)
            });
            let Some(oldest) = oldest_accepted else {
                return Err(ArcpError::InvalidRequest(format!(
                    "this principal already has {max} submissions with an idempotency_key \
                     being accepted; retry once they are"
                )));
            };
            self.remove(&oldest);
        }
    }
}

impl MemoryIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.lock().entries.len()
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
        terms: KeyTerms,
    ) -> Result<Claim, ArcpError> {
        let now = SystemTime::now();
        let mut keys = self.keys.lock();
        match keys.entries.get(key) {
            Some(entry) if entry.expires_at > now => {
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
            // An expired key makes room for itself.
            Some(_) => {
                keys.remove(key);
            }
            None => {}
        }
        keys.make_room(&key.principal, terms.max_per_principal.max(1))?;
        keys.insert(
            key.clone(),
            Entry {
                fingerprint,
                job: job.clone(),
                expires_at: now + terms.window,
                order: 0,
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
        if let Some(entry) = self.keys.lock().entries.get(key).filter(|e| &e.job == job) {
            entry.accepted.send_replace(Some(frame));
        }
        Ok(())
    }

    async fn release(&self, key: &IdempotencyKey, job: &JobId) -> Result<(), ArcpError> {
        let mut keys = self.keys.lock();
        if keys.entries.get(key).is_some_and(|e| &e.job == job) {
            keys.remove(key);
        }
        Ok(())
    }

    async fn wait_accepted(
        &self,
        key: &IdempotencyKey,
        job: &JobId,
    ) -> Result<Option<StoredFrame>, ArcpError> {
        let receiver = match self.keys.lock().entries.get(key).filter(|e| &e.job == job) {
            Some(entry) => entry.accepted.subscribe(),
            None => return Ok(None),
        };
        let mut receiver = receiver;
        // An error means the sender is gone: the key was released, swept or forgotten.
        Ok(receiver
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|frame| frame.clone()))
    }

    async fn sweep(&self, now: SystemTime) -> Result<(), ArcpError> {
        let mut keys = self.keys.lock();
        let expired: Vec<IdempotencyKey> = keys
            .entries
            .iter()
            .filter(|(_, e)| e.expires_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            keys.remove(key);
        }
        Ok(())
    }
}
