//! The [`Agent`] of a stdio backend: a slot under `max_children`, then a child for the job.

use std::sync::Arc;

use async_trait::async_trait;

use super::{relay, spec::StdioSpec};
use crate::{
    agent::{slots::Slots, Agent, JobContext},
    error::ArcpError,
    protocol::Json,
};

/// An [`Agent`] that runs each job in a new child process of its [`StdioSpec`].
pub struct StdioAgent {
    spec: Arc<StdioSpec>,
    slots: Slots,
}

impl StdioAgent {
    /// The agent for `spec`.
    pub fn new(spec: Arc<StdioSpec>) -> StdioAgent {
        let slots = Slots::new(spec.max_children);
        StdioAgent { spec, slots }
    }
}

#[async_trait]
impl Agent for StdioAgent {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        // The child holds its slot until it is reaped, grace included.
        let slot = self.slots.take().await?;
        relay::run(&self.spec, &ctx, input, slot).await
    }
}
