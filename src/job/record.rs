//! [`JobRecord`]: the runtime's record of one running job: what it runs, its lifecycle state,
//! its authority (budget, credentials), cancellation, and how it ended. Its frames leave
//! through [`super::emission`]; the directory reaches it as a
//! [`JobControl`](crate::store::jobs::JobControl).

use std::{
    collections::BTreeMap,
    future::{self, Future},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::Poll,
    time::SystemTime,
};

use async_trait::async_trait;
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::Timestamp,
    error::ArcpError,
    ids::{JobId, Principal, SessionId, TraceId},
    lease::{Budget, EffectiveLease},
    protocol::{
        credential::Credential,
        job_frame::{FinalStatus, JobFrame, JobPayload, JobStatus, ResultBody},
    },
    store::jobs::{already_ended, JobControl, JobEntry, Subscriber},
};

use super::{
    delivery::{announcement, Recipient},
    emission::Emitter,
    JobServices,
};

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
    /// The submitting principal.
    pub principal: Principal,
}

/// One job.
pub struct JobRecord {
    /// What it runs.
    pub spec: JobSpec,
    /// The submitting session's recipient view: the only session that may cancel (§7.4).
    pub(super) owner: Recipient,
    /// What every job of the engine shares.
    pub(crate) services: Arc<JobServices>,
    /// Cancelled when the job is asked to stop or has ended: what the agent and its
    /// sub-tasks watch.
    pub(crate) cancel: CancellationToken,
    /// Set by a cancel request for the runner, which checks it every time the agent is woken:
    /// polling a token's future locks two mutexes, checking this is one atomic load.
    cancel_requested: AtomicBool,
    /// Wakes the runner waiting in [`JobRecord::cancel_requested`].
    runner: AtomicWaker,
    state: Mutex<JobState>,
    /// Where its frames leave from.
    pub(super) emitter: Emitter,
    /// Budget counters and credentials change while the job runs; observers read them.
    pub(crate) authority: Mutex<Authority>,
    /// The error the job must end with whatever the agent returns: its lease expired, or its
    /// budget ran out under a fatal policy. The first one wins.
    fatal: Mutex<Option<ArcpError>>,
    /// Delegated jobs (§10), cancelled when this one ends.
    pub(crate) children: Mutex<Vec<JobId>>,
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

/// The mutable part of a job's authority.
#[derive(Default)]
pub struct Authority {
    /// Current counters per currency, when the lease has `cost.budget`.
    pub budget: Option<Budget>,
    /// Live credentials (§9.8).
    pub credentials: Vec<Credential>,
}

impl JobRecord {
    pub(crate) fn new(
        spec: JobSpec,
        owner: Recipient,
        authority: Authority,
        services: Arc<JobServices>,
    ) -> JobRecord {
        // A field is recorded only when the job has a value for it: an empty one says nothing
        // and trips log pipelines that index fields.
        let span = tracing::info_span!(
            "arcp.job",
            job_id = %spec.id,
            session_id = %owner.session,
            agent = %spec.agent,
            trace_id = tracing::field::Empty,
            "arcp.lease.expires_at" = tracing::field::Empty,
            "arcp.budget.remaining" = tracing::field::Empty,
        );
        // §11: the job's span joins the caller's trace; a job without one gets its span's, so
        // that what its agent does joins the job's.
        let mut spec = spec;
        crate::telemetry::join(&span, spec.trace_id.as_ref());
        if spec.trace_id.is_none() {
            spec.trace_id = crate::telemetry::traceparent(&span);
        }
        if let Some(trace_id) = &spec.trace_id {
            span.record("trace_id", trace_id.as_str());
        }
        if let Some(expires_at) = spec.lease.expires_at() {
            span.record(
                "arcp.lease.expires_at",
                Timestamp(expires_at).to_rfc3339().as_str(),
            );
        }
        let emitter = Emitter::new(
            spec.id.clone(),
            spec.trace_id.clone(),
            owner.log.pipelines(),
        );
        JobRecord {
            fatal: Mutex::new(None),
            children: Mutex::new(Vec::new()),
            stream: Mutex::new(None),
            ended: tokio::sync::watch::Sender::new(None),
            span,
            spec,
            owner,
            services,
            cancel: CancellationToken::new(),
            cancel_requested: AtomicBool::new(false),
            runner: AtomicWaker::new(),
            state: Mutex::new(JobState {
                status: JobStatus::Running,
                cancel_reason: None,
                finished_at: None,
            }),
            emitter,
            authority: Mutex::new(authority),
        }
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.spec.id
    }

    /// The submitting session.
    pub fn session(&self) -> &SessionId {
        &self.owner.session
    }

    /// The submitting principal.
    pub fn principal(&self) -> &Principal {
        &self.spec.principal
    }

    /// The submitting session as a recipient of another job's frames: a delegated child's.
    pub(crate) fn owner_recipient(&self) -> Recipient {
        self.owner.same_session()
    }

    /// The features of the submitting session when it submitted.
    pub(crate) fn owner_features(&self) -> &crate::protocol::Features {
        &self.owner.features
    }

    /// Emits a non-terminal frame (see [`Emitter::emit`]).
    pub(crate) fn emit(
        &self,
        payload: JobPayload,
    ) -> impl Future<Output = Result<(), ArcpError>> + Send + '_ {
        self.emitter.emit(&self.services, &self.owner, payload)
    }

    /// Waits until every frame the job emitted so far was logged; the first failure to log
    /// one, if any was not (see [`Emitter::logged`]).
    pub(crate) async fn logged(&self) -> Result<(), ArcpError> {
        self.emitter.logged(&self.services, &self.owner).await
    }

    /// Ends the job with `status` and its terminal frames, after which every emit is refused.
    pub(crate) async fn finish(&self, status: FinalStatus, terminal: Vec<JobPayload>) {
        let ended = || {
            let mut state = self.state.lock();
            state.status = JobStatus::Finished(status);
            state.finished_at = Some(SystemTime::now());
        };
        self.emitter
            .finish(&self.services, &self.owner, terminal, ended)
            .await;
    }

    /// Asks the job to stop on behalf of its submitter (§7.4).
    pub(crate) fn request_cancel(&self, reason: Option<String>) -> Result<(), ArcpError> {
        let mut state = self.state.lock();
        if let JobStatus::Finished(_) = state.status {
            return Err(already_ended(&self.spec.id, state.status));
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

    /// The job as the directory lists it (§6.6).
    pub fn entry(&self) -> JobEntry {
        let (status, finished_at) = {
            let state = self.state.lock();
            (state.status, state.finished_at)
        };
        let authority = self.authority.lock();
        JobEntry {
            id: self.spec.id.clone(),
            session: self.owner.session.clone(),
            principal: self.spec.principal.clone(),
            agent: self.spec.agent.clone(),
            status,
            lease: self.spec.lease.to_wire(),
            expires_at: self.spec.lease.expires_at().map(Timestamp),
            budget: authority.budget.as_ref().map(Budget::remaining),
            parent: self.spec.parent.clone(),
            created_at: self.spec.created_at,
            finished_at,
            trace_id: self.spec.trace_id.clone(),
            last_event_seq: self.emitter.last_seq(),
            credentials: authority.credentials.clone(),
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
        self.emitter.job_frame(payload)
    }
}

#[async_trait]
impl JobControl for JobRecord {
    fn entry(&self) -> JobEntry {
        JobRecord::entry(self)
    }

    fn cancel(&self, reason: Option<String>) -> Result<(), ArcpError> {
        self.request_cancel(reason)
    }

    async fn subscribe(&self, subscriber: Subscriber) -> Result<(), ArcpError> {
        let to =
            Recipient::subscriber(&*self.services.logs, &subscriber, &self.spec.principal).await?;
        let announce =
            |newest, replayed| announcement(&self.entry(), &subscriber, newest, replayed);
        let attach = self.emitter.attach(
            &self.services,
            &self.owner,
            to,
            subscriber.history,
            announce,
        );
        Box::pin(attach).await
    }

    async fn unsubscribe(&self, session: &SessionId) -> Result<bool, ArcpError> {
        Ok(self.emitter.detach(session).await)
    }
}
