//! Messages a client sends.

use crate::{
    error::ArcpError,
    ids::{EventSeq, JobId, SessionId, TraceId},
};

use super::{Json, Lease};

/// One client frame: the §5 envelope fields that matter to the runtime, and the message.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The client's message id, echoed as `request_id` in replies.
    pub id: Option<String>,
    /// The envelope `session_id`, when the client sets it.
    pub session_id: Option<SessionId>,
    /// The envelope `trace_id` (§11).
    pub trace_id: Option<TraceId>,
    /// The envelope `job_id`.
    pub job_id: Option<JobId>,
    /// The message.
    pub message: ClientMessage,
}

/// The messages of the client side of ARCP v1.1.
#[derive(Clone, Debug)]
pub enum ClientMessage {
    /// `session.hello` (§6.2), possibly carrying resume coordinates.
    Hello(Hello),
    /// `session.resume` (§6.3).
    Resume(Hello),
    /// `session.ping` (§6.4).
    Ping {
        /// Echoed as `ping_nonce`.
        nonce: String,
    },
    /// `session.pong` (§6.4).
    Pong,
    /// `session.ack` (§6.5).
    Ack {
        /// The highest sequence number the client has processed.
        last_processed_seq: EventSeq,
    },
    /// `session.list_jobs` (§6.6).
    ListJobs(ListJobs),
    /// `session.close` (§6.7).
    Close {
        /// Why the client closes, for logs.
        reason: Option<String>,
    },
    /// `job.submit` (§7.1).
    Submit(JobSubmit),
    /// `job.cancel` (§7.4).
    Cancel {
        /// The job to cancel.
        job_id: JobId,
        /// Why, echoed in `job.cancelled`.
        reason: Option<String>,
    },
    /// `job.subscribe` (§7.6).
    Subscribe(Subscribe),
    /// `job.unsubscribe` (§7.6).
    Unsubscribe {
        /// The job to detach from.
        job_id: JobId,
    },
}

impl ClientMessage {
    /// The ARCP message type, as in the JSON envelope's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Hello(_) => "session.hello",
            ClientMessage::Resume(_) => "session.resume",
            ClientMessage::Ping { .. } => "session.ping",
            ClientMessage::Pong => "session.pong",
            ClientMessage::Ack { .. } => "session.ack",
            ClientMessage::ListJobs(_) => "session.list_jobs",
            ClientMessage::Close { .. } => "session.close",
            ClientMessage::Submit(_) => "job.submit",
            ClientMessage::Cancel { .. } => "job.cancel",
            ClientMessage::Subscribe { .. } => "job.subscribe",
            ClientMessage::Unsubscribe { .. } => "job.unsubscribe",
        }
    }
}

/// The opening of a session: `session.hello`, or `session.resume` (which always has `resume`).
/// Its `Debug` leaves the token out.
#[derive(Clone, Default)]
pub struct Hello {
    /// `auth.scheme` (§6.1), when the hello names one; only `bearer` is defined.
    pub scheme: Option<String>,
    /// `auth.token` (§6.1), when the client authenticates in-band.
    pub token: Option<String>,
    /// `capabilities.features`; `None` when the client sent no capabilities at all.
    pub features: Option<Vec<String>>,
    /// Resume coordinates (§6.3).
    pub resume: Option<ResumeRequest>,
}

/// What a client presents to continue a session. Its `Debug` leaves the token out.
#[derive(Clone)]
pub struct ResumeRequest {
    /// The session the client believes it resumes, when it says.
    pub session_id: Option<SessionId>,
    /// The most recent `resume_token` the client received.
    pub token: String,
    /// The highest `event_seq` the client has processed.
    pub last_event_seq: EventSeq,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("scheme", &self.scheme)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("features", &self.features)
            .field("resume", &self.resume)
            .finish()
    }
}

impl std::fmt::Debug for ResumeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeRequest")
            .field("session_id", &self.session_id)
            .field("token", &REDACTED)
            .field("last_event_seq", &self.last_event_seq)
            .finish()
    }
}

/// What `Debug` shows in place of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// `job.submit` (§7.1).
#[derive(Clone, Debug)]
pub struct JobSubmit {
    /// `name` or `name@version` (§7.5).
    pub agent: String,
    /// The agent's input.
    pub input: Json,
    /// Requested capabilities.
    pub lease_request: Lease,
    /// `lease_constraints.expires_at`, verbatim.
    pub expires_at: Option<String>,
    /// §7.2.
    pub idempotency_key: Option<String>,
    /// Upper bound on the job's run time; `None` means unbounded.
    pub max_runtime_sec: Option<u32>,
}

/// `session.list_jobs` (§6.6). Every filter is optional.
#[derive(Clone, Debug, Default)]
pub struct ListJobs {
    /// Only jobs in one of these states (`pending`, `running`, `success`, ...); empty: all.
    pub status: Vec<String>,
    /// Only jobs of this agent: `name` (any version) or `name@version`.
    pub agent: Option<String>,
    /// Only jobs created after this RFC 3339 instant.
    pub created_after: Option<String>,
    /// The page size; `None` for the runtime's default.
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `job.subscribe` (§7.6).
#[derive(Clone, Debug)]
pub struct Subscribe {
    /// The job to attach to.
    pub job_id: JobId,
    /// With `history`, replay the job's buffered frames after this sequence number of the
    /// job's own session; absent means from the job's first frame.
    pub from_event_seq: Option<EventSeq>,
    /// Whether to replay buffered history before live frames.
    pub history: bool,
}

/// A client frame the transport could not turn into a message; answered with a
/// `session.error`, after which the session carries on unless the transport cannot read on
/// (see [`ReadFault::ends_stream`]).
#[derive(Clone, Debug)]
pub struct RejectedFrame {
    /// The frame's `id`, if it could be read.
    pub request_id: Option<String>,
    /// What was wrong.
    pub error: ArcpError,
    /// Set when the transport could not read the frame at all, rather than read one that
    /// breaks the protocol's rules.
    pub fault: Option<ReadFault>,
}

impl RejectedFrame {
    /// A frame that was read but is not a valid message.
    pub fn invalid(request_id: Option<String>, error: ArcpError) -> RejectedFrame {
        RejectedFrame {
            request_id,
            error,
            fault: None,
        }
    }

    /// Bytes the transport could not read as a frame, for `fault`.
    pub fn unreadable(fault: ReadFault, error: ArcpError) -> RejectedFrame {
        RejectedFrame {
            request_id: None,
            error,
            fault: Some(fault),
        }
    }

    /// Whether the transport can read no further frames after this one.
    pub fn ends_stream(&self) -> bool {
        self.fault.is_some_and(ReadFault::ends_stream)
    }
}

/// Why a transport could not read a client frame, in terms every transport shares; each maps
/// them to its own way of ending a stream (a gRPC status, a WebSocket close code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFault {
    /// Larger than the transport accepts. It cannot skip the rest, so it reads no further.
    TooLarge,
    /// Bytes that break the transport's framing: it cannot tell where the next frame starts.
    Framing,
    /// A text frame that is not valid UTF-8, which WebSocket treats as fatal (RFC 6455 §8.1).
    Encoding,
    /// A complete frame whose bytes do not decode as a message; the frames after it can still
    /// be read.
    Undecodable,
}

impl ReadFault {
    /// Whether the transport can read no further frames after one with this fault.
    pub fn ends_stream(self) -> bool {
        !matches!(self, ReadFault::Undecodable)
    }
}

/// The job a job-scoped request (`job.cancel`, `job.subscribe`, ...) names: in its payload or,
/// equivalently, in its envelope's `job_id`. When both are given they must agree.
pub fn job_ref(
    payload_job: Option<JobId>,
    envelope_job: Option<&JobId>,
    what: &str,
) -> Result<JobId, ArcpError> {
    match (payload_job, envelope_job) {
        (Some(p), Some(e)) if &p != e => Err(ArcpError::InvalidRequest(format!(
            "{what}: payload job_id and envelope job_id differ"
        ))),
        (Some(p), _) => Ok(p),
        (None, Some(e)) => Ok(e.clone()),
        (None, None) => Err(ArcpError::InvalidRequest(format!("{what} requires job_id"))),
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn debug_leaves_tokens_out() {
        let resume = ResumeRequest {
            session_id: None,
            token: "resume-secret".into(),
            last_event_seq: EventSeq::default(),
        };
        let hello = Hello {
            token: Some("bearer-secret".into()),
            resume: Some(resume),
            ..Hello::default()
        };
        let shown = format!("{hello:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
    }
}
