//! What a running agent sees of its job: identity, events, cancellation, and every
//! authority-bearing operation (§9.3), which goes through [`JobContext::authorize`].

use std::{collections::BTreeMap, future::Future, sync::Arc, time::SystemTime};

use async_trait::async_trait;
use base64::{engine::general_purpose::STANDARD, Engine};
use futures::FutureExt;

use crate::{
    clock::Timestamp,
    error::ArcpError,
    ids::{AgentRef, JobId, TraceId},
    job::record::{JobRecord, StreamState},
    lease::{cost_of_metric, Amount, EffectiveLease, Namespace},
    protocol::{
        credential::Credential,
        event::{EventBody, LogLevel, ToolError},
        job_frame::{JobPayload, ResultBody},
        Json, Lease,
    },
};

/// The handle an agent gets for one job. Cheap to clone; clones may move to other tasks.
#[derive(Clone)]
pub struct JobContext {
    job: Arc<JobRecord>,
    delegation: Arc<dyn Delegation>,
}

/// Starting delegated jobs (§10): what a job's context needs of the engine that runs it.
#[async_trait]
pub(crate) trait Delegation: Send + Sync + 'static {
    /// Starts a child of `parent` running `agent` on `input` under `lease_request` (and
    /// `expires_at`): checks that the child's lease is a subset of the parent's, reserves its
    /// budget out of the parent's, registers it (within the caps on running jobs), announces
    /// it with a `delegate` event of the parent, then starts it in the parent's session with
    /// the parent's trace context.
    async fn delegate(
        &self,
        parent: &Arc<JobRecord>,
        agent: &str,
        input: Json,
        lease_request: &Lease,
        expires_at: Option<&str>,
    ) -> Result<Arc<JobRecord>, ArcpError>;
}

/// A job this job delegated to (§10).
pub struct ChildJob {
    job: Arc<JobRecord>,
}

impl ChildJob {
    /// The child's id.
    pub fn id(&self) -> &JobId {
        self.job.id()
    }

    /// Waits for the child to end: its result, or the error it ended with.
    pub async fn outcome(&self) -> Result<ResultBody, ArcpError> {
        self.job.outcome().await
    }
}

/// Streams the job's result as `result_chunk` events (§8.4); the job's `job.result` then
/// carries `result_id` and `result_size` instead of an inline result.
pub struct ResultStream {
    ctx: JobContext,
}

impl JobContext {
    pub(crate) fn new(job: Arc<JobRecord>, delegation: Arc<dyn Delegation>) -> Self {
        JobContext { job, delegation }
    }

    /// The job's id.
    pub fn job_id(&self) -> &JobId {
        self.job.id()
    }

    /// The job's trace context (§11), to forward to tools and sub-agents.
    pub fn trace_id(&self) -> Option<&TraceId> {
        self.job.spec.trace_id.as_ref()
    }

    /// The job's effective lease (§9).
    pub fn lease(&self) -> &EffectiveLease {
        &self.job.spec.lease
    }

    /// The current budget counters, when the lease has `cost.budget`.
    pub fn budget_remaining(&self) -> Option<BTreeMap<String, f64>> {
        self.job
            .authority
            .lock()
            .budget
            .as_ref()
            .map(|b| b.remaining())
    }

    /// The job's live provisioned credentials (§9.8).
    pub fn credentials(&self) -> Vec<Credential> {
        self.job.authority.lock().credentials.clone()
    }

    /// Whether the job has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.job.cancel.is_cancelled()
    }

    /// Resolves when the job is cancelled or times out.
    pub async fn cancelled(&self) {
        self.job.cancel.cancelled().await
    }

    /// Authorizes an operation on `resource` under capability `namespace` (§9.3), before the
    /// agent performs it: `LEASE_EXPIRED` at or after `expires_at` (and the job will end with
    /// it), `PERMISSION_DENIED` when no grant covers the resource, `BUDGET_EXHAUSTED` when a
    /// budget counter is spent (fatal to the job if the gateway is configured so).
    pub fn authorize(&self, namespace: Namespace, resource: &str) -> Result<(), ArcpError> {
        if let Err(e) = self
            .job
            .spec
            .lease
            .authorize(namespace, resource, SystemTime::now())
        {
            if matches!(e, ArcpError::LeaseExpired(_)) {
                tracing::warn!(target: "arcp::audit", job = %self.job.id(), "lease expired; refusing {namespace} {resource}");
                self.job.fail(e.clone());
            }
            return Err(e);
        }
        let spent = self
            .job
            .authority
            .lock()
            .budget
            .as_ref()
            .map(|b| b.ensure_available())
            .transpose();
        if let Err(e) = spent {
            if self.job.services.settings.budget_exhaustion_fatal {
                self.job.fail(e.clone());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Calls a tool through the lease (`tool.call`): emits `tool_call`, authorizes, runs
    /// `call` only if authorized, and emits the `tool_result` with its result or error. The
    /// agent gets the same result or error.
    pub async fn call_tool<F, Fut>(
        &self,
        tool: &str,
        args: Json,
        call: F,
    ) -> Result<Json, ArcpError>
    where
        F: FnOnce(Json) -> Fut,
        Fut: Future<Output = Result<Json, ArcpError>>,
    {
        let call_id = format!("call_{}", uuid::Uuid::now_v7().simple());
        self.emit(EventBody::ToolCall {
            tool: tool.to_owned(),
            args: args.clone(),
            call_id: call_id.clone(),
        })
        .await?;
        let outcome = match self.authorize(Namespace::ToolCall, tool) {
            Ok(()) => call(args).await,
            Err(e) => Err(e),
        };
        self.emit(EventBody::ToolResult {
            call_id,
            outcome: outcome.clone().map_err(|e| ToolError {
                code: e.code(),
                message: e.message().to_owned(),
            }),
        })
        .await?;
        outcome
    }

    /// Emits a `job.event`. Invalid bodies (§8.2) are refused with `INVALID_REQUEST`, and so
    /// are kinds with runtime semantics (`delegate`, `result_chunk`, a credential rotation),
    /// which have their own calls. Kinds behind a feature a receiving session did not
    /// negotiate (`progress`, `result_chunk`) are not sent to it (§6.2). A `cost.*` metric in a
    /// budgeted currency decrements the budget and is followed by `cost.budget.remaining`
    /// (§9.6).
    ///
    /// The body is checked and framed before the returned future exists, and an event that
    /// charges nothing is `JobRecord::emit`'s future itself, which holds a pointer to the
    /// frame rather than the body (see there why that matters).
    pub fn emit(&self, body: EventBody) -> impl Future<Output = Result<(), ArcpError>> + Send + '_ {
        match emittable(&body) {
            Ok(None) => self.send(body).left_future(),
            Ok(Some((currency, amount))) => {
                let sent = self.send(body);
                async move {
                    sent.await?;
                    self.charge(currency, amount).await
                }
                .boxed()
                .right_future()
            }
            Err(e) => futures::future::ready(Err(e)).boxed().right_future(),
        }
    }

    /// Charges a `cost.*` metric to the budget, and reports what remains.
    async fn charge(&self, currency: String, amount: Amount) -> Result<(), ArcpError> {
        let remaining = {
            let mut authority = self.job.authority.lock();
            authority
                .budget
                .as_mut()
                .and_then(|b| b.charge(&currency, amount))
        };
        let Some(remaining) = remaining else {
            return Ok(());
        };
        self.job.span.record(
            "arcp.budget.remaining",
            format!("{currency}:{remaining}").as_str(),
        );
        self.send(EventBody::Metric {
            name: "cost.budget.remaining".into(),
            value: remaining.to_f64(),
            unit: Some(currency),
            dimensions: None,
        })
        .await
    }

    fn send(&self, body: EventBody) -> impl Future<Output = Result<(), ArcpError>> + Send + '_ {
        self.job.emit(JobPayload::Event {
            ts: Timestamp::now(),
            body,
        })
    }

    /// Emits a `log` event.
    pub fn log(
        &self,
        level: LogLevel,
        message: impl Into<String>,
    ) -> impl Future<Output = Result<(), ArcpError>> + Send + '_ {
        self.emit(EventBody::Log {
            level,
            message: message.into(),
        })
    }

    /// Emits a `progress` event (§8.2.1).
    pub fn progress(
        &self,
        current: f64,
        total: Option<f64>,
    ) -> impl Future<Output = Result<(), ArcpError>> + Send + '_ {
        self.emit(EventBody::Progress {
            current,
            total,
            units: None,
            message: None,
        })
    }

    /// Emits a `status` event.
    pub fn status(
        &self,
        phase: &str,
        message: Option<String>,
    ) -> impl Future<Output = Result<(), ArcpError>> + Send + '_ {
        self.emit(EventBody::Status {
            phase: phase.to_owned(),
            message,
            credential: None,
        })
    }

    /// Emits a `metric` event; see [`JobContext::emit`] for `cost.*` metrics.
    pub fn metric(
        &self,
        name: &str,
        value: f64,
        unit: Option<&str>,
    ) -> impl Future<Output = Result<(), ArcpError>> + Send + '_ {
        self.emit(EventBody::Metric {
            name: name.to_owned(),
            value,
            unit: unit.map(str::to_owned),
            dimensions: None,
        })
    }

    /// Delegates to a child job (§10): authorizes `agent.delegate` on the agent's name, checks
    /// that the child's lease is a subset of this job's (§9.4; `LEASE_SUBSET_VIOLATION`
    /// otherwise), reserves the child's budget out of this job's remaining counters, starts
    /// the child in this job's session with this job's trace context, and emits `delegate`.
    pub async fn delegate(
        &self,
        agent: &str,
        input: Json,
        lease_request: &Lease,
        expires_at: Option<&str>,
    ) -> Result<ChildJob, ArcpError> {
        let name = AgentRef::parse(agent)?.name();
        self.authorize(Namespace::AgentDelegate, name)?;
        let child = self
            .delegation
            .delegate(&self.job, agent, input, lease_request, expires_at)
            .await?;
        Ok(ChildJob { job: child })
    }

    /// Replaces a provisioned credential's value (§9.8.2): the old value is revoked and a
    /// `status` `credential_rotated` event carries the new one (to the submitter only).
    pub async fn rotate_credential(&self, id: &str) -> Result<Credential, ArcpError> {
        let provisioner = self.job.services.provisioner.as_ref().ok_or_else(|| {
            ArcpError::InvalidRequest("no credential provisioner is configured".into())
        })?;
        if !self.credentials().iter().any(|c| c.id == id) {
            return Err(ArcpError::InvalidRequest(format!(
                "credential {id} does not belong to this job"
            )));
        }
        let rotated = provisioner.rotate(id).await?;
        {
            let mut authority = self.job.authority.lock();
            if let Some(c) = authority.credentials.iter_mut().find(|c| c.id == id) {
                *c = rotated.clone();
            }
        }
        self.send(EventBody::Status {
            phase: "credential_rotated".into(),
            message: Some(format!("credential {id} rotated")),
            credential: Some(Box::new(rotated.clone())),
        })
        .await?;
        Ok(rotated)
    }

    /// Starts streaming the job's result (§8.4). Needs the submitting session to have
    /// negotiated `result_chunk`; one stream per job.
    pub fn stream_result(&self) -> Result<ResultStream, ArcpError> {
        if !self.job.owner_features().has("result_chunk") {
            return Err(ArcpError::InvalidRequest(
                "the submitting session did not negotiate result_chunk; return the result inline"
                    .into(),
            ));
        }
        let mut stream = self.job.stream.lock();
        if stream.is_some() {
            return Err(ArcpError::InvalidRequest(
                "this job already streams its result".into(),
            ));
        }
        *stream = Some(StreamState {
            result_id: format!("res_{}", uuid::Uuid::now_v7().simple()),
            next_chunk: 0,
            size: 0,
            complete: false,
        });
        Ok(ResultStream { ctx: self.clone() })
    }
}

impl ResultStream {
    /// Sends a chunk of text (`utf8`); `more: false` marks the last chunk.
    pub async fn write_text(&mut self, text: &str, more: bool) -> Result<(), ArcpError> {
        self.write(text.len() as u64, text.to_owned(), "utf8", more)
            .await
    }

    /// Sends a chunk of bytes (`base64`); `more: false` marks the last chunk.
    pub async fn write_bytes(&mut self, bytes: &[u8], more: bool) -> Result<(), ArcpError> {
        self.write(bytes.len() as u64, STANDARD.encode(bytes), "base64", more)
            .await
    }

    async fn write(
        &mut self,
        decoded: u64,
        data: String,
        encoding: &str,
        more: bool,
    ) -> Result<(), ArcpError> {
        let settings = &self.ctx.job.services.settings;
        let job = &self.ctx.job;
        let (result_id, chunk_seq) = {
            let mut guard = job.stream.lock();
            let state = guard
                .as_mut()
                .ok_or_else(|| ArcpError::Internal("result stream state missing".into()))?;
            if state.complete {
                return Err(ArcpError::InvalidRequest(
                    "the result stream already sent its last chunk".into(),
                ));
            }
            let error = if decoded > settings.max_result_chunk_bytes {
                Some(format!(
                    "result_chunk of {decoded} bytes exceeds the {}-byte chunk limit",
                    settings.max_result_chunk_bytes
                ))
            } else if state.size + decoded > settings.max_result_bytes {
                Some(format!(
                    "streamed result exceeds the {}-byte limit",
                    settings.max_result_bytes
                ))
            } else {
                None
            };
            if let Some(message) = error {
                // §14: exceeding either cap is INTERNAL_ERROR, and the job ends with it.
                let e = ArcpError::Internal(message);
                job.fail(e.clone());
                return Err(e);
            }
            state.size += decoded;
            state.complete = !more;
            let chunk = state.next_chunk;
            state.next_chunk += 1;
            (state.result_id.clone(), chunk)
        };
        self.ctx
            .send(EventBody::ResultChunk {
                result_id,
                chunk_seq,
                data,
                encoding: encoding.to_owned(),
                more,
            })
            .await
    }
}

/// Checks that an agent may emit `body` through [`JobContext::emit`], and returns what it
/// charges to the budget if it is a `cost.*` metric.
fn emittable(body: &EventBody) -> Result<Option<(String, Amount)>, ArcpError> {
    body.validate()?;
    match body {
        EventBody::Delegate { .. } => Err(runtime_only("delegate", "delegate()")),
        EventBody::ResultChunk { .. } => Err(runtime_only("result_chunk", "stream_result()")),
        EventBody::Status {
            credential: Some(_),
            ..
        } => Err(runtime_only("credential_rotated", "rotate_credential()")),
        EventBody::Metric {
            name, value, unit, ..
        } => cost_of_metric(name, *value, unit.as_deref()),
        _ => Ok(None),
    }
}

fn runtime_only(kind: &str, call: &str) -> ArcpError {
    ArcpError::InvalidRequest(format!(
        "{kind} events are emitted by the runtime; use JobContext::{call}"
    ))
}
