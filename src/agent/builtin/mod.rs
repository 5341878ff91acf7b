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
    let agents: [(&str, Arc<dyn Agent>); 8] = [
        ("echo", Arc::new(Echo)),
        ("ticker", Arc::new(Ticker)),
        ("chatter", Arc::new(Chatter)),
        ("tool-user", Arc::new(ToolUser)),
        ("spender", Arc::new(Spender)),
        ("chunker", Arc::new(Chunker)),
        ("delegator", Arc::new(Delegator)),
        ("showcase", Arc::new(Showcase)),
    ];
    for (name, agent) in agents {
        // The names and versions are literals that satisfy the §7.5 grammar.
        let _ = registry.register(name, "1.0.0", agent);
    }
}
