//! Agents: the work a job runs, and the registry that resolves `name@version` (§7.5).
//!
//! An agent is any type implementing [`Agent`], registered under a name and version. The
//! gateway runs it with a [`JobContext`] through which it emits events and observes
//! cancellation; what it returns becomes the job's `job.result`, what it fails with the
//! `job.error`.
//!
//! - `builtin`: the demo agents; `stdio`: agents in any language, as child processes that
//!   speak ARCP over NDJSON; `upstream`: agents in another ARCP runtime, over WebSocket;
//! - `peer_json`: the §5 envelope from the client's side, which the gateway speaks to such a
//!   runtime, and `peer_job`: what that runtime's frames mean for the job it runs;
//! - `slots`: the cap on one backend's concurrent jobs; `agents_file`: the `--agents FILE`
//!   TOML that declares the agents and their backends.

pub mod agents_file;
pub mod builtin;
mod context;
pub mod peer_job;
pub mod peer_json;
pub mod slots;
pub mod stdio;
pub mod upstream;

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;

use crate::{
    error::ArcpError,
    ids::AgentRef,
    protocol::{control::AgentInfo, Json},
};

pub use crate::protocol::event::LogLevel;
pub(crate) use context::Delegation;
pub use context::{ChildJob, JobContext, ResultStream};

/// In-process agent.
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Runs one job. Events go through `ctx`; the returned value is the inline result.
    ///
    /// The gateway drops this future when the job is cancelled or times out, so an agent needs
    /// no cancellation handling of its own unless it hands work to other tasks; those should
    /// watch [`JobContext::cancelled`].
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError>;
}

/// An agent resolved to one registered version.
#[derive(Clone)]
pub struct ResolvedAgent {
    /// Agent name.
    pub name: String,
    /// The exact version.
    pub version: String,
    /// The implementation.
    pub agent: Arc<dyn Agent>,
}

impl ResolvedAgent {
    /// `name@version`, as in `job.accepted`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[derive(Clone)]
struct Versions {
    by_version: BTreeMap<String, Arc<dyn Agent>>,
    default: String,
}

/// The agents a gateway offers. Built before the server starts and immutable afterwards.
#[derive(Clone, Default)]
pub struct AgentRegistry {
    agents: BTreeMap<String, Versions>,
}

impl AgentRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `agent` as `name@version`. The most recently registered version of a name is
    /// its default until [`AgentRegistry::set_default`] says otherwise.
    pub fn register(
        &mut self,
        name: &str,
        version: &str,
        agent: Arc<dyn Agent>,
    ) -> Result<&mut Self, ArcpError> {
        if !AgentRef::valid_name(name) || !AgentRef::valid_version(version) {
            return Err(ArcpError::InvalidRequest(format!(
                "invalid agent reference {name}@{version} (see §7.5 grammar)"
            )));
        }
        let entry = self
            .agents
            .entry(name.to_owned())
            .or_insert_with(|| Versions {
                by_version: BTreeMap::new(),
                default: version.to_owned(),
            });
        entry.by_version.insert(version.to_owned(), agent);
        entry.default = version.to_owned();
        Ok(self)
    }

    /// Makes `version` the default of `name`.
    pub fn set_default(&mut self, name: &str, version: &str) -> Result<&mut Self, ArcpError> {
        let entry = self.agents.get_mut(name).ok_or_else(|| {
            ArcpError::AgentNotAvailable(format!("agent {name} is not registered"))
        })?;
        if !entry.by_version.contains_key(version) {
            return Err(ArcpError::AgentVersionNotAvailable(format!(
                "agent {name} has no version {version}"
            )));
        }
        entry.default = version.to_owned();
        Ok(self)
    }

    /// Resolves `name` or `name@version` (§7.5).
    pub fn resolve(&self, reference: &str) -> Result<ResolvedAgent, ArcpError> {
        let reference = AgentRef::parse(reference)?;
        let (name, version) = (reference.name(), reference.version());
        let entry = self.agents.get(name).ok_or_else(|| {
            ArcpError::AgentNotAvailable(format!("agent {name:?} is not registered"))
        })?;
        let version = version.unwrap_or(&entry.default);
        let agent = entry.by_version.get(version).ok_or_else(|| {
            ArcpError::AgentVersionNotAvailable(format!(
                "agent {name} has no version {version:?} (available: {})",
                entry
                    .by_version
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(ResolvedAgent {
            name: name.to_owned(),
            version: version.to_owned(),
            agent: agent.clone(),
        })
    }

    /// The inventory advertised in `session.welcome`.
    pub fn inventory(&self) -> Vec<AgentInfo> {
        self.agents
            .iter()
            .map(|(name, v)| AgentInfo {
                name: name.clone(),
                versions: v.by_version.keys().cloned().collect(),
                default: v.default.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn resolves_defaults_and_pinned_versions() {
        let mut reg = AgentRegistry::new();
        let echo: Arc<dyn Agent> = Arc::new(builtin::Echo);
        reg.register("echo", "1.0.0", echo.clone()).unwrap();
        reg.register("echo", "2.0.0", echo).unwrap();
        assert_eq!(reg.resolve("echo").unwrap().reference(), "echo@2.0.0");
        reg.set_default("echo", "1.0.0").unwrap();
        assert_eq!(reg.resolve("echo").unwrap().reference(), "echo@1.0.0");
        assert_eq!(reg.resolve("echo@2.0.0").unwrap().version, "2.0.0");
        let code = |r: &str| reg.resolve(r).err().map(|e| e.code());
        assert_eq!(
            code("echo@3.0.0"),
            Some(ErrorCode::AgentVersionNotAvailable)
        );
        assert_eq!(code("nope"), Some(ErrorCode::AgentNotAvailable));
        assert_eq!(code("Bad Name"), Some(ErrorCode::InvalidRequest));
        assert_eq!(code("echo@"), Some(ErrorCode::InvalidRequest));
        assert_eq!(
            reg.inventory(),
            vec![AgentInfo {
                name: "echo".into(),
                versions: vec!["1.0.0".into(), "2.0.0".into()],
                default: "1.0.0".into()
            }]
        );
    }
}
