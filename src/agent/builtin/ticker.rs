//! `ticker`: `{"count": N, "interval_ms": M}` emits N `progress` events M ms apart, then returns
//! `{"ticks": N}`.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use crate::{
    agent::{Agent, JobContext},
    error::ArcpError,
    protocol::Json,
};

/// Emits a fixed number of progress events at a fixed pace.
pub struct Ticker;

/// Bounds the input so one request cannot pin the gateway.
const MAX_COUNT: u64 = 10_000_000;

#[async_trait]
impl Agent for Ticker {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let field = |name: &str, default: u64| -> Result<u64, ArcpError> {
            match input.get(name) {
                None | Some(Json::Null) => Ok(default),
                Some(v) => v.as_u64().ok_or_else(|| {
                    ArcpError::InvalidRequest(format!(
                        "ticker: {name} must be a non-negative integer"
                    ))
                }),
            }
        };
        let count = field("count", 10)?;
        let interval = Duration::from_millis(field("interval_ms", 100)?);
        if count > MAX_COUNT {
            return Err(ArcpError::InvalidRequest(format!(
                "ticker: count must be at most {MAX_COUNT}"
            )));
        }
        for tick in 1..=count {
            if !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            ctx.progress(tick as f64, Some(count as f64)).await?;
        }
        Ok(json!({ "ticks": count }))
    }
}
