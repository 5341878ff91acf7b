//! A long-lived child serving several jobs over one ARCP session: the task that owns it
//! writes the jobs' submissions and cancels to its stdin and routes each frame it writes to
//! the job its envelope names.
//!
//! Submissions go out one at a time: the next waits for the child's `job.accepted` of the
//! last (or its refusal), so that an acceptance belongs to the submission before it without
//! relying on fields §7.1 does not define. Jobs on one child share its stdout: a job paced to
//! a slow reader holds up its siblings, which `jobs_per_child = 1` avoids.
//!
//! The child ends when it breaks (it exits, writes what is not ARCP, refuses the session):
//! each of its jobs ends with the error that says how, and the pool starts a new child for
//! the next job. It also ends once it has had no job for its idle timeout: its stdin closes
//! and it gets its cancel grace to exit.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::{
    child::{ChildProcess, Owner},
    peer::{Peer, PEER},
    spec::StdioSpec,
};
use crate::{
    agent::peer_json::{self, Decoded, RuntimeFrame},
    error::ArcpError,
};

/// What a job on the child receives: its frames, then the error that ended the child if it
/// ends first.
pub type JobFrames = mpsc::Sender<Result<RuntimeFrame, ArcpError>>;

/// Where a submission's acceptance goes: the child's id for the job, or its refusal.
pub type Acceptance = oneshot::Sender<Result<String, ArcpError>>;

/// How many of a job's frames wait for it before the child's reading waits.
pub const JOB_FRAME_QUEUE: usize = 64;

/// The reason in the `job.cancel` a child gets when the gateway's job ends before its own.
const CANCEL_REASON: &str = "the job was cancelled or timed out at the gateway";

enum Command {
    Submit {
        line: String,
        frames: JobFrames,
        accepted: Acceptance,
    },
    Cancel {
        job: String,
    },
}

/// One long-lived child, as the pool sees it.
pub struct SharedChild {
    commands: mpsc::UnboundedSender<Command>,
    /// The jobs assigned to it and whether it ended, together: the child retires only when
    /// no job is assigned, and is assigned none once it retired.
    load: Mutex<Load>,
}

#[derive(Default)]
struct Load {
    jobs: usize,
    closed: bool,
}

impl SharedChild {
    /// Starts child number `id` of `spec` and the task that serves it.
    pub fn start(spec: Arc<StdioSpec>, id: u64) -> Result<Arc<SharedChild>, ArcpError> {
        let child = ChildProcess::spawn(&spec, Owner::Shared(id), None)?;
        let (commands, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(SharedChild {
            commands,
            load: Mutex::new(Load::default()),
        });
        tokio::spawn(serve(spec, Peer::new(child), rx, shared.clone()));
        Ok(shared)
    }

    /// Assigns a job to the child unless it ended or carries `most` jobs already.
    pub fn assign(&self, most: usize) -> bool {
        let mut load = self.load.lock();
        let free = !load.closed && load.jobs < most;
        if free {
            load.jobs += 1;
        }
        free
    }

    /// How many jobs the child carries; `None` once it ended.
    pub fn jobs(&self) -> Option<usize> {
        let load = self.load.lock();
        (!load.closed).then_some(load.jobs)
    }

    /// Gives back a job's place on the child.
    pub fn release(&self) {
        let mut load = self.load.lock();
        load.jobs = load.jobs.saturating_sub(1);
    }

    /// Submits `line`; its job's frames go to `frames`, its upstream id to `accepted`.
    pub fn submit(
        &self,
        line: String,
        frames: JobFrames,
        accepted: Acceptance,
    ) -> Result<(), ArcpError> {
        self.commands
            .send(Command::Submit {
                line,
                frames,
                accepted,
            })
            .map_err(|_| ArcpError::Internal(format!("{PEER} ended before the job was submitted")))
    }

    /// Cancels the child's job `job`, whose frames are no longer wanted.
    pub fn cancel(&self, job: String) {
        let _ = self.commands.send(Command::Cancel { job });
    }

    /// Retires the child if no job is assigned to it.
    fn retire_if_idle(&self) -> bool {
        let mut load = self.load.lock();
        if load.jobs == 0 {
            load.closed = true;
        }
        load.closed
    }

    fn close(&self) {
        self.load.lock().closed = true;
    }
}

/// The jobs of a child: routed by the child's job id, and the submissions not yet accepted.
#[derive(Default)]
struct Jobs {
    routes: HashMap<String, JobFrames>,
    /// The submission the child has, waiting for its `job.accepted`.
    outstanding: Option<(JobFrames, Acceptance)>,
    queued: VecDeque<(String, JobFrames, Acceptance)>,
}

impl Jobs {
    fn idle(&self) -> bool {
        self.routes.is_empty() && self.outstanding.is_none() && self.queued.is_empty()
    }

    /// Ends every job with `error`.
    fn fail(&mut self, error: &ArcpError) {
        for (_, frames) in self.routes.drain() {
            let _ = frames.try_send(Err(error.clone()));
        }
        if let Some((_, accepted)) = self.outstanding.take() {
            let _ = accepted.send(Err(error.clone()));
        }
        for (_, _, accepted) in self.queued.drain(..) {
            let _ = accepted.send(Err(error.clone()));
        }
    }
}

async fn serve(
    spec: Arc<StdioSpec>,
    mut peer: Peer,
    mut commands: mpsc::UnboundedReceiver<Command>,
    me: Arc<SharedChild>,
) {
    let mut jobs = Jobs::default();
    let ended = match peer.open(&spec).await {
        Ok(()) => serve_jobs(&spec, &mut peer, &mut commands, &me, &mut jobs).await,
        Err(e) => Err(e),
    };
    me.close();
    // What was submitted meanwhile learns of the end too.
    commands.close();
    while let Ok(command) = commands.try_recv() {
        if let Command::Submit { accepted, .. } = command {
            let _ = accepted.send(Err(ArcpError::Internal(format!(
                "{PEER} ended before the job was submitted"
            ))));
        }
    }
    if let Err(e) = ended {
        tracing::warn!(target: "arcp_gateway::agent::stdio", "a long-lived agent process ended: {e}");
        jobs.fail(&e);
    }
}

/// Serves the child until it breaks (an error) or retires (`Ok`).
async fn serve_jobs(
    spec: &StdioSpec,
    peer: &mut Peer,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    me: &SharedChild,
    jobs: &mut Jobs,
) -> Result<(), ArcpError> {
    let idle_timeout = spec.long_lived.map(|l| l.idle_timeout).unwrap_or_default();
    loop {
        let idle = jobs.idle();
        tokio::select! {
            command = commands.recv() => match command {
                // The pool is gone: the gateway is stopping.
                None => return Ok(()),
                Some(Command::Submit { line, frames, accepted }) => {
                    if jobs.outstanding.is_none() {
                        peer.send(&line).await?;
                        jobs.outstanding = Some((frames, accepted));
                    } else {
                        jobs.queued.push_back((line, frames, accepted));
                    }
                }
                Some(Command::Cancel { job }) => {
                    if jobs.routes.remove(&job).is_some() {
                        peer.send(&peer_json::cancel(Some(&job), CANCEL_REASON)).await?;
                    }
                }
            },
            // Cancel-safe: a frame half read stays in the peer's buffer.
            decoded = peer.next() => route(peer, jobs, decoded?).await?,
            () = tokio::time::sleep(idle_timeout), if idle => {
                if me.retire_if_idle() {
                    return Ok(());
                }
            }
        }
    }
}

/// Hands one frame to its job; an acceptance to the outstanding submission, which lets the
/// next one go out.
async fn route(peer: &mut Peer, jobs: &mut Jobs, decoded: Decoded) -> Result<(), ArcpError> {
    let Decoded { frame, job_id, .. } = decoded;
    match frame {
        RuntimeFrame::Accepted { job_id } => {
            if let Some((frames, accepted)) = jobs.outstanding.take() {
                jobs.routes.insert(job_id.clone(), frames);
                let _ = accepted.send(Ok(job_id));
            }
            if let Some((line, frames, accepted)) = jobs.queued.pop_front() {
                peer.send(&line).await?;
                jobs.outstanding = Some((frames, accepted));
            }
            Ok(())
        }
        RuntimeFrame::SessionError(e) => Err(ArcpError::Internal(format!(
            "{PEER} ended its session: {e}"
        ))),
        RuntimeFrame::Welcome(_) | RuntimeFrame::Jobs(_) | RuntimeFrame::Other { .. } => Ok(()),
        frame => {
            let terminal = matches!(
                frame,
                RuntimeFrame::Result(_) | RuntimeFrame::JobError(_) | RuntimeFrame::Cancelled
            );
            // A job.error naming no job while a submission waits is its refusal.
            if job_id.is_none() && jobs.outstanding.is_some() {
                if let RuntimeFrame::JobError(e) = frame {
                    if let Some((_, accepted)) = jobs.outstanding.take() {
                        let _ = accepted.send(Err(e));
                    }
                    if let Some((line, frames, accepted)) = jobs.queued.pop_front() {
                        peer.send(&line).await?;
                        jobs.outstanding = Some((frames, accepted));
                    }
                    return Ok(());
                }
            }
            let key = match job_id {
                Some(id) => Some(id).filter(|id| jobs.routes.contains_key(id)),
                // Without a job id, the only job there is.
                None if jobs.routes.len() == 1 => jobs.routes.keys().next().cloned(),
                None => None,
            };
            let Some(key) = key else {
                tracing::debug!(target: "arcp_gateway::agent::stdio", "a frame of a job the gateway no longer relays; ignored");
                return Ok(());
            };
            let frames = if terminal {
                jobs.routes.remove(&key)
            } else {
                jobs.routes.get(&key).cloned()
            };
            if let Some(frames) = frames {
                // A job that ended at the gateway dropped its receiver: nothing to do.
                let _ = frames.send(Ok(frame)).await;
            }
            Ok(())
        }
    }
}
