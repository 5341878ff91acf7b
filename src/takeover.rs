//! Taking over a lost replica: what a surviving replica does, once it claimed a replica whose
//! lease ran out (`store::replicas`), so that no client waits for a job nobody runs or a
//! session nobody will ever detach.
//!
//! For each job the lost replica ran, the survivor builds the job's terminal frame, a
//! retryable `INTERNAL_ERROR` naming the lost replica, with the job's trace id. It fences the
//! lost instance out of every session log the job reaches (its own session's and its
//! subscribers') and appends the frame there, both in one step per log
//! ([`SessionLog::fence_replica`]); so a client resuming anywhere receives every frame the lost
//! replica wrote, then the error, and nothing after it even if the lost replica was only
//! paused and comes back. Then it records the job's end in the directory
//! ([`JobDirectory::finish_lost`]), freeing its cap slots and listing it as ended. A log may
//! receive the ends of several of the lost replica's jobs (a session's own and the ones it
//! subscribed to): they go in its one fence.
//!
//! For each session the lost replica held attached, the survivor detaches that attachment
//! (epoch-checked, so a session the client already resumed elsewhere is left alone) and starts
//! its resume window, as the lost replica's stream would have on its way out: the session
//! expires unless its client resumes it.
//!
//! Every step is idempotent, so a takeover whose claimant died halfway is done again by
//! another survivor without a frame appended twice: a repeated fence appends nothing, a job
//! already ended is not ended again, a detached attachment is not detached again (its window
//! starts again, a little later than the first time).
//!
//! The credentials the lost replica issued that are not revoked move from its part of the
//! credential ledger into the survivor's ([`CredentialLedger::adopt`]), before the takeover is
//! said to be done; the survivor's sweep revokes them there (`credentials::Provisioning`),
//! since their jobs ended with this takeover. What is not taken over: subscription requests
//! it was answering (their askers time out with a retryable error).
//!
//! [`CredentialLedger::adopt`]: crate::store::credentials::CredentialLedger::adopt

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{EventSeq, JobId, ReplicaInstance, SessionId},
    protocol::job_frame::{JobError, JobFrame, JobPayload, JobStatus},
    store::{jobs::LostJob, Stores},
};

/// What a takeover did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TakenOver {
    /// Jobs ended.
    pub jobs: usize,
    /// Sessions whose resume window started.
    pub sessions: usize,
    /// Outstanding credentials moved into this replica's part of the ledger.
    pub credentials: usize,
}

/// Takes over `lost`, which this replica claimed: ends its jobs and starts its sessions'
/// resume windows of `resume_window`. `lease` is the lease it let run out, for the message.
/// Fails, leaving the takeover to be done again, only if the stores fail; what is already gone
/// (a session removed, a log that expired) is passed over.
pub async fn take_over(
    stores: &Stores,
    lost: &ReplicaInstance,
    resume_window: Duration,
    lease: Duration,
) -> Result<TakenOver, ArcpError> {
    let jobs = stores.jobs.running_on(lost.replica()).await?;
    let ended = end_jobs(stores, lost, lease, jobs).await?;
    let sessions = start_windows(stores, lost, resume_window).await?;
    // Claimed, the lost instance records no more credentials (a record checks its lease):
    // this moves all it will ever have left.
    let credentials = stores.credentials.adopt(lost.replica()).await?;
    stores.replicas.taken_over(lost).await?;
    Ok(TakenOver {
        jobs: ended,
        sessions,
        credentials,
    })
}

/// The error a lost replica's job ends with.
fn lost_error(lost: &ReplicaInstance, lease: Duration) -> ArcpError {
    ArcpError::Internal(format!(
        "replica {} was lost (no heartbeat within its {}s lease) before the job finished; \
         its frames up to then were kept; submit the job again",
        lost.replica(),
        lease.as_secs_f64()
    ))
}

/// Fences `lost` out of every log its jobs reach, appending each job's end there, then ends
/// the jobs in the directory. Returns how many it ended.
async fn end_jobs(
    stores: &Stores,
    lost: &ReplicaInstance,
    lease: Duration,
    jobs: Vec<LostJob>,
) -> Result<usize, ArcpError> {
    let error = JobError::from_error(&lost_error(lost, lease));
    // Each log's frames, with the job whose own session it is, if it is.
    let mut by_log: BTreeMap<SessionId, Vec<(Option<JobId>, StoredFrame)>> = BTreeMap::new();
    for job in &jobs {
        let frame = StoredFrame::encode(&JobFrame {
            job_id: job.entry.id.clone(),
            trace_id: job.entry.trace_id.clone(),
            payload: JobPayload::Error(error.clone()),
        });
        by_log
            .entry(job.entry.session.clone())
            .or_default()
            .push((Some(job.entry.id.clone()), frame.clone()));
        for subscriber in &job.subscribers {
            by_log
                .entry(subscriber.clone())
                .or_default()
                .push((None, frame.clone()));
        }
    }
    let mut ends: BTreeMap<JobId, EventSeq> = BTreeMap::new();
    for (session, frames) in by_log {
        let log = match stores.logs.open(&session).await {
            Ok(log) => log,
            // The session expired: nobody can receive its frames any more.
            Err(ArcpError::ResumeWindowExpired(_)) => continue,
            Err(e) => return Err(e),
        };
        let (owners, frames): (Vec<_>, Vec<_>) = frames.into_iter().unzip();
        let seqs = match log.fence_replica(lost, frames).await {
            Ok(Some(seqs)) => seqs,
            // A takeover before this one fenced it and appended the ends.
            Ok(None) => continue,
            Err(ArcpError::ResumeWindowExpired(_)) => continue,
            Err(e) => return Err(e),
        };
        for (owner, seq) in owners.into_iter().zip(seqs) {
            if let Some(job) = owner {
                ends.insert(job, seq);
            }
        }
    }
    let mut ended = 0;
    let finished_at = SystemTime::now();
    for job in jobs {
        let mut entry = job.entry;
        entry.status = JobStatus::Finished(error.final_status);
        entry.finished_at = Some(finished_at);
        if let Some(seq) = ends.get(&entry.id) {
            entry.last_event_seq = *seq;
        }
        let (id, session) = (entry.id.clone(), entry.session.clone());
        if stores.jobs.finish_lost(entry, lost.replica()).await? {
            ended += 1;
            tracing::info!(job = %id, session = %session, lost = %lost, "a lost replica's job ended");
        }
    }
    Ok(ended)
}

/// Detaches the attachments `lost` held and starts their sessions' resume windows; returns how
/// many windows started.
async fn start_windows(
    stores: &Stores,
    lost: &ReplicaInstance,
    resume_window: Duration,
) -> Result<usize, ArcpError> {
    let mut started = 0;
    for (session, epoch) in stores.sessions.attached_on(lost.replica()).await? {
        let record = match stores.sessions.open(&session).await {
            Ok(record) => record,
            Err(ArcpError::ResumeWindowExpired(_)) => continue,
            Err(e) => return Err(e),
        };
        if record.detach(epoch).await? {
            stores.logs.detached(&session, epoch).await;
        }
        // Detached now, or by an earlier takeover that did not get to start the window; an
        // attachment taken over since keeps its session.
        if record.flow().epoch != epoch {
            continue;
        }
        let deadline = SystemTime::now() + resume_window;
        if stores
            .resume
            .start_window(&session, epoch, deadline)
            .await?
        {
            started += 1;
            tracing::info!(
                session = %session,
                lost = %lost,
                window_sec = resume_window.as_secs(),
                "a lost replica's session detached; resume window started"
            );
        }
    }
    stores.sessions.forget_attached_on(lost.replica()).await?;
    Ok(started)
}
