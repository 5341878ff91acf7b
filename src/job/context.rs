//! What a running agent sees of its job: identity, an event sink, and cancellation.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    clock::Timestamp,
    error::ArcpError,
    event_log::EventLog,
    ids::{JobId, SessionId, TraceId},
    protocol::{
        event::EventBody,
        server::{JobFrame, JobPayload},
        Features,
    },
};

/// The handle an agent gets for one job. Cheap to clone; clones may move to other tasks.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<Inner>,
}

struct Inner {
    job_id: JobId,
    trace_id: Option<TraceId>,
    session: SessionId,
    log: Arc<dyn EventLog>,
    cancel: CancellationToken,
    features: Features,
    /// `false` once the terminal frame is logged. Emits hold the read side while appending and
    /// the terminal frame takes the write side, so no frame of this job can land after it
    /// (§7.3), even from a sub-task holding a clone of the context.
    open: tokio::sync::RwLock<bool>,
}

impl JobContext {
    pub(crate) fn new(
        job_id: JobId,
        trace_id: Option<TraceId>,
        session: SessionId,
        log: Arc<dyn EventLog>,
        cancel: CancellationToken,
        features: Features,
    ) -> Self {
        JobContext {
            inner: Arc::new(Inner {
                job_id,
                trace_id,
                session,
                log,
                cancel,
                features,
                open: tokio::sync::RwLock::new(true),
            }),
        }
    }

    /// The job's id.
    pub fn job_id(&self) -> &JobId {
        &self.inner.job_id
    }

    /// The job's trace context (§11), to forward to tools and sub-agents.
    pub fn trace_id(&self) -> Option<&TraceId> {
        self.inner.trace_id.as_ref()
    }

    /// Whether the job has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when the job is cancelled or times out.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }

    /// Emits a `job.event`. Invalid bodies (§8.2) are refused with `INVALID_REQUEST`. Kinds
    /// behind a feature the session did not negotiate (`progress`, `result_chunk`) are not
    /// sent, since §6.2 forbids using a feature outside the effective set.
    pub async fn emit(&self, body: EventBody) -> Result<(), ArcpError> {
        body.validate()?;
        if let Some(feature) = body.required_feature() {
            if !self.inner.features.has(feature) {
                return Ok(());
            }
        }
        self.append(JobPayload::Event {
            ts: Timestamp::now(),
            body,
        })
        .await
    }

    /// Emits a `log` event.
    pub async fn log(&self, level: &str, message: impl Into<String>) -> Result<(), ArcpError> {
        self.emit(EventBody::Log {
            level: level.to_owned(),
            message: message.into(),
        })
        .await
    }

    /// Emits a `progress` event (§8.2.1).
    pub async fn progress(&self, current: f64, total: Option<f64>) -> Result<(), ArcpError> {
        self.emit(EventBody::Progress {
            current,
            total,
            units: None,
            message: None,
        })
        .await
    }

    /// Emits a `status` event.
    pub async fn status(&self, phase: &str, message: Option<String>) -> Result<(), ArcpError> {
        self.emit(EventBody::Status {
            phase: phase.to_owned(),
            message,
        })
        .await
    }

    /// Emits a `metric` event.
    pub async fn metric(
        &self,
        name: &str,
        value: f64,
        unit: Option<&str>,
    ) -> Result<(), ArcpError> {
        self.emit(EventBody::Metric {
            name: name.to_owned(),
            value,
            unit: unit.map(str::to_owned),
            dimensions: None,
        })
        .await
    }

    /// Appends a frame of this job to its session's log; refused once the job has ended.
    pub(crate) async fn append(&self, payload: JobPayload) -> Result<(), ArcpError> {
        let open = self.inner.open.read().await;
        if !*open {
            return Err(ArcpError::InvalidRequest(format!(
                "job {} has already ended; nothing more may be emitted for it",
                self.inner.job_id
            )));
        }
        self.append_unchecked(payload).await
    }

    /// Ends the job: appends its terminal frames, after which every emit is refused.
    pub(crate) async fn finish(&self, terminal: Vec<JobPayload>) {
        let mut open = self.inner.open.write().await;
        *open = false;
        for payload in terminal {
            if let Err(e) = self.append_unchecked(payload).await {
                tracing::error!(job = %self.inner.job_id, error = %e, "could not record the job's terminal frame");
            }
        }
    }

    /// A session whose resume window closed has no log any more; its job runs on (§6.4) and
    /// what it emits has no reader.
    async fn append_unchecked(&self, payload: JobPayload) -> Result<(), ArcpError> {
        let frame = JobFrame {
            job_id: self.inner.job_id.clone(),
            trace_id: self.inner.trace_id.clone(),
            payload,
        };
        match self.inner.log.append(&self.inner.session, frame).await {
            Ok(_) => Ok(()),
            Err(ArcpError::ResumeWindowExpired(_)) => {
                tracing::debug!(job = %self.inner.job_id, "session gone; event dropped");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
