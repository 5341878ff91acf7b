//! Agents the tests register next to the built-ins.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use arcp_gateway::{
    agent::{Agent, JobContext, LogLevel},
    ArcpError,
};
use tokio::sync::{mpsc, Mutex};

/// A test agent that emits `n` log lines (`line 1`, `line 2`, ...) for every `n` the test
/// sends and returns `{"lines": total}` on a 0, so the test decides exactly when each frame is
/// logged. It counts the emits that returned: an emit returns once the job is within its flow
/// window of its reader, so the count tells a test where the job waits.
pub struct Pacer {
    steps: Mutex<mpsc::UnboundedReceiver<u64>>,
    returned: Arc<AtomicU64>,
}

impl Pacer {
    /// The agent, and the sender that feeds its steps.
    pub fn new() -> (Arc<Pacer>, mpsc::UnboundedSender<u64>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pacer = Pacer {
            steps: Mutex::new(rx),
            returned: Arc::default(),
        };
        (Arc::new(pacer), tx)
    }

    /// How many of its emits have returned, as a counter the test can keep.
    pub fn returned(&self) -> Arc<AtomicU64> {
        self.returned.clone()
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
                self.returned.store(lines, Ordering::Release);
            }
        }
        Ok(serde_json::json!({ "lines": lines }))
    }
}
