//! The [`Agent`] of a stdio backend: a slot under `max_children`, then a child for the job.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::{relay, spec::StdioSpec};
use crate::{
    agent::{Agent, JobContext},
    error::ArcpError,
    protocol::Json,
};

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
