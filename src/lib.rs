//! # arcp-gateway
//!
//! An Agent Runtime Control Protocol (ARCP) v1.1 runtime served over gRPC bidirectional
//! streams and over WebSocket, whose resume is exact: a reconnecting client gets every event it missed, once, in
//! order, ahead of live ones, while its jobs keep running through the drop.
//!
//! ## Layout
//!
//! Each piece reaches only the ones listed before it, and the session and job code reach shared
//! state only through the store traits.
//!
//! - **Wire schema**: `proto/arcp/v1/arcp.proto`, compiled by `build.rs` into [`proto`].
//! - **Domain types**: [`ids`] (session, job, principal, epoch and sequence newtypes, agent
//!   references), [`error`] (the §12 taxonomy), [`clock`], and [`protocol`]: every ARCP message
//!   as a transport-neutral type, one family per file ([`protocol::client`],
//!   [`protocol::control`], [`protocol::job_frame`], [`protocol::event`]).
//! - **Encodings**: [`encoding`] holds [`encoding::StoredFrame`], a job frame in the protobuf
//!   encoding every event log keeps and the gRPC transport sends as it is, and free-form JSON as
//!   protobuf values.
//! - **Stores**: [`store`] is everything replicas must share, one trait per kind of state with
//!   an embedded memory implementation beside it: [`store::session`] (session records:
//!   principal, features, attachment epoch, flow state), [`store::resume`] (the resume-token
//!   registry, fenced by epoch), [`store::log`] (each session's bounded event log, and the
//!   [`store::log::cursor::LogCursor`] that reads replay and live frames in one loop),
//!   [`store::jobs`] (the job directory) and [`store::idempotency`] (keys with an atomic
//!   claim). `tests/store_contract.rs` holds the contract every implementation must keep.
//!   [`store::health`] says whether a shared store answers, which gRPC health reports.
//! - **Leases and credentials**: [`lease`] enforces grants, budgets and expiry, and checks
//!   delegation (§9); [`credentials`] is the provisioner trait, its in-process and HTTP
//!   upstreams, and the provisioning that keeps every credential in the ledger
//!   ([`store::credentials`]) until the upstream accepted its revocation (§9.8, §14).
//! - **One job**: `job` is a running job's record, the one place its frames leave from (the
//!   emission lock that keeps the terminal frame last), and `job::delivery`, how a frame enters
//!   one session's log and how a job is paced to its reader.
//! - **Agents**: [`agent`] is the agent trait, the [`agent::JobContext`] an agent runs with,
//!   the `name@version` registry and the built-in demo agents; [`agent::stdio`] runs agents
//!   written in any language as child processes speaking ARCP over NDJSON, and
//!   [`agent::upstream`] relays jobs to ARCP runtimes over WebSocket, both declared in the
//!   `--agents FILE` TOML ([`agent::agents_file`]), the gateway being their client through
//!   [`agent::peer_json`] and [`agent::peer_job`].
//! - **The job engine**: [`engine`] accepts submissions (with idempotency), runs agents to
//!   exactly one terminal frame, delegates, cancels, lists and subscribes, by job id through
//!   the directory.
//! - **Sessions**: [`session`] is the session state machine: `session::handshake` turns a first
//!   frame into a new or resumed attachment, epoch-fenced and safe to cancel at every await;
//!   `session::connection` serves one attached stream, with `session::dispatch` acting on its
//!   client frames, `session::liveness` judging whether a `heartbeat` client is still there,
//!   and `session::stream_control` carrying its stop order and replies;
//!   [`session::output`] is what a stream yields to its transport.
//! - **Authentication**: [`auth`] maps bearer tokens to principals, static ones and JWTs
//!   ([`auth::jwt`], keys from a JWKS file); [`auth::throttle`] slows the answers to repeated
//!   failed bearer and resume tokens, per peer and per principal.
//! - **Transports**: [`transport::grpc`] is the gRPC service, its frame conversions, its
//!   codecs and the tower layer that authenticates before a stream opens;
//!   [`transport::json`] is the §5 JSON envelope and [`transport::ws`] serves it over
//!   WebSocket; `transport::listener` is the accept loop both share (back-off on accept
//!   errors, a cap on connections per peer address, and TLS when configured:
//!   [`transport::tls`], certificates reloaded when their files change, mutual TLS and the
//!   principal a client certificate names). [`server`] assembles the gRPC server
//!   with health, reflection and graceful shutdown, gives every connection a deadline to
//!   become useful and every shutdown a deadline to end, and runs both transports over one
//!   gateway.
//! - **Metrics**: [`metrics`] names every Prometheus metric in one place; the code records
//!   through the `metrics` facade with those names, [`metrics::exporter`] serves them at
//!   `GET /metrics` (`--metrics-listen`), [`metrics::grpc_layer`] measures every gRPC call,
//!   and [`store::timed`] and the event logs time store operations into
//!   [`metrics::store_latency`].
//! - **Replica death**: [`store::replicas`] keeps each replica's lease on a shared store, and
//!   [`takeover`] is what a surviving replica does with a lost one's jobs and sessions.
//! - **The gateway**: [`gateway::Gateway`] ties the pieces together; [`config`] its settings,
//!   and [`settings`] the config file merged with the flags and the environment;
//!   [`logging`] the process's log, as text or JSON lines.
//! - **A client**: [`client`] is a Rust client of the gRPC service that resumes its session
//!   across dropped streams and hands over each job frame once; it reaches only [`proto`],
//!   [`protocol`], [`encoding`], [`clock`] and [`error`]. [`cli`] is `arcp-gateway client`
//!   on it: a progress bar, plain lines or JSON lines, and exit codes from a job's end.
//! - **Traces**: [`telemetry`] exports the job, session and store spans over OTLP, the ARCP
//!   trace id their W3C parent.
//! - **Files reloaded while running**: `reload` swaps the TLS material and the JWKS when their
//!   files change and load, and reports a change that does not load once.
//! - **Concurrency primitives**: `sync` holds the wake-up and the read-mostly lock the frame
//!   path uses on every frame.
//! - **Binaries**: `src/main.rs` is `arcp-gateway serve`, `client` and `config check`;
//!   `src/bin/arcp-bench/` is the benchmark described in `BENCHMARKS.md`, one module per row.

pub mod agent;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod encoding;
pub mod engine;
pub mod error;
pub mod gateway;
pub mod ids;
pub(crate) mod job;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub(crate) mod reload;
pub mod server;
pub mod session;
pub mod settings;
pub mod store;
pub(crate) mod sync;
pub mod takeover;
pub mod telemetry;
pub mod transport;

#[cfg(test)]
mod fuzz;

/// Code generated from `proto/arcp/v1/arcp.proto` (package `arcp.v1`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("arcp.v1");

    /// The encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("arcp_descriptor");
}

pub use error::{ArcpError, ErrorCode};
pub use gateway::Gateway;
