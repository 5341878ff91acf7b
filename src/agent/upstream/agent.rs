//! The [`Agent`] of an upstream backend: a slot under `max_jobs`, then the job relayed.

use std::sync::Arc;

use async_trait::async_trait;

use super::{relay, spec::UpstreamSpec};
use crate::{
    agent::{slots::Slots, Agent, JobContext},
    error::ArcpError,
    protocol::Json,
};

/// An [`Agent`] that relays each job to the upstream runtime of its [`UpstreamSpec`], over an
/// ARCP session of the job's own.
pub struct UpstreamAgent {
    spec: Arc<UpstreamSpec>,
    slots: Slots,
}

impl UpstreamAgent {
    /// The agent for `spec`.
    pub fn new(spec: Arc<UpstreamSpec>) -> UpstreamAgent {
        let slots = Slots::new(spec.max_jobs);
        UpstreamAgent { spec, slots }
    }
}

#[async_trait]
impl Agent for UpstreamAgent {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let _slot = self.slots.take().await?;
        relay::run(&self.spec, &ctx, input).await
    }
}
