//! Session-control messages (§6): frames that belong to one connection and carry no sequence
//! number, unlike the job frames of [`super::job_frame`].

use std::collections::BTreeMap;

use crate::{
    clock::Timestamp,
    error::ArcpError,
    ids::{EventSeq, JobId, TraceId},
};

use super::{credential::Credential, Lease};

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

/// Every value of a job's `status` (§6.6).
pub const JOB_STATUSES: [&str; 6] = [
    "pending",
    "running",
    "success",
    "error",
    "cancelled",
    "timed_out",
];

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

/// `session.welcome`. Its `Debug` leaves the resume token out.
#[derive(Clone)]
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

impl std::fmt::Debug for Welcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Welcome")
            .field("runtime_name", &self.runtime_name)
            .field("runtime_version", &self.runtime_version)
            .field("resume_token", &super::client::REDACTED)
            .field("resume_window_sec", &self.resume_window_sec)
            .field("heartbeat_interval_sec", &self.heartbeat_interval_sec)
            .field("features", &self.features)
            .field("agents", &self.agents)
            .finish()
    }
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
