//! The job engine: accepts submissions, runs agents, and ends every job with exactly one
//! terminal frame (§7.3).
//!
//! - [`record`]: one job's state and the single path its frames take to the session logs of
//!   its submitter and subscribers.
//! - [`context`]: the handle an agent runs with.
//! - `runner`: drives an agent to the job's terminal frame.
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
    agent::{Agent, AgentRegistry},
    clock::Timestamp,
    config::GatewayConfig,
    credentials::CredentialProvisioner,
    error::ArcpError,
    ids::{EventSeq, JobId, Principal, TraceId},
    lease::{parse_expires_at, EffectiveLease, Namespace},
    protocol::{
        client::{JobSubmit, ListJobs, Subscribe},
        server::{Accepted, JobPayload, JobSummary, NewFrame, Subscribed},
        Features, Json, Lease,
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
        Recipient::submitter(self.session.clone(), self.features.clone())
    }
}

/// Runs jobs.
pub struct JobManager {
    agents: Arc<AgentRegistry>,
    pub(crate) outbox: Outbox,
    jobs: Mutex<BTreeMap<JobId, Arc<JobRecord>>>,
    keys: IdempotencyKeys,
    policy: Arc<dyn ObservePolicy>,
    pub(crate) provisioner: Option<Arc<dyn CredentialProvisioner>>,
    pub(crate) settings: GatewayConfig,
}

/// A job about to start: everything but its record.
pub(crate) struct Start {
    owner: Recipient,
    spec: JobSpec,
    agent: Arc<dyn Agent>,
    input: Json,
    max_runtime: Option<Duration>,
    request_id: Option<String>,
}

impl JobManager {
    /// An engine running `agents` under `settings`, delivering through `outbox`, issuing
    /// credentials through `provisioner` if there is one.
    pub fn new(
        agents: Arc<AgentRegistry>,
        outbox: Outbox,
        settings: GatewayConfig,
        policy: Arc<dyn ObservePolicy>,
        provisioner: Option<Arc<dyn CredentialProvisioner>>,
    ) -> Self {
        JobManager {
            agents,
            outbox,
            jobs: Mutex::new(BTreeMap::new()),
            keys: IdempotencyKeys::new(settings.idempotency_window),
            policy,
            provisioner,
            settings,
        }
    }

    /// Accepts a submission: checks its lease, resolves the agent, appends `job.accepted`,
    /// starts the agent. A repeated idempotent submission gets the original job's
    /// `job.accepted` again.
    pub async fn submit(
        self: &Arc<Self>,
        by: Submitter<'_>,
        submit: JobSubmit,
    ) -> Result<JobId, ArcpError> {
        let needs = |feature: &str, what: &str| {
            if by.features.has(feature) {
                Ok(())
            } else {
                Err(ArcpError::InvalidRequest(format!(
                    "{what} needs the {feature} feature, which this session did not negotiate"
                )))
            }
        };
        if submit.agent.contains('@') {
            needs("agent_versions", "a pinned agent version")?;
        }
        if submit.expires_at.is_some() {
            needs("lease_expires_at", "lease_constraints.expires_at")?;
        }
        for namespace in [Namespace::CostBudget, Namespace::ModelUse] {
            if submit.lease_request.contains_key(namespace.as_str()) {
                needs(namespace.as_str(), &format!("a {namespace} lease"))?;
            }
        }
        let now = std::time::SystemTime::now();
        let expires_at = submit
            .expires_at
            .as_deref()
            .map(|at| parse_expires_at(at, now))
            .transpose()?;
        let lease = EffectiveLease::from_request(
            &submit.lease_request,
            expires_at,
            self.settings.default_model_use.as_deref(),
        )?;
        let agent = self.agents.resolve(&submit.agent)?;
        let id = JobId::generate();
        let principal = &by.session.principal;
        if let Some(key) = &submit.idempotency_key {
            loop {
                match self.keys.claim(principal, key, &submit, &id)? {
                    Claim::New => break,
                    Claim::Existing(mut accepted) => {
                        let frame = accepted
                            .wait_for(Option::is_some)
                            .await
                            .ok()
                            .and_then(|f| f.clone());
                        // None: the first submission was refused and gave the key back.
                        if let Some(frame) = frame {
                            return self.repeat_acceptance(frame, &by).await;
                        }
                    }
                }
            }
        }
        let spec = JobSpec {
            id,
            agent: agent.reference(),
            trace_id: by.trace_id.clone(),
            parent: None,
            initial_budget: lease.budget().map(|b| b.remaining()),
            lease,
            created_at: Timestamp::now(),
        };
        let started = self
            .start(Start {
                owner: by.recipient(),
                spec,
                agent: agent.agent,
                input: submit.input,
                max_runtime: submit
                    .max_runtime_sec
                    .map(|s| Duration::from_secs(s.into())),
                request_id: by.request_id,
            })
            .await;
        if let Some(key) = &submit.idempotency_key {
            match &started {
                Ok(job) => self.keys.accepted(
                    principal,
                    key,
                    job.job_frame(JobPayload::Accepted(Box::new(acceptance(job, None)))),
                ),
                Err(_) => self.keys.release(principal, key),
            }
        }
        started.map(|job| job.id().clone())
    }

    /// Prepares a delegated child of `parent` (§10) in the parent's session: checks that its
    /// lease is a subset of the parent's and reserves its budget. [`JobManager::start_child`]
    /// starts it, once the parent has announced it.
    pub(crate) fn prepare_child(
        &self,
        parent: &Arc<JobRecord>,
        agent: &str,
        input: Json,
        lease_request: &Lease,
        expires_at: Option<&str>,
    ) -> Result<Start, ArcpError> {
        let agent = self.agents.resolve(agent)?;
        let now = std::time::SystemTime::now();
        let expires_at = expires_at.map(|at| parse_expires_at(at, now)).transpose()?;
        // No deployment default: a default wider than the parent's grant would make every
        // child a violation.
        let mut lease = EffectiveLease::from_request(lease_request, expires_at, None)?;
        lease.inherit_expiry(&parent.spec.lease);
        {
            let mut authority = parent.authority.lock();
            parent
                .spec
                .lease
                .check_subset(&lease, authority.budget.as_ref())?;
            if let (Some(remaining), Some(granted)) = (authority.budget.as_mut(), lease.budget()) {
                for (currency, amount) in granted.counters() {
                    remaining.charge(currency, *amount);
                }
            }
        }
        let spec = JobSpec {
            id: JobId::generate(),
            agent: agent.reference(),
            trace_id: parent.spec.trace_id.clone(),
            parent: Some(parent.id().clone()),
            initial_budget: lease.budget().map(|b| b.remaining()),
            lease,
            created_at: Timestamp::now(),
        };
        Ok(Start {
            owner: parent.owner().clone(),
            spec,
            agent: agent.agent,
            input,
            max_runtime: None,
            request_id: None,
        })
    }

    /// Starts a child prepared by [`JobManager::prepare_child`].
    pub(crate) async fn start_child(
        self: &Arc<Self>,
        parent: &JobRecord,
        child: Start,
    ) -> Result<Arc<JobRecord>, ArcpError> {
        let child = self.start(child).await?;
        parent.children.lock().push(child.clone());
        Ok(child)
    }

    /// Issues credentials, records the job, logs `job.accepted` and runs the agent.
    async fn start(self: &Arc<Self>, start: Start) -> Result<Arc<JobRecord>, ArcpError> {
        // §6.2: no credentials for a submitter that did not negotiate them.
        let wants_credentials = start.owner.features.has("provisioned_credentials");
        let credentials = match &self.provisioner {
            Some(provisioner) if wants_credentials => vec![
                provisioner
                    .issue(&start.spec.id, credential_constraints(&start.spec.lease))
                    .await?,
            ],
            _ => Vec::new(),
        };
        let authority = Authority {
            budget: start.spec.lease.budget().cloned(),
            credentials,
        };
        let id = start.spec.id.clone();
        let job = Arc::new(JobRecord::new(start.spec, start.owner, authority));
        // Registered before the acceptance is visible, so a cancel racing right behind
        // `job.accepted` finds the job.
        self.jobs.lock().insert(id.clone(), job.clone());
        let accepted = job
            .emit(
                &self.outbox,
                JobPayload::Accepted(Box::new(acceptance(&job, start.request_id))),
            )
            .await;
        if let Err(e) = accepted {
            self.jobs.lock().remove(&id);
            runner::revoke_credentials(self, &job).await;
            return Err(e);
        }
        tracing::info!(job = %id, session = %job.session(), agent = %job.spec.agent, "job accepted");
        let ctx = JobContext::new(job.clone(), self.clone());
        tokio::spawn(runner::run(
            ctx,
            start.agent,
            start.input,
            start.max_runtime,
        ));
        Ok(job)
    }

    /// §7.2: the same `job.accepted` payload, answering this submit's `id`, in the submitting
    /// session's log.
    async fn repeat_acceptance(
        &self,
        mut frame: crate::protocol::server::JobFrame,
        by: &Submitter<'_>,
    ) -> Result<JobId, ArcpError> {
        if let JobPayload::Accepted(accepted) = &mut frame.payload {
            accepted.request_id = by.request_id.clone();
        }
        let job = frame.job_id.clone();
        self.outbox
            .deliver(&by.recipient(), NewFrame::new(frame))
            .await?;
        Ok(job)
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
            JobPayload::Subscribed(Box::new(Subscribed {
                summary: job.summary(observer),
                subscribed_from: newest,
                replayed,
                request_id: request_id.clone(),
            }))
        };
        let subscriber =
            Recipient::observer(session.clone(), features, observer == job.principal());
        if job.session() == &session.id {
            // The session already receives every frame of its own job; announcing is all
            // there is to do, and replaying would repeat frames it has.
            let frame = job.frame(announce(job.summary(observer).last_event_seq, false));
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

/// What the upstream is asked to enforce for a job's credential (§9.8.3).
fn credential_constraints(lease: &EffectiveLease) -> serde_json::Map<String, Json> {
    let mut constraints = serde_json::Map::new();
    let wire = lease.to_wire();
    for namespace in [Namespace::CostBudget, Namespace::ModelUse] {
        if let Some(patterns) = wire.get(namespace.as_str()) {
            constraints.insert(namespace.as_str().into(), serde_json::json!(patterns));
        }
    }
    if let Some(at) = lease.expires_at() {
        constraints.insert(
            "expires_at".into(),
            Json::String(Timestamp(at).to_rfc3339()),
        );
    }
    constraints
}

/// The `job.accepted` payload of `job`, answering the submit frame `request_id`.
fn acceptance(job: &JobRecord, request_id: Option<String>) -> Accepted {
    let authority = job.authority.lock();
    Accepted {
        agent: job.spec.agent.clone(),
        lease: job.spec.lease.to_wire(),
        expires_at: job.spec.lease.expires_at().map(Timestamp),
        budget: job.spec.initial_budget.clone(),
        credentials: authority.credentials.clone(),
        parent_job_id: job.spec.parent.clone(),
        accepted_at: job.spec.created_at,
        request_id,
    }
}
