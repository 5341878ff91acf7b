//! The `arcp-gateway` binary as a real process on ephemeral ports: started with a clean
//! environment, its output captured, stopped with SIGTERM or killed.

use std::{net::SocketAddr, process::Stdio, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::mpsc,
    task::JoinHandle,
};
use tonic::transport::Channel;

use super::Endpoint;

/// A guard against hangs, not a timing assertion: startup, frames and shutdown are all due in
/// well under a second, but CI machines can be slow.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// The bearer token a started gateway accepts, as principal `alice`.
pub const GATEWAY_TOKEN: &str = "alice-token";

/// The binary with a clean environment: no `ARCP_*` settings inherited from the caller, and no
/// colour codes in its log.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arcp-gateway"));
    cmd.args(args);
    clean(&mut cmd);
    cmd
}

/// [`command`] with at most `nofile` open descriptors (`RLIMIT_NOFILE`). The shell sets the
/// limit and `exec`s the binary, so the child's pid is the gateway's.
pub fn command_with_nofile(nofile: u32, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(r#"ulimit -n {nofile} && exec "$0" "$@""#))
        .arg(env!("CARGO_BIN_EXE_arcp-gateway"))
        .args(args);
    clean(&mut cmd);
    cmd
}

fn clean(cmd: &mut Command) {
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (var, _) in std::env::vars().filter(|(var, _)| var.starts_with("ARCP_")) {
        cmd.env_remove(var);
    }
}

/// A running gateway process and everything it has written so far.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub ws_addr: SocketAddr,
    pub output: Arc<parking_lot::Mutex<String>>,
    /// The output as written, colour codes and all.
    pub raw_output: Arc<parking_lot::Mutex<String>>,
    pub readers: Vec<JoinHandle<()>>,
}

impl GatewayProcess {
    /// Starts `serve --listen 127.0.0.1:0 --auth-token alice-token=alice` with `RUST_LOG` set to
    /// `rust_log`, and waits for it to log its address.
    pub async fn start(rust_log: &str) -> GatewayProcess {
        Self::start_with(rust_log, None, &[]).await
    }

    /// [`GatewayProcess::start`] with `extra` flags, and at most `nofile` open descriptors if given;
    /// waits for both listening addresses.
    pub async fn start_with(rust_log: &str, nofile: Option<u32>, extra: &[&str]) -> GatewayProcess {
        Self::start_with_env(rust_log, nofile, extra, &[]).await
    }

    /// [`GatewayProcess::start_with`] with `env` set for the process.
    pub async fn start_with_env(
        rust_log: &str,
        nofile: Option<u32>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let token = format!("{GATEWAY_TOKEN}=alice");
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ws-listen",
            "127.0.0.1:0",
            "--auth-token",
            &token,
        ];
        args.extend_from_slice(extra);
        let mut cmd = match nofile {
            Some(nofile) => command_with_nofile(nofile, &args),
            None => command(&args),
        };
        cmd.env("RUST_LOG", rust_log);
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("spawn arcp-gateway");
        let output = Arc::new(parking_lot::Mutex::new(String::new()));
        let raw_output = Arc::new(parking_lot::Mutex::new(String::new()));
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let buffers = Buffers {
            output: output.clone(),
            raw: raw_output.clone(),
        };
        let readers = vec![
            capture(
                child.stdout.take().unwrap(),
                buffers.clone(),
                lines_tx.clone(),
            ),
            capture(child.stderr.take().unwrap(), buffers, lines_tx),
        ];
        let addrs = tokio::time::timeout(PROCESS_TIMEOUT, async {
            let (mut addr, mut ws_addr) = (None, None);
            while let Some(line) = lines.recv().await {
                addr = addr.or_else(|| listening_addr(&line, "addr="));
                ws_addr = ws_addr.or_else(|| listening_addr(&line, "ws_addr="));
                if let (Some(addr), Some(ws_addr)) = (addr, ws_addr) {
                    return Some((addr, ws_addr));
                }
            }
            None // Both pipes closed: the process exited.
        })
        .await;
        let (addr, ws_addr) = match addrs {
            Ok(Some(addrs)) => addrs,
            Ok(None) => panic!(
                "arcp-gateway exited ({:?}) before logging its addresses; output:\n{}",
                child.try_wait(),
                output.lock()
            ),
            Err(_) => panic!(
                "arcp-gateway did not log `arcp-gateway listening ... addr=` and `ws_addr=` \
                 within {PROCESS_TIMEOUT:?}; output:\n{}",
                output.lock()
            ),
        };
        GatewayProcess {
            child,
            addr,
            ws_addr,
            output,
            raw_output,
            readers,
        }
    }

    /// Where it serves.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.addr,
            ws_addr: self.ws_addr,
        }
    }

    /// How many lines of the output so far contain `text`.
    pub fn lines_containing(&self, text: &str) -> usize {
        self.output
            .lock()
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }

    /// How many lines of the output so far contain every one of `texts`.
    pub fn lines_containing_all(&self, texts: &[&str]) -> usize {
        self.output
            .lock()
            .lines()
            .filter(|l| texts.iter().all(|t| l.contains(t)))
            .count()
    }

    /// Polls the output until a line contains every one of `texts`. A guard against hangs
    /// bounded by [`PROCESS_TIMEOUT`], not a timing assertion.
    pub async fn wait_for_line(&self, texts: &[&str]) {
        let deadline = tokio::time::Instant::now() + PROCESS_TIMEOUT;
        while !self
            .output
            .lock()
            .lines()
            .any(|l| texts.iter().all(|t| l.contains(t)))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line with {texts:?} within {PROCESS_TIMEOUT:?}; output:\n{}",
                self.output.lock()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for a line containing `message` and `key` (`metrics_addr=`, say) and returns the
    /// address after `key` in it: where a listener the process started last says it listens.
    pub async fn logged_addr(&self, message: &str, key: &str) -> SocketAddr {
        self.wait_for_line(&[message, key]).await;
        let output = self.output.lock();
        output
            .lines()
            .filter(|l| l.contains(message))
            .find_map(|l| addr_after(l, key))
            .unwrap_or_else(|| panic!("no {key}ADDR in the {message:?} line; output:\n{output}"))
    }

    /// The CPU time the process has used so far, user and system, all threads.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.id().expect("the process is still running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
        // Fields after the command name, which is in parentheses: state is the first, utime
        // and stime the 12th and 13th (proc(5)).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("a stat line")
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        let per_sec: u64 = String::from_utf8(
            std::process::Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .expect("getconf CLK_TCK")
                .stdout,
        )
        .expect("ascii")
        .trim()
        .parse()
        .expect("a tick rate");
        Duration::from_secs_f64(ticks as f64 / per_sec as f64)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to arcp-gateway")
    }

    /// Sends `signal` (`"TERM"`, `"KILL"`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process is still running");
        let kill = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -{signal} {pid} failed: {kill}");
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status and its complete
    /// output.
    pub async fn terminate(self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        self.exited().await
    }

    /// Waits for the process to exit (after a signal the test sent, say); returns its exit
    /// status and its complete output.
    pub async fn exited(mut self) -> (std::process::ExitStatus, String) {
        let status = match tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.expect("wait for arcp-gateway"),
            Err(_) => panic!(
                "arcp-gateway did not exit within {PROCESS_TIMEOUT:?}; output:\n{}",
                self.output.lock()
            ),
        };
        for reader in self.readers.drain(..) {
            tokio::time::timeout(PROCESS_TIMEOUT, reader)
                .await
                .expect("output pipes close after exit")
                .expect("output reader");
        }
        let output = self.output.lock().clone();
        (status, output)
    }
}

/// Where [`capture`] copies a process's output: as written, and with colour codes removed.
#[derive(Clone)]
struct Buffers {
    output: Arc<parking_lot::Mutex<String>>,
    raw: Arc<parking_lot::Mutex<String>>,
}

/// Copies `pipe` line by line into `buffers`, and colour codes removed into `lines`.
fn capture(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    buffers: Buffers,
    lines: mpsc::UnboundedSender<String>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe).lines();
        while let Ok(Some(raw)) = reader.next_line().await {
            let line = strip_ansi(&raw);
            {
                let mut output = buffers.output.lock();
                output.push_str(&line);
                output.push('\n');
                let mut output = buffers.raw.lock();
                output.push_str(&raw);
                output.push('\n');
            }
            let _ = lines.send(line);
        }
    })
}

/// `line` without ANSI escape sequences (`ESC [ ... final-byte`), should colour slip through.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address after `key` (`addr=` or `ws_addr=`) in a startup line
/// `... arcp-gateway listening ... addr=127.0.0.1:PORT`, or in its field (`addr`, `ws_addr`)
/// when the line is JSON (`--log-format json`).
fn listening_addr(line: &str, key: &str) -> Option<SocketAddr> {
    if !line.contains("arcp-gateway listening") {
        return None;
    }
    addr_after(line, key)
}

/// The address after `key` in `line`: in a word of it that starts with `key`, or in its field
/// (`addr`, `ws_addr`) when the line is JSON (`--log-format json`).
fn addr_after(line: &str, key: &str) -> Option<SocketAddr> {
    let addr = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(json) => json.get(key.trim_end_matches('='))?.as_str()?.to_owned(),
        Err(_) => line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))?
            .to_owned(),
    };
    Some(
        addr.parse()
            .unwrap_or_else(|e| panic!("bad {key} in {line:?}: {e}")),
    )
}
