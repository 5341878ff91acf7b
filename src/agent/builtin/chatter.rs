//! `chatter`: `{"count": N, "bytes": B}` emits N `log` events whose message is B bytes, as fast
//! as the runtime takes them, then returns `{"lines": N}`. The workload of a chatty agent, and
//! of `arcp-bench`.

use async_trait::async_trait;
use serde_json::json;

use crate::{
    agent::{Agent, JobContext, LogLevel},
    error::ArcpError,
    protocol::Json,
};

/// Emits log lines back to back.
pub struct Chatter;

/// Bounds the input so one request cannot pin the gateway.
const MAX_COUNT: u64 = 10_000_000;
const MAX_BYTES: u64 = 64 * 1024;

#[async_trait]
impl Agent for Chatter {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let count = input.get("count").and_then(Json::as_u64).unwrap_or(1000);
        let bytes = input.get("bytes").and_then(Json::as_u64).unwrap_or(100);
        if count > MAX_COUNT || bytes > MAX_BYTES {
            return Err(ArcpError::InvalidRequest(format!(
                "chatter: count must be at most {MAX_COUNT} and bytes at most {MAX_BYTES}"
            )));
        }
        let line = "x".repeat(bytes as usize);
        for _ in 0..count {
            ctx.log(LogLevel::Info, line.clone()).await?;
        }
        Ok(json!({ "lines": count }))
    }
}
