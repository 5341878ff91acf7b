//! The [`Agent`] of a stdio backend: a slot under `max_children`, then a child for the job;
//! or, for long-lived children, a place on one of the pool's.

use std::sync::Arc;

use async_trait::async_trait;

use super::{pool::Pool, relay, spec::StdioSpec};
use crate::{
    agent::{slots::Slots, Agent, JobContext},
    error::ArcpError,
    protocol::Json,
};

/// An [`Agent`] that runs each job in a child process of its [`StdioSpec`].
pub struct StdioAgent {
    spec: Arc<StdioSpec>,
    children: Children,
}

enum Children {
    /// A new child per job, at most this many at once.
    PerJob(Slots),
    /// Long-lived children, several jobs each.
    LongLived(Pool),
}

impl StdioAgent {
    /// The agent for `spec`.
    pub fn new(spec: Arc<StdioSpec>) -> StdioAgent {
        let children = match spec.long_lived {
            Some(long_lived) => Children::LongLived(Pool::new(spec.clone(), long_lived)),
            None => Children::PerJob(Slots::new(spec.max_children)),
        };
        StdioAgent { spec, children }
    }
}

#[async_trait]
impl Agent for StdioAgent {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        match &self.children {
            Children::PerJob(slots) => {
                // The child holds its slot until it is reaped, grace included.
                let slot = slots.take().await?;
                relay::run(&self.spec, &ctx, input, slot).await
            }
            Children::LongLived(pool) => pool.run(&ctx, input).await,
        }
    }
}
