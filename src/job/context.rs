//! What a running agent sees of its job: identity, an event sink, and cancellation.

use std::sync::Arc;

use crate::{
    clock::Timestamp,
    error::ArcpError,
    ids::{JobId, TraceId},
    protocol::{event::EventBody, server::JobPayload},
    session::outbox::Outbox,
};

use super::record::JobRecord;

/// The handle an agent gets for one job. Cheap to clone; clones may move to other tasks.
#[derive(Clone)]
pub struct JobContext {
    job: Arc<JobRecord>,
    outbox: Outbox,
}

impl JobContext {
    pub(crate) fn new(job: Arc<JobRecord>, outbox: Outbox) -> Self {
        JobContext { job, outbox }
    }

    /// The job's id.
    pub fn job_id(&self) -> &JobId {
        self.job.id()
    }

    /// The job's trace context (§11), to forward to tools and sub-agents.
    pub fn trace_id(&self) -> Option<&TraceId> {
        self.job.spec.trace_id.as_ref()
    }

    /// Whether the job has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.job.cancel.is_cancelled()
    }

    /// Resolves when the job is cancelled or times out.
    pub async fn cancelled(&self) {
        self.job.cancel.cancelled().await
    }

    /// Emits a `job.event`. Invalid bodies (§8.2) are refused with `INVALID_REQUEST`. Kinds
    /// behind a feature a receiving session did not negotiate (`progress`, `result_chunk`) are
    /// not sent to it, since §6.2 forbids using a feature outside the effective set.
    pub async fn emit(&self, body: EventBody) -> Result<(), ArcpError> {
        body.validate()?;
        self.job
            .emit(
                &self.outbox,
                JobPayload::Event {
                    ts: Timestamp::now(),
                    body,
                },
            )
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
            credential: None,
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

    pub(crate) fn record(&self) -> &Arc<JobRecord> {
        &self.job
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}
