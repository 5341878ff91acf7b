//! One job relayed to a child: the gateway is the child's ARCP client. It opens a session
//! (`session.hello`, `session.welcome`), submits the job with its effective lease and trace
//! context, and maps each frame the child sends into the gateway's own job
//! ([`crate::agent::peer_job`]).
//!
//! Whatever the child does, the job ends with one clear outcome: output that is not ARCP, a
//! line over [`MAX_LINE_BYTES`], an exit before the terminal frame, each is an
//! `INTERNAL_ERROR` naming the cause. The relay stops reading at the terminal frame: what the
//! child writes after it is drained and ignored (and logged) while the child is ended.

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::{
    child::{ChildProcess, Line, MAX_LINE_BYTES},
    spec::StdioSpec,
};
use crate::{
    agent::{
        peer_job::{self, Step},
        peer_json::{self, RuntimeFrame, Submission},
        JobContext,
    },
    clock::Timestamp,
    error::ArcpError,
    protocol::Json,
};

/// The features offered to the child. `progress` is forwarded as is; `result_chunk`,
/// `heartbeat` and the rest are the gateway's to offer its own clients, not the child's.
const FEATURES: &[&str] = &["progress"];
/// How long an exited child's status is waited for, to name it in the error.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(1);
/// How the relay's errors name the child.
const PEER: &str = "the agent process";
/// The reason in the `job.cancel` a child gets when the gateway's job ends before its own.
const CANCEL_REASON: &str = "the job was cancelled or timed out at the gateway";

/// Runs the job of `ctx` on a new child of `spec`.
pub async fn run(
    spec: &StdioSpec,
    ctx: &JobContext,
    input: Json,
    slot: Option<OwnedSemaphorePermit>,
) -> Result<Json, ArcpError> {
    let mut child = ChildProcess::spawn(spec, ctx.job_id(), slot)?;
    // From here on a dropped job future cancels the child's job before killing it.
    child.set_farewell(Some(peer_json::cancel(None, CANCEL_REASON)));
    let mut relay = Relay {
        child,
        buf: Vec::new(),
    };
    let outcome = tokio::select! {
        outcome = relay.job(spec, ctx, input) => outcome,
        () = ctx.cancelled() => Err(ArcpError::Cancelled("the job was cancelled".into())),
    };
    outcome
}

struct Relay {
    child: ChildProcess,
    buf: Vec<u8>,
}

impl Relay {
    async fn job(
        &mut self,
        spec: &StdioSpec,
        ctx: &JobContext,
        input: Json,
    ) -> Result<Json, ArcpError> {
        let hello = peer_json::hello(
            "arcp-gateway",
            env!("CARGO_PKG_VERSION"),
            &spec.token,
            FEATURES,
            None,
        );
        self.send(&hello).await?;
        tokio::time::timeout(spec.welcome_timeout, self.welcome())
            .await
            .map_err(|_| {
                ArcpError::Internal(format!(
                    "the agent process did not answer session.hello within {:?}",
                    spec.welcome_timeout
                ))
            })??;
        let lease = ctx.lease().to_wire();
        let submit = peer_json::submit(&Submission {
            agent: &spec.agent,
            input: &input,
            lease: &lease,
            expires_at: ctx.lease().expires_at().map(Timestamp),
            trace_id: ctx.trace_id(),
            idempotency_key: None,
        });
        drop(input);
        self.send(&submit).await?;
        loop {
            match peer_job::apply(ctx, PEER, self.next().await?).await? {
                Step::Continue => {}
                Step::Accepted(job_id) => {
                    self.child
                        .set_farewell(Some(peer_json::cancel(Some(&job_id), CANCEL_REASON)));
                }
                Step::Ended(outcome) => {
                    // The child's job is over: it needs no job.cancel, only the end of stdin.
                    self.child.set_farewell(None);
                    return outcome;
                }
                Step::Refused(e) => return Err(e),
            }
        }
    }

    async fn welcome(&mut self) -> Result<(), ArcpError> {
        while peer_job::welcome(PEER, self.next().await?)?.is_none() {}
        Ok(())
    }

    async fn send(&mut self, line: &str) -> Result<(), ArcpError> {
        match self.child.send(line).await {
            Ok(()) => Ok(()),
            // A child that stopped reading has most likely exited: say how.
            Err(e) => Err(match self.child.exit_status(EXIT_STATUS_WAIT).await {
                Some(status) => self.exited(status),
                None => e,
            }),
        }
    }

    /// The next frame; every line that is not one ends the job.
    async fn next(&mut self) -> Result<RuntimeFrame, ArcpError> {
        loop {
            match self.child.read_line(&mut self.buf).await? {
                Line::Complete => {}
                Line::TooLong => {
                    return Err(ArcpError::Internal(format!(
                        "the agent process wrote a line longer than {MAX_LINE_BYTES} bytes"
                    )))
                }
                Line::Eof => {
                    return Err(match self.child.exit_status(EXIT_STATUS_WAIT).await {
                        Some(status) => self.exited(status),
                        None => ArcpError::Internal(
                            "the agent process closed its stdout before its job ended".into(),
                        ),
                    })
                }
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = std::str::from_utf8(&self.buf).map_err(|_| {
                ArcpError::Internal("the agent process wrote a line that is not UTF-8".into())
            })?;
            return peer_json::decode(text).map_err(|e| {
                ArcpError::Internal(format!(
                    "the agent process wrote something that is not ARCP: {}",
                    e.message()
                ))
            });
        }
    }

    fn exited(&self, status: std::process::ExitStatus) -> ArcpError {
        let how = if status.success() {
            "exited".to_owned()
        } else {
            format!("crashed ({status})")
        };
        ArcpError::Internal(format!(
            "the agent process {how} before the end of its job (no job.result or job.error)"
        ))
    }
}
