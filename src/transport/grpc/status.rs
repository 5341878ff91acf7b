//! §12 errors as gRPC statuses: the closest gRPC code, with the ARCP code and `retryable` in
//! metadata so clients need not guess from the gRPC code.

use tonic::{metadata::MetadataValue, Code, Status};

use crate::{
    error::{ArcpError, ErrorCode},
    session::output::StreamEnd,
};

use super::{ERROR_CODE, RETRYABLE};

/// The gRPC code for a §12 code.
pub fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::PermissionDenied | ErrorCode::LeaseSubsetViolation => Code::PermissionDenied,
        ErrorCode::InvalidRequest => Code::InvalidArgument,
        ErrorCode::JobNotFound => Code::NotFound,
        ErrorCode::DuplicateKey => Code::AlreadyExists,
        ErrorCode::AgentNotAvailable | ErrorCode::AgentVersionNotAvailable => Code::NotFound,
        ErrorCode::Cancelled => Code::Cancelled,
        ErrorCode::Timeout => Code::DeadlineExceeded,
        ErrorCode::HeartbeatLost => Code::Unavailable,
        ErrorCode::BudgetExhausted => Code::ResourceExhausted,
        ErrorCode::ResumeWindowExpired | ErrorCode::LeaseExpired => Code::FailedPrecondition,
        ErrorCode::InternalError => Code::Internal,
    }
}

/// The status for an ARCP error.
pub fn from_error(error: &ArcpError) -> Status {
    let mut status = Status::new(grpc_code(error.code()), error.message());
    let metadata = status.metadata_mut();
    metadata.insert(
        ERROR_CODE,
        MetadataValue::from_static(error.code().as_str()),
    );
    metadata.insert(
        RETRYABLE,
        MetadataValue::from_static(if error.retryable() { "true" } else { "false" }),
    );
    status
}

/// The status that ends a stream the gateway closes.
pub fn from_stream_end(end: &StreamEnd) -> Status {
    match end {
        StreamEnd::Superseded => {
            Status::aborted("the session was resumed on another stream, which now owns it")
        }
        StreamEnd::ShuttingDown => {
            Status::unavailable("the gateway is shutting down; resume the session to continue")
        }
    }
}
