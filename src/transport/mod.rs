//! Transports: adapters between a wire protocol and the transport-neutral [`crate::protocol`]
//! types that [`crate::gateway::Gateway`] serves.
//!
//! - [`grpc`]: the `arcp.v1` protobuf schema over one gRPC bidirectional stream.
//! - [`json`]: the JSON envelope of §5, shared by text transports.
//! - [`ws`]: WebSocket (§4) carrying [`json`] frames.
//! - `listener`: the accept loop both serve: back-off on accept errors, a cap per peer address,
//!   and TLS ([`tls`]) when configured.
//! - [`tls_client`]: TLS for the gateway's own outbound connections.
//! - `max_age`: when a connection is asked to go away, and when it is cut.

pub mod grpc;
pub(crate) mod held_writes;
pub mod json;
pub(crate) mod listener;
pub(crate) mod max_age;
pub mod tls_client;
pub mod ws;

pub use listener::tls;
