//! The runtime's record of one job, and the one place its frames are emitted from.
//!
//! Every frame of a job, from `job.accepted` to its terminal frame, is emitted while holding
//! the read side of [`JobRecord`]'s emission lock; the terminal frame and every change to the
//! subscriber list take the write side. So no frame can follow the terminal one (§7.3), and a
//! subscriber's history replay and its first live frame cannot overlap or leave a gap (§7.6).

use std::{
    collections::BTreeMap,
    future::{self, Future},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::Poll,
    time::SystemTime,
};

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::Timestamp,
    error::ArcpError,
    ids::{EventSeq, JobId, Principal, SessionId, TraceId},
    lease::{Budget, EffectiveLease},
    protocol::server::{
        Credential, FinalStatus, JobFrame, JobPayload, JobSummary, NewFrame, ResultBody,
    },
    session::outbox::{Outbox, Recipient},
    sync::read_mostly_lock::ReadMostlyLock,
};

/// Where a job is in its lifecycle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum JobStatus {
    /// The agent is running.
    Running,
    /// The job ended.
    Finished(FinalStatus),
}

impl JobStatus {
    /// The wire name (§6.6, §7.3).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Finished(status) => status.as_str(),
        }
    }
}

/// What a job was started with; fixed for its lifetime (§7.5: the version never changes).
pub struct JobSpec {
    /// The job.
    pub id: JobId,
    /// `name@version`.
    pub agent: String,
    /// Its trace context (§11).
    pub trace_id: Option<TraceId>,
    /// The delegating job (§10).
    pub parent: Option<JobId>,
    /// The effective lease, with its `expires_at` (§9).
    pub lease: EffectiveLease,
    /// The budget counters at acceptance, as `job.accepted` reports them.
    pub initial_budget: Option<BTreeMap<String, f64>>,
    /// When it was accepted.
    pub created_at: Timestamp,
}

/// Nothing on the emit path counts against tokio's cooperative budget, so an agent that never
/// waits would keep its worker thread from every other task until it ran a whole flow window
/// ahead of its reader, or for ever once its session is gone (its emits then return at once).
/// It yields after this many emits instead, about a millisecond of emitting. (`arcp-bench`
/// rows 1 and 2 measured 256 and 4096 as well; both delivered less.)
const YIELD_EVERY: u64 = 1024;

/// One job.
pub struct JobRecord {
    /// What it runs.
    pub spec: JobSpec,
    /// The submitting session's recipient view: the only session that may cancel (§7.4).
    owner: Recipient,
    /// Cancelled when the job is asked to stop or has ended: what the agent and its
    /// sub-tasks watch.
    pub(crate) cancel: CancellationToken,
    /// Set by a cancel request for the runner, which checks it every time the agent is woken:
    /// polling a token's future locks two mutexes, checking this is one atomic load.
    cancel_requested: AtomicBool,
    /// Wakes the runner waiting in [`JobRecord::cancel_requested`].
    runner: AtomicWaker,
    state: Mutex<JobState>,
    /// The newest sequence number this job got in its own session.
    last_seq: AtomicU64,
    /// Emits so far, for [`YIELD_EVERY`].
    emits: AtomicU64,
    /// Every emit reads it, across the log append; a [`ReadMostlyLock`] rather than a `tokio` or
    /// `async_lock` lock, whose read guards lock a mutex when released.
    emission: ReadMostlyLock<Emission>,
    /// Budget counters and credentials change while the job runs; observers read them.
    pub(crate) authority: Mutex<Authority>,
    /// The error the job must end with whatever the agent returns: its lease expired, or its
    /// budget ran out under a fatal policy. The first one wins.
    fatal: Mutex<Option<ArcpError>>,
    /// Delegated jobs (§10), cancelled when this one ends.
    pub(crate) children: Mutex<Vec<Arc<JobRecord>>>,
    /// The streamed result, once the agent starts one (§8.4).
    pub(crate) stream: Mutex<Option<StreamState>>,
    /// How the job ended, for whoever waits on it (a delegating parent).
    ended: tokio::sync::watch::Sender<Option<Result<ResultBody, ArcpError>>>,
    /// The job's tracing span (§11).
    pub(crate) span: tracing::Span,
}

/// A result being streamed as `result_chunk` events.
pub(crate) struct StreamState {
    pub result_id: String,
    pub next_chunk: u64,
    pub size: u64,
    pub complete: bool,
}

struct JobState {
    status: JobStatus,
    cancel_reason: Option<String>,
    finished_at: Option<SystemTime>,
}

struct Emission {
    open: bool,
    subscribers: Vec<Recipient>,
}

/// The mutable part of a job's authority.
#[derive(Default)]
pub struct Authority {
    /// Current counters per currency, when the lease has `cost.budget`.
    pub budget: Option<Budget>,
    /// Live credentials (§9.8).
    pub credentials: Vec<Credential>,
}

impl JobRecord {
    pub(crate) fn new(spec: JobSpec, owner: Recipient, authority: Authority) -> JobRecord {
        let span = tracing::info_span!(
            "arcp.job",
            job_id = %spec.id,
            agent = %spec.agent,
            trace_id = spec.trace_id.as_ref().map(|t| t.as_str()).unwrap_or(""),
            "arcp.lease.expires_at" = spec.lease.expires_at().map(|t| Timestamp(t).to_rfc3339()).unwrap_or_default(),
            "arcp.budget.remaining" = tracing::field::Empty,
        );
        JobRecord {
            fatal: Mutex::new(None),
            children: Mutex::new(Vec::new()),
            stream: Mutex::new(None),
            ended: tokio::sync::watch::Sender::new(None),
            span,
            spec,
            owner,
            cancel: CancellationToken::new(),
            cancel_requested: AtomicBool::new(false),
            runner: AtomicWaker::new(),
            state: Mutex::new(JobState {
                status: JobStatus::Running,
                cancel_reason: None,
                finished_at: None,
            }),
            last_seq: AtomicU64::new(0),
            emits: AtomicU64::new(0),
            emission: ReadMostlyLock::new(Emission {
                open: true,
                subscribers: Vec::new(),
            }),
            authority: Mutex::new(authority),
        }
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.spec.id
    }

    /// The submitting session.
    pub fn session(&self) -> &SessionId {
        &self.owner.session.id
    }

    /// The submitting principal.
    pub fn principal(&self) -> &Principal {
        &self.owner.session.principal
    }

    /// The features of the submitting session when it submitted.
    pub(crate) fn owner_features(&self) -> &crate::protocol::Features {
        &self.owner.features
    }

    /// The submitting session, as a recipient of frames.
    pub(crate) fn owner(&self) -> &Recipient {
        &self.owner
    }

    /// The job's current status.
    pub fn status(&self) -> JobStatus {
        self.state.lock().status
    }

    pub(crate) fn finished_before(&self, before: SystemTime) -> bool {
        self.state.lock().finished_at.is_some_and(|at| at < before)
    }

    /// Asks the job to stop on behalf of its submitter (§7.4).
    pub(crate) fn request_cancel(&self, reason: Option<String>) -> Result<(), ArcpError> {
        let mut state = self.state.lock();
        if let JobStatus::Finished(status) = state.status {
            return Err(ArcpError::InvalidRequest(format!(
                "job {} already ended ({})",
                self.spec.id,
                status.as_str()
            )));
        }
        if !self.cancel.is_cancelled() {
            state.cancel_reason = reason;
            self.cancel_requested.store(true, Ordering::Release);
            self.runner.wake();
            self.cancel.cancel();
        }
        Ok(())
    }

    /// Resolves once the job is asked to stop (§7.4); for its runner, the one task that waits
    /// on it.
    pub(crate) fn cancel_requested(&self) -> impl Future<Output = ()> + '_ {
        future::poll_fn(|cx| {
            if self.cancel_requested.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.runner.register(cx.waker());
            if self.cancel_requested.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    pub(crate) fn cancel_reason(&self) -> Option<String> {
        self.state.lock().cancel_reason.clone()
    }

    /// The observable view of the job for `observer` (§6.6, §7.6): credentials only for the
    /// submitter (§14).
    pub fn summary(&self, observer: &Principal) -> JobSummary {
        let authority = self.authority.lock();
        JobSummary {
            job_id: self.spec.id.clone(),
            agent: self.spec.agent.clone(),
            status: self.status().as_str(),
            lease: self.spec.lease.to_wire(),
            expires_at: self.spec.lease.expires_at().map(Timestamp),
            budget: authority.budget.as_ref().map(Budget::remaining),
            parent_job_id: self.spec.parent.clone(),
            created_at: self.spec.created_at,
            trace_id: self.spec.trace_id.clone(),
            last_event_seq: EventSeq(self.last_seq.load(Ordering::Acquire)),
            credentials: if observer == self.principal() {
                authority.credentials.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// Records the error the job must end with; the first one wins.
    pub(crate) fn fail(&self, error: ArcpError) {
        self.fatal.lock().get_or_insert(error);
    }

    /// The error recorded by [`JobRecord::fail`], if any.
    pub(crate) fn fatal(&self) -> Option<ArcpError> {
        self.fatal.lock().clone()
    }

    /// Tells whoever waits on the job how it ended.
    pub(crate) fn publish_outcome(&self, outcome: Result<ResultBody, ArcpError>) {
        self.ended.send_replace(Some(outcome));
    }

    /// Waits for the job to end.
    pub async fn outcome(&self) -> Result<ResultBody, ArcpError> {
        let mut ended = self.ended.subscribe();
        let outcome = match ended.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| Err(ArcpError::Internal("job record dropped".into())))
    }

    /// A frame of this job.
    pub(crate) fn job_frame(&self, payload: JobPayload) -> JobFrame {
        JobFrame {
            job_id: self.spec.id.clone(),
            trace_id: self.spec.trace_id.clone(),
            payload,
        }
    }

    /// A frame of this job as the log entry it travels to its session's log as (see
    /// [`JobRecord::emit`]).
    pub(crate) fn frame(&self, payload: JobPayload) -> NewFrame {
        NewFrame::new(self.job_frame(payload))
    }

    /// Emits a non-terminal frame to the job's session and its subscribers; refused once the
    /// job has ended. Then keeps the job within the flow window of its session's reader,
    /// after releasing the emission lock.
    ///
    /// The frame is allocated, as its log entry, before the future exists, which then holds a
    /// pointer rather than the payload: emitting is a chain of nested futures, each moved into
    /// its caller's, and an agent emits by the thousand.
    pub(crate) fn emit<'a>(
        &'a self,
        outbox: &'a Outbox,
        payload: JobPayload,
    ) -> impl Future<Output = Result<(), ArcpError>> + Send + 'a {
        let frame = self.frame(payload);
        async move {
            let logged = {
                let emission = self.emission.read().await;
                if !emission.open {
                    return Err(ArcpError::InvalidRequest(format!(
                        "job {} has already ended; nothing more may be emitted for it",
                        self.spec.id
                    )));
                }
                self.fan_out(outbox, &emission, frame).await?
            };
            if let Some(seq) = logged {
                outbox.pace(&self.owner, seq).await;
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

    /// Ends the job with `status`: appends its terminal frames, after which every emit is
    /// refused.
    pub(crate) async fn finish(
        &self,
        outbox: &Outbox,
        status: FinalStatus,
        terminal: Vec<JobPayload>,
    ) {
        let mut emission = self.emission.write().await;
        emission.open = false;
        {
            let mut state = self.state.lock();
            state.status = JobStatus::Finished(status);
            state.finished_at = Some(SystemTime::now());
        }
        for payload in terminal {
            if let Err(e) = self.fan_out(outbox, &emission, self.frame(payload)).await {
                tracing::error!(job = %self.spec.id, error = %e, "could not record the job's terminal frame");
            }
        }
        emission.subscribers.clear();
    }

    /// Delivers a frame to every subscriber and the submitting session; returns the sequence
    /// number it got in the latter.
    async fn fan_out(
        &self,
        outbox: &Outbox,
        emission: &Emission,
        frame: NewFrame,
    ) -> Result<Option<EventSeq>, ArcpError> {
        for subscriber in &emission.subscribers {
            // A subscriber whose session expired has no log; the others must not suffer.
            let delivered = outbox.deliver_live(subscriber, frame.clone(), |p| self.frame(p));
            if let Err(e) = delivered.await {
                tracing::debug!(job = %self.spec.id, session = %subscriber.session.id, "subscriber not reached: {e}");
            }
        }
        match outbox
            .deliver_live(&self.owner, frame, |p| self.frame(p))
            .await
        {
            Ok(Some(seq)) => {
                self.last_seq.fetch_max(seq.get(), Ordering::AcqRel);
                Ok(Some(seq))
            }
            Ok(None) => Ok(None),
            // The submitting session's window closed: the job runs on (§6.4), unobserved.
            Err(ArcpError::ResumeWindowExpired(_)) => {
                tracing::debug!(job = %self.spec.id, "session gone; event dropped");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Attaches `subscriber` (§7.6): logs `job.subscribed` built by `announce` from the job's
    /// newest sequence number, then, with `history`, the job's frames after `from` as they are
    /// in its own session's log, then lets live frames follow, all under the write lock so
    /// nothing is missed or repeated in between.
    pub(crate) async fn attach(
        &self,
        outbox: &Outbox,
        subscriber: Recipient,
        history: Option<EventSeq>,
        announce: impl FnOnce(EventSeq, bool) -> JobPayload,
    ) -> Result<(), ArcpError> {
        let mut emission = self.emission.write().await;
        if emission
            .subscribers
            .iter()
            .any(|s| s.session.id == subscriber.session.id)
        {
            return Err(ArcpError::InvalidRequest(format!(
                "this session is already subscribed to job {}",
                self.spec.id
            )));
        }
        let newest = EventSeq(self.last_seq.load(Ordering::Acquire));
        let replay = match history {
            Some(from) => self.history(from, newest).await?,
            None => Vec::new(),
        };
        outbox
            .deliver(
                &subscriber,
                self.frame(announce(newest, !replay.is_empty())),
            )
            .await?;
        for mut frame in replay {
            // The submit's id correlates only for the submitting session.
            if let JobPayload::Accepted(accepted) = &mut frame.payload {
                accepted.request_id = None;
            }
            outbox.deliver(&subscriber, NewFrame::new(frame)).await?;
        }
        if emission.open {
            emission.subscribers.push(subscriber);
        }
        Ok(())
    }

    /// Detaches a subscriber; `false` if it was not subscribed.
    pub(crate) async fn detach(&self, session: &SessionId) -> bool {
        let mut emission = self.emission.write().await;
        let before = emission.subscribers.len();
        emission.subscribers.retain(|s| &s.session.id != session);
        emission.subscribers.len() != before
    }

    /// This job's frames in its own session's log with sequence numbers in `(from, through]`.
    async fn history(&self, from: EventSeq, through: EventSeq) -> Result<Vec<JobFrame>, ArcpError> {
        const BATCH: usize = 1024;
        let mut frames = Vec::new();
        let mut position = from;
        while position < through {
            let batch = self
                .owner
                .session
                .log
                .read_after(position, BATCH)
                .await
                .map_err(|_| {
                    ArcpError::ResumeWindowExpired(format!(
                        "the history of job {} after {from} is no longer buffered",
                        self.spec.id
                    ))
                })?;
            let Some(last) = batch.last() else { break };
            position = last.seq;
            frames.extend(
                batch
                    .iter()
                    .filter(|f| f.seq <= through && f.frame.job_id == self.spec.id)
                    .map(|f| f.frame.clone()),
            );
        }
        Ok(frames)
    }
}
