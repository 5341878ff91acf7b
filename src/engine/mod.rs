//! The job engine: accepts submissions, runs agents, and ends every job with exactly one
//! terminal frame (§7.3).
//!
//! - this module: `JobManager`: submit (with idempotency, §7.2), cancel, list, subscribe.
//! - `runner`: drives an agent to the job's terminal frame, then releases what it held.
//! - `delegation`: child jobs (§10).
//!
//! The engine reaches jobs by id through the [`JobDirectory`], and idempotency keys through
//! the [`IdempotencyStore`], so another replica's jobs and keys are as reachable as its own.

mod delegation;
mod runner;

use std::{
    collections::HashSet,
    sync::{Arc, Weak},
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};

use crate::{
    agent::{Agent, AgentRegistry},
    clock::Timestamp,
    encoding::StoredFrame,
    error::{excerpt, ArcpError},
    ids::{EventSeq, JobId, Principal, SessionId, TraceId},
    job::{
        delivery::{announcement, Outgoing, Recipient},
        listing,
        record::{Authority, JobRecord, JobSpec},
        running::Running,
        JobServices,
    },
    lease::{parse_expires_at, EffectiveLease, Namespace},
    protocol::{
        client::{JobSubmit, ListJobs, Subscribe},
        control::JobSummary,
        job_frame::{Accepted, JobPayload},
        Features, Json,
    },
    store::{
        idempotency::{Claim, Fingerprint, IdempotencyKey, IdempotencyStore, KeyTerms},
        jobs::{not_found, JobCaps, JobDirectory, JobEntry, ListScope, Subscriber, Subscription},
        log::SessionLog,
        session::SessionRecord,
    },
};

/// Who may observe (list, subscribe to) jobs submitted by other principals (§6.6, §7.6). The
/// submitter may always observe its own jobs; this decides only for everyone else.
pub trait ObservePolicy: Send + Sync + 'static {
    /// Whether `observer` may see `job`.
    fn may_observe(&self, observer: &Principal, job: &JobEntry) -> bool;

    /// Whether `observer` may see any other principal's job at all; when not, a listing
    /// covers only its own jobs.
    fn may_observe_others(&self, _observer: &Principal) -> bool {
        true
    }
}

/// The default of §14: nobody observes another principal's jobs.
pub struct SamePrincipalOnly;

impl ObservePolicy for SamePrincipalOnly {
    fn may_observe(&self, _: &Principal, _: &JobEntry) -> bool {
        false
    }

    fn may_observe_others(&self, _: &Principal) -> bool {
        false
    }
}

/// Named principals (auditors, dashboards) may observe every job; nobody else may observe
/// other principals' jobs.
pub struct Observers(pub HashSet<Principal>);

impl ObservePolicy for Observers {
    fn may_observe(&self, observer: &Principal, _: &JobEntry) -> bool {
        self.0.contains(observer)
    }

    fn may_observe_others(&self, observer: &Principal) -> bool {
        self.0.contains(observer)
    }
}

/// Who submits, from where: what the engine needs besides the submission itself.
pub(crate) struct Submitter {
    /// The submitting session's record.
    pub record: Arc<dyn SessionRecord>,
    /// Its log.
    pub log: Arc<dyn SessionLog>,
    /// Its effective features.
    pub features: Features,
    /// The `id` of the `job.submit` frame.
    pub request_id: Option<String>,
    /// The submit frame's `trace_id`.
    pub trace_id: Option<TraceId>,
}

impl Submitter {
    fn recipient(&self) -> Recipient {
        Recipient::submitter(self.record.clone(), self.log.clone(), self.features.clone())
    }

    fn principal(&self) -> &Principal {
        self.record.principal()
    }
}

/// Runs jobs.
pub(crate) struct JobManager {
    agents: Arc<AgentRegistry>,
    services: Arc<JobServices>,
    directory: Arc<dyn JobDirectory>,
    keys: Arc<dyn IdempotencyStore>,
    policy: Arc<dyn ObservePolicy>,
    /// The engine itself, for the jobs it starts, which start children through it.
    me: Weak<JobManager>,
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

/// A job in the directory, counted against the caps, not yet accepted.
pub(crate) struct Registered {
    job: Arc<JobRecord>,
    agent: Arc<dyn Agent>,
    input: Json,
    max_runtime: Option<Duration>,
    request_id: Option<String>,
}

impl JobManager {
    /// An engine running `agents` with `services`, reaching jobs through `directory` and
    /// idempotency keys through `keys`; `policy` decides who observes whose jobs.
    pub fn new(
        agents: Arc<AgentRegistry>,
        services: Arc<JobServices>,
        directory: Arc<dyn JobDirectory>,
        keys: Arc<dyn IdempotencyStore>,
        policy: Arc<dyn ObservePolicy>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| JobManager {
            agents,
            services,
            directory,
            keys,
            policy,
            me: me.clone(),
        })
    }

    /// The jobs running on this replica.
    pub fn running(&self) -> &Running {
        &self.services.running
    }

    /// Accepts a submission: checks its lease, resolves the agent, appends `job.accepted`,
    /// starts the agent. A repeated idempotent submission gets the original job's
    /// `job.accepted` again.
    ///
    /// Runs to completion once started, even if the caller stops waiting: a submission the
    /// runtime received is accepted or refused as a whole, never left half done (credentials
    /// issued but never revoked, an idempotency key claimed by no job).
    pub async fn submit(&self, by: Submitter, submit: JobSubmit) -> Result<JobId, ArcpError> {
        let engine = self.me.upgrade().ok_or_else(stopped)?;
        tokio::spawn(async move { engine.submit_now(by, submit).await })
            .await
            .map_err(|e| ArcpError::Internal(format!("the submission failed: {e}")))?
    }

    async fn submit_now(&self, by: Submitter, submit: JobSubmit) -> Result<JobId, ArcpError> {
        self.check_sizes(&submit)?;
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
        let now = SystemTime::now();
        let expires_at = submit
            .expires_at
            .as_deref()
            .map(|at| parse_expires_at(at, now))
            .transpose()?;
        let lease = EffectiveLease::from_request(
            &submit.lease_request,
            expires_at,
            self.services.settings.default_model_use.as_deref(),
        )?;
        let agent = self.agents.resolve(&submit.agent)?;
        let max_runtime = self.max_runtime(submit.max_runtime_sec)?;
        let id = JobId::generate();
        let key = submit.idempotency_key.as_ref().map(|key| IdempotencyKey {
            principal: by.principal().clone(),
            key: key.clone(),
        });
        if let Some(key) = &key {
            if let Some(frame) = self.claim(key, fingerprint(&submit), &id).await? {
                return self.repeat_acceptance(frame, &by).await;
            }
        }
        let spec = JobSpec {
            id: id.clone(),
            agent: agent.reference(),
            trace_id: by.trace_id.clone(),
            parent: None,
            initial_budget: lease.budget().map(|b| b.remaining()),
            lease,
            created_at: Timestamp::now(),
            principal: by.principal().clone(),
        };
        let started = self
            .start(Start {
                owner: by.recipient(),
                spec,
                agent: agent.agent,
                input: submit.input,
                max_runtime,
                request_id: by.request_id,
            })
            .await;
        if let Some(key) = &key {
            let recorded = match &started {
                Ok(job) => {
                    let accepted = JobPayload::Accepted(Box::new(acceptance(job, None)));
                    let frame = StoredFrame::encode(&job.job_frame(accepted));
                    self.keys.accepted(key, job.id(), frame).await
                }
                Err(_) => self.keys.release(key, &id).await,
            };
            if let Err(e) = recorded {
                tracing::warn!(job = %id, "idempotency key not updated: {e}");
            }
        }
        started.map(|job| job.id().clone())
    }

    /// Refuses a submission whose input or idempotency key is over its limit, before anything
    /// holds on to either.
    fn check_sizes(&self, submit: &JobSubmit) -> Result<(), ArcpError> {
        let settings = &self.services.settings;
        let limit = settings.max_input_bytes;
        if json_len_over(&submit.input, limit) {
            return Err(ArcpError::InvalidRequest(format!(
                "the job input is over the largest input of {limit} bytes of JSON \
                 (max_input_bytes)"
            )));
        }
        let limit = settings.max_idempotency_key_bytes;
        if let Some(key) = submit.idempotency_key.as_ref().filter(|k| k.len() > limit) {
            return Err(ArcpError::InvalidRequest(format!(
                "the idempotency_key is {} bytes, over the longest key of {limit} bytes \
                 (max_idempotency_key_bytes)",
                key.len()
            )));
        }
        Ok(())
    }

    /// Claims `key` for job `id`: `None` if the job now holds it, or the `job.accepted` frame
    /// of the job that held it first. A repeat racing the first acceptance waits for it; if
    /// that submission is refused after all, the key is free again and claimed anew.
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        id: &JobId,
    ) -> Result<Option<StoredFrame>, ArcpError> {
        let settings = &self.services.settings;
        let terms = KeyTerms {
            window: settings.idempotency_window,
            max_per_principal: settings.max_idempotency_keys_per_principal,
        };
        loop {
            match self.keys.claim(key, fingerprint, id, terms).await? {
                Claim::New => return Ok(None),
                Claim::Conflict { job } => {
                    return Err(ArcpError::DuplicateKey(format!(
                        "idempotency_key {} was used for job {job} with different parameters",
                        excerpt(&key.key, KEY_PREFIX_CHARS)
                    )))
                }
                Claim::Existing {
                    accepted: Some(frame),
                    ..
                } => return Ok(Some(frame)),
                Claim::Existing {
                    job,
                    accepted: None,
                } => {
                    if let Some(frame) = self.keys.wait_accepted(key, &job).await? {
                        return Ok(Some(frame));
                    }
                }
            }
        }
    }

    /// Issues credentials, records the job, logs `job.accepted` and runs the agent.
    async fn start(&self, start: Start) -> Result<Arc<JobRecord>, ArcpError> {
        let registered = self.register(start).await?;
        self.launch(registered).await
    }

    /// Issues the job's credentials and records it in the directory, which refuses it if its
    /// session or principal already runs as many jobs as the caps allow. Nothing of the job
    /// is visible to any client yet.
    async fn register(&self, start: Start) -> Result<Registered, ArcpError> {
        // §6.2: no credentials for a submitter that did not negotiate them.
        let wants_credentials = start.owner.features.has("provisioned_credentials");
        let credentials = match &self.services.provisioner {
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
        let job = Arc::new(JobRecord::new(
            start.spec,
            start.owner,
            authority,
            self.services.clone(),
        ));
        // Registered before the acceptance is visible, so a cancel racing right behind
        // `job.accepted` finds the job.
        if let Err(e) = self.directory.insert(job.clone(), self.job_caps()).await {
            self.abandon(&job).await;
            return Err(e);
        }
        Ok(Registered {
            job,
            agent: start.agent,
            input: start.input,
            max_runtime: start.max_runtime,
            request_id: start.request_id,
        })
    }

    /// Logs `job.accepted` for a registered job and runs its agent.
    async fn launch(&self, registered: Registered) -> Result<Arc<JobRecord>, ArcpError> {
        let Registered {
            job,
            agent,
            input,
            max_runtime,
            request_id,
        } = registered;
        let accepted = JobPayload::Accepted(Box::new(acceptance(&job, request_id)));
        // Logged before the job counts as accepted: a failure is the submit's.
        let logged = match job.emit(accepted).await {
            Ok(()) => job.logged().await,
            Err(e) => Err(e),
        };
        if let Err(e) = logged {
            self.abandon(&job).await;
            return Err(e);
        }
        tracing::info!(job = %job.id(), session = %job.session(), agent = %job.spec.agent, "job accepted");
        let engine = self.me.upgrade().ok_or_else(stopped)?;
        self.services.running.spawn(runner::run(
            job.clone(),
            engine,
            self.directory.clone(),
            agent,
            input,
            max_runtime,
        ));
        Ok(job)
    }

    /// Undoes [`JobManager::register`] for a job no client ever saw accepted.
    async fn abandon(&self, job: &JobRecord) {
        if let Err(e) = self.directory.remove(job.id()).await {
            tracing::warn!(job = %job.id(), "job not removed from the directory: {e}");
        }
        runner::revoke_credentials(&self.services, job).await;
    }

    /// The caps the directory checks every new job against.
    fn job_caps(&self) -> JobCaps {
        let settings = &self.services.settings;
        JobCaps {
            per_session: settings.max_jobs_per_session,
            per_principal: settings.max_jobs_per_principal,
        }
    }

    /// The runtime a submission asked for, if within the ceiling; `None` leaves the job to
    /// the default its runner applies.
    fn max_runtime(&self, requested: Option<u32>) -> Result<Option<Duration>, ArcpError> {
        let Some(secs) = requested else {
            return Ok(None);
        };
        let asked = Duration::from_secs(secs.into());
        let ceiling = self.services.settings.max_runtime_ceiling;
        if asked > ceiling {
            return Err(ArcpError::InvalidRequest(format!(
                "max_runtime_sec {secs} is over this runtime's ceiling of {}s (max_runtime_ceiling)",
                ceiling.as_secs()
            )));
        }
        Ok(Some(asked))
    }

    /// §7.2: the same `job.accepted` payload, answering this submit's `id`, in the submitting
    /// session's log.
    async fn repeat_acceptance(
        &self,
        frame: StoredFrame,
        by: &Submitter,
    ) -> Result<JobId, ArcpError> {
        let (_, mut frame) = frame.decode()?;
        if let JobPayload::Accepted(accepted) = &mut frame.payload {
            accepted.request_id = by.request_id.clone();
        }
        let job = frame.job_id.clone();
        self.services
            .delivery
            .deliver(&by.recipient(), &Outgoing::new(&frame))
            .await?;
        Ok(job)
    }

    /// Cancels a running job on behalf of the session `session` of `principal` (§7.4).
    pub async fn cancel(
        &self,
        principal: &Principal,
        session: &SessionId,
        job_id: &JobId,
        reason: Option<String>,
    ) -> Result<(), ArcpError> {
        let job = self.visible(principal, job_id).await?;
        if &job.session != session {
            return Err(ArcpError::PermissionDenied(
                "only the session that submitted a job may cancel it; subscribers only observe"
                    .into(),
            ));
        }
        self.directory.cancel(job_id, reason).await
    }

    /// One page of the jobs `observer` may see (§6.6).
    pub async fn list(
        &self,
        observer: &Principal,
        request: ListJobs,
    ) -> Result<(Vec<JobSummary>, Option<String>), ArcpError> {
        let query = listing::Query::parse(request)?;
        let scope = if self.policy.may_observe_others(observer) {
            ListScope::All
        } else {
            ListScope::Principal(observer)
        };
        let filter = |job: &JobEntry| self.may_observe(observer, job) && query.matches(job);
        let (page, more) = self
            .directory
            .list(scope, query.after.as_ref(), query.limit, &filter)
            .await?;
        let next = more
            .then(|| page.last().map(|j| listing::encode_cursor(&j.id)))
            .flatten();
        Ok((page.iter().map(|j| j.summary(observer)).collect(), next))
    }

    /// Attaches the session `subscriber` to a job (§7.6). Every decision is logged for audit
    /// (§14).
    pub async fn subscribe(
        &self,
        subscriber: Subscriber,
        request: Subscribe,
    ) -> Result<(), ArcpError> {
        let history = request
            .history
            .then(|| request.from_event_seq.unwrap_or(EventSeq::ZERO));
        let subscriber = Subscriber {
            history,
            ..subscriber
        };
        let observer = &subscriber.principal;
        let job = self
            .directory
            .get(&request.job_id)
            .await?
            .ok_or_else(|| not_found(&request.job_id))?;
        let permitted = self.may_observe(observer, &job);
        tracing::info!(
            target: "arcp::audit",
            subscriber = %observer,
            session = %subscriber.session,
            job = %job.id,
            job_principal = %job.principal,
            decision = if permitted { "permit" } else { "deny" },
            "job.subscribe"
        );
        if !permitted {
            return Err(ArcpError::PermissionDenied(format!(
                "principal {observer} may not observe job {}",
                request.job_id
            )));
        }
        let delivery = &self.services.delivery;
        let logs = &*self.services.logs;
        if job.session == subscriber.session {
            // The session already receives every frame of its own job; announcing is all
            // there is to do, and replaying would repeat frames it has.
            let to = Recipient::subscriber(logs, &subscriber, &job.principal).await?;
            let frame = announcement(&job, &subscriber, job.last_event_seq, false);
            return delivery
                .deliver(&to, &Outgoing::new(&frame))
                .await
                .map(|_| ());
        }
        match self
            .directory
            .subscribe(
                &request.job_id,
                subscriber.clone(),
                self.services.settings.max_subscriptions_per_session,
            )
            .await?
        {
            Subscription::Live => Ok(()),
            Subscription::Ended(entry) => {
                let to = Recipient::subscriber(logs, &subscriber, &entry.principal).await?;
                let owner = logs.open(&entry.session).await?;
                delivery
                    .announce_and_replay(
                        &to,
                        &*owner,
                        &entry.id,
                        history,
                        entry.last_event_seq,
                        |newest, replayed| announcement(&entry, &subscriber, newest, replayed),
                    )
                    .await
            }
        }
    }

    /// Detaches `session` of `principal` from a job it subscribed to.
    pub async fn unsubscribe(
        &self,
        principal: &Principal,
        session: &SessionId,
        job_id: &JobId,
    ) -> Result<(), ArcpError> {
        self.visible(principal, job_id).await?;
        if self.directory.unsubscribe(job_id, session).await? {
            Ok(())
        } else {
            Err(ArcpError::InvalidRequest(format!(
                "this session is not subscribed to job {job_id}"
            )))
        }
    }

    /// Ends what an expired session held, wherever it runs: its running jobs are cancelled
    /// (nobody can ever receive their frames again) and its subscriptions dropped. For the
    /// sweeper that took the session's expiry.
    pub async fn session_expired(&self, session: &SessionId) -> Result<(), ArcpError> {
        let held = self.directory.held_by(session).await?;
        let reason = format!("session {session} expired: its resume window closed");
        for job in &held.running {
            // A job that ended meanwhile refuses the cancel, which is what it should do.
            if let Err(e) = self.directory.cancel(job, Some(reason.clone())).await {
                tracing::debug!(job = %job, "job of an expired session not cancelled: {e}");
            }
        }
        for job in &held.subscriptions {
            if let Err(e) = self.directory.unsubscribe(job, session).await {
                tracing::debug!(job = %job, "subscription of an expired session not dropped: {e}");
            }
        }
        if !held.running.is_empty() || !held.subscriptions.is_empty() {
            tracing::info!(
                session = %session,
                jobs = held.running.len(),
                subscriptions = held.subscriptions.len(),
                "expired session's jobs cancelled and subscriptions dropped"
            );
        }
        Ok(())
    }

    /// Forgets jobs that ended before `before`, and idempotency keys past their window.
    pub async fn purge_finished(&self, before: SystemTime) -> Result<(), ArcpError> {
        self.directory.purge_finished(before).await?;
        self.keys.sweep(SystemTime::now()).await
    }

    fn may_observe(&self, observer: &Principal, job: &JobEntry) -> bool {
        observer == &job.principal || self.policy.may_observe(observer, job)
    }

    /// A job `observer` may see; any other is reported as not found, so job ids of other
    /// principals cannot be probed (§6.6).
    async fn visible(&self, observer: &Principal, job_id: &JobId) -> Result<JobEntry, ArcpError> {
        self.directory
            .get(job_id)
            .await?
            .filter(|j| self.may_observe(observer, j))
            .ok_or_else(|| not_found(job_id))
    }
}

fn stopped() -> ArcpError {
    ArcpError::Internal("the job engine is shutting down".into())
}

/// How much of an idempotency key an error shows: enough to recognise it, never all of a long
/// one.
const KEY_PREFIX_CHARS: usize = 12;

/// Whether `value` written as JSON takes more than `limit` bytes. Counts as it writes and stops
/// at the limit, so an oversized input costs no copy of itself.
fn json_len_over(value: &Json, limit: u64) -> bool {
    struct Counter {
        written: u64,
        limit: u64,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written += buf.len() as u64;
            if self.written > self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { written: 0, limit };
    serde_json::to_writer(&mut counter, value).is_err()
}

/// The parameters that make two submissions "identical" (§7.2), as a digest of their canonical
/// JSON (object keys sorted).
fn fingerprint(submit: &JobSubmit) -> Fingerprint {
    let canonical = serde_json::json!({
        "agent": submit.agent,
        "input": submit.input,
        "lease_request": submit.lease_request,
        "expires_at": submit.expires_at,
        "max_runtime_sec": submit.max_runtime_sec,
    });
    Sha256::digest(canonical.to_string().as_bytes()).into()
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn input_size_counts_the_json_text() {
        let input = serde_json::json!({"text": "x".repeat(100)});
        let len = input.to_string().len() as u64;
        assert!(!json_len_over(&input, len));
        assert!(json_len_over(&input, len - 1));
    }

    #[test]
    fn submissions_with_the_same_parameters_have_the_same_fingerprint() {
        let a = fingerprint(&submit(serde_json::json!({"x": 1, "y": 2})));
        // Same parameters, keys in another order: identical.
        assert_eq!(a, fingerprint(&submit(serde_json::json!({"y": 2, "x": 1}))));
        assert_ne!(a, fingerprint(&submit(serde_json::json!({"x": 2}))));
    }
}
