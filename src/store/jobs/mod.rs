//! The job directory: every job of every session, by id, wherever it runs. Listing (§6.6),
//! cancelling (§7.4) and subscribing (§7.6) all name a job by id and go through the directory,
//! which routes what needs the running job to its [`JobControl`], so a session can act on a job
//! another replica runs.
//!
//! A running job's entry is what its control reports now; once the job ends, the directory
//! keeps its final entry until it is purged. [`memory::MemoryJobDirectory`] is the embedded
//! store.
//!
//! The directory also enforces the caps that must hold across replicas: running jobs per
//! session and per principal ([`JobCaps`], checked in the same step as the insert) and
//! subscriptions per session (checked in the same step as the subscription), and it answers
//! what a session holds ([`Holdings`]), so that whoever sweeps an expired session can end its
//! jobs and drop its subscriptions wherever they run.
//!
//! A directory shared by replicas knows which replica runs each job, so that when one is
//! declared lost another can find its running jobs ([`JobDirectory::running_on`]) and end
//! each once ([`JobDirectory::finish_lost`]); from then on the lost replica's own end of the
//! job changes nothing. A directory of one process has no other replica to lose.

pub mod memory;
pub mod redis;

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use async_trait::async_trait;

use crate::{
    clock::Timestamp,
    error::ArcpError,
    ids::{EventSeq, JobId, Principal, ReplicaId, SessionId, TraceId},
    protocol::{
        control::JobSummary, credential::Credential, job_frame::JobStatus, Features, Lease,
    },
};

/// What the directory knows of a job.
#[derive(Clone, Debug)]
pub struct JobEntry {
    /// The job.
    pub id: JobId,
    /// The session that submitted it.
    pub session: SessionId,
    /// The principal that submitted it.
    pub principal: Principal,
    /// `name@version`.
    pub agent: String,
    /// Running, or how it ended.
    pub status: JobStatus,
    /// The effective lease.
    pub lease: Lease,
    /// `lease_constraints.expires_at`.
    pub expires_at: Option<Timestamp>,
    /// Current budget counters, when the lease has `cost.budget`.
    pub budget: Option<BTreeMap<String, f64>>,
    /// The delegating job, for a child job (§10).
    pub parent: Option<JobId>,
    /// When it was accepted.
    pub created_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<SystemTime>,
    /// Its trace context (§11).
    pub trace_id: Option<TraceId>,
    /// The sequence number of its newest frame in its own session.
    pub last_event_seq: EventSeq,
    /// Its live credentials (§9.8); shown to the submitting principal only.
    pub credentials: Vec<Credential>,
}

impl JobEntry {
    /// The observable view of the job for `observer` (§6.6, §7.6): credentials only for the
    /// submitter (§14).
    pub fn summary(&self, observer: &Principal) -> JobSummary {
        JobSummary {
            job_id: self.id.clone(),
            agent: self.agent.clone(),
            status: self.status.as_str(),
            lease: self.lease.clone(),
            expires_at: self.expires_at,
            budget: self.budget.clone(),
            parent_job_id: self.parent.clone(),
            created_at: self.created_at,
            trace_id: self.trace_id.clone(),
            last_event_seq: self.last_event_seq,
            credentials: if observer == &self.principal {
                self.credentials.clone()
            } else {
                Vec::new()
            },
        }
    }
}

/// A running job of a replica that was declared lost, as the replica taking it over finds it.
#[derive(Clone, Debug)]
pub struct LostJob {
    /// Its entry, as its replica last wrote it.
    pub entry: JobEntry,
    /// The sessions subscribed to it (§7.6), which receive its end too.
    pub subscribers: Vec<SessionId>,
}

/// A session asking to receive a job's frames (§7.6).
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// The subscribing session.
    pub session: SessionId,
    /// Its principal; only the submitter's sees credentials (§14).
    pub principal: Principal,
    /// Its effective features.
    pub features: Features,
    /// Replay the job's buffered frames after this sequence number (in the job's own
    /// session) first, if set.
    pub history: Option<EventSeq>,
    /// The `id` of the `job.subscribe`.
    pub request_id: Option<String>,
}

/// What a subscription found.
#[derive(Clone, Debug)]
pub enum Subscription {
    /// The running job took the subscriber.
    Live,
    /// The job had ended, with this final entry; it takes no subscribers.
    Ended(Box<JobEntry>),
}

/// How many jobs may run at once, counted by the directory over every replica. A delegated
/// child counts like any other job of its session.
#[derive(Clone, Copy, Debug)]
pub struct JobCaps {
    /// Running jobs one session may have.
    pub per_session: usize,
    /// Running jobs one principal may have, over all its sessions.
    pub per_principal: usize,
}

/// What one session holds in the directory: the jobs it submitted that still count as running,
/// and the running jobs it subscribes to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Its running jobs, delegated children included.
    pub running: Vec<JobId>,
    /// The running jobs of other sessions it subscribes to.
    pub subscriptions: Vec<JobId>,
}

/// Which jobs a listing covers.
#[derive(Clone, Copy, Debug)]
pub enum ListScope<'a> {
    /// The jobs one principal submitted.
    Principal(&'a Principal),
    /// Every job.
    All,
}

/// The running job, as the directory reaches it.
#[async_trait]
pub trait JobControl: Send + Sync + 'static {
    /// The job's entry as of now.
    fn entry(&self) -> JobEntry;

    /// Asks the job to stop (§7.4); `INVALID_REQUEST` if it already ended.
    fn cancel(&self, reason: Option<String>) -> Result<(), ArcpError>;

    /// Starts delivering the job's frames to `subscriber`'s session, after its
    /// `job.subscribed` and the history it asked for.
    async fn subscribe(&self, subscriber: Subscriber) -> Result<(), ArcpError>;

    /// Stops delivering to `session`; `false` if it was not subscribed.
    async fn unsubscribe(&self, session: &SessionId) -> Result<bool, ArcpError>;
}

/// The store of every job.
///
/// Every call may suspend and may be cancelled by dropping its future; a dropped call has
/// either taken full effect or none.
#[async_trait]
pub trait JobDirectory: Send + Sync + 'static {
    /// Registers a job that started on this replica, reached through `control`, unless its
    /// session or its principal already runs as many jobs as `caps` allow: then nothing is
    /// registered and the answer is `PERMISSION_DENIED` naming the cap. The count and the
    /// insert are one step, so two racing inserts cannot both take the last slot.
    async fn insert(&self, control: Arc<dyn JobControl>, caps: JobCaps) -> Result<(), ArcpError>;

    /// Forgets a job whose acceptance could not be logged, which no client ever saw.
    async fn remove(&self, id: &JobId) -> Result<(), ArcpError>;

    /// Stops counting a running job against the caps, its own and its subscribers': it is
    /// about to end. Called before its terminal frame is logged, so a client that saw the job
    /// end may start another job, or subscribe to another, at once. Its entry stays what its
    /// control reports until [`JobDirectory::finish`], and its subscribers still receive its
    /// end; it takes no new counted subscriptions. A no-op for a job that no longer counts.
    async fn release_slot(&self, id: &JobId) -> Result<(), ArcpError>;

    /// Records that the job ended with `entry` as its final state; it stops counting against
    /// the caps, and its subscriptions end.
    async fn finish(&self, entry: JobEntry) -> Result<(), ArcpError>;

    /// A job by id.
    async fn get(&self, id: &JobId) -> Result<Option<JobEntry>, ArcpError>;

    /// Up to `limit` jobs of `scope` that pass `filter`, in id order after `after`, and whether
    /// more follow.
    async fn list(
        &self,
        scope: ListScope<'_>,
        after: Option<&JobId>,
        limit: usize,
        filter: &(dyn for<'e> Fn(&'e JobEntry) -> bool + Sync),
    ) -> Result<(Vec<JobEntry>, bool), ArcpError>;

    /// Asks a running job to stop; `JOB_NOT_FOUND` if there is no such job, `INVALID_REQUEST`
    /// if it already ended. A job that released its slot ([`JobDirectory::release_slot`]) is
    /// ending, and a store may refuse its cancel so without asking it, as the job would.
    async fn cancel(&self, id: &JobId, reason: Option<String>) -> Result<(), ArcpError>;

    /// Subscribes to a running job through its control (see [`JobControl::subscribe`]); for a
    /// job that already ended, returns its final entry, for the caller to replay from its
    /// session's log. A subscription to a running job is refused with `PERMISSION_DENIED`
    /// when the subscriber's session already holds `max_per_session` of them; the count and
    /// the taking of the slot are one step. A call dropped while the job takes the subscriber
    /// may keep its slot, which frees when the job ends or the session unsubscribes.
    async fn subscribe(
        &self,
        id: &JobId,
        subscriber: Subscriber,
        max_per_session: usize,
    ) -> Result<Subscription, ArcpError>;

    /// Unsubscribes `session` from a job, freeing its slot; `false` if it was not subscribed.
    async fn unsubscribe(&self, id: &JobId, session: &SessionId) -> Result<bool, ArcpError>;

    /// What `session` holds: its running jobs and its subscriptions to running jobs, each
    /// in id order.
    async fn held_by(&self, session: &SessionId) -> Result<Holdings, ArcpError>;

    /// Forgets jobs that ended before `before`.
    async fn purge_finished(&self, before: SystemTime) -> Result<(), ArcpError>;

    /// The jobs replica `replica` runs, with their subscribers: for a replica that was
    /// declared lost, what its takeover must end.
    async fn running_on(&self, replica: &ReplicaId) -> Result<Vec<LostJob>, ArcpError>;

    /// Records that job `entry.id`, which lost replica `lost` ran, ended with `entry`: it
    /// stops counting against the caps, its subscriptions end, and what `lost` itself later
    /// records of the job (a refresh, its end) is ignored. Returns `false`, changing nothing,
    /// unless the job was still running on `lost`, so that of two takeovers one ends it.
    async fn finish_lost(&self, entry: JobEntry, lost: &ReplicaId) -> Result<bool, ArcpError>;
}

/// The error for a job that does not exist, or that the asker may not see (§6.6).
pub fn not_found(job_id: &JobId) -> ArcpError {
    ArcpError::JobNotFound(format!("no job {job_id}"))
}

/// The error for an action on a job that already ended.
pub fn already_ended(job_id: &JobId, status: JobStatus) -> ArcpError {
    ArcpError::InvalidRequest(format!("job {job_id} already ended ({})", status.as_str()))
}
