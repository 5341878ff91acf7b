//! The stores the gateway runs on, timed: each wrapper passes every call through to the store
//! it wraps and records how long it took in
//! `arcp_store_operation_duration_seconds`, labelled with the
//! store (`memory`, `redis`) and the operation.
//!
//! A timed call costs two clock reads and three atomic adds into the fixed buckets of
//! [`crate::metrics::store_latency`]; nothing is looked up or allocated.
//! A read that waits for frames ([`Wait::ForMore`]) is `log_read_waiting`: its time includes
//! the wait for the jobs to log something, not only the store's answer.

use std::{future::Future, sync::Arc, time::SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{Epoch, EventSeq, Principal, ReplicaId, ReplicaInstance, SessionId},
    metrics::store_latency::{latency, Latency, Operation, Store},
    store::{
        log::{Appended, EventLog, LogBounds, LogEntry, QueuedAppend, Retention, SessionLog, Wait},
        resume::{ResumeRegistry, ResumeToken},
        session::{NewSession, SessionRecord, SessionStore},
    },
};

/// Runs `call`, recording its duration in `into`.
async fn timed<T>(into: &Latency, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let answer = call.await;
    into.record(started.elapsed());
    answer
}

/// A [`SessionStore`], timed.
pub struct TimedSessions {
    inner: Arc<dyn SessionStore>,
    create: &'static Latency,
    open: &'static Latency,
    remove: &'static Latency,
    attached_on: &'static Latency,
    forget_attached_on: &'static Latency,
}

impl TimedSessions {
    /// `inner`, a `store` store, timed.
    pub fn new(store: Store, inner: Arc<dyn SessionStore>) -> TimedSessions {
        TimedSessions {
            inner,
            create: latency(store, Operation::SessionCreate),
            open: latency(store, Operation::SessionOpen),
            remove: latency(store, Operation::SessionRemove),
            attached_on: latency(store, Operation::SessionAttachedOn),
            forget_attached_on: latency(store, Operation::SessionForgetAttachedOn),
        }
    }
}

#[async_trait]
impl SessionStore for TimedSessions {
    async fn create(&self, session: NewSession) -> Result<Arc<dyn SessionRecord>, ArcpError> {
        timed(self.create, self.inner.create(session)).await
    }

    async fn open(&self, id: &SessionId) -> Result<Arc<dyn SessionRecord>, ArcpError> {
        timed(self.open, self.inner.open(id)).await
    }

    async fn remove(&self, id: &SessionId) -> Result<(), ArcpError> {
        timed(self.remove, self.inner.remove(id)).await
    }

    async fn attached_on(&self, replica: &ReplicaId) -> Result<Vec<(SessionId, Epoch)>, ArcpError> {
        timed(self.attached_on, self.inner.attached_on(replica)).await
    }

    async fn forget_attached_on(&self, replica: &ReplicaId) -> Result<(), ArcpError> {
        timed(
            self.forget_attached_on,
            self.inner.forget_attached_on(replica),
        )
        .await
    }
}

/// A [`ResumeRegistry`], timed.
pub struct TimedResume {
    inner: Arc<dyn ResumeRegistry>,
    issue: &'static Latency,
    check: &'static Latency,
    rotate: &'static Latency,
    start_window: &'static Latency,
    take_expired: &'static Latency,
    remove: &'static Latency,
}

impl TimedResume {
    /// `inner`, a `store` store, timed.
    pub fn new(store: Store, inner: Arc<dyn ResumeRegistry>) -> TimedResume {
        TimedResume {
            inner,
            issue: latency(store, Operation::ResumeIssue),
            check: latency(store, Operation::ResumeCheck),
            rotate: latency(store, Operation::ResumeRotate),
            start_window: latency(store, Operation::ResumeStartWindow),
            take_expired: latency(store, Operation::ResumeTakeExpired),
            remove: latency(store, Operation::ResumeRemove),
        }
    }
}

#[async_trait]
impl ResumeRegistry for TimedResume {
    async fn issue(
        &self,
        session: &SessionId,
        principal: &Principal,
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError> {
        timed(self.issue, self.inner.issue(session, principal, epoch)).await
    }

    async fn check(&self, token: &str, principal: &Principal) -> Result<SessionId, ArcpError> {
        timed(self.check, self.inner.check(token, principal)).await
    }

    async fn rotate(
        &self,
        presented: &str,
        principal: &Principal,
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError> {
        timed(self.rotate, self.inner.rotate(presented, principal, epoch)).await
    }

    async fn start_window(
        &self,
        session: &SessionId,
        epoch: Epoch,
        deadline: SystemTime,
    ) -> Result<bool, ArcpError> {
        timed(
            self.start_window,
            self.inner.start_window(session, epoch, deadline),
        )
        .await
    }

    async fn take_expired(&self, now: SystemTime) -> Result<Vec<SessionId>, ArcpError> {
        timed(self.take_expired, self.inner.take_expired(now)).await
    }

    async fn remove(&self, session: &SessionId) -> Result<(), ArcpError> {
        timed(self.remove, self.inner.remove(session)).await
    }
}

/// An [`EventLog`] whose sessions' logs are timed.
pub struct TimedLogs {
    store: Store,
    inner: Arc<dyn EventLog>,
    create: &'static Latency,
    open: &'static Latency,
}

impl TimedLogs {
    /// `inner`, a `store` store, timed.
    pub fn new(store: Store, inner: Arc<dyn EventLog>) -> TimedLogs {
        TimedLogs {
            store,
            inner,
            create: latency(store, Operation::LogCreate),
            open: latency(store, Operation::LogOpen),
        }
    }

    fn wrap(&self, log: Arc<dyn SessionLog>) -> Arc<dyn SessionLog> {
        Arc::new(TimedLog {
            inner: log,
            append: latency(self.store, Operation::LogAppend),
            read: latency(self.store, Operation::LogRead),
            read_waiting: latency(self.store, Operation::LogReadWaiting),
        })
    }
}

#[async_trait]
impl EventLog for TimedLogs {
    async fn create(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError> {
        let log = timed(self.create, self.inner.create(session)).await?;
        Ok(self.wrap(log))
    }

    async fn open(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError> {
        let log = timed(self.open, self.inner.open(session)).await?;
        Ok(self.wrap(log))
    }

    async fn remove(&self, session: &SessionId) {
        self.inner.remove(session).await;
    }

    async fn detached(&self, session: &SessionId, epoch: Epoch) {
        self.inner.detached(session, epoch).await;
    }

    fn retention(&self) -> Option<Retention> {
        self.inner.retention()
    }
}

/// One session's log, timed.
struct TimedLog {
    inner: Arc<dyn SessionLog>,
    append: &'static Latency,
    read: &'static Latency,
    read_waiting: &'static Latency,
}

#[async_trait]
impl SessionLog for TimedLog {
    async fn append_measured(&self, frame: StoredFrame) -> Result<Appended, ArcpError> {
        timed(self.append, self.inner.append_measured(frame)).await
    }

    async fn append(&self, frame: StoredFrame) -> Result<EventSeq, ArcpError> {
        timed(self.append, self.inner.append(frame)).await
    }

    fn pipelines(&self) -> bool {
        self.inner.pipelines()
    }

    // Not timed: it returns once the frame is queued, before the store answers.
    async fn queue_append(&self, frame: StoredFrame) -> Result<QueuedAppend, ArcpError> {
        self.inner.queue_append(frame).await
    }

    fn read_batch(&self) -> Option<usize> {
        self.inner.read_batch()
    }

    async fn read(
        &self,
        after: EventSeq,
        max: usize,
        wait: Wait,
    ) -> Result<Vec<LogEntry>, ArcpError> {
        let into = match wait {
            Wait::No => self.read,
            Wait::ForMore => self.read_waiting,
        };
        timed(into, self.inner.read(after, max, wait)).await
    }

    async fn fence(&self, epoch: Epoch) -> Result<(), ArcpError> {
        self.inner.fence(epoch).await
    }

    async fn fence_replica(
        &self,
        lost: &ReplicaInstance,
        frames: Vec<StoredFrame>,
    ) -> Result<Option<Vec<EventSeq>>, ArcpError> {
        self.inner.fence_replica(lost, frames).await
    }

    async fn release_through(&self, through: EventSeq, epoch: Epoch) -> Result<(), ArcpError> {
        self.inner.release_through(through, epoch).await
    }

    async fn bounds(&self) -> Result<LogBounds, ArcpError> {
        self.inner.bounds().await
    }
}
