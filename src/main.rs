//! `arcp-gateway serve`: the gateway as a standalone process with the built-in demo agents
//! (or the agents an `--agents FILE` declares, stdio children and upstream runtimes among them), its state in embedded in-memory stores or in a Redis it shares with other replicas.
//!
//! On a shared store the process registers its replica id before it listens, renews its lease
//! while it runs, and gives it up once it drained after SIGTERM. If it learns that the others
//! declared it lost (it was paused, or cut off from Redis, for longer than its lease), its jobs
//! and sessions are someone else's by then: it stops serving, ends its jobs at once (the
//! stores refuse their frames, the survivor's error being their end) and exits with status 1,
//! for its orchestrator to start it again, as a new instance of its id.
//!
//! `arcp-gateway client` is a command-line client of a gateway (`arcp_gateway::cli`).

use std::{
    ffi::OsString, net::SocketAddr, num::NonZeroUsize, path::PathBuf, process::ExitCode, sync::Arc,
    time::Duration,
};

use arcp_gateway::{
    agent::{agents_file::AgentsFile, AgentRegistry},
    auth::{
        jwt::{JwtSettings, JwtVerifier},
        Authenticator,
    },
    cli::ClientArgs,
    config::GatewayConfig,
    credentials::{HttpProvisioner, MemoryProvisioner},
    engine::Observers,
    ids::{Principal, ReplicaId},
    logging::{self, LogFormat},
    metrics::exporter::{self, Exporter},
    server,
    settings::{self, Merged},
    store::{redis::RedisSettings, StoreChoice, Stores},
    transport::{
        tls::{ClientPrincipal, Tls, TlsSettings},
        ws,
    },
    Gateway,
};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than the system allocator: the frame path allocates and frees small buffers
/// on every event, from both workers (see BENCHMARKS.md for what it changed).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "arcp-gateway",
    version,
    about = "ARCP v1.1 agent runtime over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ARCP sessions over gRPC.
    Serve(Box<ServeArgs>),
    /// Talk to a gateway: submit a job and follow it, list, tail or cancel jobs.
    Client(ClientArgs),
    /// Check a config file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check FILE (with the environment, and any `serve` flags after it) and print the
    /// settings `serve --config FILE` would run with, the source of each, secrets masked.
    Check {
        /// The config file.
        file: PathBuf,
        /// `serve` flags, which come before the file.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        serve: Vec<OsString>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML file of settings: any flag of `serve` by its name (`resume_window_sec = 600`),
    /// and `[[agents]]` entries. Flags and environment variables come before it.
    #[arg(long, value_name = "FILE", env = "ARCP_CONFIG")]
    config: Option<PathBuf>,
    /// The agents to offer, and how each runs: a TOML file of `[[agents]]` entries
    /// (`backend = "builtin"`, `"stdio"` or `"upstream"`; see examples/agents/). Without it,
    /// the built-in demo agents.
    #[arg(long, value_name = "FILE", env = "ARCP_AGENTS")]
    agents: Option<PathBuf>,
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "ARCP_LISTEN")]
    listen: SocketAddr,
    /// Address to serve ARCP JSON over WebSocket on (path /arcp).
    #[arg(long, default_value = "127.0.0.1:50052", env = "ARCP_WS_LISTEN")]
    ws_listen: SocketAddr,
    /// Accept bearer TOKEN as PRINCIPAL; repeatable. With none, every bearer token is
    /// accepted and names its own principal.
    #[arg(long = "auth-token", value_name = "TOKEN=PRINCIPAL", env = "ARCP_AUTH_TOKENS", hide_env_values = true, value_delimiter = ',', value_parser = parse_token_pair)]
    auth_tokens: Vec<(String, Principal)>,
    /// How long a session, its events and its resume token survive a dropped connection.
    #[arg(long, default_value_t = 600, env = "ARCP_RESUME_WINDOW_SEC")]
    resume_window_sec: u64,
    /// The most job events one session buffers for resume; older ones are evicted first.
    #[arg(long, default_value_t = 100_000, env = "ARCP_MAX_LOG_FRAMES")]
    max_log_frames: usize,
    /// The most bytes of job events one session buffers for resume; older ones are evicted
    /// first, and jobs are paced to stay within half of it of an attached reader.
    #[arg(long, default_value_t = 64 * 1024 * 1024, env = "ARCP_MAX_LOG_BYTES")]
    max_log_bytes: u64,
    /// The most bytes of job events all sessions buffer together; beyond it detached
    /// sessions' oldest events are evicted, the session detached longest ago first.
    #[arg(long, default_value_t = 1024 * 1024 * 1024, env = "ARCP_RETAINED_BYTES_BUDGET")]
    retained_bytes_budget: u64,
    /// The largest job event, as stored, an agent may emit; larger ones are refused.
    #[arg(long, default_value_t = 2 * 1024 * 1024, env = "ARCP_MAX_EVENT_BYTES")]
    max_event_bytes: u64,
    /// The largest job.submit input, as JSON text; larger ones are refused.
    #[arg(long, default_value_t = 4 * 1024 * 1024, env = "ARCP_MAX_INPUT_BYTES")]
    max_input_bytes: u64,
    /// The longest idempotency_key, in bytes; longer ones are refused.
    #[arg(long, default_value_t = 256, env = "ARCP_MAX_IDEMPOTENCY_KEY_BYTES")]
    max_idempotency_key_bytes: usize,
    /// The most idempotency keys one principal holds; a new one beyond it forgets the
    /// principal's oldest.
    #[arg(
        long,
        default_value_t = 10_000,
        env = "ARCP_MAX_IDEMPOTENCY_KEYS_PER_PRINCIPAL"
    )]
    max_idempotency_keys_per_principal: usize,
    /// Heartbeat interval advertised in the welcome.
    #[arg(long, default_value_t = 30, env = "ARCP_HEARTBEAT_INTERVAL_SEC")]
    heartbeat_interval_sec: u32,
    /// Unacknowledged events after which a session that negotiated `ack` gets a
    /// `back_pressure` status.
    #[arg(long, default_value_t = 1000, env = "ARCP_BACK_PRESSURE_LAG")]
    back_pressure_lag: u64,
    /// How long an idempotency_key keeps naming its job.
    #[arg(long, default_value_t = 86_400, env = "ARCP_IDEMPOTENCY_WINDOW_SEC")]
    idempotency_window_sec: u64,
    /// `model.use` patterns granted to jobs whose lease names none; repeatable.
    #[arg(
        long = "default-model-use",
        value_name = "PATTERN",
        env = "ARCP_DEFAULT_MODEL_USE",
        value_delimiter = ','
    )]
    default_model_use: Vec<String>,
    /// End a job when its budget is exhausted, instead of failing only the operation.
    #[arg(long, env = "ARCP_BUDGET_EXHAUSTION_FATAL")]
    budget_exhaustion_fatal: bool,
    /// A principal allowed to list and subscribe to every principal's jobs (an auditor or
    /// dashboard); repeatable. By default principals observe only their own jobs.
    #[arg(
        long = "observer",
        value_name = "PRINCIPAL",
        env = "ARCP_OBSERVERS",
        value_delimiter = ','
    )]
    observers: Vec<String>,
    /// How long a job that names no max_runtime_sec may run before it ends with TIMEOUT.
    #[arg(long, default_value_t = 3600, env = "ARCP_DEFAULT_MAX_RUNTIME_SEC")]
    default_max_runtime_sec: u64,
    /// The largest max_runtime_sec a submission may ask for.
    #[arg(long, default_value_t = 86_400, env = "ARCP_MAX_RUNTIME_CEILING_SEC")]
    max_runtime_ceiling_sec: u64,
    /// Sessions one principal may hold at once, detached ones in their resume window included.
    #[arg(long, default_value_t = 100, env = "ARCP_MAX_SESSIONS_PER_PRINCIPAL")]
    max_sessions_per_principal: usize,
    /// Jobs one session may have running at once, delegated children included.
    #[arg(long, default_value_t = 100, env = "ARCP_MAX_JOBS_PER_SESSION")]
    max_jobs_per_session: usize,
    /// Jobs one principal may have running at once over all its sessions.
    #[arg(long, default_value_t = 1000, env = "ARCP_MAX_JOBS_PER_PRINCIPAL")]
    max_jobs_per_principal: usize,
    /// Jobs of other sessions one session may subscribe to at once.
    #[arg(
        long,
        default_value_t = 100,
        env = "ARCP_MAX_SUBSCRIPTIONS_PER_SESSION"
    )]
    max_subscriptions_per_session: usize,
    /// Issue provisioned credentials (§9.8) valid at this endpoint, from the in-process
    /// provisioner; enables the `provisioned_credentials` feature.
    #[arg(long, value_name = "URL", env = "ARCP_CREDENTIALS_ENDPOINT")]
    credentials_endpoint: Option<String>,
    /// Issue provisioned credentials (§9.8) from the upstream at this `http://` or `https://`
    /// base URL (docs/credentials.md), which outlives this process: credentials not yet
    /// revoked are kept in the store's ledger and revoked after a restart or a takeover.
    #[arg(
        long,
        value_name = "URL",
        env = "ARCP_CREDENTIAL_UPSTREAM",
        conflicts_with = "credentials_endpoint"
    )]
    credential_upstream: Option<String>,
    /// The bearer token the credential upstream wants, if any.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ARCP_CREDENTIAL_UPSTREAM_TOKEN",
        hide_env_values = true
    )]
    credential_upstream_token: Option<String>,
    /// Serve Prometheus metrics at `GET /metrics` on this address (plaintext HTTP/1.1);
    /// off by default.
    #[arg(long, value_name = "ADDR", env = "ARCP_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How long a new stream may stay silent before its `session.hello`.
    #[arg(long, default_value_t = 30, env = "ARCP_HELLO_TIMEOUT_SEC")]
    hello_timeout_sec: u64,
    /// How long a new connection may take to complete its WebSocket upgrade, or to send the
    /// HTTP/2 preface and open its first gRPC stream, before it is closed.
    #[arg(long, default_value_t = 10, env = "ARCP_CONNECTION_SETUP_TIMEOUT_SEC")]
    connection_setup_timeout_sec: u64,
    /// The most connections one peer IP address may hold open, both transports together.
    #[arg(long, default_value = "256", env = "ARCP_MAX_CONNECTIONS_PER_PEER")]
    max_connections_per_peer: NonZeroUsize,
    /// How long a shutdown waits for connections to close once every stream has been told to
    /// end; the ones still open then are cut.
    #[arg(long, default_value_t = 10, env = "ARCP_SHUTDOWN_GRACE_SEC")]
    shutdown_grace_sec: u64,
    /// With a shared store, how long a replica that is shutting down lets its running jobs
    /// finish before it ends the rest with a retryable INTERNAL_ERROR and exits.
    #[arg(long, default_value_t = 30, env = "ARCP_DRAIN_GRACE_SEC")]
    drain_grace_sec: u64,
    /// Failed authentication or resume attempts a peer address or principal may make within
    /// the failure window before each further failure is answered late.
    #[arg(long, default_value_t = 10, env = "ARCP_AUTH_FAILURE_LIMIT")]
    auth_failure_limit: u32,
    /// How long failed authentication and resume attempts are counted.
    #[arg(long, default_value_t = 60, env = "ARCP_AUTH_FAILURE_WINDOW_SEC")]
    auth_failure_window_sec: u64,
    /// How long the answer to each failed attempt over the limit waits.
    #[arg(long, default_value_t = 1000, env = "ARCP_AUTH_FAILURE_DELAY_MS")]
    auth_failure_delay_ms: u64,
    /// How many peers and principals the failure counts remember at most.
    #[arg(long, default_value_t = 65_536, env = "ARCP_AUTH_FAILURE_TRACKED")]
    auth_failure_tracked: usize,
    /// Where sessions, resume tokens, event logs and jobs live: `memory` (this process only)
    /// or `redis://HOST:PORT/DB` (`rediss://` for TLS), shared by every replica using it.
    #[arg(long, default_value = "memory", env = "ARCP_STORE")]
    store: StoreChoice,
    /// The prefix of every Redis key, so that several deployments can share one Redis.
    #[arg(long, default_value = "arcp", env = "ARCP_REDIS_PREFIX")]
    redis_prefix: String,
    /// This replica's name among those sharing a store; by default the host name and a
    /// random suffix.
    #[arg(long, env = "ARCP_REPLICA_ID")]
    replica_id: Option<String>,
    /// With a shared store, how often this replica renews its lease, in seconds.
    #[arg(long, default_value_t = 3.0, env = "ARCP_REPLICA_HEARTBEAT_SEC")]
    replica_heartbeat_sec: f64,
    /// With a shared store, how long a replica's lease runs after its last renewal, in
    /// seconds: a replica silent for that long is lost, and a surviving one ends its jobs with
    /// a retryable INTERNAL_ERROR and starts its sessions' resume windows on its next sweep.
    #[arg(long, default_value_t = 10.0, env = "ARCP_REPLICA_LEASE_SEC")]
    replica_lease_sec: f64,
    /// With a shared store, how long an outage of it is ridden out, in milliseconds: job
    /// events are tried again (and streams wait for them) this long from the first failure;
    /// past it jobs end with a retryable INTERNAL_ERROR, logged once the store is back.
    #[arg(long, default_value_t = 10_000, env = "ARCP_STORE_RETRY_MS")]
    store_retry_ms: u64,
    /// How log lines are written: `text`, or `json` (one object per line, each listing the
    /// spans it is in with their fields). The level comes from RUST_LOG (default info).
    #[arg(long, default_value = "text", env = "ARCP_LOG_FORMAT")]
    log_format: LogFormat,
    /// Export the job, session and store spans to the OTLP collector at this gRPC endpoint
    /// (`http://HOST:4317`); a job's span joins the trace its `trace_id` names.
    #[arg(long, value_name = "URL", env = "ARCP_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    transport: TransportArgs,
}

/// TLS, mutual TLS, JWT bearer tokens and the plaintext health listener (docs/deployment.md).
#[derive(clap::Args)]
struct SecurityArgs {
    /// Serve both listeners over TLS with this certificate chain (PEM, leaf first); reloaded
    /// when the file changes.
    #[arg(long, value_name = "PEM", env = "ARCP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM); reloaded when the file changes.
    #[arg(long, value_name = "PEM", env = "ARCP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by one of these CAs (PEM): mutual TLS.
    #[arg(
        long,
        value_name = "PEM",
        env = "ARCP_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Which name of a client certificate is the connection's principal: none (a bearer
    /// token names it), cn (the subject's common name), san-dns, san-uri or san-email.
    #[arg(
        long,
        default_value = "none",
        env = "ARCP_TLS_CLIENT_PRINCIPAL",
        requires = "tls_client_ca"
    )]
    tls_client_principal: ClientPrincipal,
    /// How often the TLS files are looked at for a change, in seconds.
    #[arg(long, default_value_t = 5.0, env = "ARCP_TLS_RELOAD_SEC")]
    tls_reload_sec: f64,
    /// Also serve gRPC health (only `grpc.health.v1`) in plaintext on this address, for probes
    /// that cannot speak TLS (the kubelet's gRPC probe).
    #[arg(long, value_name = "ADDR", env = "ARCP_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// Also accept JWT bearer tokens (HS256, RS256, ES256) signed by a key of this JWKS file;
    /// reloaded when it changes. Static --auth-token tokens keep working beside them.
    #[arg(long, value_name = "FILE", env = "ARCP_JWT_JWKS")]
    jwt_jwks: Option<PathBuf>,
    /// The `iss` every JWT must carry.
    #[arg(
        long,
        value_name = "ISS",
        env = "ARCP_JWT_ISSUER",
        requires = "jwt_jwks"
    )]
    jwt_issuer: Option<String>,
    /// The `aud` every JWT must carry.
    #[arg(
        long,
        value_name = "AUD",
        env = "ARCP_JWT_AUDIENCE",
        requires = "jwt_jwks"
    )]
    jwt_audience: Option<String>,
    /// How far a JWT's `exp` and `nbf` may be off, in seconds.
    #[arg(long, default_value_t = 30, env = "ARCP_JWT_LEEWAY_SEC")]
    jwt_leeway_sec: u64,
    /// The JWT claim that names the principal.
    #[arg(long, default_value = "sub", env = "ARCP_JWT_PRINCIPAL_CLAIM")]
    jwt_principal_claim: String,
    /// How often the JWKS file is looked at for a change, in seconds.
    #[arg(long, default_value_t = 5.0, env = "ARCP_JWT_RELOAD_SEC")]
    jwt_reload_sec: f64,
    /// Offer and issue provisioned credentials (§9.8) over plaintext connections too, which
    /// §14 forbids: for loopback demos and tests only. Without it they go over TLS only.
    #[arg(long, env = "ARCP_ALLOW_PLAINTEXT_CREDENTIALS")]
    allow_plaintext_credentials: bool,
}

/// Transport settings for running behind a load balancer or a service mesh (README.md,
/// "Behind a proxy or a mesh").
#[derive(clap::Args)]
struct TransportArgs {
    /// How often an idle gRPC connection is pinged (HTTP/2 PING), in seconds.
    #[arg(
        long,
        default_value_t = 20.0,
        env = "ARCP_HTTP2_KEEPALIVE_INTERVAL_SEC"
    )]
    http2_keepalive_interval_sec: f64,
    /// How long an HTTP/2 ping may go unanswered before the connection is closed, in seconds.
    #[arg(long, default_value_t = 10.0, env = "ARCP_HTTP2_KEEPALIVE_TIMEOUT_SEC")]
    http2_keepalive_timeout_sec: f64,
    /// TCP keepalive (SO_KEEPALIVE) idle time on accepted sockets of both listeners, in
    /// seconds; 0 turns it off.
    #[arg(long, default_value_t = 60.0, env = "ARCP_TCP_KEEPALIVE_SEC")]
    tcp_keepalive_sec: f64,
    /// Ask connections to go away once they are this old, less up to a tenth (gRPC: HTTP/2
    /// GOAWAY; WebSocket: close code 1012), so that long-lived connections rebalance over
    /// replicas; sessions on them stay resumable. In seconds; 0 (the default) turns it off.
    #[arg(long, default_value_t = 0.0, env = "ARCP_MAX_CONNECTION_AGE_SEC")]
    max_connection_age_sec: f64,
    /// How long a connection past its maximum age keeps its streams before it is cut, in
    /// seconds.
    #[arg(
        long,
        default_value_t = 30.0,
        env = "ARCP_MAX_CONNECTION_AGE_GRACE_SEC"
    )]
    max_connection_age_grace_sec: f64,
    /// The most streams (sessions) one HTTP/2 connection may have open at once; 0 for no limit.
    #[arg(long, default_value_t = 1000, env = "ARCP_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: u32,
}

fn parse_token_pair(pair: &str) -> Result<(String, Principal), String> {
    match pair.split_once('=') {
        Some((token, principal)) if !token.is_empty() && !principal.is_empty() => {
            Ok((token.to_owned(), Principal::new(principal)))
        }
        _ => Err("expected TOKEN=PRINCIPAL".into()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let (merged, cli) = match parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    match cli.command {
        Command::Serve(args) => serve_main(*args, merged.agents).await,
        // No log subscriber: the client's stdout is its output, for a terminal or a script.
        Command::Client(args) => arcp_gateway::cli::run(args).await,
        Command::Config(ConfigCommand::Check { file, serve }) => config_check(file, serve),
    }
}

/// The command line with its config file merged in, parsed; a refusal is said on stderr.
fn parse(args: Vec<OsString>) -> Result<(Merged, Cli), ExitCode> {
    let cmd = Cli::command();
    let merged = settings::merge(&cmd, args).map_err(|e| {
        eprintln!("arcp-gateway: {e}");
        ExitCode::from(2)
    })?;
    let matches = cmd.get_matches_from(&merged.args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok((merged, cli))
}

/// `config check FILE [FLAGS]`: the settings `serve` would run with, or what is wrong.
fn config_check(file: PathBuf, flags: Vec<OsString>) -> ExitCode {
    let mut args: Vec<OsString> = vec!["arcp-gateway".into(), "serve".into(), "--config".into()];
    args.push(file.into());
    args.extend(flags);
    let (merged, cli) = match parse(args.clone()) {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    let Command::Serve(serve_args) = cli.command else {
        return ExitCode::FAILURE;
    };
    let agents = match agents_of(&serve_args, merged.agents.clone()) {
        Ok(registry) => registry,
        Err(e) => {
            eprintln!("arcp-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let cmd = Cli::command();
    let Some(sub) = cmd.find_subcommand("serve") else {
        return ExitCode::FAILURE;
    };
    let matches = sub.clone().get_matches_from(&merged.args[1..]);
    print!(
        "{}",
        settings::render(&settings::effective(sub, &matches, &merged))
    );
    for agent in agents.inventory() {
        println!("# agent {} {}", agent.name, agent.versions.join(", "));
    }
    ExitCode::SUCCESS
}

/// The agents the settings declare: the config file's `[[agents]]`, an `--agents` file, or
/// the built-in ones.
fn agents_of(args: &ServeArgs, inline: Option<(String, PathBuf)>) -> Result<AgentRegistry, String> {
    match (&args.agents, inline) {
        (Some(_), Some(_)) => {
            Err("the config file declares [[agents]] and --agents names a file too: use one".into())
        }
        (Some(path), None) => AgentsFile::load(path)
            .and_then(|file| file.registry())
            .map_err(|e| format!("--agents {e}")),
        (None, Some((toml, base))) => AgentsFile::parse(&toml, &base)
            .and_then(|file| file.registry())
            .map_err(|e| format!("config file [[agents]]: {e}")),
        (None, None) => Ok(AgentRegistry::with_builtins()),
    }
}

/// `serve`: the gateway until a signal, or its replica's loss, stops it.
async fn serve_main(args: ServeArgs, inline_agents: Option<(String, PathBuf)>) -> ExitCode {
    let telemetry = match logging::init(args.log_format, args.otlp_endpoint.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("arcp-gateway: --otlp-endpoint: {e}");
            return ExitCode::from(2);
        }
    };
    // Before anything listens: a gateway whose agents are declared wrong does not start.
    let agents = match agents_of(&args, inline_agents) {
        Ok(registry) => registry,
        Err(e) => {
            eprintln!("arcp-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match serve(args, agents).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    };
    if let Some(telemetry) = telemetry {
        // The last export is a blocking call that needs the runtime's other threads.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    code
}

/// `secs` seconds, or `None` for 0 (or anything that is no duration), which turns a setting off.
fn off_when_zero(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
}

/// A duration of `secs` seconds given for `flag`, which must be positive.
fn seconds(flag: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--{flag} must be a positive number of seconds"))
}

async fn serve(args: ServeArgs, agents: AgentRegistry) -> Result<(), Box<dyn std::error::Error>> {
    // First: what is recorded before the recorder is installed goes nowhere.
    let metrics = match args.metrics_listen {
        Some(addr) => Some(Exporter::install(addr).await?),
        None => None,
    };
    let replica_heartbeat = seconds("replica-heartbeat-sec", args.replica_heartbeat_sec)?;
    let replica_lease = seconds("replica-lease-sec", args.replica_lease_sec)?;
    if replica_lease <= replica_heartbeat {
        return Err("--replica-lease-sec must be longer than --replica-heartbeat-sec".into());
    }
    let config = GatewayConfig {
        resume_window: Duration::from_secs(args.resume_window_sec),
        max_log_frames: args.max_log_frames,
        max_log_bytes: args.max_log_bytes,
        retained_bytes_budget: args.retained_bytes_budget,
        max_event_bytes: args.max_event_bytes,
        max_input_bytes: args.max_input_bytes,
        max_idempotency_key_bytes: args.max_idempotency_key_bytes,
        max_idempotency_keys_per_principal: args.max_idempotency_keys_per_principal,
        heartbeat_interval_sec: args.heartbeat_interval_sec,
        back_pressure_lag: args.back_pressure_lag,
        idempotency_window: Duration::from_secs(args.idempotency_window_sec),
        default_model_use: (!args.default_model_use.is_empty()).then_some(args.default_model_use),
        budget_exhaustion_fatal: args.budget_exhaustion_fatal,
        default_max_runtime: Duration::from_secs(args.default_max_runtime_sec),
        max_runtime_ceiling: Duration::from_secs(args.max_runtime_ceiling_sec),
        max_sessions_per_principal: args.max_sessions_per_principal,
        max_jobs_per_session: args.max_jobs_per_session,
        max_jobs_per_principal: args.max_jobs_per_principal,
        max_subscriptions_per_session: args.max_subscriptions_per_session,
        hello_timeout: Duration::from_secs(args.hello_timeout_sec),
        connection_setup_timeout: Duration::from_secs(args.connection_setup_timeout_sec),
        max_connections_per_peer: args.max_connections_per_peer,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_sec),
        drain_grace: match args.store {
            StoreChoice::Redis(_) => Duration::from_secs(args.drain_grace_sec),
            StoreChoice::Memory => Duration::ZERO,
        },
        auth_failure_limit: args.auth_failure_limit,
        auth_failure_window: Duration::from_secs(args.auth_failure_window_sec),
        auth_failure_delay: Duration::from_millis(args.auth_failure_delay_ms),
        auth_failure_tracked: args.auth_failure_tracked,
        replica_heartbeat,
        replica_lease,
        store_retry: Duration::from_millis(args.store_retry_ms),
        allow_plaintext_credentials: args.security.allow_plaintext_credentials,
        http2_keepalive_interval: seconds(
            "http2-keepalive-interval-sec",
            args.transport.http2_keepalive_interval_sec,
        )?,
        http2_keepalive_timeout: seconds(
            "http2-keepalive-timeout-sec",
            args.transport.http2_keepalive_timeout_sec,
        )?,
        tcp_keepalive: off_when_zero(args.transport.tcp_keepalive_sec),
        max_connection_age: off_when_zero(args.transport.max_connection_age_sec),
        max_connection_age_grace: Duration::try_from_secs_f64(
            args.transport.max_connection_age_grace_sec,
        )
        .map_err(|_| "--max-connection-age-grace-sec must be a number of seconds")?,
        max_concurrent_streams: (args.transport.max_concurrent_streams != 0)
            .then_some(args.transport.max_concurrent_streams),
        ..GatewayConfig::default()
    };
    let mut auth = Authenticator::from_pairs(args.auth_tokens);
    if let Some(jwt) = jwt_verifier(&args.security)? {
        auth = auth.with_jwt(jwt);
    }
    if auth.is_open() {
        tracing::warn!("running open: no --auth-token given, so every bearer token is accepted");
    }
    let replica = args
        .replica_id
        .map_or_else(ReplicaId::generate, ReplicaId::new);
    let redis = RedisSettings {
        append_retry: config.store_retry,
    };
    let stores = Stores::open(
        &args.store,
        &args.redis_prefix,
        redis,
        &replica,
        config.log_limits(),
    )?;
    tracing::info!(store = ?args.store, replica = %replica, "stores");
    let mut builder = Gateway::builder(config)
        .replica(replica)
        .stores(stores)
        .auth(auth)
        .agents(agents);
    if !args.observers.is_empty() {
        let observers = args.observers.into_iter().map(Principal::new).collect();
        builder = builder.observe_policy(Arc::new(Observers(observers)));
    }
    if let Some(endpoint) = args.credentials_endpoint {
        builder = builder.credential_provisioner(Arc::new(MemoryProvisioner::new(endpoint, None)));
    }
    if let Some(url) = args.credential_upstream {
        if args.store == StoreChoice::Memory {
            tracing::warn!("the credential ledger is in memory: credentials outstanding when this process dies stay live upstream until they expire; use a shared --store to have them revoked after a restart");
        }
        let upstream = HttpProvisioner::new(&url, args.credential_upstream_token)?;
        builder = builder.credential_provisioner(Arc::new(upstream));
    }
    let options = serve_options(&args.security).await?;
    let gateway = builder.build();
    gateway.register().await?;
    let listener = server::bind(args.listen).await?;
    let ws_listener = server::bind(args.ws_listen).await?;
    let tls = if options.tls.is_some() {
        "TLS"
    } else {
        "plaintext"
    };
    tracing::info!(addr = %listener.local_addr()?, tls, "arcp-gateway listening (gRPC, package arcp.v1)");
    tracing::info!(ws_addr = %ws_listener.local_addr()?, path = ws::PATH, tls, "arcp-gateway listening (ARCP JSON over WebSocket)");
    let stop = CancellationToken::new();
    if let Some(metrics) = metrics {
        tracing::info!(metrics_addr = %metrics.local_addr()?, path = exporter::PATH, "metrics listening (Prometheus)");
        let logs = gateway.stores().logs.clone();
        let refresh = move || {
            let logs = logs.clone();
            let refreshed: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
                if let Some(retention) = logs.retention().await {
                    retention.gauge();
                }
            });
            refreshed
        };
        tokio::spawn(metrics.serve(refresh, stop.clone()));
    }
    let signalled = {
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = shutdown_signal() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        }
    };
    let serving = async {
        let served = server::serve_all_with(
            gateway.clone(),
            listener,
            ws_listener,
            options,
            stop.clone().cancelled_owned(),
        )
        .await;
        stop.cancel();
        served
    };
    // Renewed until the jobs drained, so that nobody takes over jobs still finishing.
    let drained = CancellationToken::new();
    let lost = CancellationToken::new();
    let leasing = async {
        tokio::select! {
            by = gateway.keep_lease() => {
                tracing::error!(
                    by = %by,
                    "this replica was declared lost; its jobs and sessions were taken over. \
                     Stopping"
                );
                lost.cancel();
                stop.cancel();
                Some(by)
            }
            () = drained.cancelled() => None,
        }
    };
    // The jobs' grace runs from the signal, beside the connections' drain.
    let draining = async {
        stop.cancelled().await;
        // A lost replica's jobs can no longer write: they end at once.
        let grace = if lost.is_cancelled() {
            Duration::ZERO
        } else {
            gateway.config().drain_grace
        };
        let jobs = gateway.drain_jobs(grace, JOB_END_SETTLE).await;
        tracing::info!(finished = jobs.finished, ended = jobs.ended, "jobs drained");
        drained.cancel();
    };
    let ((), served, (), lost_to) = tokio::join!(signalled, serving, draining, leasing);
    if let Some(by) = lost_to {
        return Err(format!("declared lost (taken over by {by}); exiting for a restart").into());
    }
    served?;
    gateway.leave().await;
    tracing::info!("stopped");
    Ok(())
}

/// The JWT verifier the flags ask for, watching its JWKS file.
fn jwt_verifier(
    args: &SecurityArgs,
) -> Result<Option<Arc<JwtVerifier>>, Box<dyn std::error::Error>> {
    let Some(jwks) = &args.jwt_jwks else {
        return Ok(None);
    };
    let mut settings = JwtSettings::new(jwks);
    settings.issuer = args.jwt_issuer.clone();
    settings.audience = args.jwt_audience.clone();
    settings.leeway = Duration::from_secs(args.jwt_leeway_sec);
    settings.principal_claim = args.jwt_principal_claim.clone();
    settings.reload_interval = seconds("jwt-reload-sec", args.jwt_reload_sec)?;
    if settings.audience.is_none() || settings.issuer.is_none() {
        tracing::warn!("JWTs accepted without --jwt-audience or --jwt-issuer: a token your identity provider issued for another service is accepted here too");
    }
    let verifier = JwtVerifier::load(settings)?;
    tracing::info!(jwks = %jwks.display(), "JWT bearer tokens accepted");
    // Ends with the process.
    drop(JwtVerifier::watch(&verifier));
    Ok(Some(verifier))
}

/// The TLS configuration and the health listener the flags ask for.
async fn serve_options(
    args: &SecurityArgs,
) -> Result<server::ServeOptions, Box<dyn std::error::Error>> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let mut settings = TlsSettings::new(cert, key);
            settings.client_ca = args.tls_client_ca.clone();
            settings.client_principal = args.tls_client_principal;
            settings.reload_interval = seconds("tls-reload-sec", args.tls_reload_sec)?;
            let tls = Tls::load(settings)?;
            tracing::info!(
                cert = %cert.display(),
                mutual = tls.requires_client_certificates(),
                "TLS on both listeners"
            );
            Some(tls)
        }
        _ => None,
    };
    let health = match args.health_listen {
        Some(addr) => {
            let listener = server::bind(addr).await?;
            tracing::info!(health_addr = %listener.local_addr()?, "gRPC health listening (plaintext, grpc.health.v1 only)");
            Some(listener)
        }
        None => None,
    };
    Ok(server::ServeOptions { tls, health })
}

/// How long jobs ended by the drain get to log their terminal frames before the process exits
/// regardless.
const JOB_END_SETTLE: Duration = Duration::from_secs(5);

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
