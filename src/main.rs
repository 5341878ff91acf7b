//! `arcp-gateway serve`: the gateway as a standalone process with embedded in-memory stores
//! and the built-in demo agents.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use arcp_gateway::{
    agent::AgentRegistry, auth::Authenticator, config::GatewayConfig, ids::Principal, server,
    Gateway,
};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "ARCP_LISTEN")]
    listen: SocketAddr,
    /// Accept bearer TOKEN as PRINCIPAL; repeatable. With none, every bearer token is
    /// accepted and names its own principal.
    #[arg(long = "auth-token", value_name = "TOKEN=PRINCIPAL", env = "ARCP_AUTH_TOKENS", value_delimiter = ',', value_parser = parse_token_pair)]
    auth_tokens: Vec<(String, Principal)>,
    /// How long a session, its events and its resume token survive a dropped connection.
    #[arg(long, default_value_t = 600, env = "ARCP_RESUME_WINDOW_SEC")]
    resume_window_sec: u64,
    /// The most job events one session buffers for resume; older ones are evicted first.
    #[arg(long, default_value_t = 100_000, env = "ARCP_MAX_LOG_FRAMES")]
    max_log_frames: usize,
    /// Heartbeat interval advertised in the welcome.
    #[arg(long, default_value_t = 30, env = "ARCP_HEARTBEAT_INTERVAL_SEC")]
    heartbeat_interval_sec: u32,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let Command::Serve(args) = Cli::parse().command;
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = GatewayConfig {
        resume_window: Duration::from_secs(args.resume_window_sec),
        max_log_frames: args.max_log_frames,
        heartbeat_interval_sec: args.heartbeat_interval_sec,
        ..GatewayConfig::default()
    };
    let auth = Authenticator::from_pairs(args.auth_tokens);
    if auth.is_open() {
        tracing::warn!("running open: no --auth-token given, so every bearer token is accepted");
    }
    let gateway = Gateway::builder(config)
        .auth(auth)
        .agents(AgentRegistry::with_builtins())
        .build();
    let listener = server::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "arcp-gateway listening (gRPC, package arcp.v1)");
    server::serve(gateway, listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

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
