//! Row 5: resident memory per idle session, measured on a gateway in a child process, over gRPC
//! (row 5) or WebSocket, a connection each (row 5 ws).

use std::{future::Future, time::Duration};

use crate::{
    child::{ChildConfig, ChildGateway},
    client::{connections, Session, STREAMS_PER_CONNECTION},
    ws::WsSession,
    BenchResult,
};

/// Row 5: opens `count` idle sessions on a gateway in a child process; KiB of resident memory
/// per session.
pub(crate) async fn idle_sessions(count: usize) -> BenchResult<f64> {
    let child = ChildGateway::start(ChildConfig::Bench).await?;
    let channels = connections(child.grpc, count).await?;
    per_session_kib(&child, count, |i| {
        let channel = channels[i / STREAMS_PER_CONNECTION].clone();
        async move { Session::open(channel, None).await }
    })
    .await
}

/// Row 5 over WebSocket: `count` idle sessions, each on its own connection, as WebSocket
/// clients hold them; KiB of resident memory per session.
pub(crate) async fn idle_ws_sessions(count: usize) -> BenchResult<f64> {
    let child = ChildGateway::start(ChildConfig::Bench).await?;
    let addr = child.websocket;
    per_session_kib(&child, count, |_| WsSession::open(addr, None)).await
}

/// Opens one warm-up session, so that allocator arenas and the runtime are in place before
/// measuring, then `count` sessions with `open` (given each one's index), 500 at a time, and
/// holds them while the child's resident memory is read; KiB per session.
async fn per_session_kib<T, F>(
    child: &ChildGateway,
    count: usize,
    open: impl Fn(usize) -> F,
) -> BenchResult<f64>
where
    T: Send + 'static,
    F: Future<Output = BenchResult<T>> + Send + 'static,
{
    let warm = open(0).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = child.resident_kib()?;
    let mut held = Vec::with_capacity(count);
    let mut opening = Vec::new();
    for i in 0..count {
        opening.push(tokio::spawn(open(i)));
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
