//! The flags and subcommands of `arcp-gateway client`.

use std::path::PathBuf;

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
    /// Where `submit` keeps its session's resume point until the job ends, for `attach` and
    /// `cancel` [default: $XDG_STATE_HOME/arcp-gateway, or ~/.local/state/arcp-gateway].
    #[arg(long, global = true, env = "ARCP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// The client's subcommands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Submit a job and follow it to its end: a progress bar on a terminal, its log lines
    /// above it; through dropped connections, which are resumed. Ctrl-C cancels the job. The
    /// session's resume point is kept in the state directory until the job ends, so that
    /// `attach` and `cancel` can take the session up if this command dies.
    #[command(after_help = EXIT_CODES)]
    Submit {
        /// The agent, `name` or `name@version`.
        agent: String,
        /// The job's input, as JSON.
        #[arg(long, default_value = "{}", value_parser = parse_json)]
        input: Json,
        /// Print the job's acceptance and exit, leaving the session detached: the job runs on
        /// for as long as the gateway's resume window, unless `attach` takes it up again.
        #[arg(long)]
        detach: bool,
    },
    /// Take up again the session that submitted a job (kept by `submit` in the state
    /// directory), and follow the job to its end from where that session left it; Ctrl-C
    /// cancels the job.
    #[command(after_help = EXIT_CODES)]
    Attach {
        /// The job's id.
        job: String,
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
    /// Cancel a job, and wait for its end. Only the session that submitted a job may cancel
    /// it (ARCP §7.4): the session `submit` kept in the state directory is taken up to do so;
    /// without one the gateway refuses a job of another session.
    Cancel {
        /// The job's id.
        job: String,
    },
}

fn parse_json(text: &str) -> Result<Json, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}
