//! What starting a stdio agent's child takes, as the agents file declared it.

use std::{collections::BTreeMap, num::NonZeroUsize, path::PathBuf, time::Duration};

/// How to start a stdio agent's child, checked when the agents file was loaded. Its `Debug`
/// leaves out the token and the environment's values, which may be keys.
#[derive(Clone)]
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
    /// With it, children are long-lived and serve several jobs; without it, a child per job.
    pub long_lived: Option<LongLived>,
}

/// How long-lived children serve jobs.
#[derive(Debug, Clone, Copy)]
pub struct LongLived {
    /// The most jobs one child runs at once.
    pub jobs_per_child: NonZeroUsize,
    /// How long a child without a job lives on before its stdin is closed.
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for StdioSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("max_children", &self.max_children)
            .field("agent", &self.agent)
            .field("cancel_grace", &self.cancel_grace)
            .field("welcome_timeout", &self.welcome_timeout)
            .finish_non_exhaustive()
    }
}
