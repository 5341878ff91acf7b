//! Transports: adapters between a wire protocol and the transport-neutral [`crate::protocol`]
//! types that [`crate::gateway::Gateway`] serves.

pub mod grpc;
