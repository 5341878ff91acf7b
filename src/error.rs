//! The error taxonomy of spec §12: one enum whose variants are the fifteen codes, each carrying
//! a human-readable message, and whose `retryable` flag is fixed by the code.
//!
//! Conversions to transport shapes live at the edges: `session_error`/`job_error` frames in
//! `protocol`, gRPC `Status` in `transport::grpc::status`.

use std::fmt;

/// A §12 error code, without a message. `Copy`, so frames and metadata can carry it cheaply.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorCode {
    /// Operation rejected by lease enforcement or authorization.
    PermissionDenied,
    /// Delegation request expanded beyond the parent lease.
    LeaseSubsetViolation,
    /// Referenced `job_id` does not exist or is not visible.
    JobNotFound,
    /// `idempotency_key` reuse with conflicting parameters.
    DuplicateKey,
    /// Requested agent is not registered.
    AgentNotAvailable,
    /// Agent name resolved but the requested version is unavailable.
    AgentVersionNotAvailable,
    /// Job ended due to client cancellation.
    Cancelled,
    /// Job exceeded `max_runtime_sec`.
    Timeout,
    /// Resume attempted after the buffer window closed, or with a token that is not current.
    ResumeWindowExpired,
    /// Peer detected counterparty disconnection.
    HeartbeatLost,
    /// The lease's `expires_at` was reached during execution.
    LeaseExpired,
    /// A `cost.budget` counter reached zero.
    BudgetExhausted,
    /// Malformed envelope or schema violation.
    InvalidRequest,
    /// Missing or invalid authentication.
    Unauthenticated,
    /// Unrecoverable runtime fault.
    InternalError,
}

impl ErrorCode {
    /// Every code, in the order of spec §12.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::PermissionDenied,
        ErrorCode::LeaseSubsetViolation,
        ErrorCode::JobNotFound,
        ErrorCode::DuplicateKey,
        ErrorCode::AgentNotAvailable,
        ErrorCode::AgentVersionNotAvailable,
        ErrorCode::Cancelled,
        ErrorCode::Timeout,
        ErrorCode::ResumeWindowExpired,
        ErrorCode::HeartbeatLost,
        ErrorCode::LeaseExpired,
        ErrorCode::BudgetExhausted,
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::InternalError,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::LeaseSubsetViolation => "LEASE_SUBSET_VIOLATION",
            ErrorCode::JobNotFound => "JOB_NOT_FOUND",
            ErrorCode::DuplicateKey => "DUPLICATE_KEY",
            ErrorCode::AgentNotAvailable => "AGENT_NOT_AVAILABLE",
            ErrorCode::AgentVersionNotAvailable => "AGENT_VERSION_NOT_AVAILABLE",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::ResumeWindowExpired => "RESUME_WINDOW_EXPIRED",
            ErrorCode::HeartbeatLost => "HEARTBEAT_LOST",
            ErrorCode::LeaseExpired => "LEASE_EXPIRED",
            ErrorCode::BudgetExhausted => "BUDGET_EXHAUSTED",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Parses a wire code.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// Whether retrying the same request may succeed. §12 fixes `INTERNAL_ERROR` as always
    /// retryable and `LEASE_EXPIRED`/`BUDGET_EXHAUSTED` as never; a lost heartbeat is retryable
    /// by resuming. Every other code describes a request that fails identically when repeated.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::InternalError | ErrorCode::HeartbeatLost)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ARCP error: a §12 code with a message for humans. The message never contains secrets.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ArcpError {
    #[error("PERMISSION_DENIED: {0}")]
    PermissionDenied(String),
    #[error("LEASE_SUBSET_VIOLATION: {0}")]
    LeaseSubsetViolation(String),
    #[error("JOB_NOT_FOUND: {0}")]
    JobNotFound(String),
    #[error("DUPLICATE_KEY: {0}")]
    DuplicateKey(String),
    #[error("AGENT_NOT_AVAILABLE: {0}")]
    AgentNotAvailable(String),
    #[error("AGENT_VERSION_NOT_AVAILABLE: {0}")]
    AgentVersionNotAvailable(String),
    #[error("CANCELLED: {0}")]
    Cancelled(String),
    #[error("TIMEOUT: {0}")]
    Timeout(String),
    #[error("RESUME_WINDOW_EXPIRED: {0}")]
    ResumeWindowExpired(String),
    #[error("HEARTBEAT_LOST: {0}")]
    HeartbeatLost(String),
    #[error("LEASE_EXPIRED: {0}")]
    LeaseExpired(String),
    #[error("BUDGET_EXHAUSTED: {0}")]
    BudgetExhausted(String),
    #[error("INVALID_REQUEST: {0}")]
    InvalidRequest(String),
    #[error("UNAUTHENTICATED: {0}")]
    Unauthenticated(String),
    #[error("INTERNAL_ERROR: {0}")]
    Internal(String),
}

impl ArcpError {
    /// Builds the error for `code`; used where a code arrives as data (an agent's error).
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> ArcpError {
        let m = message.into();
        match code {
            ErrorCode::PermissionDenied => ArcpError::PermissionDenied(m),
            ErrorCode::LeaseSubsetViolation => ArcpError::LeaseSubsetViolation(m),
            ErrorCode::JobNotFound => ArcpError::JobNotFound(m),
            ErrorCode::DuplicateKey => ArcpError::DuplicateKey(m),
            ErrorCode::AgentNotAvailable => ArcpError::AgentNotAvailable(m),
            ErrorCode::AgentVersionNotAvailable => ArcpError::AgentVersionNotAvailable(m),
            ErrorCode::Cancelled => ArcpError::Cancelled(m),
            ErrorCode::Timeout => ArcpError::Timeout(m),
            ErrorCode::ResumeWindowExpired => ArcpError::ResumeWindowExpired(m),
            ErrorCode::HeartbeatLost => ArcpError::HeartbeatLost(m),
            ErrorCode::LeaseExpired => ArcpError::LeaseExpired(m),
            ErrorCode::BudgetExhausted => ArcpError::BudgetExhausted(m),
            ErrorCode::InvalidRequest => ArcpError::InvalidRequest(m),
            ErrorCode::Unauthenticated => ArcpError::Unauthenticated(m),
            ErrorCode::InternalError => ArcpError::Internal(m),
        }
    }

    /// The §12 code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ArcpError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            ArcpError::LeaseSubsetViolation(_) => ErrorCode::LeaseSubsetViolation,
            ArcpError::JobNotFound(_) => ErrorCode::JobNotFound,
            ArcpError::DuplicateKey(_) => ErrorCode::DuplicateKey,
            ArcpError::AgentNotAvailable(_) => ErrorCode::AgentNotAvailable,
            ArcpError::AgentVersionNotAvailable(_) => ErrorCode::AgentVersionNotAvailable,
            ArcpError::Cancelled(_) => ErrorCode::Cancelled,
            ArcpError::Timeout(_) => ErrorCode::Timeout,
            ArcpError::ResumeWindowExpired(_) => ErrorCode::ResumeWindowExpired,
            ArcpError::HeartbeatLost(_) => ErrorCode::HeartbeatLost,
            ArcpError::LeaseExpired(_) => ErrorCode::LeaseExpired,
            ArcpError::BudgetExhausted(_) => ErrorCode::BudgetExhausted,
            ArcpError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ArcpError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ArcpError::Internal(_) => ErrorCode::InternalError,
        }
    }

    /// The message, without the code.
    pub fn message(&self) -> &str {
        match self {
            ArcpError::PermissionDenied(m)
            | ArcpError::LeaseSubsetViolation(m)
            | ArcpError::JobNotFound(m)
            | ArcpError::DuplicateKey(m)
            | ArcpError::AgentNotAvailable(m)
            | ArcpError::AgentVersionNotAvailable(m)
            | ArcpError::Cancelled(m)
            | ArcpError::Timeout(m)
            | ArcpError::ResumeWindowExpired(m)
            | ArcpError::HeartbeatLost(m)
            | ArcpError::LeaseExpired(m)
            | ArcpError::BudgetExhausted(m)
            | ArcpError::InvalidRequest(m)
            | ArcpError::Unauthenticated(m)
            | ArcpError::Internal(m) => m,
        }
    }

    /// Whether the same request may succeed if retried (§12).
    pub fn retryable(&self) -> bool {
        self.code().retryable()
    }
}

/// How much of a client's text an error message quotes by default: enough to recognise it.
pub const EXCERPT_CHARS: usize = 64;

/// `text` as an error message quotes it: debug-quoted, and cut after `max_chars` characters
/// with its length in bytes, so that a client's megabyte-long field never comes back whole.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    let mut chars = text.chars();
    let shown: String = chars.by_ref().take(max_chars).collect();
    if chars.next().is_some() {
        format!("{shown:?}… ({} bytes)", text.len())
    } else {
        format!("{shown:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_quote_short_text_whole_and_cut_long_text_on_characters() {
        assert_eq!(excerpt("short", 12), "\"short\"");
        let shown = excerpt(&"k".repeat(200), 12);
        assert!(shown.starts_with(&format!("{:?}", "k".repeat(12))));
        assert!(shown.ends_with("(200 bytes)"), "{shown}");
        assert!(shown.len() < 40, "{shown}");
        assert!(excerpt(&"é".repeat(20), 12).contains('…'));
    }

    #[test]
    fn codes_round_trip_and_carry_spec_retryability() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(ArcpError::from_code(code, "m").code(), code);
        }
        assert!(ErrorCode::InternalError.retryable());
        assert!(!ErrorCode::LeaseExpired.retryable());
        assert!(!ErrorCode::BudgetExhausted.retryable());
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }
}
