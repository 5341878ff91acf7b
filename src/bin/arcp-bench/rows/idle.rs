//! Row 5: resident memory per idle session. The gateway runs in a child process (this binary
//! with `--child-gateway`) so that the VmRSS it grows by counts the gateway's sessions alone,
//! not the clients holding them open.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use arcp_gateway::server;
use tokio::io::AsyncBufReadExt;

use crate::{
    client::{bench_gateway, connections, Session, STREAMS_PER_CONNECTION},
    BenchResult,
};

/// Serves the bench gateway and prints `ADDR <addr>`; the parent measures this process.
pub(crate) async fn child_gateway() -> BenchResult<()> {
    let listener = server::bind("127.0.0.1:0".parse()?).await?;
    println!("ADDR {}", listener.local_addr()?);
    server::serve(bench_gateway(), listener, std::future::pending()).await?;
    Ok(())
}

fn resident_kib(pid: u32) -> BenchResult<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/PID/status")?;
    let kib: f64 = line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?;
    Ok(kib)
}

/// Row 5: opens `count` idle sessions on a gateway in a child process; KiB of resident memory
/// per session.
pub(crate) async fn idle_sessions(count: usize) -> BenchResult<f64> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--child-gateway")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("child exited")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let addr: SocketAddr = loop {
        let line = lines.next_line().await?.ok_or("child gateway exited")?;
        if let Some(addr) = line.strip_prefix("ADDR ") {
            break addr.parse()?;
        }
    };
    let channels = connections(addr, count).await?;
    // One warm-up session so allocator arenas and the runtime are in place before measuring.
    let warm = Session::open(channels[0].clone(), None).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = resident_kib(pid)?;
    let mut held = Vec::with_capacity(count);
    let mut opening = Vec::new();
    for i in 0..count {
        let channel = channels[i / STREAMS_PER_CONNECTION].clone();
        opening.push(tokio::spawn(
            async move { Session::open(channel, None).await },
        ));
        if opening.len() == 500 {
            for o in opening.drain(..) {
                held.push(o.await??);
            }
        }
    }
    for o in opening {
        held.push(o.await??);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resident_kib(pid)?;
    drop((held, warm));
    child.kill().await?;
    Ok((after - before) / count as f64)
}
