//! `tool-user`: calls tools through the lease (`tool.call`, §9.3).
//!
//! Input: `{"calls": [{"tool": NAME, "args": ANY}, ...], "interval_ms": M}`. Each call is
//! authorized, then answered in-process with its own arguments. A `PERMISSION_DENIED` call is
//! recorded and the agent moves on; `BUDGET_EXHAUSTED` stops the calls and the agent returns
//! what it has (§13.5); `LEASE_EXPIRED` unwinds the job (§13.4). Result:
//! `{"results": [...], "denied": [tool, ...], "stopped_by": CODE | null}`.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use crate::{
    agent::{Agent, JobContext},
    error::ArcpError,
    protocol::Json,
};

/// Calls tools through the lease.
pub struct ToolUser;

#[async_trait]
impl Agent for ToolUser {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let calls = input
            .get("calls")
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default();
        let interval =
            Duration::from_millis(input.get("interval_ms").and_then(Json::as_u64).unwrap_or(0));
        let (mut results, mut denied, mut stopped_by) = (Vec::new(), Vec::new(), Json::Null);
        for call in calls {
            if !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            let tool = call
                .get("tool")
                .and_then(Json::as_str)
                .ok_or_else(|| {
                    ArcpError::InvalidRequest("tool-user: each call needs a tool name".into())
                })?
                .to_owned();
            let args = call.get("args").cloned().unwrap_or(Json::Null);
            match ctx
                .call_tool(&tool, args, |args| async move { Ok(args) })
                .await
            {
                Ok(result) => results.push(result),
                Err(ArcpError::PermissionDenied(_)) => denied.push(Json::String(tool)),
                Err(e @ ArcpError::LeaseExpired(_)) => return Err(e),
                Err(e) => {
                    stopped_by = Json::String(e.code().as_str().into());
                    break;
                }
            }
        }
        Ok(json!({ "results": results, "denied": denied, "stopped_by": stopped_by }))
    }
}
