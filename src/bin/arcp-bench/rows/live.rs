//! Row 1: live throughput of one session: a `chatter` job's log events through the gateway to
//! a tonic client, timed from the first event to the result.

use arcp_gateway::proto::ServerFrame;

use crate::{
    client::{receive, Bench, Session},
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
