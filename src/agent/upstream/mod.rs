//! Agents that run in another ARCP runtime, reached over WebSocket (`ws://`, `wss://`): the
//! gateway is that runtime's client, one upstream session per job, and keeps its own
//! guarantees in front of it (the gateway's job ids and event numbering, §8.2 validation,
//! budgets, caps, `max_runtime_sec` and `expires_at`), resuming the upstream session when the
//! connection drops and refusing to let a client see the gap when the upstream's resume
//! loses events.
//!
//! - `spec`: what reaching the upstream takes; `link`: one WebSocket connection to it;
//! - `relay`: the job over the upstream session, its resume and its checks;
//! - `agent`: the [`crate::agent::Agent`] that takes a `max_jobs` slot and relays the job.

mod agent;
mod link;
mod relay;
mod spec;

pub use agent::UpstreamAgent;
pub use spec::{UpstreamSpec, UpstreamTimings};
