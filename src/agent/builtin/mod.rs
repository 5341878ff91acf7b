//! Demo agents registered by default in the binary and used by the tests.

mod echo;
mod ticker;

use std::sync::Arc;

pub use echo::Echo;
pub use ticker::Ticker;

use super::AgentRegistry;

/// Registers every built-in agent at version 1.0.0.
pub fn register_all(registry: &mut AgentRegistry) {
    // The names and versions are literals that satisfy the §7.5 grammar.
    let _ = registry.register("echo", "1.0.0", Arc::new(Echo));
    let _ = registry.register("ticker", "1.0.0", Arc::new(Ticker));
}
