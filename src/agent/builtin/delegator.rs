//! `delegator`: delegates to a child job (§10) and returns the child's result.
//!
//! Input: `{"agent": REF, "input": ANY, "lease": {NS: [PATTERN, ...]}, "expires_at": TS}`.
//! Result: `{"child_job_id": ID, "child_result": ANY}`; a refused delegation
//! (`LEASE_SUBSET_VIOLATION`, `PERMISSION_DENIED`) fails the job with that code.

use async_trait::async_trait;
use serde_json::json;

use crate::{
    agent::{Agent, JobContext},
    error::ArcpError,
    protocol::{job_frame::ResultBody, Json, Lease},
};

/// Delegates to one child and waits for it.
pub struct Delegator;

#[async_trait]
impl Agent for Delegator {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let agent = input.get("agent").and_then(Json::as_str).unwrap_or("echo");
        let lease: Lease = match input.get("lease") {
            None | Some(Json::Null) => Lease::new(),
            Some(l) => serde_json::from_value(l.clone()).map_err(|_| {
                ArcpError::InvalidRequest(
                    "delegator: lease must map namespaces to string lists".into(),
                )
            })?,
        };
        let expires_at = input.get("expires_at").and_then(Json::as_str);
        let child_input = input.get("input").cloned().unwrap_or(Json::Null);
        let child = ctx.delegate(agent, child_input, &lease, expires_at).await?;
        let result = match child.outcome().await? {
            ResultBody::Inline(value) => value,
            ResultBody::Streamed { result_id, .. } => json!({ "result_id": result_id }),
        };
        Ok(json!({ "child_job_id": child.id().as_str(), "child_result": result }))
    }
}
