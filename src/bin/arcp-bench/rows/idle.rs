//! Row 5: resident memory per idle session, measured on a gateway in a child process.

use std::time::Duration;

use crate::{
    child::{ChildConfig, ChildGateway},
    client::{connections, Session, STREAMS_PER_CONNECTION},
    BenchResult,
};

/// Row 5: opens `count` idle sessions on a gateway in a child process; KiB of resident memory
/// per session.
pub(crate) async fn idle_sessions(count: usize) -> BenchResult<f64> {
    let child = ChildGateway::start(ChildConfig::Bench).await?;
    let channels = connections(child.grpc, count).await?;
    // One warm-up session so allocator arenas and the runtime are in place before measuring.
    let warm = Session::open(channels[0].clone(), None).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = child.resident_kib()?;
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
    let after = child.resident_kib()?;
    drop((held, warm));
    Ok((after - before) / count as f64)
}
