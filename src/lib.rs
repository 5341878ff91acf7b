//! # arcp-gateway
//!
//! An Agent Runtime Control Protocol (ARCP) v1.1 runtime served over gRPC bidirectional
//! streams and over WebSocket, whose resume is exact: a reconnecting client gets every event it missed, once, in
//! order, ahead of live ones, while its jobs keep running through the drop.
//!
//! ## Layout
//!
//! - **Wire schema**: `proto/arcp/v1/arcp.proto`, compiled by `build.rs` into [`proto`].
//! - **Domain types**: [`ids`] (session, job, principal, sequence newtypes), [`error`] (the
//!   §12 taxonomy), [`protocol`] (every ARCP message as a transport-neutral type), [`clock`].
//! - **Sessions**: [`session`] holds the session table; [`session::handshake`] turns a first
//!   frame into a new or resumed session; [`session::connection`] serves one attached stream;
//!   [`session::bell`] is how a stream is told to stop and handed its control replies;
//!   [`session::outbox`] is how job frames enter a session's log (features, redaction,
//!   back-pressure, flow control).
//! - **Event log**: [`event_log`] is the per-session, bounded, sequence-numbered log that both
//!   replay and live delivery read through one cursor, reached through a per-session handle;
//!   [`event_log::memory`] is the embedded store. `sync` holds the cheap wake-up both use
//!   on every frame and the read-write lock every emit passes through.
//! - **Resume registry**: [`resume`] keeps the digest of each session's current token, bound to
//!   its principal, rotated on every welcome and expiring with the resume window.
//! - **Jobs and agents**: [`job`] runs agents and guarantees one terminal frame per job;
//!   [`agent`] is the agent trait, the `name@version` registry and the built-in demo agents.
//! - **Credentials**: [`credentials`] is the provisioner trait and its in-process upstream
//!   (§9.8).
//! - **Leases**: [`lease`] enforces grants, budgets and expiry, and checks delegation (§9).
//! - **Authentication**: [`auth`] maps bearer tokens to principals.
//! - **Transports**: [`transport::grpc`] adapts the gRPC service, its frame conversions, the
//!   encoder that writes job frames straight from the log, its codecs and the tower layer that
//!   authenticates before a stream opens; [`transport::json`] is
//!   the §5 JSON envelope and [`transport::ws`] serves it over WebSocket. [`server`] assembles
//!   the tonic server with health, reflection and graceful shutdown, and runs both transports
//!   over one gateway.
//! - **The gateway**: [`gateway::Gateway`] ties the pieces together; [`config`] its settings.
//! - **Binaries**: `src/main.rs` is `arcp-gateway serve`; `src/bin/arcp-bench/` is the
//!   benchmark described in `BENCHMARKS.md`.

pub mod agent;
pub mod auth;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod error;
pub mod event_log;
pub mod gateway;
pub mod ids;
pub mod job;
pub mod lease;
pub mod protocol;
pub mod resume;
pub mod server;
pub mod session;
pub(crate) mod sync;
pub mod transport;

/// Code generated from `proto/arcp/v1/arcp.proto` (package `arcp.v1`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("arcp.v1");

    /// The encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("arcp_descriptor");
}

pub use error::{ArcpError, ErrorCode};
pub use gateway::Gateway;
