//! Job frames (§7, §8): the messages a job produces, which enter its session's event log, get
//! the session's next `event_seq`, and are replayed on resume.

use std::{cell::RefCell, collections::BTreeMap};

use rand::{rngs::SmallRng, Rng, SeedableRng};

use crate::{
    clock::Timestamp,
    error::{ArcpError, ErrorCode},
    ids::{EventSeq, JobId, TraceId},
};

use super::{control::JobSummary, credential::Credential, event::EventBody, Json, Lease};

/// A job-scoped frame before it has a sequence number.
#[derive(Clone, Debug)]
pub struct JobFrame {
    /// The job.
    pub job_id: JobId,
    /// The job's trace context (§11).
    pub trace_id: Option<TraceId>,
    /// The message.
    pub payload: JobPayload,
}

thread_local! {
    /// The random bits of envelope ids: a fast generator per thread, seeded from the thread's
    /// cryptographic one. Ids are not secrets and need only be unique; drawing each id's bits
    /// from the cryptographic generator, as `Uuid::new_v7` does, was most of an id's cost.
    static ID_BITS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

impl JobFrame {
    /// A fresh UUIDv7 for the envelope `id` the frame gets as it enters a log. An event is
    /// stamped with its own `ts`, which spares every event a second clock read and the
    /// process-wide lock `Uuid::now_v7` takes to keep ids monotonic: `event_seq` orders
    /// frames, so ids need only be unique, which their 74 random bits make them.
    pub fn envelope_id(&self) -> uuid::Uuid {
        let since_epoch = match &self.payload {
            JobPayload::Event { ts, .. } => ts.0.duration_since(std::time::UNIX_EPOCH).ok(),
            _ => None,
        };
        match since_epoch {
            Some(since) => {
                let millis = since.as_secs() * 1000 + u64::from(since.subsec_millis());
                // Two 64-bit draws: `random::<[u8; 10]>()` would draw once per byte.
                let bits = ID_BITS
                    .with(|bits| bits.borrow_mut().random::<u128>())
                    .to_le_bytes();
                let random: [u8; 10] = std::array::from_fn(|i| bits[i]);
                uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
            }
            None => uuid::Uuid::now_v7(),
        }
    }

    /// Makes the frame what an observer other than the submitter may see: no credentials
    /// (§14).
    pub fn remove_secrets(&mut self) {
        match &mut self.payload {
            JobPayload::Accepted(a) => a.credentials.clear(),
            JobPayload::Subscribed(s) => s.summary.credentials.clear(),
            JobPayload::Event {
                body: EventBody::Status { credential, .. },
                ..
            } => *credential = None,
            _ => {}
        }
    }

    /// Whether the frame carries a secret that [`JobFrame::remove_secrets`] would remove.
    pub fn has_secrets(&self) -> bool {
        match &self.payload {
            JobPayload::Accepted(a) => !a.credentials.is_empty(),
            JobPayload::Subscribed(s) => !s.summary.credentials.is_empty(),
            JobPayload::Event {
                body: EventBody::Status { credential, .. },
                ..
            } => credential.is_some(),
            _ => false,
        }
    }

    /// The feature a session must have negotiated to receive this frame (§6.2), if any.
    pub fn required_feature(&self) -> Option<&'static str> {
        match &self.payload {
            JobPayload::Event { body, .. } => body.required_feature(),
            _ => None,
        }
    }
}

impl JobPayload {
    /// Whether this frame ends its job (§7.3); `job.cancelled` is followed by a `job.error`.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobPayload::Result(_) | JobPayload::Error(_) | JobPayload::Cancelled { .. }
        )
    }
}

/// The job-scoped messages.
#[derive(Clone, Debug)]
pub enum JobPayload {
    /// `job.accepted` (§7.1). Boxed, like the other rare large payloads, so the frames a
    /// job emits by the thousand stay small to move.
    Accepted(Box<Accepted>),
    /// `job.event` (§8).
    Event {
        /// When the agent emitted it.
        ts: Timestamp,
        /// The body.
        body: EventBody,
    },
    /// `job.result`: terminal success.
    Result(JobResult),
    /// `job.error`: terminal failure.
    Error(JobError),
    /// `job.cancelled` (§7.4), followed by a `job.error` CANCELLED.
    Cancelled {
        /// The reason the client gave.
        reason: Option<String>,
    },
    /// `job.subscribed` (§7.6). Logged like the job's frames so it always precedes the
    /// replayed and live frames it announces, and is replayed on resume.
    Subscribed(Box<Subscribed>),
}

/// `job.subscribed`.
#[derive(Clone, Debug)]
pub struct Subscribed {
    /// The authority descriptor, as the subscribing principal may see it.
    pub summary: JobSummary,
    /// The job's sequence number (in its own session) after which live delivery starts.
    pub subscribed_from: EventSeq,
    /// Whether buffered history was replayed.
    pub replayed: bool,
    /// The `id` of the `job.subscribe`.
    pub request_id: Option<String>,
}

/// `job.accepted`.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The resolved `name@version`.
    pub agent: String,
    /// The effective lease.
    pub lease: Lease,
    /// `lease_constraints.expires_at`.
    pub expires_at: Option<Timestamp>,
    /// Initial budget counters, when the lease has `cost.budget` (§9.6).
    pub budget: Option<BTreeMap<String, f64>>,
    /// Provisioned credentials (§9.8).
    pub credentials: Vec<Credential>,
    /// The delegating job, for a child job (§10).
    pub parent_job_id: Option<JobId>,
    /// When the runtime accepted the job.
    pub accepted_at: Timestamp,
    /// The `id` of the `job.submit`.
    pub request_id: Option<String>,
}

/// `job.result`.
#[derive(Clone, Debug)]
pub struct JobResult {
    /// The result, inline or streamed.
    pub result: ResultBody,
    /// When the job finished.
    pub completed_at: Timestamp,
}

/// Where a job's result is (§8.4): never both inline and chunked.
#[derive(Clone, Debug, PartialEq)]
pub enum ResultBody {
    /// In the `job.result` itself.
    Inline(Json),
    /// The concatenation of the `result_chunk` events with this `result_id`.
    Streamed {
        /// The chunks' `result_id`.
        result_id: String,
        /// Decoded bytes across all chunks.
        result_size: u64,
        /// What the agent said about it, if anything.
        summary: Option<String>,
    },
}

/// The terminal state of a job (§7.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FinalStatus {
    /// The agent returned a result.
    Success,
    /// The agent or the runtime failed the job.
    Error,
    /// The submitter cancelled it.
    Cancelled,
    /// It ran past `max_runtime_sec`.
    TimedOut,
}

impl FinalStatus {
    /// Every terminal state.
    pub const ALL: [FinalStatus; 4] = [
        FinalStatus::Success,
        FinalStatus::Error,
        FinalStatus::Cancelled,
        FinalStatus::TimedOut,
    ];

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Success => "success",
            FinalStatus::Error => "error",
            FinalStatus::Cancelled => "cancelled",
            FinalStatus::TimedOut => "timed_out",
        }
    }
}

/// Where a job is in its lifecycle (§7.3).
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

/// `job.error`.
#[derive(Clone, Debug)]
pub struct JobError {
    /// How the job ended.
    pub final_status: FinalStatus,
    /// Why.
    pub code: ErrorCode,
    /// Human-readable text.
    pub message: String,
    /// When the job ended.
    pub completed_at: Timestamp,
}

impl JobError {
    /// The terminal error for `err`, with the final status §7.3 assigns to its code.
    pub fn from_error(err: &ArcpError) -> JobError {
        let final_status = match err.code() {
            ErrorCode::Cancelled => FinalStatus::Cancelled,
            ErrorCode::Timeout => FinalStatus::TimedOut,
            _ => FinalStatus::Error,
        };
        JobError {
            final_status,
            code: err.code(),
            message: err.message().to_owned(),
            completed_at: Timestamp::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        time::{Duration, SystemTime},
    };

    use super::*;

    fn frame(payload: JobPayload) -> JobFrame {
        JobFrame {
            job_id: JobId::new("job_1"),
            trace_id: None,
            payload,
        }
    }

    #[test]
    fn envelope_ids_are_unique_v7_ids_and_events_carry_their_time() {
        let ts = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123));
        let event = frame(JobPayload::Event {
            ts,
            body: EventBody::Thought { text: "t".into() },
        });
        let ids: HashSet<uuid::Uuid> = (0..10_000).map(|_| event.envelope_id()).collect();
        assert_eq!(
            ids.len(),
            10_000,
            "ids of events in the same millisecond collide"
        );
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            let (secs, nanos) = id.get_timestamp().expect("a v7 id has a time").to_unix();
            assert_eq!((secs, nanos / 1_000_000), (1_764_000_000, 123));
        }
        let cancelled = frame(JobPayload::Cancelled { reason: None });
        assert_eq!(cancelled.envelope_id().get_version_num(), 7);
        assert_ne!(cancelled.envelope_id(), cancelled.envelope_id());
    }
}
