//! Row 1: live throughput of one session: a `chatter` job's log events through the gateway to
//! a tonic client, timed from the first event to the result; and the same over WebSocket, to
//! the bench's WebSocket client, from the gateway (row 1 ws) or the Python runtime (row 9).

use arcp_gateway::proto::ServerFrame;

use std::net::SocketAddr;

use crate::{
    client::{receive, Bench, Received, Session},
    ws::WsSession,
    BenchResult,
};

pub(crate) struct Live {
    pub(crate) frames_per_sec: f64,
    pub(crate) bytes_per_sec: f64,
    pub(crate) bytes_per_frame: f64,
    pub(crate) sample: ServerFrame,
}

impl Bench {
    /// Row 1: a `chatter` job's events through one session, timed from the first event to the
    /// result.
    pub(crate) async fn live(&self, count: u64, bytes: u64) -> BenchResult<Live> {
        let (mut session, _) = Session::open(self.channel.clone(), None).await?;
        session.start_chatter(count, bytes).await?;
        let sample = session.recv().await?;
        let received = receive(&mut session.rx, &session.tx).await?;
        Ok(Live {
            frames_per_sec: received.frames as f64 / received.seconds,
            bytes_per_sec: received.bytes as f64 / received.seconds,
            bytes_per_frame: received.bytes as f64 / received.frames as f64,
            sample,
        })
    }
}

/// Row 1's workload over WebSocket against the server on `addr`: the gateway (row 1 ws) or the
/// reference Python runtime (row 9), with the same client.
pub(crate) async fn live_ws(addr: SocketAddr, count: u64, bytes: u64) -> BenchResult<Received> {
    let mut session = WsSession::open(addr, None).await?;
    session.start_chatter(count, bytes).await?;
    let received = session.receive().await?;
    // The events and the result, and any status the server adds (a `back_pressure` one).
    if received.frames < count + 1 {
        return Err(format!("got {} frames of {}", received.frames, count + 1).into());
    }
    Ok(received)
}
