//! Agents in any language: a child process per job that speaks ARCP over NDJSON (one JSON
//! envelope per line) on its stdin and stdout (§4), behind the gateway's guarantees.
//!
//! - `config`: the `--agents FILE` TOML that declares them (and mounts built-in agents).
//! - `child`: the process: its own process group, bounded line reads, stderr to `tracing`
//!   (target `arcp_gateway::agent::stdio`, with the job id), and its end, after a
//!   `job.cancel` and a grace, with the whole group, however the job's future ends.
//! - `relay`: the gateway as the child's ARCP client, mapping its frames into the job.
//!
//! The gateway keeps every guarantee of its own jobs: `max_runtime_sec` and `expires_at`
//! (the runner drops the job's future, which cancels and then kills the child), budgets from
//! the `cost.*` metrics the child reports, §8.2 validation of each event, and the caps on
//! events and results.

mod child;
mod config;
mod relay;

use std::{collections::BTreeMap, num::NonZeroUsize, path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::{Agent, JobContext};
use crate::{error::ArcpError, protocol::Json};

pub use child::MAX_LINE_BYTES;
pub use config::{
    AgentEntry, AgentsFile, AgentsFileError, Backend, DEFAULT_CANCEL_GRACE, DEFAULT_WELCOME_TIMEOUT,
};

/// How to start a stdio agent's child, checked when the agents file was loaded.
#[derive(Debug, Clone)]
pub struct StdioSpec {
    /// The executable, resolved on `PATH` or against `cwd`.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to the gateway's environment.
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// The most children of this agent running at once; a job beyond it waits for a slot.
    pub max_children: Option<NonZeroUsize>,
    /// The agent's name inside the child, which `job.submit` names.
    pub agent: String,
    /// The bearer token of the child's `session.hello`.
    pub token: String,
    /// How long a child whose job ended at the gateway gets after `job.cancel` before its
    /// process group is killed.
    pub cancel_grace: Duration,
    /// How long the child has to answer `session.hello`.
    pub welcome_timeout: Duration,
}

/// An [`Agent`] that runs each job in a new child process of its [`StdioSpec`].
pub struct StdioAgent {
    spec: Arc<StdioSpec>,
    /// One permit per child allowed at once, when capped.
    slots: Option<Arc<Semaphore>>,
}

impl StdioAgent {
    /// The agent for `spec`.
    pub fn new(spec: Arc<StdioSpec>) -> StdioAgent {
        let slots = spec.max_children.map(|n| Arc::new(Semaphore::new(n.get())));
        StdioAgent { spec, slots }
    }
}

#[async_trait]
impl Agent for StdioAgent {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        // Waiting for a slot ends with the job: the runner drops this future on cancel or
        // timeout, which leaves the semaphore's queue. The child holds its slot until it is
        // reaped, grace included.
        let slot =
            match &self.slots {
                Some(slots) => {
                    Some(slots.clone().acquire_owned().await.map_err(|_| {
                        ArcpError::Internal("the agent's child slots closed".into())
                    })?)
                }
                None => None,
            };
        relay::run(&self.spec, &ctx, input, slot).await
    }
}
