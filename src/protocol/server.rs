//! Messages the runtime sends.
//!
//! Two families, as §8.3 distinguishes them: [`Control`] frames (welcome, errors, pong, ...)
//! belong to one connection and carry no sequence number; [`JobFrame`]s are appended to the
//! session's event log, get the session's next `event_seq`, and are replayed on resume.

use std::{cell::RefCell, collections::BTreeMap, sync::Arc};

use rand::{rngs::SmallRng, Rng, SeedableRng};

use crate::{
    clock::Timestamp,
    error::{ArcpError, ErrorCode},
    ids::{EventSeq, JobId, SessionId, TraceId},
};

use super::{event::EventBody, Json, Lease};

/// A session-control frame for one connection.
#[derive(Clone, Debug)]
pub struct Control {
    /// The `id` of the client frame this answers.
    pub request_id: Option<String>,
    /// The message.
    pub message: ControlMessage,
}

/// The session-control messages.
#[derive(Clone, Debug)]
pub enum ControlMessage {
    /// `session.welcome` (§6.2).
    Welcome(Welcome),
    /// `session.error` (§12).
    Error(ArcpError),
    /// `session.pong` (§6.4).
    Pong {
        /// The nonce of the ping.
        ping_nonce: String,
        /// When the ping arrived.
        received_at: Timestamp,
    },
    /// `session.closed` (§6.7).
    Closed {
        /// Why.
        reason: Option<String>,
    },
    /// `session.ping` (§6.4), sent when the connection has been idle for an interval.
    Ping {
        /// Echoed by the client's pong.
        nonce: String,
        /// When it was sent.
        sent_at: Timestamp,
    },
    /// `session.jobs` (§6.6): one page of the jobs the principal may observe.
    Jobs {
        /// The page.
        jobs: Vec<JobSummary>,
        /// Present when more jobs follow; pass it back as `cursor`.
        next_cursor: Option<String>,
    },
}

/// A provisioned credential (§9.8.1). Its `value` is a secret: only the job's submitter ever
/// receives it, and it never reaches a log.
#[derive(Clone, PartialEq)]
pub struct Credential {
    /// Stable within the job; correlates rotation and revocation.
    pub id: String,
    /// `bearer`.
    pub scheme: String,
    /// The secret.
    pub value: String,
    /// The only URL the credential may be presented to.
    pub endpoint: String,
    /// The API dialect to speak at `endpoint`.
    pub profile: Option<String>,
    /// What the upstream enforces, echoed for information.
    pub constraints: serde_json::Map<String, Json>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The observable view of a job (§6.6), which is also the authority descriptor of
/// `job.subscribed` (§7.6).
#[derive(Clone, Debug)]
pub struct JobSummary {
    /// The job.
    pub job_id: JobId,
    /// `name@version`.
    pub agent: String,
    /// `running`, `success`, `error`, `cancelled` or `timed_out`.
    pub status: &'static str,
    /// The effective lease.
    pub lease: Lease,
    /// `lease_constraints.expires_at`.
    pub expires_at: Option<Timestamp>,
    /// Current budget counters, when the lease has `cost.budget`.
    pub budget: Option<BTreeMap<String, f64>>,
    /// The delegating job, for a child job (§10).
    pub parent_job_id: Option<JobId>,
    /// When it was accepted.
    pub created_at: Timestamp,
    /// Its trace context.
    pub trace_id: Option<TraceId>,
    /// The sequence number of its newest frame in its own session.
    pub last_event_seq: EventSeq,
    /// Only for the job's submitter (§14); empty for everyone else.
    pub credentials: Vec<Credential>,
}

/// `session.welcome`.
#[derive(Clone, Debug)]
pub struct Welcome {
    /// The runtime's name and version.
    pub runtime_name: &'static str,
    /// See `runtime_name`.
    pub runtime_version: &'static str,
    /// The freshly rotated token.
    pub resume_token: String,
    /// How long the session survives a dropped transport.
    pub resume_window_sec: u32,
    /// §6.4.
    pub heartbeat_interval_sec: u32,
    /// The effective feature set.
    pub features: Vec<String>,
    /// The agent inventory.
    pub agents: Vec<AgentInfo>,
}

/// One agent of the inventory (§7.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    /// Agent name.
    pub name: String,
    /// Registered versions.
    pub versions: Vec<String>,
    /// The version a bare `name` resolves to.
    pub default: String,
}

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

/// A job frame as stored in a session's event log, with its place in the session's sequence.
#[derive(Clone, Debug)]
pub struct LoggedFrame {
    /// The session-scoped sequence number (§8.3).
    pub seq: EventSeq,
    /// The envelope `id`, a UUIDv7 fixed before the frame is logged, so a replayed frame
    /// carries the id it was first sent with.
    pub id: uuid::Uuid,
    /// The frame.
    pub frame: JobFrame,
}

/// A job frame on its way into one session's log, allocated as the log entry it becomes.
///
/// A job emits by the thousand. Boxing each frame where the job frames it, then moving it into
/// the log's shared entry, would cost every event a second allocation, a copy and a free. A
/// `NewFrame` is that entry from the start, not yet numbered and never shared until the log
/// numbers it, so it travels as one pointer and is logged in place. Cloning one makes a
/// separate entry, with its own envelope id, for another session's log.
#[derive(Debug)]
pub struct NewFrame(Arc<LoggedFrame>);

impl NewFrame {
    /// An entry for `frame`, with a fresh envelope id.
    pub fn new(frame: JobFrame) -> Self {
        NewFrame(Arc::new(LoggedFrame {
            seq: EventSeq::ZERO,
            id: frame.envelope_id(),
            frame,
        }))
    }

    /// The frame, to change before it is logged.
    pub fn frame_mut(&mut self) -> &mut JobFrame {
        // The entry is not shared yet, so this never clones it.
        &mut Arc::make_mut(&mut self.0).frame
    }

    /// The log entry, numbered `seq`.
    pub fn logged(mut self, seq: EventSeq) -> Arc<LoggedFrame> {
        Arc::make_mut(&mut self.0).seq = seq;
        self.0
    }
}

impl std::ops::Deref for NewFrame {
    type Target = JobFrame;

    fn deref(&self) -> &JobFrame {
        &self.0.frame
    }
}

impl Clone for NewFrame {
    fn clone(&self) -> Self {
        NewFrame::new(self.0.frame.clone())
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

/// A frame on its way to one connection: a control frame, or a logged job frame.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// Session control. Boxed: control frames are rare and large, and every job frame is
    /// moved through the stream as this type.
    Control(Box<Control>),
    /// A job frame from the session's log, shared with the log and other readers.
    Job(Arc<LoggedFrame>),
}

/// Why a connection's outbound stream ended other than by the client going away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The session was resumed on another stream, which now owns it.
    Superseded,
    /// The gateway is shutting down; resume elsewhere.
    ShuttingDown,
}

/// Everything a connection's outbound stream yields, with the session it belongs to.
#[derive(Clone, Debug)]
pub enum OutboundItem {
    /// A frame for the client, stamped with the session id (absent before a welcome).
    Frame(Option<SessionId>, Outbound),
    /// The stream ends for this reason.
    End(StreamEnd),
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
