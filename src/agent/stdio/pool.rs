//! The long-lived children of one stdio agent (`long_lived = true`): each job goes to a child
//! with room (at most `jobs_per_child` jobs each), a new one started while there are fewer
//! than `max_children`; a job beyond both waits for a place.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::{
    peer::PEER,
    relay::submission,
    shared::{SharedChild, JOB_FRAME_QUEUE},
    spec::{LongLived, StdioSpec},
};
use crate::{
    agent::{
        peer_job::{self, Step},
        slots::Slots,
        JobContext,
    },
    error::ArcpError,
    protocol::Json,
};

/// The long-lived children of one agent.
pub struct Pool {
    spec: Arc<StdioSpec>,
    long_lived: LongLived,
    children: Mutex<Vec<Arc<SharedChild>>>,
    /// One per job place over all children, when `max_children` caps them.
    places: Slots,
    next_id: AtomicU64,
}

impl Pool {
    /// The pool of `spec`, which declares `long_lived`.
    pub fn new(spec: Arc<StdioSpec>, long_lived: LongLived) -> Pool {
        let places = Slots::new(
            spec.max_children
                .and_then(|n| n.checked_mul(long_lived.jobs_per_child)),
        );
        Pool {
            spec,
            long_lived,
            children: Mutex::new(Vec::new()),
            places,
            next_id: AtomicU64::new(1),
        }
    }

    /// Runs the job of `ctx` on a child of the pool.
    pub async fn run(&self, ctx: &JobContext, input: Json) -> Result<Json, ArcpError> {
        let _place = self.places.take().await?;
        let child = self.child()?;
        let mut on_child = OnChild {
            child,
            job: None,
            accepted: None,
            over: false,
        };
        let (tx, mut frames) = mpsc::channel(JOB_FRAME_QUEUE);
        let (accepted_tx, accepted) = oneshot::channel();
        on_child.accepted = Some(accepted);
        let key = ctx.job_id().as_str().to_owned();
        on_child.child.submit(
            submission(&self.spec, ctx, input, Some(&key)),
            tx,
            accepted_tx,
        )?;
        tokio::select! {
            outcome = on_child.job(ctx, &mut frames) => outcome,
            () = ctx.cancelled() => Err(ArcpError::Cancelled("the job was cancelled".into())),
        }
    }

    /// A child with room for one more job, started if none has and the cap allows.
    fn child(&self) -> Result<Arc<SharedChild>, ArcpError> {
        let most = self.long_lived.jobs_per_child.get();
        let mut children = self.children.lock();
        children.retain(|c| c.jobs().is_some());
        // The least loaded child with room: jobs spread over the children there are.
        let mut by_load: Vec<_> = children.iter().collect();
        by_load.sort_by_key(|c| c.jobs());
        if let Some(child) = by_load.into_iter().find(|c| c.assign(most)) {
            return Ok(child.clone());
        }
        if self
            .spec
            .max_children
            .is_some_and(|max| children.len() >= max.get())
        {
            return Err(ArcpError::Internal(
                "no long-lived agent process has room for the job".into(),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let child = SharedChild::start(self.spec.clone(), id)?;
        if !child.assign(most) {
            return Err(ArcpError::Internal(format!("{PEER} ended at once")));
        }
        children.push(child.clone());
        Ok(child)
    }
}

/// A job's place on a child; dropped before the child's job ended, it cancels that job.
struct OnChild {
    child: Arc<SharedChild>,
    /// The child's id for the job, once accepted.
    job: Option<String>,
    /// The acceptance to come, while it has not.
    accepted: Option<oneshot::Receiver<Result<String, ArcpError>>>,
    over: bool,
}

impl OnChild {
    async fn job(
        &mut self,
        ctx: &JobContext,
        frames: &mut mpsc::Receiver<Result<crate::agent::peer_json::RuntimeFrame, ArcpError>>,
    ) -> Result<Json, ArcpError> {
        if let Some(accepted) = self.accepted.as_mut() {
            let job = accepted
                .await
                .map_err(|_| ArcpError::Internal(format!("{PEER} ended before accepting the job")))
                .and_then(|r| r);
            self.accepted = None;
            match job {
                Ok(job) => self.job = Some(job),
                Err(e) => {
                    self.over = true;
                    return Err(e);
                }
            }
        }
        loop {
            let frame = match frames.recv().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    self.over = true;
                    return Err(e);
                }
                None => {
                    self.over = true;
                    return Err(ArcpError::Internal(format!(
                        "{PEER} stopped relaying the job"
                    )));
                }
            };
            match peer_job::apply(ctx, PEER, frame).await? {
                Step::Continue | Step::Accepted(_) => {}
                Step::Ended(outcome) => {
                    self.over = true;
                    return outcome;
                }
                Step::Refused(e) => return Err(e),
            }
        }
    }
}

impl Drop for OnChild {
    fn drop(&mut self) {
        if !self.over {
            match (self.job.take(), self.accepted.take()) {
                (Some(job), _) => self.child.cancel(job),
                // Cancelled before the child accepted it: cancelled once it does.
                (None, Some(accepted)) => {
                    let child = self.child.clone();
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        runtime.spawn(async move {
                            if let Ok(Ok(job)) = accepted.await {
                                child.cancel(job);
                            }
                        });
                    }
                }
                (None, None) => {}
            }
        }
        self.child.release();
    }
}
