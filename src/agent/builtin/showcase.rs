//! `showcase`: emits one event of every kind an agent emits directly (§8.2): `log`, `thought`,
//! `status`, `metric`, `artifact_ref`, `progress`, and a `tool_call`/`tool_result` pair through
//! the lease. With `"rotate": true` it also rotates its provisioned credential (§9.8.2).
//! Result: `"done"`.

use async_trait::async_trait;
use serde_json::json;

use crate::{
    agent::{Agent, JobContext, LogLevel},
    error::ArcpError,
    protocol::{event::EventBody, Json},
};

/// Emits every directly-emitted event kind once.
pub struct Showcase;

#[async_trait]
impl Agent for Showcase {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        ctx.log(LogLevel::Info, "starting").await?;
        ctx.emit(EventBody::Thought {
            text: "planning".into(),
        })
        .await?;
        ctx.status("running", Some("working".into())).await?;
        ctx.metric("latency_ms", 12.5, Some("ms")).await?;
        ctx.emit(EventBody::ArtifactRef {
            uri: "file:///tmp/report.txt".into(),
            content_type: "text/plain".into(),
            byte_size: Some(42),
            sha256: None,
        })
        .await?;
        ctx.progress(1.0, Some(2.0)).await?;
        let _ = ctx
            .call_tool(
                "search",
                json!({ "q": "arcp" }),
                |args| async move { Ok(args) },
            )
            .await;
        if input.get("rotate").and_then(Json::as_bool).unwrap_or(false) {
            for credential in ctx.credentials() {
                ctx.rotate_credential(&credential.id).await?;
            }
        }
        ctx.progress(2.0, Some(2.0)).await?;
        Ok(Json::String("done".into()))
    }
}
