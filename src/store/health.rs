//! Whether a shared store answers, for what a replica reports about itself: while its store is
//! out of reach it can neither open nor resume a session, and gRPC health says so (NOT_SERVING)
//! so that a load balancer sends clients to replicas that can.
//!
//! The embedded stores are part of the process and always answer; a [`Stores`](super::Stores)
//! without a [`StoreHealth`] is always reachable.

use tokio::sync::watch;

/// Whether a store answers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reachability {
    /// It answered its last probe (or has not been probed yet).
    Reachable,
    /// It did not answer its last probe; why, as an operator reads it.
    Unreachable(String),
}

impl Reachability {
    /// Whether the store answers.
    pub fn is_reachable(&self) -> bool {
        matches!(self, Reachability::Reachable)
    }
}

/// A store's reachability as it changes.
pub trait StoreHealth: Send + Sync + 'static {
    /// The store's reachability now, changing only when the store stops or starts answering
    /// (not when only the reason changes). Probing starts with the first call.
    fn watch(&self) -> watch::Receiver<Reachability>;
}
