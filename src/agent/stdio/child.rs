//! One stdio agent's child process: started in a process group of its own, read line by line
//! with a bound on the line, its stderr copied to `tracing`, and ended (the whole group with
//! it) however the job ends, including when the job's future is dropped.

use std::{io, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
    sync::OwnedSemaphorePermit,
};

use super::spec::StdioSpec;
use crate::{error::ArcpError, ids::JobId};

/// The longest line a child may write to stdout; a longer one ends its job.
pub const MAX_LINE_BYTES: usize = crate::agent::peer_json::MAX_FRAME_BYTES;
/// The longest stderr line copied to the log; the rest of the line is dropped.
const MAX_STDERR_LINE_BYTES: usize = 8 * 1024;
/// The stdout lines read, and ignored, after the job's end before the child is ended.
const MAX_LINES_AFTER_END: usize = 10_000;

/// How reading a line ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (without its `\n`) is in the buffer.
    Complete,
    /// The line exceeded the bound; the buffer holds its first bytes, and the rest is unread.
    TooLong,
    /// The stream ended with nothing more.
    Eof,
}

/// Reads one line of at most `max` bytes onto the end of `buf`, without buffering more than
/// `max` bytes of it whatever the peer writes. Cancel-safe: a call dropped mid-line leaves what
/// it read in `buf`, and the next call goes on with the same line, so the caller clears `buf`
/// only once it is done with a line.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Complete
            });
        }
        let (chunk, found) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], true),
            None => (available, false),
        };
        if buf.len() + chunk.len() > max {
            let take = max - buf.len();
            buf.extend_from_slice(&chunk[..take]);
            reader.consume(take);
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(found);
        reader.consume(used);
        if found {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Line::Complete);
        }
    }
}

/// Discards the rest of the current line.
async fn skip_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<()> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = available.len();
                reader.consume(n);
            }
        }
    }
}

/// A process group, killed (every process in it) when this is dropped.
struct ProcessGroup(Option<libc::pid_t>);

impl ProcessGroup {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: killpg has no memory-safety preconditions. The group is the child's own
            // (process_group(0) made its pid the group id), and the leader is reaped only
            // after this, so the id cannot have been reused by an unrelated group.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a child serves, as its log lines name it (the `serves` field).
#[derive(Clone, Debug)]
pub enum Owner {
    /// The one job it was started for.
    Job(JobId),
    /// The jobs of a long-lived child, numbered in its agent's pool.
    Shared(u64),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Job(job) => write!(f, "{job}"),
            Owner::Shared(n) => write!(f, "long-lived child {n}"),
        }
    }
}

/// A running child with its pipes. Dropping it ends the child: a `job.cancel` first if the
/// job had not ended, then, after the grace, `SIGKILL` to its whole process group.
pub struct ChildProcess(Parts);

/// What a child is made of; on drop they move to the task that ends it.
struct Parts {
    owner: Owner,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    // The group is declared before the child so that, should the fields drop without the
    // reaper (no runtime), the group dies before the leader is reaped by tokio.
    group: ProcessGroup,
    child: Option<Child>,
    grace: Duration,
    /// The frame to send on drop while the job is still running (its `job.cancel`).
    farewell: Option<String>,
    /// The agent's `max_children` slot, given back once the child is reaped.
    slot: Option<OwnedSemaphorePermit>,
}

impl ChildProcess {
    /// Starts `spec`'s command for `owner`, its stderr copied to the log.
    pub fn spawn(
        spec: &StdioSpec,
        owner: Owner,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<ChildProcess, ArcpError> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(&spec.env)
            .current_dir(&spec.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own: what the child starts is ended with it.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            ArcpError::Internal(format!(
                "cannot start the agent process {}: {e}",
                spec.program.display()
            ))
        })?;
        let group = ProcessGroup(child.id().and_then(|id| libc::pid_t::try_from(id).ok()));
        let missing = || ArcpError::Internal("the agent process has no pipes".into());
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(copy_stderr(stderr, owner.clone()));
        }
        tracing::debug!(target: "arcp_gateway::agent::stdio", serves = %owner, pid = child.id(), "agent process started");
        Ok(ChildProcess(Parts {
            owner,
            stdin: Some(stdin),
            stdout: Some(BufReader::new(stdout)),
            group,
            child: Some(child),
            grace: spec.cancel_grace,
            farewell: None,
            slot,
        }))
    }

    /// Writes `line` and its `\n` to the child's stdin.
    pub async fn send(&mut self, line: &str) -> Result<(), ArcpError> {
        let stdin = self
            .0
            .stdin
            .as_mut()
            .ok_or_else(|| ArcpError::Internal("the agent's stdin is closed".into()))?;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let written = async {
            stdin.write_all(&bytes).await?;
            stdin.flush().await
        };
        written.await.map_err(|e| {
            ArcpError::Internal(format!("the agent process stopped reading its stdin: {e}"))
        })
    }

    /// Reads the next stdout line (at most [`MAX_LINE_BYTES`]) onto the end of `buf`, as
    /// [`read_line`] does.
    pub async fn read_line(&mut self, buf: &mut Vec<u8>) -> Result<Line, ArcpError> {
        let stdout = self
            .0
            .stdout
            .as_mut()
            .ok_or_else(|| ArcpError::Internal("the agent's stdout is closed".into()))?;
        read_line(stdout, buf, MAX_LINE_BYTES)
            .await
            .map_err(|e| ArcpError::Internal(format!("cannot read the agent's stdout: {e}")))
    }

    /// Sets the frame sent when the child is dropped before the job ended; `None` once it
    /// ended.
    pub fn set_farewell(&mut self, frame: Option<String>) {
        self.0.farewell = frame;
    }

    /// How the child exited, waiting at most `within`; `None` if it is still running.
    pub async fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.0.child.as_mut()?;
        tokio::time::timeout(within, child.wait()).await.ok()?.ok()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let parts = Parts {
            owner: self.0.owner.clone(),
            stdin: self.0.stdin.take(),
            stdout: self.0.stdout.take(),
            group: ProcessGroup(self.0.group.0.take()),
            child: self.0.child.take(),
            grace: self.0.grace,
            farewell: self.0.farewell.take(),
            slot: self.0.slot.take(),
        };
        // Without a runtime (it is shutting down) the parts' own fields kill the group.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(parts.reap());
        }
    }
}

impl Parts {
    /// Ends the child in the background once its job no longer needs it.
    async fn reap(mut self) {
        let job = self.owner.clone();
        let cancelling = self.farewell.is_some();
        if let (Some(frame), Some(stdin)) = (self.farewell.take(), self.stdin.as_mut()) {
            let line = format!("{frame}\n");
            let _ = tokio::time::timeout(self.grace, stdin.write_all(line.as_bytes())).await;
            let _ = tokio::time::timeout(self.grace, stdin.flush()).await;
        }
        // Stdin closed: a well-behaved child takes end of input as the end of its session.
        drop(self.stdin.take());
        let mut ignored = 0usize;
        let exited = match self.child.as_mut() {
            Some(child) => {
                let stdout = self.stdout.as_mut();
                // Stdout is drained meanwhile so that a child writing after its end does not
                // block on a full pipe instead of exiting.
                let drain = async {
                    if let Some(stdout) = stdout {
                        let mut buf = Vec::new();
                        while ignored < MAX_LINES_AFTER_END {
                            buf.clear();
                            match read_line(stdout, &mut buf, MAX_LINE_BYTES).await {
                                Ok(Line::Complete) => ignored += 1,
                                Ok(Line::TooLong) => {
                                    ignored += 1;
                                    if skip_line(stdout).await.is_err() {
                                        break;
                                    }
                                }
                                Ok(Line::Eof) | Err(_) => break,
                            }
                        }
                    }
                    std::future::pending::<()>().await
                };
                tokio::time::timeout(self.grace, async {
                    tokio::select! {
                        status = child.wait() => status.ok(),
                        () = drain => None,
                    }
                })
                .await
                .ok()
                .flatten()
            }
            None => None,
        };
        // Whatever the child left behind in its group goes with it.
        self.group.kill();
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait().await;
        }
        drop(self.slot.take());
        if ignored > 0 {
            tracing::warn!(target: "arcp_gateway::agent::stdio", serves = %job, lines = ignored, "the agent process wrote after its job ended; ignored");
        }
        match exited {
            Some(status) => {
                tracing::debug!(target: "arcp_gateway::agent::stdio", serves = %job, %status, "agent process exited")
            }
            None if cancelling => {
                tracing::warn!(target: "arcp_gateway::agent::stdio", serves = %job, grace = ?self.grace, "the agent process did not end within its grace after job.cancel; killed its process group")
            }
            None => {
                tracing::warn!(target: "arcp_gateway::agent::stdio", serves = %job, grace = ?self.grace, "the agent process did not exit within its grace after its job ended; killed its process group")
            }
        }
    }
}

/// Copies the child's stderr to the log, a line per event, each at most
/// [`MAX_STDERR_LINE_BYTES`].
async fn copy_stderr(stderr: impl AsyncRead + Unpin, job: Owner) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let line = match read_line(&mut reader, &mut buf, MAX_STDERR_LINE_BYTES).await {
            Ok(Line::Eof) | Err(_) => return,
            Ok(line) => line,
        };
        let text = String::from_utf8_lossy(&buf);
        let truncated = line == Line::TooLong;
        tracing::info!(target: "arcp_gateway::agent::stdio", serves = %job, truncated, "agent stderr: {text}");
        if truncated && skip_line(&mut reader).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(reader: &mut BufReader<&[u8]>, max: usize) -> (Line, String) {
        let mut buf = Vec::new();
        let line = read_line(reader, &mut buf, max).await.unwrap();
        (line, String::from_utf8(buf).unwrap())
    }

    #[tokio::test]
    async fn reads_lines_within_their_bound() {
        let input: &[u8] = b"one\r\ntwo\n0123456789abcdef\nlast";
        let mut reader = BufReader::with_capacity(4, input);
        assert_eq!(next(&mut reader, 10).await, (Line::Complete, "one".into()));
        assert_eq!(next(&mut reader, 10).await, (Line::Complete, "two".into()));
        assert_eq!(
            next(&mut reader, 10).await,
            (Line::TooLong, "0123456789".into())
        );
        skip_line(&mut reader).await.unwrap();
        assert_eq!(next(&mut reader, 10).await, (Line::Complete, "last".into()));
        assert_eq!(next(&mut reader, 10).await, (Line::Eof, String::new()));
    }
}
