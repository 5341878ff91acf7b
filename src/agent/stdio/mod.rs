//! Agents in any language: a child process per job, or long-lived ones serving several, that
//! speak ARCP over NDJSON (one JSON envelope per line) on stdin and stdout (§4), behind the
//! gateway's guarantees.
//!
//! - `child`: the process: its own process group, bounded line reads, stderr to `tracing`
//!   (target `arcp_gateway::agent::stdio`, with the job it serves), and its end, after a
//!   `job.cancel` and a grace, with the whole group, however the job's future ends.
//! - `peer`: the child as an ARCP peer (frames as lines, and what an exit or a bad line means);
//! - `relay`: the gateway as a child's ARCP client, mapping its frames into the job.
//! - `shared`: a long-lived child serving several jobs; `pool`: the long-lived children of one
//!   agent, and a job's place on one;
//! - `spec`: what starting a child takes; `agent`: the [`crate::agent::Agent`] that takes a
//!   `max_children` slot and relays the job to a new child, or a place on a long-lived one.
//!
//! The gateway keeps every guarantee of its own jobs: `max_runtime_sec` and `expires_at`
//! (the runner drops the job's future, which cancels and then kills the child), budgets from
//! the `cost.*` metrics the child reports, §8.2 validation of each event, and the caps on
//! events and results.

mod agent;
mod child;
mod peer;
mod pool;
mod relay;
mod shared;
mod spec;

pub use agent::StdioAgent;
pub use child::MAX_LINE_BYTES;
pub use spec::{LongLived, StdioSpec};
