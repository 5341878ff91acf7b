//! The job engine: accepts submissions, runs agents, and ends every job with exactly one
//! terminal frame (§7.3).
//!
//! A job's frames go to its session's event log through its [`JobContext`]: `job.accepted`
//! first (appended before the agent starts, so it always precedes the job's events), then the
//! agent's events, then `job.result` or `job.error`. Jobs do not depend on a connection: they
//! keep running and appending while the client is away (§6.4).

pub mod context;

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::FutureExt;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    agent::AgentRegistry,
    clock::Timestamp,
    error::ArcpError,
    event_log::EventLog,
    ids::{JobId, Principal, SessionId, TraceId},
    protocol::{
        client::JobSubmit,
        server::{Accepted, FinalStatus, JobError, JobPayload, JobResult},
        Features,
    },
};

use context::JobContext;

/// Where a job is in its lifecycle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum JobStatus {
    /// The agent is running.
    Running,
    /// The job ended.
    Finished(FinalStatus),
}

/// The runtime's record of one job.
pub struct JobRecord {
    /// The job.
    pub id: JobId,
    /// The session that submitted it, the only one that may cancel it (§7.4).
    pub session: SessionId,
    /// The submitting principal.
    pub principal: Principal,
    /// `name@version`.
    pub agent: String,
    /// Its trace context.
    pub trace_id: Option<TraceId>,
    /// When it was accepted.
    pub created_at: Timestamp,
    cancel: CancellationToken,
    state: Mutex<JobState>,
}

struct JobState {
    status: JobStatus,
    cancel_reason: Option<String>,
    finished_at: Option<SystemTime>,
}

impl JobRecord {
    /// The job's current status.
    pub fn status(&self) -> JobStatus {
        self.state.lock().status
    }
}

/// Who submits, from where: what the engine needs besides the submission itself.
pub struct Submitter<'a> {
    /// The submitting session.
    pub session: &'a SessionId,
    /// Its principal.
    pub principal: &'a Principal,
    /// The session's effective features.
    pub features: Features,
    /// The `id` of the `job.submit` frame.
    pub request_id: Option<String>,
    /// The submit frame's `trace_id`.
    pub trace_id: Option<TraceId>,
}

/// Runs jobs.
pub struct JobManager {
    agents: Arc<AgentRegistry>,
    log: Arc<dyn EventLog>,
    jobs: Mutex<HashMap<JobId, Arc<JobRecord>>>,
}

impl JobManager {
    /// An engine running `agents`, writing to `log`.
    pub fn new(agents: Arc<AgentRegistry>, log: Arc<dyn EventLog>) -> Self {
        JobManager {
            agents,
            log,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// Accepts a submission: resolves the agent, appends `job.accepted`, starts the agent.
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
        if submit.idempotency_key.is_some() {
            return Err(ArcpError::InvalidRequest(
                "idempotency_key is not supported by this runtime yet".into(),
            ));
        }
        let agent = self.agents.resolve(&submit.agent)?;
        let job = Arc::new(JobRecord {
            id: JobId::generate(),
            session: by.session.clone(),
            principal: by.principal.clone(),
            agent: agent.reference(),
            trace_id: by.trace_id,
            created_at: Timestamp::now(),
            cancel: CancellationToken::new(),
            state: Mutex::new(JobState {
                status: JobStatus::Running,
                cancel_reason: None,
                finished_at: None,
            }),
        });
        let ctx = JobContext::new(
            job.id.clone(),
            job.trace_id.clone(),
            job.session.clone(),
            self.log.clone(),
            job.cancel.clone(),
            by.features,
        );
        // Registered before the acceptance is visible, so a cancel racing right behind
        // `job.accepted` finds the job.
        self.jobs.lock().insert(job.id.clone(), job.clone());
        let accepted = ctx
            .append(JobPayload::Accepted(Accepted {
                agent: job.agent.clone(),
                lease: submit.lease_request,
                expires_at: None,
                accepted_at: job.created_at,
                request_id: by.request_id,
            }))
            .await;
        if let Err(e) = accepted {
            self.jobs.lock().remove(&job.id);
            return Err(e);
        }
        tracing::info!(job = %job.id, session = %job.session, agent = %job.agent, "job accepted");

        let max_runtime = submit
            .max_runtime_sec
            .map(|s| Duration::from_secs(s.into()));
        tokio::spawn(run(
            job.clone(),
            agent.agent,
            ctx,
            submit.input,
            max_runtime,
        ));
        Ok(job)
    }

    /// Cancels a running job on behalf of `session` (§7.4).
    pub fn cancel(
        &self,
        session: &SessionId,
        principal: &Principal,
        job_id: &JobId,
        reason: Option<String>,
    ) -> Result<(), ArcpError> {
        let job = self
            .jobs
            .lock()
            .get(job_id)
            .filter(|j| &j.principal == principal)
            .cloned()
            .ok_or_else(|| ArcpError::JobNotFound(format!("no job {job_id}")))?;
        if &job.session != session {
            return Err(ArcpError::PermissionDenied(
                "only the session that submitted a job may cancel it".into(),
            ));
        }
        let mut state = job.state.lock();
        if let JobStatus::Finished(status) = state.status {
            return Err(ArcpError::InvalidRequest(format!(
                "job {job_id} already ended ({})",
                status.as_str()
            )));
        }
        if !job.cancel.is_cancelled() {
            state.cancel_reason = reason;
            job.cancel.cancel();
        }
        Ok(())
    }

    /// A job by id.
    pub fn get(&self, job_id: &JobId) -> Option<Arc<JobRecord>> {
        self.jobs.lock().get(job_id).cloned()
    }

    /// Forgets jobs that ended before `before`.
    pub fn purge_finished(&self, before: SystemTime) {
        self.jobs
            .lock()
            .retain(|_, j| j.state.lock().finished_at.is_none_or(|at| at >= before));
    }
}

/// How the agent's future ended.
enum Outcome {
    Returned(Result<serde_json::Value, ArcpError>),
    Cancelled,
    TimedOut(Duration),
}

/// Drives one job to its single terminal frame.
async fn run(
    job: Arc<JobRecord>,
    agent: Arc<dyn crate::agent::Agent>,
    ctx: JobContext,
    input: serde_json::Value,
    max_runtime: Option<Duration>,
) {
    let deadline = async {
        match max_runtime {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    // A panicking agent must still produce a terminal frame, so the panic is caught here.
    let work = AssertUnwindSafe(agent.run(ctx.clone(), input)).catch_unwind();
    let outcome = tokio::select! {
        biased;
        _ = job.cancel.cancelled() => Outcome::Cancelled,
        _ = deadline => Outcome::TimedOut(max_runtime.unwrap_or_default()),
        result = work => Outcome::Returned(result.unwrap_or_else(|_| {
            Err(ArcpError::Internal("agent panicked".into()))
        })),
    };
    // Dropping the agent's future above stops it; its sub-tasks see the cancellation token.
    job.cancel.cancel();

    let (status, frames) = match outcome {
        Outcome::Returned(Ok(result)) => (
            FinalStatus::Success,
            vec![JobPayload::Result(JobResult {
                result,
                completed_at: Timestamp::now(),
            })],
        ),
        Outcome::Returned(Err(err)) => {
            let error = JobError::from_error(&err);
            (error.final_status, vec![JobPayload::Error(error)])
        }
        Outcome::Cancelled => {
            let reason = job.state.lock().cancel_reason.clone();
            let error = JobError::from_error(&ArcpError::Cancelled(
                reason
                    .clone()
                    .unwrap_or_else(|| "cancelled by the client".into()),
            ));
            (
                FinalStatus::Cancelled,
                vec![JobPayload::Cancelled { reason }, JobPayload::Error(error)],
            )
        }
        Outcome::TimedOut(limit) => {
            let error = JobError::from_error(&ArcpError::Timeout(format!(
                "job exceeded max_runtime_sec ({}s)",
                limit.as_secs()
            )));
            (FinalStatus::TimedOut, vec![JobPayload::Error(error)])
        }
    };
    {
        let mut state = job.state.lock();
        state.status = JobStatus::Finished(status);
        state.finished_at = Some(SystemTime::now());
    }
    ctx.finish(frames).await;
    tracing::info!(job = %job.id, status = status.as_str(), "job finished");
}
