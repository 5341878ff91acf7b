//! A job the gateway relays to another ARCP runtime (a stdio child, an upstream over
//! WebSocket): what each frame that runtime sends means for the gateway's own job.
//!
//! Events go through [`JobContext::emit`], so the gateway's job id, event numbering, §8.2
//! validation, budgets and caps apply to them unchanged; the runtime's `job.result` is the
//! job's return value and its `job.error` the job's error. The transports differ in how they
//! carry frames and what a lost connection means; this is what they share.

use super::{
    peer_json::{RuntimeFrame, RuntimeResult, Welcome},
    JobContext,
};
use crate::{
    error::{excerpt, ArcpError},
    protocol::Json,
};

/// What a frame means for the relayed job.
#[derive(Debug)]
pub enum Step {
    /// Nothing the relay needs to act on.
    Continue,
    /// The runtime accepted the job under this id, which a `job.cancel` names.
    Accepted(String),
    /// The runtime's job ended: its outcome is the gateway job's.
    Ended(Result<Json, ArcpError>),
    /// The runtime refused the session (`session.error`): the job fails, and the runtime's
    /// job, if it has one, still needs cancelling.
    Refused(ArcpError),
}

/// Applies `frame` from `peer` (how messages name it: "the agent process") to the job of
/// `ctx`. An event the gateway refuses ends the job with `INTERNAL_ERROR`: the agent broke
/// the protocol, not the client.
pub async fn apply(ctx: &JobContext, peer: &str, frame: RuntimeFrame) -> Result<Step, ArcpError> {
    Ok(match frame {
        RuntimeFrame::Accepted { job_id } => Step::Accepted(job_id),
        RuntimeFrame::Event(body) => {
            let kind = body.kind();
            ctx.emit(body).await.map_err(|e| match e {
                ArcpError::InvalidRequest(m) => ArcpError::Internal(format!(
                    "{peer} sent a {kind} event the gateway refuses: {m}"
                )),
                other => other,
            })?;
            Step::Continue
        }
        RuntimeFrame::VendorEvent { kind } => {
            tracing::debug!(job = %ctx.job_id(), kind, "vendor event from {peer} not forwarded");
            Step::Continue
        }
        RuntimeFrame::Result(result) => Step::Ended(match result {
            RuntimeResult::Inline(result) => Ok(result),
            RuntimeResult::Streamed { result_id } => Err(ArcpError::Internal(format!(
                "{peer} streamed its result ({}), which relayed agents cannot do yet",
                excerpt(&result_id, 64)
            ))),
            RuntimeResult::Cancelled => Err(ArcpError::Cancelled(format!(
                "{peer} ended its job as cancelled"
            ))),
            RuntimeResult::TimedOut => Err(ArcpError::Timeout(format!(
                "{peer} ended its job as timed out"
            ))),
        }),
        RuntimeFrame::JobError(e) => Step::Ended(Err(e)),
        RuntimeFrame::Cancelled => Step::Ended(Err(ArcpError::Cancelled(format!(
            "{peer} cancelled its job"
        )))),
        RuntimeFrame::SessionError(e) => {
            Step::Refused(ArcpError::Internal(format!("{peer} refused the job: {e}")))
        }
        RuntimeFrame::Welcome(_) | RuntimeFrame::Jobs(_) | RuntimeFrame::Other { .. } => {
            Step::Continue
        }
    })
}

/// What a frame read while waiting for `session.welcome` means: the welcome, a refusal of
/// the hello, or `None` for a frame that comes before it.
pub fn welcome(peer: &str, frame: RuntimeFrame) -> Result<Option<Welcome>, ArcpError> {
    match frame {
        RuntimeFrame::Welcome(welcome) => Ok(Some(welcome)),
        RuntimeFrame::SessionError(e) => Err(ArcpError::Internal(format!(
            "{peer} refused the gateway's session.hello: {e}"
        ))),
        _ => Ok(None),
    }
}
