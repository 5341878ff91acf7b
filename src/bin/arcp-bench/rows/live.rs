//! Row 1: live throughput of one session: a `chatter` job's log events through the gateway to
//! a tonic client, timed from the first event to the result.

use arcp_gateway::proto::{server_frame::Payload as Out, ServerFrame};

use crate::{
    client::{receive, submit, Bench, Session},
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
        session
            .send(submit(
                "chatter",
                serde_json::json!({"count": count, "bytes": bytes}),
            ))
            .await?;
        let accepted = session.recv().await?;
        if !matches!(accepted.payload, Some(Out::JobAccepted(_))) {
            return Err(format!("expected job_accepted, got {accepted:?}").into());
        }
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
