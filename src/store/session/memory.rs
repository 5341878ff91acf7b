//! The embedded, in-process session store.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use crate::{
    error::ArcpError,
    ids::{Epoch, EventSeq, Principal, ReplicaId, SessionId},
    protocol::Features,
    store::caps::over_cap,
    sync::wakeup::Wakeup,
};

use super::{AckOutcome, AttachmentLock, Flow, NewSession, SessionRecord, SessionStore};

/// Session records held in this process's memory.
#[derive(Default)]
pub struct MemorySessionStore {
    sessions: RwLock<Sessions>,
}

#[derive(Default)]
struct Sessions {
    by_id: HashMap<SessionId, Arc<MemorySessionRecord>>,
    /// Sessions per principal; a principal holding none has no entry.
    per_principal: HashMap<Principal, usize>,
}

impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many sessions are recorded.
    pub fn len(&self) -> usize {
        self.sessions.read().by_id.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(&self, session: NewSession) -> Result<Arc<dyn SessionRecord>, ArcpError> {
        let cap = session.max_per_principal;
        let record = Arc::new(MemorySessionRecord {
            features: RwLock::new(session.features),
            changes: Mutex::new(()),
            epoch: AtomicU64::new(session.epoch.get()),
            attached: AtomicBool::new(true),
            delivered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            changed: Wakeup::default(),
            attachment: Arc::new(tokio::sync::Mutex::new(())),
            id: session.id,
            principal: session.principal,
        });
        let mut sessions = self.sessions.write();
        let held = sessions
            .per_principal
            .get(&record.principal)
            .copied()
            .unwrap_or(0);
        if held >= cap {
            return Err(over_cap(
                "this principal already holds as many sessions",
                "max_sessions_per_principal",
                cap,
                "detached sessions count until their resume window closes",
            ));
        }
        if sessions
            .by_id
            .insert(record.id.clone(), record.clone())
            .is_none()
        {
            *sessions
                .per_principal
                .entry(record.principal.clone())
                .or_default() += 1;
        }
        Ok(record)
    }

    async fn open(&self, id: &SessionId) -> Result<Arc<dyn SessionRecord>, ArcpError> {
        match self.sessions.read().by_id.get(id) {
            Some(record) => Ok(record.clone()),
            None => Err(ArcpError::ResumeWindowExpired(format!(
                "session {id} has no record"
            ))),
        }
    }

    async fn remove(&self, id: &SessionId) -> Result<(), ArcpError> {
        let mut sessions = self.sessions.write();
        if let Some(record) = sessions.by_id.remove(id) {
            if let Some(n) = sessions.per_principal.get_mut(&record.principal) {
                *n -= 1;
                if *n == 0 {
                    sessions.per_principal.remove(&record.principal);
                }
            }
        }
        Ok(())
    }

    /// This process is the only replica, and it never outlives itself.
    async fn attached_on(
        &self,
        _replica: &ReplicaId,
    ) -> Result<Vec<(SessionId, Epoch)>, ArcpError> {
        Ok(Vec::new())
    }

    async fn forget_attached_on(&self, _replica: &ReplicaId) -> Result<(), ArcpError> {
        Ok(())
    }
}

/// One session's record in memory. Changes are made under `changes`, so that checking the
/// epoch and changing the state are one step; the state itself is in atomics, so that jobs
/// read it on every frame without a lock.
struct MemorySessionRecord {
    id: SessionId,
    principal: Principal,
    features: RwLock<Features>,
    changes: Mutex<()>,
    epoch: AtomicU64,
    attached: AtomicBool,
    delivered: AtomicU64,
    acked: AtomicU64,
    changed: Wakeup,
    attachment: Arc<tokio::sync::Mutex<()>>,
}

impl MemorySessionRecord {
    fn is_current(&self, epoch: Epoch) -> bool {
        self.epoch.load(Ordering::Acquire) == epoch.get()
    }
}

#[async_trait]
impl SessionRecord for MemorySessionRecord {
    fn id(&self) -> &SessionId {
        &self.id
    }

    fn principal(&self) -> &Principal {
        &self.principal
    }

    fn features(&self) -> Features {
        self.features.read().clone()
    }

    fn flow(&self) -> Flow {
        Flow {
            epoch: Epoch(self.epoch.load(Ordering::Acquire)),
            attached: self.attached.load(Ordering::Acquire),
            delivered: EventSeq(self.delivered.load(Ordering::Acquire)),
            acked: EventSeq(self.acked.load(Ordering::Acquire)),
        }
    }

    async fn wait_flow(&self, ready: &(dyn for<'f> Fn(&'f Flow) -> bool + Sync)) {
        self.changed.wait_until(|| ready(&self.flow())).await;
    }

    async fn lock_attachment(&self) -> Result<AttachmentLock, ArcpError> {
        Ok(AttachmentLock::new(
            self.attachment.clone().lock_owned().await,
        ))
    }

    async fn attach(
        &self,
        epoch: Epoch,
        features: Option<Features>,
        from: EventSeq,
    ) -> Result<bool, ArcpError> {
        {
            let _changing = self.changes.lock();
            if epoch.get() <= self.epoch.load(Ordering::Acquire) {
                return Ok(false);
            }
            if let Some(features) = features {
                *self.features.write() = features;
            }
            self.delivered.store(from.get(), Ordering::Release);
            self.attached.store(true, Ordering::Release);
            self.epoch.store(epoch.get(), Ordering::Release);
        }
        self.changed.notify();
        Ok(true)
    }

    async fn detach(&self, epoch: Epoch) -> Result<bool, ArcpError> {
        {
            let _changing = self.changes.lock();
            if !self.is_current(epoch) || !self.attached.load(Ordering::Acquire) {
                return Ok(false);
            }
            self.attached.store(false, Ordering::Release);
        }
        self.changed.notify();
        Ok(true)
    }

    async fn record_delivered(&self, epoch: Epoch, through: EventSeq) -> Result<bool, ArcpError> {
        {
            let _changing = self.changes.lock();
            if !self.is_current(epoch) {
                return Ok(false);
            }
            self.delivered.fetch_max(through.get(), Ordering::AcqRel);
        }
        self.changed.notify();
        Ok(true)
    }

    async fn record_ack(&self, epoch: Epoch, through: EventSeq) -> Result<AckOutcome, ArcpError> {
        let _changing = self.changes.lock();
        if !self.is_current(epoch) {
            return Ok(AckOutcome::Superseded);
        }
        let delivered = EventSeq(self.delivered.load(Ordering::Acquire));
        if through > delivered {
            return Ok(AckOutcome::BeyondDelivered { delivered });
        }
        let acked = self
            .acked
            .fetch_max(through.get(), Ordering::AcqRel)
            .max(through.get());
        drop(_changing);
        self.changed.notify();
        Ok(AckOutcome::Recorded {
            acked: EventSeq(acked),
        })
    }
}
