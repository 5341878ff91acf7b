//! Agents the tests register next to the built-ins.

use std::sync::Arc;

use arcp_gateway::{
    agent::{Agent, JobContext, LogLevel},
    ArcpError,
};
use tokio::sync::{mpsc, Mutex};

/// A test agent that emits `n` log lines for every `n` the test sends and returns
/// `{"lines": total}` on a 0, so the test decides exactly when each frame is logged.
pub struct Pacer {
    steps: Mutex<mpsc::UnboundedReceiver<u64>>,
}

impl Pacer {
    /// The agent, and the sender that feeds its steps.
    pub fn new() -> (Arc<Pacer>, mpsc::UnboundedSender<u64>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pacer = Pacer {
            steps: Mutex::new(rx),
        };
        (Arc::new(pacer), tx)
    }
}

#[async_trait::async_trait]
impl Agent for Pacer {
    async fn run(
        &self,
        ctx: JobContext,
        _input: serde_json::Value,
    ) -> Result<serde_json::Value, ArcpError> {
        let mut steps = self.steps.lock().await;
        let mut lines = 0u64;
        while let Some(n) = steps.recv().await {
            if n == 0 {
                break;
            }
            for _ in 0..n {
                lines += 1;
                ctx.log(LogLevel::Info, format!("line {lines}")).await?;
            }
        }
        Ok(serde_json::json!({ "lines": lines }))
    }
}
