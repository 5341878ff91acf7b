//! Gateway settings, with the defaults the binary uses.

use std::{num::NonZeroUsize, time::Duration};

use crate::store::log::LogLimits;

const MIB: u64 = 1024 * 1024;

/// How a gateway's sessions behave.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// How long a session, its log and its resume token survive a dropped transport.
    pub resume_window: Duration,
    /// The most job frames a session's log keeps; older frames are evicted first.
    pub max_log_frames: usize,
    /// The most bytes of job frames (as stored) a session's log keeps; older frames are
    /// evicted first. Jobs are also paced to stay within half of it of an attached reader, so
    /// eviction never overtakes that reader.
    pub max_log_bytes: u64,
    /// The most bytes of job frames all sessions' logs keep together. Beyond it the frames of
    /// detached sessions are evicted, the session detached longest ago first; attached
    /// sessions never lose a frame to it, so only they can hold it exceeded, each by at most
    /// `max_log_bytes`.
    pub retained_bytes_budget: u64,
    /// The largest job frame, as stored, an agent may emit: a larger event is refused on its
    /// emit with `INVALID_REQUEST`, and a larger inline result ends the job with
    /// `INTERNAL_ERROR`. Must leave room for a `result_chunk` of `max_result_chunk_bytes`
    /// in base64 (a third more), and should be well under half of `max_log_bytes`.
    pub max_event_bytes: u64,
    /// The largest `job.submit` input, as JSON text; a larger one is refused with
    /// `INVALID_REQUEST`.
    pub max_input_bytes: u64,
    /// The longest `idempotency_key`, in bytes; a longer one is refused with
    /// `INVALID_REQUEST`.
    pub max_idempotency_key_bytes: usize,
    /// The most idempotency keys one principal holds at once; a new key beyond it forgets the
    /// principal's oldest accepted key (see `store::idempotency`).
    pub max_idempotency_keys_per_principal: usize,
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
    /// How long a job that names no `max_runtime_sec` may run before it ends with `TIMEOUT`,
    /// delegated children included; at most `max_runtime_ceiling`.
    pub default_max_runtime: Duration,
    /// The largest `max_runtime_sec` a submission may ask for; one asking for more is refused
    /// with `INVALID_REQUEST`.
    pub max_runtime_ceiling: Duration,
    /// Sessions one principal may hold at once, counting detached ones still in their resume
    /// window (§14); a hello over it gets `PERMISSION_DENIED`.
    pub max_sessions_per_principal: usize,
    /// Jobs one session may have running at once, delegated children included; a submission
    /// over it gets `PERMISSION_DENIED`.
    pub max_jobs_per_session: usize,
    /// Jobs one principal may have running at once over all its sessions.
    pub max_jobs_per_principal: usize,
    /// Jobs of other sessions one session may subscribe to at once (§7.6).
    pub max_subscriptions_per_session: usize,
    /// How long a new connection may take to become able to carry a session: the WebSocket
    /// upgrade, or gRPC's HTTP/2 preface and first stream. A connection that is not there by
    /// then is closed; `hello_timeout` takes over once a stream is open.
    pub connection_setup_timeout: Duration,
    /// The most connections one peer IP address may hold open, over both transports together;
    /// one more is closed as soon as it is accepted.
    pub max_connections_per_peer: NonZeroUsize,
    /// How long a shutdown waits, after health turns NOT_SERVING and every stream has been told
    /// to end, for connections to close by themselves; the ones still open then (a client that
    /// stopped reading, say) are cut.
    pub shutdown_grace: Duration,
    /// How long a replica that is shutting down lets its running jobs finish (their clients
    /// resuming on other replicas of a shared store) before it ends the rest with a retryable
    /// `INTERNAL_ERROR`; counted from the shutdown signal, beside `shutdown_grace`. With
    /// stores of this process only, nobody could see them finish, so they end at once.
    pub drain_grace: Duration,
    /// How often a replica on a shared store renews its lease (`store::replicas`); each
    /// sweep renews it too, before it looks for lost replicas.
    pub replica_heartbeat: Duration,
    /// How long a replica's lease runs after its last renewal: a replica silent for that long
    /// is lost, and on the next sweep a surviving replica ends its jobs (retryable
    /// `INTERNAL_ERROR`) and starts its sessions' resume windows. So a lost replica's jobs end
    /// within about `replica_lease + sweep_interval` of its death. Must be longer than
    /// `replica_heartbeat`, by enough for a heartbeat or two to be late.
    pub replica_lease: Duration,
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
    /// With a shared store, how long an outage of it is ridden out, from the first call that
    /// found it not answering: a stream waits this long for its session's log to answer
    /// again before it ends with a retryable `INTERNAL_ERROR` (the client resumes once the
    /// store is back); and the Redis event log tries appends again for as long (see
    /// [`RedisSettings::append_retry`](crate::store::redis::RedisSettings::append_retry),
    /// which `arcp-gateway serve` sets to the same).
    pub store_retry: Duration,
    /// Whether `provisioned_credentials` (§9.8) is offered, and credentials issued, over
    /// plaintext connections too. §14 wants them over authenticated, encrypted transports
    /// only, so by default only TLS connections get them; this is for loopback demos and
    /// tests.
    pub allow_plaintext_credentials: bool,
    /// How often an idle gRPC connection is pinged (HTTP/2 PING), so that a peer that vanished
    /// without closing it is noticed and its sessions detach (starting their resume window)
    /// instead of hanging; also keeps a proxy's idle timer from closing it.
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: Duration,
    /// When set, accepted sockets of both listeners get `SO_KEEPALIVE` with this idle time:
    /// probes that keep a cloud load balancer's or a NAT's connection table entry alive, and
    /// find a peer that is gone even where HTTP/2 pings do not run (WebSocket).
    pub tcp_keepalive: Option<Duration>,
    /// When set, a connection is asked to go away once it is this old, less up to a tenth
    /// (jitter, so that a fleet's connections do not all reconnect at once): gRPC gets an
    /// HTTP/2 GOAWAY (new streams go to a new connection, which a load balancer may place on
    /// another replica), WebSocket a close frame saying to resume elsewhere. Sessions on it
    /// detach and stay resumable.
    pub max_connection_age: Option<Duration>,
    /// How long, after `max_connection_age`, a connection's streams have before it is cut.
    pub max_connection_age_grace: Duration,
    /// The most streams one HTTP/2 connection may have open at once (HTTP/2's
    /// SETTINGS_MAX_CONCURRENT_STREAMS); a client opens another connection beyond it, or waits.
    /// `None` for no limit.
    pub max_concurrent_streams: Option<u32>,
}

/// Room for a NAT gateway's worth of clients, not for a flood from one host.
const DEFAULT_MAX_CONNECTIONS_PER_PEER: NonZeroUsize = NonZeroUsize::new(256).unwrap();

/// Room for the sessions a proxy multiplexes onto one upstream connection; past it the proxy
/// opens another, rather than one connection carrying an unbounded number.
const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1000;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            resume_window: Duration::from_secs(600),
            max_log_frames: 100_000,
            max_log_bytes: 64 * MIB,
            retained_bytes_budget: 1024 * MIB,
            max_event_bytes: 2 * MIB,
            max_input_bytes: 4 * MIB,
            max_idempotency_key_bytes: 256,
            max_idempotency_keys_per_principal: 10_000,
            flow_window: 8192,
            heartbeat_interval_sec: 30,
            sweep_interval: Duration::from_secs(1),
            hello_timeout: Duration::from_secs(30),
            back_pressure_lag: 1000,
            idempotency_window: Duration::from_secs(24 * 3600),
            default_model_use: None,
            budget_exhaustion_fatal: false,
            lease_grace: Duration::from_secs(1),
            max_result_chunk_bytes: MIB,
            max_result_bytes: 64 * MIB,
            default_max_runtime: Duration::from_secs(3600),
            max_runtime_ceiling: Duration::from_secs(24 * 3600),
            max_sessions_per_principal: 100,
            max_jobs_per_session: 100,
            max_jobs_per_principal: 1000,
            max_subscriptions_per_session: 100,
            connection_setup_timeout: Duration::from_secs(10),
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            shutdown_grace: Duration::from_secs(10),
            drain_grace: Duration::from_secs(30),
            replica_heartbeat: Duration::from_secs(3),
            replica_lease: Duration::from_secs(10),
            auth_failure_limit: 10,
            auth_failure_window: Duration::from_secs(60),
            auth_failure_delay: Duration::from_secs(1),
            auth_failure_tracked: 65_536,
            store_retry: Duration::from_secs(10),
            allow_plaintext_credentials: false,
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Some(Duration::from_secs(60)),
            max_connection_age: None,
            max_connection_age_grace: Duration::from_secs(30),
            max_concurrent_streams: Some(DEFAULT_MAX_CONCURRENT_STREAMS),
        }
    }
}

impl GatewayConfig {
    /// The bounds of the sessions' event logs.
    pub fn log_limits(&self) -> LogLimits {
        LogLimits {
            max_frames: self.max_log_frames,
            max_bytes: self.max_log_bytes,
            budget_bytes: self.retained_bytes_budget,
        }
    }
}
