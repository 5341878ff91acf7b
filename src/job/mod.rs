//! The job engine: accepts submissions, runs agents, and ends every job with exactly one
//! terminal frame (§7.3).
//!
//! - [`record`]: one job's state and the single path its frames take to the session logs of
//!   its submitter and subscribers.
//! - [`context`]: the handle an agent runs with.
//! - [`runner`]: drives an agent to the job's terminal frame.
//! - [`idempotency`]: `idempotency_key` (§7.2).
//! - [`listing`]: `session.list_jobs` filters and cursors (§6.6).
//!
//! Jobs do not depend on a connection: they keep running and appending while the client is
//! away (§6.4).

pub mod context;
pub mod idempotency;
pub mod listing;
pub mod record;
mod runner;

use std::{
    collections::{BTreeMap, HashSet},
    ops::Bound,
    sync::Arc,
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;

use crate::{
    agent::AgentRegistry,
    clock::Timestamp,
    error::ArcpError,
    ids::{EventSeq, JobId, Principal, TraceId},
    protocol::{
        client::{JobSubmit, ListJobs, Subscribe},
        server::{Accepted, JobPayload, JobSummary, Subscribed},
        Features,
    },
    session::{
        outbox::{Outbox, Recipient},
        Session,
    },
};

use context::JobContext;
use idempotency::{Claim, IdempotencyKeys};
use record::{Authority, JobRecord, JobSpec};

pub use record::JobStatus;

/// Who may observe (list, subscribe to) jobs submitted by other principals (§6.6, §7.6). The
/// submitter may always observe its own jobs; this decides only for everyone else.
pub trait ObservePolicy: Send + Sync + 'static {
    /// Whether `observer` may see `job`.
    fn may_observe(&self, observer: &Principal, job: &JobRecord) -> bool;
}

/// The default of §14: nobody observes another principal's jobs.
pub struct SamePrincipalOnly;

impl ObservePolicy for SamePrincipalOnly {
    fn may_observe(&self, _: &Principal, _: &JobRecord) -> bool {
        false
    }
}

/// Named principals (auditors, dashboards) may observe every job; nobody else may observe
/// other principals' jobs.
pub struct Observers(pub HashSet<Principal>);

impl ObservePolicy for Observers {
    fn may_observe(&self, observer: &Principal, _: &JobRecord) -> bool {
        self.0.contains(observer)
    }
}

/// Who submits, from where: what the engine needs besides the submission itself.
pub struct Submitter<'a> {
    /// The submitting session.
    pub session: &'a Arc<Session>,
    /// The session's effective features.
    pub features: Features,
    /// The `id` of the `job.submit` frame.
    pub request_id: Option<String>,
    /// The submit frame's `trace_id`.
    pub trace_id: Option<TraceId>,
}

impl Submitter<'_> {
    fn recipient(&self) -> Recipient {
        Recipient {
            session: self.session.clone(),
            features: self.features.clone(),
            sees_secrets: true,
        }
    }
}

/// Runs jobs.
pub struct JobManager {
    agents: Arc<AgentRegistry>,
    outbox: Outbox,
    jobs: Mutex<BTreeMap<JobId, Arc<JobRecord>>>,
    keys: IdempotencyKeys,
    policy: Arc<dyn ObservePolicy>,
}

impl JobManager {
    /// An engine running `agents`, delivering through `outbox`, keeping idempotency keys for
    /// `key_window`.
    pub fn new(
        agents: Arc<AgentRegistry>,
        outbox: Outbox,
        key_window: Duration,
        policy: Arc<dyn ObservePolicy>,
    ) -> Self {
        JobManager {
            agents,
            outbox,
            jobs: Mutex::new(BTreeMap::new()),
            keys: IdempotencyKeys::new(key_window),
            policy,
        }
    }

    /// Accepts a submission: resolves the agent, appends `job.accepted`, starts the agent. A
    /// repeated idempotent submission gets the original job's `job.accepted` again.
    pub async fn submit(
        &self,
        by: Submitter<'_>,
        submit: JobSubmit,
    ) -> Result<Arc<JobRecord>, ArcpError> {
        if submit.agent.contains('@') && !by.features.has("agent_versions") {
            return Err(ArcpError::InvalidRequest(
                "a pinned agent version needs the agent_versions feature, which this session did not negotiate"
                    .into(),
            ));
        }
        if submit.expires_at.is_some() {
            return Err(ArcpError::InvalidRequest(
                "lease_constraints.expires_at needs the lease_expires_at feature, which this runtime does not offer yet"
                    .into(),
            ));
        }
        let agent = self.agents.resolve(&submit.agent)?;
        let id = JobId::generate();
        let principal = &by.session.principal;
        if let Some(key) = &submit.idempotency_key {
            if let Claim::Existing(existing) = self.keys.claim(principal, key, &submit, &id)? {
                if let Some(job) = self.get(&existing) {
                    self.repeat_acceptance(&job, &by).await?;
                    return Ok(job);
                }
                // The job was forgotten; the key starts afresh.
                self.keys.release(principal, key);
                self.keys.claim(principal, key, &submit, &id)?;
            }
        }
        let accepted_at = Timestamp::now();
        let spec = JobSpec {
            id: id.clone(),
            agent: agent.reference(),
            trace_id: by.trace_id.clone(),
            parent: None,
            lease: submit.lease_request.clone(),
            expires_at: None,
            created_at: accepted_at,
        };
        let job = Arc::new(JobRecord::new(spec, by.recipient(), Authority::default()));
        // Registered before the acceptance is visible, so a cancel racing right behind
        // `job.accepted` finds the job.
        self.jobs.lock().insert(id.clone(), job.clone());
        let accepted = job
            .emit(
                &self.outbox,
                JobPayload::Accepted(acceptance(&job, by.request_id)),
            )
            .await;
        if let Err(e) = accepted {
            self.jobs.lock().remove(&id);
            if let Some(key) = &submit.idempotency_key {
                self.keys.release(principal, key);
            }
            return Err(e);
        }
        tracing::info!(job = %id, session = %job.session(), agent = %job.spec.agent, "job accepted");
        let ctx = JobContext::new(job.clone(), self.outbox.clone());
        let max_runtime = submit
            .max_runtime_sec
            .map(|s| Duration::from_secs(s.into()));
        tokio::spawn(runner::run(ctx, agent.agent, submit.input, max_runtime));
        Ok(job)
    }

    /// §7.2: the same `job.accepted` payload, answering this submit's `id`, in the submitting
    /// session's log.
    async fn repeat_acceptance(
        &self,
        job: &JobRecord,
        by: &Submitter<'_>,
    ) -> Result<(), ArcpError> {
        let frame = crate::protocol::server::JobFrame {
            job_id: job.id().clone(),
            trace_id: job.spec.trace_id.clone(),
            payload: JobPayload::Accepted(acceptance(job, by.request_id.clone())),
        };
        self.outbox
            .deliver(&by.recipient(), frame)
            .await
            .map(|_| ())
    }

    /// Cancels a running job on behalf of `session` (§7.4).
    pub fn cancel(
        &self,
        session: &Session,
        job_id: &JobId,
        reason: Option<String>,
    ) -> Result<(), ArcpError> {
        let job = self.visible(&session.principal, job_id)?;
        if job.session() != &session.id {
            return Err(ArcpError::PermissionDenied(
                "only the session that submitted a job may cancel it; subscribers only observe"
                    .into(),
            ));
        }
        job.request_cancel(reason)
    }

    /// One page of the jobs `observer` may see (§6.6).
    pub fn list(
        &self,
        observer: &Principal,
        request: ListJobs,
    ) -> Result<(Vec<JobSummary>, Option<String>), ArcpError> {
        let query = listing::Query::parse(request)?;
        let mut page = Vec::new();
        let mut more = false;
        {
            let jobs = self.jobs.lock();
            let start = query
                .after
                .clone()
                .map_or(Bound::Unbounded, Bound::Excluded);
            for job in jobs.range((start, Bound::Unbounded)).map(|(_, j)| j) {
                if !self.may_observe(observer, job) || !query.matches(job) {
                    continue;
                }
                if page.len() == query.limit {
                    more = true;
                    break;
                }
                page.push(job.clone());
            }
        }
        let next = more
            .then(|| page.last().map(|j| listing::encode_cursor(j.id())))
            .flatten();
        Ok((page.iter().map(|j| j.summary(observer)).collect(), next))
    }

    /// Attaches `session` to a job (§7.6). Every decision is logged for audit (§14).
    pub async fn subscribe(
        &self,
        session: &Arc<Session>,
        features: Features,
        request: Subscribe,
        request_id: Option<String>,
    ) -> Result<(), ArcpError> {
        let observer = &session.principal;
        let job = self
            .get(&request.job_id)
            .ok_or_else(|| not_found(&request.job_id))?;
        let permitted = self.may_observe(observer, &job);
        tracing::info!(
            target: "arcp::audit",
            subscriber = %observer,
            session = %session.id,
            job = %job.id(),
            job_principal = %job.principal(),
            decision = if permitted { "permit" } else { "deny" },
            "job.subscribe"
        );
        if !permitted {
            return Err(ArcpError::PermissionDenied(format!(
                "principal {observer} may not observe job {}",
                request.job_id
            )));
        }
        let announce = |newest: EventSeq, replayed: bool| {
            JobPayload::Subscribed(Subscribed {
                summary: job.summary(observer),
                subscribed_from: newest,
                replayed,
                request_id: request_id.clone(),
            })
        };
        let subscriber = Recipient {
            session: session.clone(),
            features,
            sees_secrets: observer == job.principal(),
        };
        if job.session() == &session.id {
            // The session already receives every frame of its own job; announcing is all
            // there is to do, and replaying would repeat frames it has.
            let frame = crate::protocol::server::JobFrame {
                job_id: job.id().clone(),
                trace_id: job.spec.trace_id.clone(),
                payload: announce(job.summary(observer).last_event_seq, false),
            };
            return self.outbox.deliver(&subscriber, frame).await.map(|_| ());
        }
        let history = request
            .history
            .then(|| request.from_event_seq.unwrap_or(EventSeq::ZERO));
        job.attach(&self.outbox, subscriber, history, announce)
            .await
    }

    /// Detaches `session` from a job it subscribed to.
    pub async fn unsubscribe(&self, session: &Session, job_id: &JobId) -> Result<(), ArcpError> {
        let job = self.visible(&session.principal, job_id)?;
        if job.detach(&session.id).await {
            Ok(())
        } else {
            Err(ArcpError::InvalidRequest(format!(
                "this session is not subscribed to job {job_id}"
            )))
        }
    }

    /// A job by id.
    pub fn get(&self, job_id: &JobId) -> Option<Arc<JobRecord>> {
        self.jobs.lock().get(job_id).cloned()
    }

    /// Forgets jobs that ended before `before`, and idempotency keys past their window.
    pub fn purge_finished(&self, before: SystemTime) {
        self.jobs.lock().retain(|_, j| !j.finished_before(before));
        self.keys.sweep(SystemTime::now());
    }

    fn may_observe(&self, observer: &Principal, job: &JobRecord) -> bool {
        observer == job.principal() || self.policy.may_observe(observer, job)
    }

    /// A job `observer` may see; any other is reported as not found, so job ids of other
    /// principals cannot be probed (§6.6).
    fn visible(&self, observer: &Principal, job_id: &JobId) -> Result<Arc<JobRecord>, ArcpError> {
        self.get(job_id)
            .filter(|j| self.may_observe(observer, j))
            .ok_or_else(|| not_found(job_id))
    }
}

fn not_found(job_id: &JobId) -> ArcpError {
    ArcpError::JobNotFound(format!("no job {job_id}"))
}

/// The `job.accepted` payload of `job`, answering the submit frame `request_id`.
fn acceptance(job: &JobRecord, request_id: Option<String>) -> Accepted {
    let authority = job.authority.lock();
    Accepted {
        agent: job.spec.agent.clone(),
        lease: job.spec.lease.clone(),
        expires_at: job.spec.expires_at,
        budget: authority.budget.clone(),
        credentials: authority.credentials.clone(),
        parent_job_id: job.spec.parent.clone(),
        accepted_at: job.spec.created_at,
        request_id,
    }
}
