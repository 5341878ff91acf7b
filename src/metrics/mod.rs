//! Prometheus metrics: the name, labels and meaning of every metric the gateway records, in
//! one place.
//!
//! The code records through the `metrics` facade with the names below; nothing is recorded
//! anywhere until `arcp-gateway serve --metrics-listen ADDR` installs the recorder
//! ([`exporter`]), which renders them at `GET /metrics` in the Prometheus text format. Every
//! label is drawn from a small fixed set (a transport, a §12 error code, a final status, a
//! gRPC method of the served services, a registered `name@version`): never a session, job,
//! token or principal.
//!
//! The frame path neither locks nor allocates for them: a stream looks its counters up once,
//! when it opens, and adds each batch it takes from the log with one atomic increment.
//!
//! Beside this file: [`exporter`] installs the recorder and serves `/metrics`,
//! [`grpc_layer`] is the tower layer that measures every gRPC call, [`store_latency`] holds
//! the store latency histograms (in fixed atomic buckets, since a log append is timed on every
//! frame), [`transport`] names the transports streams are counted by.

pub mod exporter;
pub mod grpc_layer;
pub mod store_latency;
pub mod transport;

/// Sessions with a stream attached on this replica (gauge).
pub const SESSIONS_ATTACHED: &str = "arcp_sessions_attached";
/// Sessions this replica saw detach whose resume window is open, neither resumed nor swept
/// yet (gauge). With replicas sharing a store, their sum is the deployment's count.
pub const SESSIONS_DETACHED: &str = "arcp_sessions_detached";
/// Attached streams open, by `transport` (gauge).
pub const STREAMS_OPEN: &str = "arcp_streams_open";
/// Jobs started, by `agent` (`name@version`) (counter).
pub const JOBS_STARTED: &str = "arcp_jobs_started_total";
/// Jobs ended, by `agent` and final `status` (`success`, `error`, `cancelled`, `timed_out`)
/// (counter).
pub const JOBS_FINISHED: &str = "arcp_jobs_finished_total";
/// Jobs running on this replica, by `agent` (gauge).
pub const JOBS_RUNNING: &str = "arcp_jobs_running";
/// Job frames taken from sessions' logs for their clients, by `transport` (counter).
pub const FRAMES_DELIVERED: &str = "arcp_frames_delivered_total";
/// Of those, the frames a resumed stream delivered that were logged before it resumed, by
/// `transport` (counter).
pub const FRAMES_REPLAYED: &str = "arcp_frames_replayed_total";
/// Resume attempts that reached the session handshake, by `outcome`: `ok`, or the §12 error
/// code that refused it (counter). A gRPC resume refused on its metadata, before any stream
/// opens, is counted in [`AUTH_FAILURES`] and [`GRPC_ERRORS`] instead.
pub const RESUME_ATTEMPTS: &str = "arcp_resume_attempts_total";
/// Failed bearer and resume token checks, by `check` (`bearer`, `resume`) and §12 `code`
/// (counter).
pub const AUTH_FAILURES: &str = "arcp_auth_failures_total";
/// Job frames the event logs retain for resume (gauge; read at each scrape: this process's
/// logs on the memory store, every replica's on Redis, from a walk of the logs' metadata at
/// most ten seconds old).
pub const LOG_RETAINED_FRAMES: &str = "arcp_log_retained_frames";
/// Bytes of job frames the event logs retain for resume (gauge; read at each scrape).
pub const LOG_RETAINED_BYTES: &str = "arcp_log_retained_bytes";
/// How long store operations take, by `store` (`memory`, `redis`) and `operation`
/// (`log_append`, `log_commit`, `log_read`, `session_create`, `resume_check`, ...)
/// (histogram, seconds).
pub const STORE_OPERATION_SECONDS: &str = "arcp_store_operation_duration_seconds";
/// Back-pressure signals, by `signal`: `status` (a `back_pressure` status sent to a lagging
/// client that negotiated `ack`), `flow_wait` (a job paused until its reader caught up)
/// (counter).
pub const BACK_PRESSURE: &str = "arcp_back_pressure_total";
/// gRPC calls, by `method` (`/package.Service/Method`, or `other`) (counter).
pub const GRPC_REQUESTS: &str = "arcp_grpc_requests_total";
/// gRPC calls that ended with a status other than OK, by `method` and `code` (counter).
pub const GRPC_ERRORS: &str = "arcp_grpc_errors_total";
/// How long gRPC calls last, from request to final status, by `method` (histogram,
/// seconds; a `Session` stream's lasts as long as the stream).
pub const GRPC_DURATION_SECONDS: &str = "arcp_grpc_request_duration_seconds";

/// The histograms' bucket bounds (`le`), in seconds: store operations take from microseconds (memory)
/// to milliseconds (Redis), gRPC calls up to a stream's lifetime.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// What kind of metric a name is, for its description.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The help text of every metric the recorder renders (the store latency histograms are
/// rendered, help included, by [`store_latency`]).
const HELP: &[(&str, Kind, &str)] = &[
    (
        SESSIONS_ATTACHED,
        Kind::Gauge,
        "Sessions with a stream attached on this replica.",
    ),
    (
        SESSIONS_DETACHED,
        Kind::Gauge,
        "Sessions detached from this replica whose resume window is open.",
    ),
    (
        STREAMS_OPEN,
        Kind::Gauge,
        "Attached streams open, by transport.",
    ),
    (JOBS_STARTED, Kind::Counter, "Jobs started, by agent."),
    (
        JOBS_FINISHED,
        Kind::Counter,
        "Jobs ended, by agent and final status.",
    ),
    (
        JOBS_RUNNING,
        Kind::Gauge,
        "Jobs running on this replica, by agent.",
    ),
    (
        FRAMES_DELIVERED,
        Kind::Counter,
        "Job frames delivered, by transport.",
    ),
    (
        FRAMES_REPLAYED,
        Kind::Counter,
        "Job frames replayed to resumed streams, by transport.",
    ),
    (
        RESUME_ATTEMPTS,
        Kind::Counter,
        "Resume attempts, by outcome.",
    ),
    (
        AUTH_FAILURES,
        Kind::Counter,
        "Failed token checks, by check and code.",
    ),
    (
        LOG_RETAINED_FRAMES,
        Kind::Gauge,
        "Job frames the event logs retain.",
    ),
    (
        LOG_RETAINED_BYTES,
        Kind::Gauge,
        "Bytes of job frames the event logs retain.",
    ),
    (
        BACK_PRESSURE,
        Kind::Counter,
        "Back-pressure signals, by signal.",
    ),
    (GRPC_REQUESTS, Kind::Counter, "gRPC calls, by method."),
    (
        GRPC_ERRORS,
        Kind::Counter,
        "gRPC calls ended with an error, by method and code.",
    ),
    (
        GRPC_DURATION_SECONDS,
        Kind::Histogram,
        "gRPC call duration in seconds, by method.",
    ),
];

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    for &(name, kind, help) in HELP {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, help),
        }
    }
}
