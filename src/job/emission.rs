//! The one place a job's frames leave from.
//!
//! Every frame of a job, from `job.accepted` to its terminal frame, is emitted while holding
//! the read side of the job's emission lock; the terminal frame and every change to the
//! subscriber list take the write side. So no frame can follow the terminal one (§7.3), and a
//! subscriber's history replay and its first live frame cannot overlap or leave a gap (§7.6).
//!
//! A job whose session log pipelines appends (the Redis log) does not wait for each frame's
//! answer: its frames go on their way (`super::flights`) and their answers are taken later,
//! still under the read side, so a back-pressure signal they raise cannot follow the terminal
//! frame either. The write side waits for every answer first: a subscription starts from the
//! job's true newest sequence number, and the job's end is recorded only once all its frames
//! were logged. A log that appends at once takes none of this path.

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{EventSeq, JobId, SessionId, TraceId},
    protocol::job_frame::{JobFrame, JobPayload},
    store::log::Appended,
    sync::read_mostly_lock::ReadMostlyLock,
};

use super::{
    delivery::{Outgoing, Recipient},
    flights::{Bound, Destination, Flights},
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
    /// The frames on their way, when the job's session log pipelines appends. Locked inside
    /// the emission lock, by one emit at a time, which may wait holding it for an answer.
    flights: Option<tokio::sync::Mutex<Flights>>,
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
    /// The emission state of job `job_id`, whose frames carry `trace_id`, and go on their way
    /// without waiting for their answers if `pipelined` (its session log pipelines appends).
    pub(crate) fn new(job_id: JobId, trace_id: Option<TraceId>, pipelined: bool) -> Emitter {
        Emitter {
            job_id,
            trace_id,
            lock: ReadMostlyLock::default(),
            last_seq: AtomicU64::new(0),
            emits: AtomicU64::new(0),
            flights: pipelined.then(|| tokio::sync::Mutex::new(Flights::default())),
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
            if let Some(flights) = &self.flights {
                // Boxed: this path's state stays out of the future every emit of a log that
                // appends at once moves around.
                return Box::pin(self.emit_pipelined(services, owner, frame, flights)).await;
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
            self.count_emit().await;
            Ok(())
        }
    }

    /// Counts an emit, and yields every [`YIELD_EVERY`].
    async fn count_emit(&self) {
        // A load and a store rather than a locked add: the count only paces yields, so an
        // increment lost to a concurrent emit of the same job costs nothing.
        let emits = self.emits.load(Ordering::Relaxed) + 1;
        self.emits.store(emits, Ordering::Relaxed);
        if emits % YIELD_EVERY == 0 {
            tokio::task::yield_now().await;
        }
    }

    /// [`Emitter::emit`] for a job whose frames go on their way: queues `frame` for the job's
    /// session and subscribers, takes the answers that came back, waiting for the oldest while
    /// more than the [`Bound`] is on its way, then paces the job by the newest answer. A
    /// failure to log an earlier frame of the job is this emit's error.
    async fn emit_pipelined(
        &self,
        services: &JobServices,
        owner: &Recipient,
        frame: Outgoing,
        flights: &tokio::sync::Mutex<Flights>,
    ) -> Result<(), ArcpError> {
        let bound = Bound::new(services.delivery.window(), services.settings.max_log_bytes);
        let newest = {
            let emission = self.lock.read().await;
            if !emission.open {
                return Err(ArcpError::InvalidRequest(format!(
                    "job {} has already ended; nothing more may be emitted for it",
                    self.job_id
                )));
            }
            let mut flights = flights.lock().await;
            if let Some(failed) = flights.take_failure() {
                return Err(failed);
            }
            for subscriber in &emission.subscribers {
                self.queue_observed(services, subscriber, &frame, &mut flights)
                    .await;
            }
            match services.delivery.queue(owner, &frame).await {
                Ok(Some(answer)) => flights.push(
                    answer,
                    Destination::Owner { signal: false },
                    frame.encoded_len(),
                ),
                Ok(None) => {}
                Err(ArcpError::ResumeWindowExpired(_)) => {
                    tracing::debug!(job = %self.job_id, "session gone; event dropped");
                }
                Err(e) => return Err(e),
            }
            let mut newest = None;
            loop {
                let wait = flights.over(bound);
                let Some((to, outcome)) = flights.oldest(wait).await else {
                    break;
                };
                if let Some(appended) = self
                    .answered(services, owner, &mut flights, to, outcome)
                    .await?
                {
                    newest = Some(appended);
                }
            }
            newest
        };
        if let Some(appended) = newest {
            services.delivery.pace(owner, appended).await;
        }
        self.count_emit().await;
        Ok(())
    }

    /// Sends `frame` on its way to a subscriber, or, for one whose log appends at once, logs
    /// it there. A subscriber not reached is no failure of the job's.
    async fn queue_observed(
        &self,
        services: &JobServices,
        subscriber: &Recipient,
        frame: &Outgoing,
        flights: &mut Flights,
    ) {
        let delivery = &services.delivery;
        let queued = if subscriber.log.pipelines() {
            delivery.queue(subscriber, frame).await.map(|answer| {
                if let Some(answer) = answer {
                    let to = Destination::Observer(subscriber.session.clone());
                    flights.push(answer, to, frame.encoded_len());
                }
            })
        } else {
            delivery
                .deliver_live(subscriber, frame, |p| self.job_frame(p))
                .await
                .map(|_| ())
        };
        if let Err(e) = queued {
            tracing::debug!(job = %self.job_id, session = %subscriber.session, "subscriber not reached: {e}");
        }
    }

    /// Takes the answer to a frame that was on its way to `to`: for the job's own session,
    /// what the frame got and (after a frame that leaves the client lagging) a back-pressure
    /// signal, sent on its way behind it. The frame's error if it was not logged, unless its
    /// session is gone, where the job runs on unobserved (§6.4) as on every log.
    async fn answered(
        &self,
        services: &JobServices,
        owner: &Recipient,
        flights: &mut Flights,
        to: Destination,
        outcome: Result<Appended, ArcpError>,
    ) -> Result<Option<Appended>, ArcpError> {
        match (to, outcome) {
            (Destination::Owner { signal }, Ok(appended)) => {
                self.last_seq
                    .fetch_max(appended.seq.get(), Ordering::AcqRel);
                let lagging = (!signal)
                    .then(|| {
                        let delivery = &services.delivery;
                        delivery.lag_signal(owner, appended.seq, |p| self.job_frame(p))
                    })
                    .flatten();
                if let Some(lagging) = lagging {
                    let lagging = StoredFrame::encode(&lagging);
                    let bytes = lagging.len();
                    let answer = owner.log.queue_append(lagging).await?;
                    flights.push(answer, Destination::Owner { signal: true }, bytes);
                }
                Ok(Some(appended))
            }
            (Destination::Owner { .. }, Err(ArcpError::ResumeWindowExpired(_))) => {
                tracing::debug!(job = %self.job_id, "session gone; event dropped");
                Ok(None)
            }
            (Destination::Owner { .. }, Err(e)) => Err(e),
            (Destination::Observer(session), Err(e)) => {
                tracing::debug!(job = %self.job_id, session = %session, "subscriber not reached: {e}");
                Ok(None)
            }
            (Destination::Observer(_), Ok(_)) => Ok(None),
        }
    }

    /// Waits for the answer to every frame on its way, taking each as [`Emitter::answered`]
    /// does; returns the first failure. Called under the write side of the emission lock, so
    /// nothing is sent on its way meanwhile but back-pressure signals, which are waited for too.
    async fn land_all(&self, services: &JobServices, owner: &Recipient) -> Result<(), ArcpError> {
        let Some(flights) = &self.flights else {
            return Ok(());
        };
        let mut flights = flights.lock().await;
        let mut failed = flights.take_failure();
        while let Some((to, outcome)) = flights.oldest(true).await {
            if let Err(e) = self
                .answered(services, owner, &mut flights, to, outcome)
                .await
            {
                failed.get_or_insert(e);
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits until every frame emitted so far was logged; the first failure to log one if any
    /// was not. At once for a job whose frames are logged before their emit returns.
    pub(crate) async fn logged(
        &self,
        services: &JobServices,
        owner: &Recipient,
    ) -> Result<(), ArcpError> {
        if self.flights.is_none() {
            return Ok(());
        }
        let _emission = self.lock.read().await;
        self.land_all(services, owner).await
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
        if let Err(e) = self.land_all(services, owner).await {
            tracing::debug!(job = %self.job_id, error = %e, "a frame of the job was not logged");
        }
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
        // The frames on their way go in the history: the newest number must count them.
        if let Err(e) = self.land_all(services, owner).await {
            if let Some(flights) = &self.flights {
                flights.lock().await.keep_failure(e);
            }
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
