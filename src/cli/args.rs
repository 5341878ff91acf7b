//! The flags and subcommands of `arcp-gateway client`.

use clap::{Args, Subcommand};

use crate::protocol::Json;

use super::exit::EXIT_CODES;

/// `arcp-gateway client`: submit, follow, list and cancel jobs on a gateway.
#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct ClientArgs {
    /// The gateway's gRPC endpoint.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:50051",
        env = "ARCP_ENDPOINT"
    )]
    pub endpoint: String,
    /// The bearer token to present.
    #[arg(long, global = true, env = "ARCP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print one JSON object a line (an event, a job), for scripts; no progress bar.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// The client's subcommands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Submit a job and follow it to its end: a progress bar on a terminal, its log lines
    /// above it; through dropped connections, which are resumed. Ctrl-C cancels the job.
    #[command(after_help = EXIT_CODES)]
    Submit {
        /// The agent, `name` or `name@version`.
        agent: String,
        /// The job's input, as JSON.
        #[arg(long, default_value = "{}", value_parser = parse_json)]
        input: Json,
    },
    /// List the jobs the token's principal may see (the gateway's first page of them).
    Jobs,
    /// Follow a job submitted elsewhere to its end, from the start of what the gateway still
    /// holds of it.
    #[command(after_help = EXIT_CODES)]
    Tail {
        /// The job's id.
        job: String,
    },
    /// Ask the gateway to cancel a job, and wait for its end. The gateway lets only the
    /// session that submitted a job cancel it (Ctrl-C on `client submit` does).
    Cancel {
        /// The job's id.
        job: String,
    },
}

fn parse_json(text: &str) -> Result<Json, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}
