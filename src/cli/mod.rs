//! `arcp-gateway client`: a command-line client of a gateway, on [`crate::client::Client`], so
//! that it resumes a dropped stream as the library does, and sees every event once.
//!
//! `submit` follows the job it submits with a progress bar (fed by `progress` events, log
//! lines printed above it) when stdout is a terminal, plain lines when not, and one JSON object
//! a line with `--json`; `tail` follows a job submitted elsewhere; `jobs` lists. `submit`
//! keeps its session's resume point until the job ends, so that `attach` (follow it again)
//! and `cancel` can take up the session that submitted the job, which alone may cancel it. The
//! exit code says how the job ended ([`exit::EXIT_CODES`]).
//!
//! - `args`: the flags and subcommands;
//! - `commands`: the subcommands, each a session;
//! - `follow`: one job followed to its end, resumes reported;
//! - `shown`: what is shown of a job's frames, as text and as JSON;
//! - `output`: where it goes (the bar, plain lines or JSON lines), with `bar` the bar and
//!   `line` the line written to stdout;
//! - `saved`: the sessions kept for `attach` and `cancel`, one file per job;
//! - `exit`: the exit codes.

mod args;
mod bar;
mod commands;
pub mod exit;
mod follow;
mod line;
mod output;
mod saved;
mod shown;

use std::process::ExitCode;

pub use self::args::{ClientArgs, ClientCommand};
use self::{output::Output, saved::Saved};
use crate::client::ClientConfig;

/// Runs `arcp-gateway client` as `args` say; the process's exit code.
pub async fn run(args: ClientArgs) -> ExitCode {
    let Some(token) = args.token.filter(|t| !t.is_empty()) else {
        eprintln!("arcp-gateway client: a bearer token is needed: --token TOKEN, or ARCP_TOKEN");
        return ExitCode::from(2);
    };
    let config = ClientConfig::new(args.endpoint, token);
    let output = || Output::choose(args.json);
    let saved = Saved::under(args.state_dir.as_deref());
    let done = match &args.command {
        ClientCommand::Submit {
            agent,
            input,
            detach,
        } => match commands::connect(config).await {
            Ok(client) => commands::submit(client, agent, input, *detach, saved, output()).await,
            Err(failure) => Err(failure),
        },
        ClientCommand::Jobs => match commands::connect(config).await {
            Ok(client) => commands::jobs(client, args.json).await,
            Err(failure) => Err(failure),
        },
        ClientCommand::Tail { job } => match commands::connect(config).await {
            Ok(client) => commands::tail(client, job, output()).await,
            Err(failure) => Err(failure),
        },
        ClientCommand::Attach { job } => commands::attach(config, job, saved, output()).await,
        ClientCommand::Cancel { job } => commands::cancel(config, job, saved, args.json).await,
    };
    match done {
        Ok(exit) => exit.into(),
        Err((exit, error)) => {
            eprintln!(
                "arcp-gateway client: {}: {}",
                error.code().as_str(),
                error.message()
            );
            ExitCode::from(exit)
        }
    }
}
