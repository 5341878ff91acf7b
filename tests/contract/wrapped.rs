//! Stores wrapped so that a [`Hook`] runs before and after every call: [`Yielding`] makes every
//! call suspend, as a store across a network does; [`Script`] lets a test stop a chosen call
//! until it says go, or never let one return, to put a race or a cancellation exactly where it
//! wants it.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arcp_gateway::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{CredentialId, Epoch, EventSeq, JobId, Principal, ReplicaId, ReplicaInstance, SessionId},
    protocol::Features,
    store::{
        credentials::{CredentialLedger, Outstanding},
        idempotency::KeyTerms,
        idempotency::{Claim, Fingerprint, IdempotencyKey, IdempotencyStore},
        jobs::{
            Holdings, JobCaps, JobControl, JobDirectory, JobEntry, ListScope, LostJob, Subscriber,
            Subscription,
        },
        log::{Appended, EventLog, LogBounds, LogEntry, QueuedAppend, Retention, SessionLog, Wait},
        replicas::{Heartbeat, Registration, ReplicaRegistry},
        resume::{ResumeRegistry, ResumeToken},
        session::{AckOutcome, AttachmentLock, Flow, NewSession, SessionRecord, SessionStore},
        Stores,
    },
};
use async_trait::async_trait;
use rand::Rng;
use tokio::sync::oneshot;

/// What runs around every call of a wrapped store; `op` names the call, e.g. `"log.append"`.
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Before the store acts; what it returns is told when the call is over.
    async fn before(&self, op: &'static str) -> Option<oneshot::Sender<()>>;

    /// After it acted.
    async fn after(&self, op: &'static str);
}

/// `stores`, each wrapped so that `hook` runs around every call.
pub fn wrap(stores: Stores, hook: Arc<dyn Hook>) -> Stores {
    Stores {
        sessions: Arc::new(Wrapped::new(stores.sessions, &hook)),
        resume: Arc::new(Wrapped::new(stores.resume, &hook)),
        logs: Arc::new(Wrapped::new(stores.logs, &hook)),
        jobs: Arc::new(Wrapped::new(stores.jobs, &hook)),
        idempotency: Arc::new(Wrapped::new(stores.idempotency, &hook)),
        replicas: Arc::new(Wrapped::new(stores.replicas, &hook)),
        health: stores.health,
        credentials: Arc::new(Wrapped::new(stores.credentials, &hook)),
    }
}

/// `stores`, each wrapped so that every call suspends ([`Yielding`]).
pub fn yielding(stores: Stores) -> Stores {
    wrap(stores, Arc::new(Yielding))
}

/// A store, or a handle from one, with a hook around every call.
pub struct Wrapped<T: ?Sized> {
    inner: Arc<T>,
    hook: Arc<dyn Hook>,
}

impl<T: ?Sized> Wrapped<T> {
    fn new(inner: Arc<T>, hook: &Arc<dyn Hook>) -> Self {
        Wrapped {
            inner,
            hook: hook.clone(),
        }
    }

    /// A handle the store returned, wrapped with the same hook.
    fn handle<U: ?Sized>(&self, inner: Arc<U>) -> Wrapped<U> {
        Wrapped {
            inner,
            hook: self.hook.clone(),
        }
    }

    /// Runs `call` between the hook's two halves.
    async fn around<R>(&self, op: &'static str, call: impl std::future::Future<Output = R>) -> R {
        let done = self.hook.before(op).await;
        let out = call.await;
        self.hook.after(op).await;
        if let Some(done) = done {
            let _ = done.send(());
        }
        out
    }
}

#[async_trait]
impl EventLog for Wrapped<dyn EventLog> {
    async fn create(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError> {
        let log = self
            .around("logs.create", self.inner.create(session))
            .await?;
        Ok(Arc::new(self.handle(log)))
    }

    async fn open(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError> {
        let log = self.around("logs.open", self.inner.open(session)).await?;
        Ok(Arc::new(self.handle(log)))
    }

    async fn remove(&self, session: &SessionId) {
        self.around("logs.remove", self.inner.remove(session)).await
    }

    async fn detached(&self, session: &SessionId, epoch: Epoch) {
        self.around("logs.detached", self.inner.detached(session, epoch))
            .await
    }

    async fn retention(&self) -> Option<Retention> {
        self.around("logs.retention", self.inner.retention()).await
    }
}

#[async_trait]
impl SessionLog for Wrapped<dyn SessionLog> {
    async fn append_measured(&self, frame: StoredFrame) -> Result<Appended, ArcpError> {
        self.around("log.append", self.inner.append_measured(frame))
            .await
    }

    fn pipelines(&self) -> bool {
        self.inner.pipelines()
    }

    async fn queue_append(&self, frame: StoredFrame) -> Result<QueuedAppend, ArcpError> {
        self.around("log.queue_append", self.inner.queue_append(frame))
            .await
    }

    async fn read(
        &self,
        after: EventSeq,
        max: usize,
        wait: Wait,
    ) -> Result<Vec<LogEntry>, ArcpError> {
        // Named apart: a stream's waiting reads are not part of any handshake.
        let op = match wait {
            Wait::No => "log.read",
            Wait::ForMore => "log.read_or_wait",
        };
        self.around(op, self.inner.read(after, max, wait)).await
    }

    async fn fence(&self, epoch: Epoch) -> Result<(), ArcpError> {
        self.around("log.fence", self.inner.fence(epoch)).await
    }

    async fn fence_replica(
        &self,
        lost: &ReplicaInstance,
        frames: Vec<StoredFrame>,
    ) -> Result<Option<Vec<EventSeq>>, ArcpError> {
        self.around("log.fence_replica", self.inner.fence_replica(lost, frames))
            .await
    }

    async fn release_through(&self, through: EventSeq, epoch: Epoch) -> Result<(), ArcpError> {
        self.around(
            "log.release_through",
            self.inner.release_through(through, epoch),
        )
        .await
    }

    async fn bounds(&self) -> Result<LogBounds, ArcpError> {
        self.around("log.bounds", self.inner.bounds()).await
    }
}

#[async_trait]
impl ResumeRegistry for Wrapped<dyn ResumeRegistry> {
    async fn issue(
        &self,
        session: &SessionId,
        principal: &Principal,
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError> {
        self.around("resume.issue", self.inner.issue(session, principal, epoch))
            .await
    }

    async fn check(&self, token: &str, principal: &Principal) -> Result<SessionId, ArcpError> {
        self.around("resume.check", self.inner.check(token, principal))
            .await
    }

    async fn rotate(
        &self,
        presented: &str,
        principal: &Principal,
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError> {
        self.around(
            "resume.rotate",
            self.inner.rotate(presented, principal, epoch),
        )
        .await
    }

    async fn start_window(
        &self,
        session: &SessionId,
        epoch: Epoch,
        deadline: SystemTime,
    ) -> Result<bool, ArcpError> {
        self.around(
            "resume.start_window",
            self.inner.start_window(session, epoch, deadline),
        )
        .await
    }

    async fn take_expired(&self, now: SystemTime) -> Result<Vec<SessionId>, ArcpError> {
        self.around("resume.take_expired", self.inner.take_expired(now))
            .await
    }

    async fn remove(&self, session: &SessionId) -> Result<(), ArcpError> {
        self.around("resume.remove", self.inner.remove(session))
            .await
    }
}

#[async_trait]
impl SessionStore for Wrapped<dyn SessionStore> {
    async fn create(&self, session: NewSession) -> Result<Arc<dyn SessionRecord>, ArcpError> {
        let record = self
            .around("sessions.create", self.inner.create(session))
            .await?;
        Ok(Arc::new(self.handle(record)))
    }

    async fn open(&self, id: &SessionId) -> Result<Arc<dyn SessionRecord>, ArcpError> {
        let record = self.around("sessions.open", self.inner.open(id)).await?;
        Ok(Arc::new(self.handle(record)))
    }

    async fn remove(&self, id: &SessionId) -> Result<(), ArcpError> {
        self.around("sessions.remove", self.inner.remove(id)).await
    }

    async fn attached_on(&self, replica: &ReplicaId) -> Result<Vec<(SessionId, Epoch)>, ArcpError> {
        self.around("sessions.attached_on", self.inner.attached_on(replica))
            .await
    }

    async fn forget_attached_on(&self, replica: &ReplicaId) -> Result<(), ArcpError> {
        self.around(
            "sessions.forget_attached_on",
            self.inner.forget_attached_on(replica),
        )
        .await
    }
}

#[async_trait]
impl SessionRecord for Wrapped<dyn SessionRecord> {
    fn id(&self) -> &SessionId {
        self.inner.id()
    }

    fn principal(&self) -> &Principal {
        self.inner.principal()
    }

    fn features(&self) -> Features {
        self.inner.features()
    }

    fn flow(&self) -> Flow {
        self.inner.flow()
    }

    async fn wait_flow(&self, ready: &(dyn for<'f> Fn(&'f Flow) -> bool + Sync)) {
        self.around("session.wait_flow", self.inner.wait_flow(ready))
            .await
    }

    async fn lock_attachment(&self) -> Result<AttachmentLock, ArcpError> {
        self.around("session.lock_attachment", self.inner.lock_attachment())
            .await
    }

    async fn attach(
        &self,
        epoch: Epoch,
        features: Option<Features>,
        from: EventSeq,
    ) -> Result<bool, ArcpError> {
        self.around("session.attach", self.inner.attach(epoch, features, from))
            .await
    }

    async fn detach(&self, epoch: Epoch) -> Result<bool, ArcpError> {
        self.around("session.detach", self.inner.detach(epoch))
            .await
    }

    async fn record_delivered(&self, epoch: Epoch, through: EventSeq) -> Result<bool, ArcpError> {
        self.around(
            "session.record_delivered",
            self.inner.record_delivered(epoch, through),
        )
        .await
    }

    async fn record_ack(&self, epoch: Epoch, through: EventSeq) -> Result<AckOutcome, ArcpError> {
        self.around("session.record_ack", self.inner.record_ack(epoch, through))
            .await
    }
}

#[async_trait]
impl JobDirectory for Wrapped<dyn JobDirectory> {
    async fn insert(&self, control: Arc<dyn JobControl>, caps: JobCaps) -> Result<(), ArcpError> {
        self.around("jobs.insert", self.inner.insert(control, caps))
            .await
    }

    async fn remove(&self, id: &JobId) -> Result<(), ArcpError> {
        self.around("jobs.remove", self.inner.remove(id)).await
    }

    async fn release_slot(&self, id: &JobId) -> Result<(), ArcpError> {
        self.around("jobs.release_slot", self.inner.release_slot(id))
            .await
    }

    async fn finish(&self, entry: JobEntry) -> Result<(), ArcpError> {
        self.around("jobs.finish", self.inner.finish(entry)).await
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobEntry>, ArcpError> {
        self.around("jobs.get", self.inner.get(id)).await
    }

    async fn list(
        &self,
        scope: ListScope<'_>,
        after: Option<&JobId>,
        limit: usize,
        filter: &(dyn for<'e> Fn(&'e JobEntry) -> bool + Sync),
    ) -> Result<(Vec<JobEntry>, bool), ArcpError> {
        self.around("jobs.list", self.inner.list(scope, after, limit, filter))
            .await
    }

    async fn cancel(&self, id: &JobId, reason: Option<String>) -> Result<(), ArcpError> {
        self.around("jobs.cancel", self.inner.cancel(id, reason))
            .await
    }

    async fn subscribe(
        &self,
        id: &JobId,
        subscriber: Subscriber,
        max_per_session: usize,
    ) -> Result<Subscription, ArcpError> {
        self.around(
            "jobs.subscribe",
            self.inner.subscribe(id, subscriber, max_per_session),
        )
        .await
    }

    async fn unsubscribe(&self, id: &JobId, session: &SessionId) -> Result<bool, ArcpError> {
        self.around("jobs.unsubscribe", self.inner.unsubscribe(id, session))
            .await
    }

    async fn held_by(&self, session: &SessionId) -> Result<Holdings, ArcpError> {
        self.around("jobs.held_by", self.inner.held_by(session))
            .await
    }

    async fn purge_finished(&self, before: SystemTime) -> Result<(), ArcpError> {
        self.around("jobs.purge_finished", self.inner.purge_finished(before))
            .await
    }

    async fn running_on(&self, replica: &ReplicaId) -> Result<Vec<LostJob>, ArcpError> {
        self.around("jobs.running_on", self.inner.running_on(replica))
            .await
    }

    async fn finish_lost(&self, entry: JobEntry, lost: &ReplicaId) -> Result<bool, ArcpError> {
        self.around("jobs.finish_lost", self.inner.finish_lost(entry, lost))
            .await
    }
}

#[async_trait]
impl ReplicaRegistry for Wrapped<dyn ReplicaRegistry> {
    fn instance(&self) -> &ReplicaInstance {
        self.inner.instance()
    }

    async fn register(&self, lease: Duration) -> Result<Registration, ArcpError> {
        self.around("replicas.register", self.inner.register(lease))
            .await
    }

    async fn heartbeat(&self, lease: Duration) -> Result<Heartbeat, ArcpError> {
        self.around("replicas.heartbeat", self.inner.heartbeat(lease))
            .await
    }

    async fn claim_lost(&self, claim: Duration) -> Result<Vec<ReplicaInstance>, ArcpError> {
        self.around("replicas.claim_lost", self.inner.claim_lost(claim))
            .await
    }

    async fn taken_over(&self, lost: &ReplicaInstance) -> Result<(), ArcpError> {
        self.around("replicas.taken_over", self.inner.taken_over(lost))
            .await
    }

    async fn leave(&self) -> Result<(), ArcpError> {
        self.around("replicas.leave", self.inner.leave()).await
    }
}

#[async_trait]
impl IdempotencyStore for Wrapped<dyn IdempotencyStore> {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        job: &JobId,
        terms: KeyTerms,
    ) -> Result<Claim, ArcpError> {
        self.around(
            "idempotency.claim",
            self.inner.claim(key, fingerprint, job, terms),
        )
        .await
    }

    async fn accepted(
        &self,
        key: &IdempotencyKey,
        job: &JobId,
        frame: StoredFrame,
    ) -> Result<(), ArcpError> {
        self.around("idempotency.accepted", self.inner.accepted(key, job, frame))
            .await
    }

    async fn release(&self, key: &IdempotencyKey, job: &JobId) -> Result<(), ArcpError> {
        self.around("idempotency.release", self.inner.release(key, job))
            .await
    }

    async fn wait_accepted(
        &self,
        key: &IdempotencyKey,
        job: &JobId,
    ) -> Result<Option<StoredFrame>, ArcpError> {
        self.around(
            "idempotency.wait_accepted",
            self.inner.wait_accepted(key, job),
        )
        .await
    }

    async fn sweep(&self, now: SystemTime) -> Result<(), ArcpError> {
        self.around("idempotency.sweep", self.inner.sweep(now))
            .await
    }
}

#[async_trait]
impl CredentialLedger for Wrapped<dyn CredentialLedger> {
    async fn record(
        &self,
        id: &CredentialId,
        job: &JobId,
        issued_at: SystemTime,
    ) -> Result<(), ArcpError> {
        self.around("credentials.record", self.inner.record(id, job, issued_at))
            .await
    }

    async fn failed(
        &self,
        id: &CredentialId,
        failures: u32,
        next: SystemTime,
    ) -> Result<Option<u32>, ArcpError> {
        self.around("credentials.failed", self.inner.failed(id, failures, next))
            .await
    }

    async fn revoked(&self, id: &CredentialId) -> Result<bool, ArcpError> {
        self.around("credentials.revoked", self.inner.revoked(id))
            .await
    }

    async fn outstanding(&self) -> Result<Vec<Outstanding>, ArcpError> {
        self.around("credentials.outstanding", self.inner.outstanding())
            .await
    }

    async fn adopt(&self, lost: &ReplicaId) -> Result<usize, ArcpError> {
        self.around("credentials.adopt", self.inner.adopt(lost))
            .await
    }
}

/// Every call suspends: it yields to the scheduler before and after the store acts, and one
/// time in four first sleeps 50 to 400 µs (a timer tick, on tokio). Dropping a call's future
/// at one of its yields is how a cancelled call looks.
pub struct Yielding;

#[async_trait]
impl Hook for Yielding {
    async fn before(&self, _: &'static str) -> Option<oneshot::Sender<()>> {
        tokio::task::yield_now().await;
        let pause = {
            let mut rng = rand::rng();
            rng.random_ratio(1, 4)
                .then(|| Duration::from_micros(rng.random_range(50..400)))
        };
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        None
    }

    async fn after(&self, _: &'static str) {
        tokio::task::yield_now().await;
    }
}

/// Calls stopped where a test wants them: [`Script::hold`] stops the next call of one
/// operation before the store acts until the test releases it, and [`Script::hang_call`]
/// makes one call never return, so the test can cancel whatever awaits it.
#[derive(Default)]
pub struct Script {
    holds: Mutex<HashMap<&'static str, VecDeque<Held>>>,
    hang: Mutex<Option<Hang>>,
}

struct Held {
    arrived: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
}

struct Hang {
    /// Calls still to pass before the one that hangs.
    remaining: usize,
    /// Whether the call hangs before the store acts, or after it acted (its answer lost).
    after: bool,
    /// Operations that do not count (the sweeper's, which run on their own schedule).
    ignore: &'static [&'static str],
    reached: Option<oneshot::Sender<&'static str>>,
}

/// A call held by [`Script::hold`].
pub struct Hold {
    arrived: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
}

impl Hold {
    /// Waits until the held call has reached the store.
    pub async fn arrived(&mut self) {
        super::within("the held call to arrive", &mut self.arrived)
            .await
            .expect("the script is alive");
    }

    /// Lets the held call go on.
    pub fn release(self) {
        let _ = self.release.send(());
    }

    /// Lets the held call go on, and waits until it is over.
    pub async fn release_and_wait(self) {
        let _ = self.release.send(());
        super::within("the held call to finish", self.done)
            .await
            .expect("the held call finished");
    }
}

impl Script {
    /// A script that stops nothing until told to.
    pub fn new() -> Arc<Script> {
        Arc::new(Script::default())
    }

    /// Stops the next call of `op` (after those already held) before the store acts.
    pub fn hold(&self, op: &'static str) -> Hold {
        let (arrived_tx, arrived) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        self.holds
            .lock()
            .unwrap()
            .entry(op)
            .or_default()
            .push_back(Held {
                arrived: arrived_tx,
                release: release_rx,
                done: done_tx,
            });
        Hold {
            arrived,
            release,
            done,
        }
    }

    /// Makes the call after the next `skip` counted calls never return, either before the
    /// store acts or, with `after`, once it has acted; resolves with the name of the call that
    /// hangs once it is reached. Calls of `ignore` are not counted.
    pub fn hang_call(
        &self,
        skip: usize,
        after: bool,
        ignore: &'static [&'static str],
    ) -> oneshot::Receiver<&'static str> {
        let (reached, rx) = oneshot::channel();
        *self.hang.lock().unwrap() = Some(Hang {
            remaining: skip,
            after,
            ignore,
            reached: Some(reached),
        });
        rx
    }

    /// Whether the call `op`, now before or after the store acts, is the one that hangs.
    fn hangs(&self, op: &'static str, after: bool) -> bool {
        let mut hang = self.hang.lock().unwrap();
        let Some(h) = hang.as_mut() else { return false };
        if h.ignore.contains(&op) || h.after != after {
            return false;
        }
        if h.remaining > 0 {
            h.remaining -= 1;
            return false;
        }
        if let Some(reached) = h.reached.take() {
            let _ = reached.send(op);
        }
        hang.take();
        true
    }

    /// Stops counting, if the hanging call was not reached.
    pub fn disarm(&self) {
        self.hang.lock().unwrap().take();
    }
}

#[async_trait]
impl Hook for Script {
    async fn before(&self, op: &'static str) -> Option<oneshot::Sender<()>> {
        if self.hangs(op, false) {
            std::future::pending::<()>().await;
        }
        let held = self
            .holds
            .lock()
            .unwrap()
            .get_mut(op)
            .and_then(VecDeque::pop_front);
        let held = held?;
        let _ = held.arrived.send(());
        let _ = held.release.await;
        Some(held.done)
    }

    async fn after(&self, op: &'static str) {
        if self.hangs(op, true) {
            std::future::pending::<()>().await;
        }
    }
}
