//! The gRPC transport: package `arcp.v1`, one bidirectional `Session` stream per ARCP session.
//!
//! - [`service`]: the tonic service, a thin adapter onto [`crate::gateway::Gateway::connect`].
//! - [`convert`]: protobuf frames to and from the domain messages.
//! - `wire`: the frames the service sends, with job frames copied from the log as stored.
//! - [`auth_layer`]: the tower layer that authenticates bearer and resume metadata before a
//!   stream opens.
//! - [`status`]: §12 errors as gRPC statuses.
//! - [`codec`]: the protobuf codecs, with buffers sized for many small streams.

pub mod auth_layer;
pub(crate) mod batched_writes;
pub mod codec;
pub mod convert;
pub mod service;
pub mod status;
pub(crate) mod wire;

/// The gRPC metadata key carrying a bearer token (`Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";
/// The gRPC metadata key carrying a resume token.
pub const RESUME_TOKEN: &str = "arcp-resume-token";
/// The gRPC metadata key carrying the client's last processed `event_seq`.
pub const LAST_EVENT_SEQ: &str = "arcp-last-event-seq";
/// The gRPC metadata key on an error status carrying the §12 code.
pub const ERROR_CODE: &str = "arcp-error-code";
/// The gRPC metadata key on an error status carrying the §12 `retryable` flag.
pub const RETRYABLE: &str = "arcp-retryable";
