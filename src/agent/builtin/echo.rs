//! `echo`: the result is the input.

use async_trait::async_trait;

use crate::{
    agent::{Agent, JobContext},
    error::ArcpError,
    protocol::Json,
};

/// Returns its input unchanged.
pub struct Echo;

#[async_trait]
impl Agent for Echo {
    async fn run(&self, _ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        Ok(input)
    }
}
