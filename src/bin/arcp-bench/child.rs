//! A gateway in a child process (this binary with `--child-gateway`), so that the memory it
//! grows by counts the gateway alone, not the clients the bench runs against it (rows 5 and 8).

use std::{net::SocketAddr, process::Stdio, sync::Arc};

use arcp_gateway::{server, Gateway};
use tokio::{
    io::AsyncBufReadExt,
    process::{Child, Command},
};

use crate::{client::bench_gateway, rows::soak::soak_gateway, BenchResult};

/// Which gateway the child serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ChildConfig {
    /// The bench gateway of the in-process rows, on gRPC and WebSocket (row 5).
    Bench,
    /// The production defaults, on gRPC and WebSocket (row 8).
    Soak,
}

/// Serves the gateway `config` names and prints `ADDR <grpc> <websocket>`; the parent measures
/// this process.
pub(crate) async fn serve_child(config: ChildConfig) -> BenchResult<()> {
    let grpc = server::bind("127.0.0.1:0".parse()?).await?;
    let websocket = server::bind("127.0.0.1:0".parse()?).await?;
    println!("ADDR {} {}", grpc.local_addr()?, websocket.local_addr()?);
    let gateway: Arc<Gateway> = match config {
        ChildConfig::Bench => bench_gateway(),
        ChildConfig::Soak => soak_gateway(),
    };
    server::serve_all(gateway, grpc, websocket, std::future::pending()).await?;
    Ok(())
}

/// A running child gateway; killed when dropped.
pub(crate) struct ChildGateway {
    _child: Child,
    pid: u32,
    /// Its gRPC address.
    pub(crate) grpc: SocketAddr,
    /// Its WebSocket address.
    pub(crate) websocket: SocketAddr,
}

impl ChildGateway {
    /// Starts a child serving `config` and waits for its addresses.
    pub(crate) async fn start(config: ChildConfig) -> BenchResult<ChildGateway> {
        let name = match config {
            ChildConfig::Bench => "bench",
            ChildConfig::Soak => "soak",
        };
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--child-gateway", name])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("child exited")?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let (grpc, websocket) = loop {
            let line = lines.next_line().await?.ok_or("child gateway exited")?;
            if let Some(addrs) = line.strip_prefix("ADDR ") {
                let (grpc, websocket) = addrs.split_once(' ').ok_or("bad ADDR line")?;
                break (grpc.parse()?, websocket.parse()?);
            }
        };
        Ok(ChildGateway {
            _child: child,
            pid,
            grpc,
            websocket,
        })
    }

    /// Its resident memory now (VmRSS), KiB.
    pub(crate) fn resident_kib(&self) -> BenchResult<f64> {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory it ever had (VmHWM), KiB.
    pub(crate) fn peak_kib(&self) -> BenchResult<f64> {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> BenchResult<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .ok_or_else(|| format!("no {field} in /proc/PID/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| format!("bad {field}"))?
            .parse()?;
        Ok(kib)
    }
}
