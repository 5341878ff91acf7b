//! Agents: the work a job runs, and the registry that resolves `name@version` (§7.5).
//!
//! An agent is any type implementing [`Agent`], registered under a name and version. The
//! gateway runs it with a [`JobContext`] through which it emits events and observes
//! cancellation; what it returns becomes the job's `job.result`, what it fails with the
//! `job.error`.

pub mod builtin;

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;

use crate::{
    error::ArcpError,
    protocol::{server::AgentInfo, Json},
};
pub use crate::{job::context::JobContext, protocol::event::LogLevel};

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

    /// The registry with the built-in demo agents (`echo`, `ticker`).
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        builtin::register_all(&mut registry);
        registry
    }

    /// Registers `agent` as `name@version`. The most recently registered version of a name is
    /// its default until [`AgentRegistry::set_default`] says otherwise.
    pub fn register(
        &mut self,
        name: &str,
        version: &str,
        agent: Arc<dyn Agent>,
    ) -> Result<&mut Self, ArcpError> {
        if !valid_name(name) || !valid_version(version) {
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
        let (name, version) = parse_reference(reference)?;
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

/// Splits `name` / `name@version` per the §7.5 grammar.
pub fn parse_reference(reference: &str) -> Result<(&str, Option<&str>), ArcpError> {
    let (name, version) = match reference.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (reference, None),
    };
    if !valid_name(name) || version.is_some_and(|v| !valid_version(v)) {
        return Err(ArcpError::InvalidRequest(format!(
            "agent {reference:?} does not match `name` or `name@version` (§7.5)"
        )));
    }
    Ok((name, version))
}

/// `name ::= [a-z0-9][a-z0-9._-]*`
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// `version ::= [a-zA-Z0-9.+_-]+`
fn valid_version(version: &str) -> bool {
    !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+_-".contains(c))
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
