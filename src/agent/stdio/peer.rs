//! A child as an ARCP peer: frames out as lines on its stdin, lines of its stdout in as
//! frames, its session opened with `session.hello`, and what an exit or a line that is not
//! ARCP means (an `INTERNAL_ERROR` naming it).

use std::time::Duration;

use super::{
    child::{ChildProcess, Line, MAX_LINE_BYTES},
    spec::StdioSpec,
};
use crate::{
    agent::{
        peer_job,
        peer_json::{self, Decoded},
    },
    error::ArcpError,
};

/// How the errors name the child.
pub const PEER: &str = "the agent process";
/// The features offered to the child. `progress` is forwarded as is; `result_chunk`,
/// `heartbeat` and the rest are the gateway's to offer its own clients, not the child's.
const FEATURES: &[&str] = &["progress"];
/// How long an exited child's status is waited for, to name it in the error.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(1);

/// A child and the buffer its lines are read into.
pub struct Peer {
    /// The process.
    pub child: ChildProcess,
    buf: Vec<u8>,
}

impl Peer {
    /// The peer on `child`, its session not yet opened.
    pub fn new(child: ChildProcess) -> Peer {
        Peer {
            child,
            buf: Vec::new(),
        }
    }

    /// Opens the child's session: `session.hello` with `spec`'s token, then its welcome
    /// within `spec`'s welcome timeout.
    pub async fn open(&mut self, spec: &StdioSpec) -> Result<(), ArcpError> {
        let hello = peer_json::hello(
            "arcp-gateway",
            env!("CARGO_PKG_VERSION"),
            &spec.token,
            FEATURES,
            None,
        );
        self.send(&hello).await?;
        let welcome = async {
            while peer_job::welcome(PEER, self.next().await?.frame)?.is_none() {}
            Ok::<_, ArcpError>(())
        };
        tokio::time::timeout(spec.welcome_timeout, welcome)
            .await
            .map_err(|_| {
                ArcpError::Internal(format!(
                    "{PEER} did not answer session.hello within {:?}",
                    spec.welcome_timeout
                ))
            })?
    }

    /// Writes one frame.
    pub async fn send(&mut self, line: &str) -> Result<(), ArcpError> {
        match self.child.send(line).await {
            Ok(()) => Ok(()),
            // A child that stopped reading has most likely exited: say how.
            Err(e) => Err(match self.child.exit_status(EXIT_STATUS_WAIT).await {
                Some(status) => exited(status),
                None => e,
            }),
        }
    }

    /// The next frame; every line that is not one is an error. Cancel-safe: a call dropped
    /// mid-line keeps what it read for the next.
    pub async fn next(&mut self) -> Result<Decoded, ArcpError> {
        loop {
            match self.child.read_line(&mut self.buf).await? {
                Line::Complete => {}
                Line::TooLong => {
                    return Err(ArcpError::Internal(format!(
                        "{PEER} wrote a line longer than {MAX_LINE_BYTES} bytes"
                    )))
                }
                Line::Eof => {
                    return Err(match self.child.exit_status(EXIT_STATUS_WAIT).await {
                        Some(status) => exited(status),
                        None => ArcpError::Internal(format!(
                            "{PEER} closed its stdout before its job ended"
                        )),
                    })
                }
            }
            let decoded = if self.buf.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                let text = std::str::from_utf8(&self.buf).map_err(|_| {
                    ArcpError::Internal(format!("{PEER} wrote a line that is not UTF-8"))
                })?;
                Some(peer_json::decode_with_seq(text).map_err(|e| {
                    ArcpError::Internal(format!(
                        "{PEER} wrote something that is not ARCP: {}",
                        e.message()
                    ))
                })?)
            };
            self.buf.clear();
            if let Some(decoded) = decoded {
                return Ok(decoded);
            }
        }
    }
}

fn exited(status: std::process::ExitStatus) -> ArcpError {
    let how = if status.success() {
        "exited".to_owned()
    } else {
        format!("crashed ({status})")
    };
    ArcpError::Internal(format!(
        "{PEER} {how} before the end of its job (no job.result or job.error)"
    ))
}
