//! Row 10: the hop to an agent in another language. A stdio child (`bench/stdio_chatter.py`)
//! emits row 1's workload as fast as it can: through the gateway, as a stdio agent, to a tonic
//! client; and alone, its stdout read by the bench directly, which is the ceiling.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use arcp_gateway::agent::{
    agents_file::{DEFAULT_CANCEL_GRACE, DEFAULT_WELCOME_TIMEOUT},
    stdio::{StdioAgent, StdioSpec},
    Agent,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::Command,
};

use crate::{
    client::{receive, Bench, Session},
    BenchResult,
};

/// The name the gateway offers the child under.
pub(crate) const AGENT: &str = "stdio-chatter";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/stdio_chatter.py")
}

/// The child as the gateway's stdio agent, run by `python`.
pub(crate) fn stdio_chatter(python: &Path) -> Arc<dyn Agent> {
    let spec = StdioSpec {
        program: python.to_owned(),
        args: vec![script().display().to_string()],
        env: Default::default(),
        cwd: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        max_children: None,
        agent: "chatter".into(),
        token: String::new(),
        cancel_grace: DEFAULT_CANCEL_GRACE,
        welcome_timeout: DEFAULT_WELCOME_TIMEOUT,
        long_lived: None,
    };
    Arc::new(StdioAgent::new(Arc::new(spec)))
}

impl Bench {
    /// Row 10 through the gateway: the child's events at a tonic client, frames/s from the
    /// first event to the result.
    pub(crate) async fn stdio_hop(&self, count: u64, bytes: u64) -> BenchResult<f64> {
        let (mut session, _) = Session::open(self.channel.clone(), None).await?;
        session.start_job(AGENT, count, bytes).await?;
        let received = receive(&mut session.rx, &session.tx).await?;
        if received.frames < count + 1 {
            return Err(format!("got {} frames of {}", received.frames, count + 1).into());
        }
        Ok(received.frames as f64 / received.seconds)
    }
}

/// Row 10's ceiling: the child alone, the bench saying hello and submitting on its stdin and
/// counting the lines of its stdout from the first event to the result; lines/s.
pub(crate) async fn stdio_ceiling(python: &Path, count: u64, bytes: u64) -> BenchResult<f64> {
    let mut child = Command::new(python)
        .arg(script())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = BufReader::with_capacity(64 * 1024, child.stdout.take().ok_or("no stdout")?);
    let hello = r#"{"arcp":"1.1","id":"01890000-0000-7000-8000-000000000001","type":"session.hello","payload":{}}"#;
    let submit = format!(
        r#"{{"arcp":"1.1","id":"01890000-0000-7000-8000-000000000002","type":"job.submit","payload":{{"agent":"chatter","input":{{"count":{count},"bytes":{bytes}}}}}}}"#
    );
    stdin
        .write_all(format!("{hello}\n{submit}\n").as_bytes())
        .await?;
    stdin.flush().await?;
    let mut line = Vec::with_capacity(1024);
    let (mut start, mut events) = (None, 0u64);
    loop {
        line.clear();
        if stdout.read_until(b'\n', &mut line).await? == 0 {
            return Err("the child ended before its result".into());
        }
        if line.windows(12).any(|w| w == b"\"job.result\"") {
            break;
        }
        if line.windows(11).any(|w| w == b"\"job.event\"") {
            start.get_or_insert_with(Instant::now);
            events += 1;
        }
    }
    let seconds = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    // The result line too, as the gateway's row counts it.
    Ok((events + 1) as f64 / seconds)
}
