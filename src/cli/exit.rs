//! The exit codes of `arcp-gateway client`: one per way a job can end, so that a script can tell
//! a failed job from a cancelled or timed-out one, and one for a gateway that could not be
//! reached or refused the token, which no retry of the same command fixes by itself.

use std::process::ExitCode;

use crate::error::{ArcpError, ErrorCode};

/// How a client command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The job succeeded, or the command did what it was asked.
    Success,
    /// The command failed otherwise: a refused request, bad input, a session that ended early.
    Failed,
    /// The job ended with `final_status` `error`.
    JobFailed,
    /// The job was cancelled.
    Cancelled,
    /// The job ran out of time (`timed_out`).
    TimedOut,
    /// The gateway could not be reached, or did not accept the token.
    Unreachable,
}

/// The exit codes, as `--help` and the README list them.
pub const EXIT_CODES: &str = "Exit codes: 0 the job succeeded (or the command did what it was \
asked), 1 the command failed otherwise, 2 bad usage, 3 the job failed (final_status error), \
4 the job was cancelled, 5 the job timed out, 6 the gateway could not be reached or refused the \
token.";

impl Exit {
    /// The code the process exits with.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::JobFailed => 3,
            Exit::Cancelled => 4,
            Exit::TimedOut => 5,
            Exit::Unreachable => 6,
        }
    }

    /// How a job whose `final_status` is `status` ended; an unknown status is a failure.
    pub fn of_final_status(status: &str) -> Exit {
        match status {
            "success" => Exit::Success,
            "cancelled" => Exit::Cancelled,
            "timed_out" => Exit::TimedOut,
            _ => Exit::JobFailed,
        }
    }

    /// How a command that failed with `error` ends: a gateway that could not be reached or did
    /// not take the token is [`Exit::Unreachable`], anything else [`Exit::Failed`].
    pub fn of_error(error: &ArcpError) -> Exit {
        match error.code() {
            ErrorCode::Unauthenticated => Exit::Unreachable,
            _ => Exit::Failed,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_its_own_code_and_none_is_clap_s_usage_code() {
        let all = [
            Exit::Success,
            Exit::Failed,
            Exit::JobFailed,
            Exit::Cancelled,
            Exit::TimedOut,
            Exit::Unreachable,
        ];
        let codes: std::collections::BTreeSet<u8> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(!codes.contains(&2));
        for exit in all {
            assert!(
                EXIT_CODES.contains(&format!("{} ", exit.code())),
                "{exit:?}"
            );
        }
    }

    #[test]
    fn final_statuses_map_to_their_codes() {
        assert_eq!(Exit::of_final_status("success"), Exit::Success);
        assert_eq!(Exit::of_final_status("error"), Exit::JobFailed);
        assert_eq!(Exit::of_final_status("cancelled"), Exit::Cancelled);
        assert_eq!(Exit::of_final_status("timed_out"), Exit::TimedOut);
    }
}
