//! Demo agents registered by default in the binary and used by the tests.

mod chatter;
mod chunker;
mod delegator;
mod echo;
mod showcase;
mod spender;
mod ticker;
mod tools;

use std::sync::Arc;

pub use chatter::Chatter;
pub use chunker::Chunker;
pub use delegator::Delegator;
pub use echo::Echo;
pub use showcase::Showcase;
pub use spender::Spender;
pub use ticker::Ticker;
pub use tools::ToolUser;

use super::{Agent, AgentRegistry};

impl AgentRegistry {
    /// The registry with the built-in demo agents (`echo`, `ticker`, ...).
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        register_all(&mut registry);
        registry
    }
}

/// Registers every built-in agent at version 1.0.0.
pub fn register_all(registry: &mut AgentRegistry) {
    for (name, agent) in all() {
        // The names and versions are literals that satisfy the §7.5 grammar.
        let _ = registry.register(name, "1.0.0", agent);
    }
}

/// The built-in agent called `name`, for an `--agents` file that mounts it under a name and
/// version of its own.
pub fn by_name(name: &str) -> Option<Arc<dyn Agent>> {
    all().into_iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}

/// The built-in agents' names.
pub fn names() -> Vec<&'static str> {
    all().into_iter().map(|(n, _)| n).collect()
}

fn all() -> [(&'static str, Arc<dyn Agent>); 8] {
    [
        ("echo", Arc::new(Echo)),
        ("ticker", Arc::new(Ticker)),
        ("chatter", Arc::new(Chatter)),
        ("tool-user", Arc::new(ToolUser)),
        ("spender", Arc::new(Spender)),
        ("chunker", Arc::new(Chunker)),
        ("delegator", Arc::new(Delegator)),
        ("showcase", Arc::new(Showcase)),
    ]
}
