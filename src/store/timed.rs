//! The session store and the resume registry, timed: each wrapper passes every call through
//! to the store it wraps and records how long it took in
//! `arcp_store_operation_duration_seconds`, labelled with the store (`memory`, `redis`) and
//! the operation.
//!
//! The event logs time their appends and reads themselves, where the store's work is: a
//! wrapper would cost every job frame another boxed future, and would time a read's wait for
//! frames along with the store's answer.
//!
//! A timed call costs two clock reads and three atomic adds into the fixed buckets of
//! [`crate::metrics::store_latency`]; nothing is looked up or allocated.

use std::{future::Future, sync::Arc, time::SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{
    error::ArcpError,
    ids::{Epoch, Principal, ReplicaId, SessionId},
    metrics::store_latency::{latency, Latency, Operation, Store},
    store::{
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
