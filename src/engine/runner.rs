//! Drives one agent to its job's single terminal frame (§7.3), then releases what the job
//! held: its credentials (§9.8.2) and its delegated children (§10).

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ::metrics::{counter, gauge, Gauge};
use futures::FutureExt;
use tracing::Instrument;

use crate::{
    agent::{Agent, Delegation, JobContext},
    clock::Timestamp,
    encoding::StoredFrame,
    error::ArcpError,
    ids::CredentialId,
    job::{record::JobRecord, JobServices},
    metrics::{JOBS_FINISHED, JOBS_RUNNING, JOBS_STARTED},
    protocol::{
        job_frame::{FinalStatus, JobError, JobPayload, JobResult, ResultBody},
        Json,
    },
    store::jobs::JobDirectory,
};

/// How the agent's future ended.
enum Outcome {
    Returned(Result<Json, ArcpError>),
    Cancelled,
    /// It ran past its runtime limit: the one it asked for, or the runtime's default.
    TimedOut {
        limit: Duration,
        named: bool,
    },
    LeaseExpired,
    /// Its replica shut down, and the drain's grace was over before it finished.
    Drained,
}

/// Runs `agent` for `job`, which starts children through `delegation`, and records how it
/// ended in `directory`.
pub(super) async fn run(
    job: Arc<JobRecord>,
    delegation: Arc<dyn Delegation>,
    directory: Arc<dyn JobDirectory>,
    agent: Arc<dyn Agent>,
    input: Json,
    max_runtime: Option<Duration>,
) {
    let running = RunningJob::start(&job.spec.agent);
    let ctx = JobContext::new(job.clone(), delegation);
    let settings = &job.services.settings;
    // A job that named no limit still gets one: nobody may be there to cancel it.
    let limit = max_runtime.unwrap_or(
        settings
            .default_max_runtime
            .min(settings.max_runtime_ceiling),
    );
    let deadline = tokio::time::sleep(limit);
    // §13.4: past `expires_at` the agent gets LEASE_EXPIRED from its next operation and may
    // unwind for a short grace; then the runtime ends the job.
    let lease_end = sleep_for(job.spec.lease.expires_at().map(|at| {
        at.duration_since(SystemTime::now()).unwrap_or_default() + job.services.settings.lease_grace
    }));
    // A panicking agent must still produce a terminal frame, so the panic is caught here.
    let work =
        AssertUnwindSafe(agent.run(ctx.clone(), input).instrument(job.span.clone())).catch_unwind();
    let outcome = tokio::select! {
        biased;
        _ = job.cancel_requested() => Outcome::Cancelled,
        _ = deadline => Outcome::TimedOut { limit, named: max_runtime.is_some() },
        _ = lease_end => Outcome::LeaseExpired,
        _ = job.services.running.ending() => Outcome::Drained,
        result = work => Outcome::Returned(result.unwrap_or_else(|_| {
            Err(ArcpError::Internal("agent panicked".into()))
        })),
    };
    // Dropping the agent's future above stops it; its sub-tasks see the cancellation token.
    job.cancel.cancel();
    // Before the terminal frame: a client that saw the job end may start another at once.
    if let Err(e) = directory.release_slot(job.id()).await {
        tracing::warn!(job = %job.id(), "the job's slot is not released before its end: {e}");
    }

    let (status, frames, published) = conclude(&job, outcome);
    running.finished(status);
    revoke_credentials(&job.services, &job).await;
    job.finish(status, frames).await;
    if let Err(e) = directory.finish(job.entry()).await {
        tracing::warn!(job = %job.id(), "the job's end is not recorded in the directory: {e}");
    }
    job.publish_outcome(published);
    let children = job.children.lock().clone();
    for child in children {
        // A child that already ended refuses the cancel, which is what it should do.
        let reason = Some(format!("parent job {} ended", job.id()));
        let _ = directory.cancel(&child, reason).await;
    }
    let _enter = job.span.enter();
    tracing::info!(job = %job.id(), status = status.as_str(), "job finished");
}

/// A job's place in the jobs metrics: counted as started and running from when its runner
/// starts, and as ended with its final status once it has one. Dropped unfinished (its
/// replica stopped mid-run), it still leaves the running gauge.
struct RunningJob {
    agent: String,
    running: Gauge,
}

impl RunningJob {
    fn start(agent: &str) -> RunningJob {
        counter!(JOBS_STARTED, "agent" => agent.to_owned()).increment(1);
        let running = gauge!(JOBS_RUNNING, "agent" => agent.to_owned());
        running.increment(1.0);
        RunningJob {
            agent: agent.to_owned(),
            running,
        }
    }

    fn finished(&self, status: FinalStatus) {
        let labels = [
            ("agent", self.agent.clone()),
            ("status", status.as_str().to_owned()),
        ];
        counter!(JOBS_FINISHED, &labels).increment(1);
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.running.decrement(1.0);
    }
}

async fn sleep_for(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// The job's final status, its terminal frames, and what a waiting parent learns.
fn conclude(
    job: &JobRecord,
    outcome: Outcome,
) -> (FinalStatus, Vec<JobPayload>, Result<ResultBody, ArcpError>) {
    let failed = |err: ArcpError| {
        let error = JobError::from_error(&err);
        (error.final_status, vec![JobPayload::Error(error)], Err(err))
    };
    let returned = match outcome {
        Outcome::Cancelled => {
            let reason = job.cancel_reason();
            let err = ArcpError::Cancelled(
                reason
                    .clone()
                    .unwrap_or_else(|| "cancelled by the client".into()),
            );
            let error = JobError::from_error(&err);
            return (
                FinalStatus::Cancelled,
                vec![JobPayload::Cancelled { reason }, JobPayload::Error(error)],
                Err(err),
            );
        }
        Outcome::TimedOut { limit, named } => {
            let whose = if named {
                "its max_runtime_sec"
            } else {
                "the runtime's default for jobs that name no max_runtime_sec"
            };
            return failed(ArcpError::Timeout(format!(
                "job ran past {whose} ({limit:?})"
            )));
        }
        Outcome::LeaseExpired => {
            tracing::warn!(target: "arcp::audit", job = %job.id(), "lease expired; ending the job");
            return failed(ArcpError::LeaseExpired(
                "the lease's expires_at passed before the job ended".into(),
            ));
        }
        Outcome::Drained => {
            return failed(ArcpError::Internal(format!(
                "replica {} shut down before the job finished; submit it again",
                job.services.running.replica()
            )));
        }
        Outcome::Returned(returned) => returned,
    };
    // An expired lease or a fatal budget decides the outcome whatever the agent returned.
    if let Some(fatal) = job.fatal() {
        return failed(fatal);
    }
    match returned.and_then(|value| result_body(job, value)) {
        Ok(result) => {
            let payload = JobPayload::Result(JobResult {
                result: result.clone(),
                completed_at: Timestamp::now(),
            });
            match within_event_limit(job, payload) {
                Ok(payload) => (FinalStatus::Success, vec![payload], Ok(result)),
                Err(err) => failed(err),
            }
        }
        Err(err) => failed(err),
    }
}

/// The result frame, unless its encoding is larger than the largest event the logs take: an
/// inline result is bounded like any event, and like an oversized streamed result (§14) ends
/// the job with `INTERNAL_ERROR`.
fn within_event_limit(job: &JobRecord, payload: JobPayload) -> Result<JobPayload, ArcpError> {
    let limit = job.services.settings.max_event_bytes;
    let frame = job.job_frame(payload);
    let size = StoredFrame::encode(&frame).len() as u64;
    if size > limit {
        return Err(ArcpError::Internal(format!(
            "the job's inline result takes {size} bytes, over the largest event of {limit} \
             bytes (max_event_bytes); stream a large result as result_chunk events"
        )));
    }
    Ok(frame.payload)
}

/// The inline result, or the reference to the streamed one (§8.4). An agent that streamed
/// may return only a summary string (or nothing): mixing is refused.
fn result_body(job: &JobRecord, value: Json) -> Result<ResultBody, ArcpError> {
    let stream = job.stream.lock();
    let Some(stream) = stream.as_ref() else {
        return Ok(ResultBody::Inline(value));
    };
    if !stream.complete {
        return Err(ArcpError::Internal(
            "the agent returned before sending its last result_chunk (more: false)".into(),
        ));
    }
    let summary = match value {
        Json::Null => None,
        Json::String(s) => Some(s),
        _ => {
            return Err(ArcpError::Internal(
                "the agent returned an inline result after streaming result_chunk events".into(),
            ))
        }
    };
    Ok(ResultBody::Streamed {
        result_id: stream.result_id.clone(),
        result_size: stream.size,
        summary,
    })
}

/// Revokes every credential of `job` at the upstream, retrying transient failures for a few
/// seconds; one the upstream keeps refusing stays in the ledger for the sweep (§9.8.2, §14).
pub(super) async fn revoke_credentials(services: &JobServices, job: &JobRecord) {
    let Some(provisioner) = &services.provisioner else {
        return;
    };
    let ids: Vec<CredentialId> = job
        .authority
        .lock()
        .credentials
        .iter()
        .map(|c| CredentialId::new(c.id.as_str()))
        .collect();
    provisioner.revoke_job(job.id(), ids).await;
}
