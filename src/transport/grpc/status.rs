//! §12 errors as gRPC statuses: the closest gRPC code, with the ARCP code and `retryable` in
//! metadata so clients need not guess from the gRPC code.

use tonic::{metadata::MetadataValue, Code, Status};

use crate::{
    error::{ArcpError, ErrorCode},
    protocol::client::ReadFault,
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
    with_code(grpc_code(error.code()), error)
}

/// The status with gRPC code `code` for an ARCP error, which its metadata carries.
fn with_code(code: Code, error: &ArcpError) -> Status {
    let mut status = Status::new(code, error.message());
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
        // gRPC's own answer to a message over the size limit is RESOURCE_EXHAUSTED.
        StreamEnd::Unreadable(fault) => match fault {
            ReadFault::TooLarge => with_code(
                Code::ResourceExhausted,
                &ArcpError::InvalidRequest(
                    "a client message was over the size limit; resume the session on a new stream"
                        .into(),
                ),
            ),
            ReadFault::Framing | ReadFault::Encoding | ReadFault::Undecodable => {
                from_error(&ArcpError::InvalidRequest(
                    "the client sent bytes that are not gRPC messages of arcp.v1.ClientFrame; \
                     resume the session on a new stream"
                        .into(),
                ))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_stream_ends_with_its_arcp_code_in_metadata() {
        for (fault, code) in [
            (ReadFault::TooLarge, Code::ResourceExhausted),
            (ReadFault::Framing, Code::InvalidArgument),
        ] {
            let status = from_stream_end(&StreamEnd::Unreadable(fault));
            assert_eq!(status.code(), code);
            let arcp = status
                .metadata()
                .get(ERROR_CODE)
                .and_then(|v| v.to_str().ok());
            assert_eq!(arcp, Some("INVALID_REQUEST"));
            assert!(!status.message().is_empty());
        }
    }
}
