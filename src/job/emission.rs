//! The one place a job's frames leave from.
//!
//! Every frame of a job, from `job.accepted` to its terminal frame, is emitted while holding
//! the read side of the job's emission lock; the terminal frame and every change to the
//! subscriber list take the write side. So no frame can follow the terminal one (§7.3), and a
//! subscriber's history replay and its first live frame cannot overlap or leave a gap (§7.6).

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{
    error::ArcpError,
    ids::{EventSeq, JobId, SessionId, TraceId},
    protocol::job_frame::{JobFrame, JobPayload},
    store::log::Appended,
    sync::read_mostly_lock::ReadMostlyLock,
};

use super::{
    delivery::{Outgoing, Recipient},
    JobServices,
};

/// Nothing on the emit path counts against tokio's cooperative budget, so an agent that never
/// waits would keep its worker thread from every other task until it ran a whole flow window
/// ahead of its reader, or for ever once its session is gone (its emits then return at once).
/// It yields after this many emits instead, about a millisecond of emitting. (`arcp-bench`
/// rows 1 and 2 measured 256 and 4096 as well; both delivered less.)
const YIELD_EVERY: u64 = 1024;

/// A job's emission state.
pub(crate) struct Emitter {
    job_id: JobId,
    trace_id: Option<TraceId>,
    /// Every emit reads it, across the log append; a [`ReadMostlyLock`] rather than a `tokio`
    /// or `async_lock` lock, whose read guards lock a mutex when released.
    lock: ReadMostlyLock<Emission>,
    /// The newest sequence number this job got in its own session.
    last_seq: AtomicU64,
    /// Emits so far, for [`YIELD_EVERY`].
    emits: AtomicU64,
}

struct Emission {
    open: bool,
    subscribers: Vec<Recipient>,
}

impl Default for Emission {
    fn default() -> Self {
        Emission {
            open: true,
            subscribers: Vec::new(),
        }
    }
}

impl Emitter {
    /// The emission state of job `job_id`, whose frames carry `trace_id`.
    pub(crate) fn new(job_id: JobId, trace_id: Option<TraceId>) -> Emitter {
        Emitter {
            job_id,
            trace_id,
            lock: ReadMostlyLock::default(),
            last_seq: AtomicU64::new(0),
            emits: AtomicU64::new(0),
        }
    }

    /// A frame of this job.
    pub(crate) fn job_frame(&self, payload: JobPayload) -> JobFrame {
        JobFrame {
            job_id: self.job_id.clone(),
            trace_id: self.trace_id.clone(),
            payload,
        }
    }

    /// The newest sequence number the job got in its own session.
    pub(crate) fn last_seq(&self) -> EventSeq {
        EventSeq(self.last_seq.load(Ordering::Acquire))
    }

    /// Emits a non-terminal frame to the job's session `owner` and its subscribers; refused
    /// once the job has ended, and refused with nothing appended when its encoding is larger
    /// than `max_event_bytes`, which the agent can recover from. Then keeps the job within the
    /// flow window of its session's reader, after releasing the emission lock.
    ///
    /// The frame is encoded before the future exists, which then holds its encoding rather
    /// than the payload: emitting is a chain of nested futures, each moved into its caller's,
    /// and an agent emits by the thousand.
    pub(crate) fn emit<'a>(
        &'a self,
        services: &'a JobServices,
        owner: &'a Recipient,
        payload: JobPayload,
    ) -> impl Future<Output = Result<(), ArcpError>> + Send + 'a {
        let frame = Outgoing::new(&self.job_frame(payload));
        async move {
            let limit = services.settings.max_event_bytes;
            if frame.encoded_len() as u64 > limit {
                return Err(ArcpError::InvalidRequest(format!(
                    "job {}: an event of {} bytes is over the largest event of {limit} bytes \
                     (max_event_bytes); it was not emitted",
                    self.job_id,
                    frame.encoded_len()
                )));
            }
            let logged = {
                let emission = self.lock.read().await;
                if !emission.open {
                    return Err(ArcpError::InvalidRequest(format!(
                        "job {} has already ended; nothing more may be emitted for it",
                        self.job_id
                    )));
                }
                self.fan_out(services, owner, &emission, &frame).await?
            };
            if let Some(appended) = logged {
                services.delivery.pace(owner, appended).await;
            }
            // A load and a store rather than a locked add: the count only paces yields, so
            // an increment lost to a concurrent emit of the same job costs nothing.
            let emits = self.emits.load(Ordering::Relaxed) + 1;
            self.emits.store(emits, Ordering::Relaxed);
            if emits % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            Ok(())
        }
    }

    /// Ends the job: `ended` records how, then its terminal frames are appended, after which
    /// every emit is refused.
    pub(crate) async fn finish(
        &self,
        services: &JobServices,
        owner: &Recipient,
        terminal: Vec<JobPayload>,
        ended: impl FnOnce(),
    ) {
        let mut emission = self.lock.write().await;
        emission.open = false;
        ended();
        for payload in terminal {
            let frame = Outgoing::new(&self.job_frame(payload));
            if let Err(e) = self.fan_out(services, owner, &emission, &frame).await {
                tracing::error!(job = %self.job_id, error = %e, "could not record the job's terminal frame");
            }
        }
        emission.subscribers.clear();
    }

    /// Delivers a frame to every subscriber and the submitting session; returns what the
    /// append to the latter did.
    async fn fan_out(
        &self,
        services: &JobServices,
        owner: &Recipient,
        emission: &Emission,
        frame: &Outgoing,
    ) -> Result<Option<Appended>, ArcpError> {
        let delivery = &services.delivery;
        for subscriber in &emission.subscribers {
            // A subscriber whose session expired has no log; the others must not suffer.
            let delivered = delivery.deliver_live(subscriber, frame, |p| self.job_frame(p));
            if let Err(e) = delivered.await {
                tracing::debug!(job = %self.job_id, session = %subscriber.session, "subscriber not reached: {e}");
            }
        }
        match delivery
            .deliver_live(owner, frame, |p| self.job_frame(p))
            .await
        {
            Ok(Some(appended)) => {
                self.last_seq
                    .fetch_max(appended.seq.get(), Ordering::AcqRel);
                Ok(Some(appended))
            }
            Ok(None) => Ok(None),
            // The submitting session's window closed: the job runs on (§6.4), unobserved.
            Err(ArcpError::ResumeWindowExpired(_)) => {
                tracing::debug!(job = %self.job_id, "session gone; event dropped");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Attaches the subscriber `to` (§7.6): logs the `job.subscribed` that `announce` builds
    /// from the job's newest sequence number, then, with `history`, the job's frames after it
    /// as they are in its own session's log `owner`, then lets live frames follow, all under
    /// the write lock so nothing is missed or repeated in between.
    pub(crate) async fn attach(
        &self,
        services: &JobServices,
        owner: &Recipient,
        to: Recipient,
        history: Option<EventSeq>,
        announce: impl FnOnce(EventSeq, bool) -> JobFrame,
    ) -> Result<(), ArcpError> {
        let mut emission = self.lock.write().await;
        if emission.subscribers.iter().any(|s| s.session == to.session) {
            return Err(ArcpError::InvalidRequest(format!(
                "this session is already subscribed to job {}",
                self.job_id
            )));
        }
        services
            .delivery
            .announce_and_replay(
                &to,
                &*owner.log,
                &self.job_id,
                history,
                self.last_seq(),
                announce,
            )
            .await?;
        if emission.open {
            emission.subscribers.push(to);
        }
        Ok(())
    }

    /// Detaches a subscriber; `false` if it was not subscribed.
    pub(crate) async fn detach(&self, session: &SessionId) -> bool {
        let mut emission = self.lock.write().await;
        let before = emission.subscribers.len();
        emission.subscribers.retain(|s| &s.session != session);
        emission.subscribers.len() != before
    }
}
