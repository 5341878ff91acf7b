//! Drives one agent to its job's single terminal frame (§7.3).

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures::FutureExt;

use crate::{
    agent::Agent,
    clock::Timestamp,
    error::ArcpError,
    protocol::{
        server::{FinalStatus, JobError, JobPayload, JobResult, ResultBody},
        Json,
    },
};

use super::context::JobContext;

/// How the agent's future ended.
enum Outcome {
    Returned(Result<Json, ArcpError>),
    Cancelled,
    TimedOut(Duration),
}

/// Runs `agent` for the job behind `ctx` and records how it ended.
pub(super) async fn run(
    ctx: JobContext,
    agent: Arc<dyn Agent>,
    input: Json,
    max_runtime: Option<Duration>,
) {
    let job = ctx.record().clone();
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
                result: ResultBody::Inline(result),
                completed_at: Timestamp::now(),
            })],
        ),
        Outcome::Returned(Err(err)) => {
            let error = JobError::from_error(&err);
            (error.final_status, vec![JobPayload::Error(error)])
        }
        Outcome::Cancelled => {
            let reason = job.cancel_reason();
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
    job.finish(ctx.outbox(), status, frames).await;
    tracing::info!(job = %job.id(), status = status.as_str(), "job finished");
}
