//! Row 7: the reference Python ARCP runtime and its client doing row 1's workload, both in one
//! Python process (`bench/python_peer.py`), as a yardstick for row 1. Row 9: the same runtime
//! serving alone (`bench/python_runtime.py`), for the bench's own WebSocket client, the one row
//! 1 ws uses against the gateway. The interpreter is `--python` or a virtualenv built once in
//! target/bench-venv.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::{
    io::AsyncBufReadExt,
    process::{Child, Command},
};

use crate::BenchResult;

pub(crate) fn python(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(python) = explicit {
        return Ok(python);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/bench-venv");
    let python = venv.join("bin/python");
    if python.exists() {
        return Ok(python);
    }
    let ok = |cmd: &mut std::process::Command| cmd.status().map(|s| s.success()).unwrap_or(false);
    if !ok(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv))
    {
        return Err("python3 -m venv failed (is python3 installed?)".into());
    }
    if !ok(std::process::Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(root.join("tests/interop/requirements.txt")))
    {
        return Err("pip could not install tests/interop/requirements.txt".into());
    }
    Ok(python)
}

pub(crate) async fn python_peer(python: &Path, count: u64, bytes: u64) -> BenchResult<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/python_peer.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args(["--count", &count.to_string(), "--bytes", &bytes.to_string()])
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!(
            "python_peer.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or_default())?;
    let frames = result["frames"].as_f64().ok_or("no frames")?;
    let seconds = result["seconds"].as_f64().ok_or("no seconds")?;
    Ok(frames / seconds)
}

/// The reference Python runtime serving WebSocket in a child process; killed when dropped.
pub(crate) struct PythonRuntime {
    child: Child,
    /// Where it serves `/arcp`.
    pub(crate) addr: SocketAddr,
}

impl PythonRuntime {
    /// Starts `bench/python_runtime.py` and waits until it listens.
    pub(crate) async fn start(python: &Path) -> BenchResult<PythonRuntime> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/python_runtime.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let port: u16 = loop {
            let line = lines
                .next_line()
                .await?
                .ok_or("python_runtime.py exited before it listened")?;
            if let Some(port) = line.strip_prefix("PORT ") {
                break port.trim().parse()?;
            }
        };
        Ok(PythonRuntime {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// Stops it and waits until it is gone, so that it takes no CPU from the rows after it.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
