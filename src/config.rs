//! Gateway settings, with the defaults the binary uses.

use std::time::Duration;

/// How a gateway's sessions behave.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// How long a session, its log and its resume token survive a dropped transport.
    pub resume_window: Duration,
    /// The most job frames a session's log keeps; older frames are evicted first.
    pub max_log_frames: usize,
    /// How many frames a job may run ahead of its session's attached reader before its emits
    /// wait; capped at half of `max_log_frames` so eviction never overtakes a live reader.
    pub flow_window: u64,
    /// Advertised in the welcome (§6.4).
    pub heartbeat_interval_sec: u32,
    /// How often expired sessions, tokens and finished jobs are swept.
    pub sweep_interval: Duration,
    /// How long a new stream may stay silent before its `session.hello`; bounds what idle,
    /// never-authenticated connections can hold.
    pub hello_timeout: Duration,
    /// Unacknowledged frames a session with `ack` may accumulate before the runtime emits a
    /// `back_pressure` status (§6.5).
    pub back_pressure_lag: u64,
    /// How long an `idempotency_key` keeps naming its job (§7.2).
    pub idempotency_window: Duration,
    /// `model.use` patterns granted to jobs whose lease names none (§9.7); `None` grants no
    /// model.
    pub default_model_use: Option<Vec<String>>,
    /// Whether an exhausted budget ends the job (`true`) or only fails the operation, which
    /// the agent sees as a `tool_result` error and may unwind from (§9.6, §13.5).
    pub budget_exhaustion_fatal: bool,
    /// How long after `expires_at` an agent may take to unwind before the runtime ends its job
    /// (§14 suggests a small bounded grace).
    pub lease_grace: Duration,
    /// The largest decoded `result_chunk` (§14).
    pub max_result_chunk_bytes: u64,
    /// The largest streamed result, all chunks together (§14).
    pub max_result_bytes: u64,
    /// Failed authentication or resume attempts a peer address (an IPv6 /64) or a principal
    /// may make within `auth_failure_window` before each further failure is answered only
    /// after `auth_failure_delay`.
    pub auth_failure_limit: u32,
    /// How long failed attempts are counted against a peer or principal.
    pub auth_failure_window: Duration,
    /// How long the answer to each failure over the limit waits; the error is the same.
    pub auth_failure_delay: Duration,
    /// How many peers and principals the failure counts remember at most; past that the
    /// oldest are forgotten, so the memory they take is bounded.
    pub auth_failure_tracked: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            resume_window: Duration::from_secs(600),
            max_log_frames: 100_000,
            flow_window: 8192,
            heartbeat_interval_sec: 30,
            sweep_interval: Duration::from_secs(1),
            hello_timeout: Duration::from_secs(30),
            back_pressure_lag: 1000,
            idempotency_window: Duration::from_secs(24 * 3600),
            default_model_use: None,
            budget_exhaustion_fatal: false,
            lease_grace: Duration::from_secs(1),
            max_result_chunk_bytes: 1024 * 1024,
            max_result_bytes: 64 * 1024 * 1024,
            auth_failure_limit: 10,
            auth_failure_window: Duration::from_secs(60),
            auth_failure_delay: Duration::from_secs(1),
            auth_failure_tracked: 65_536,
        }
    }
}
