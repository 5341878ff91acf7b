//! `spender`: spends against its `cost.budget` (§9.6, §13.5).
//!
//! Input: `{"costs": [0.4, ...], "currency": "USD", "tool": "llm"}`. For each cost it calls the
//! tool through the lease, then reports a `cost.inference` metric of that amount. When an
//! operation fails with `BUDGET_EXHAUSTED` it stops and returns a partial result:
//! `{"spent": TOTAL, "calls": N, "stopped_by": CODE | null}`.

use async_trait::async_trait;
use serde_json::json;

use crate::{
    agent::{Agent, JobContext},
    error::ArcpError,
    protocol::Json,
};

/// Reports costs until its budget runs out.
pub struct Spender;

#[async_trait]
impl Agent for Spender {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let currency = input
            .get("currency")
            .and_then(Json::as_str)
            .unwrap_or("USD")
            .to_owned();
        let tool = input
            .get("tool")
            .and_then(Json::as_str)
            .unwrap_or("llm")
            .to_owned();
        let costs: Vec<f64> = input
            .get("costs")
            .and_then(Json::as_array)
            .map(|c| c.iter().filter_map(Json::as_f64).collect())
            .unwrap_or_default();
        let (mut spent, mut calls, mut stopped_by) = (0.0, 0, Json::Null);
        for cost in costs {
            match ctx
                .call_tool(&tool, json!({ "cost": cost }), |_| async { Ok(Json::Null) })
                .await
            {
                Ok(_) => {}
                Err(e @ ArcpError::BudgetExhausted(_)) => {
                    stopped_by = Json::String(e.code().as_str().into());
                    break;
                }
                Err(e) => return Err(e),
            }
            ctx.metric("cost.inference", cost, Some(&currency)).await?;
            spent += cost;
            calls += 1;
        }
        Ok(json!({ "spent": spent, "calls": calls, "stopped_by": stopped_by }))
    }
}
