//! One job relayed to a child: the gateway is the child's ARCP client. It opens a session
//! (`session.hello`, `session.welcome`), submits the job with its effective lease and trace
//! context, and maps each frame the child sends into the gateway's own job
//! ([`crate::agent::peer_job`]).
//!
//! Whatever the child does, the job ends with one clear outcome: output that is not ARCP, a
//! line over [`super::MAX_LINE_BYTES`], an exit before the terminal frame, each is an
//! `INTERNAL_ERROR` naming the cause ([`super::peer`]). The relay stops reading at the
//! terminal frame: what the child writes after it is drained and ignored (and logged) while
//! the child is ended.

use tokio::sync::OwnedSemaphorePermit;

use super::{
    child::{ChildProcess, Owner},
    peer::{Peer, PEER},
    spec::StdioSpec,
};
use crate::{
    agent::{
        peer_job::{self, Step},
        peer_json::{self, Submission},
        JobContext,
    },
    clock::Timestamp,
    error::ArcpError,
    protocol::Json,
};

/// The reason in the `job.cancel` a child gets when the gateway's job ends before its own.
const CANCEL_REASON: &str = "the job was cancelled or timed out at the gateway";

/// Runs the job of `ctx` on a new child of `spec`.
pub async fn run(
    spec: &StdioSpec,
    ctx: &JobContext,
    input: Json,
    slot: Option<OwnedSemaphorePermit>,
) -> Result<Json, ArcpError> {
    let mut child = ChildProcess::spawn(spec, Owner::Job(ctx.job_id().clone()), slot)?;
    // From here on a dropped job future cancels the child's job before killing it.
    child.set_farewell(Some(peer_json::cancel(None, CANCEL_REASON)));
    let mut peer = Peer::new(child);
    tokio::select! {
        outcome = job(&mut peer, spec, ctx, input) => outcome,
        () = ctx.cancelled() => Err(ArcpError::Cancelled("the job was cancelled".into())),
    }
}

async fn job(
    peer: &mut Peer,
    spec: &StdioSpec,
    ctx: &JobContext,
    input: Json,
) -> Result<Json, ArcpError> {
    peer.open(spec).await?;
    peer.send(&submission(spec, ctx, input, None)).await?;
    loop {
        match peer_job::apply(ctx, PEER, peer.next().await?.frame).await? {
            Step::Continue => {}
            Step::Accepted(job_id) => {
                peer.child
                    .set_farewell(Some(peer_json::cancel(Some(&job_id), CANCEL_REASON)));
            }
            Step::Ended(outcome) => {
                // The child's job is over: it needs no job.cancel, only the end of stdin.
                peer.child.set_farewell(None);
                return outcome;
            }
            Step::Refused(e) => return Err(e),
        }
    }
}

/// The `job.submit` of the job of `ctx` to a child of `spec`.
pub fn submission(spec: &StdioSpec, ctx: &JobContext, input: Json, key: Option<&str>) -> String {
    let lease = ctx.lease().to_wire();
    peer_json::submit(&Submission {
        agent: &spec.agent,
        input: &input,
        lease: &lease,
        expires_at: ctx.lease().expires_at().map(Timestamp),
        trace_id: ctx.trace_id(),
        idempotency_key: key,
    })
}
