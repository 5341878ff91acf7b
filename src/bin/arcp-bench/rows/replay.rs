//! Row 3: replay on resume. A session's log is filled while nobody reads it, then the session
//! resumes from `last_event_seq` 0 and reads it all back, over gRPC (row 3) or WebSocket (row 3
//! ws).
//!
//! Each run gives two rates: from the first replayed frame to the last, which row 1 counts the
//! same way (its clock starts at the first event), and from the resume's request, which adds
//! the wait for the first frame; and that wait itself.

use std::time::{Duration, Instant};

use arcp_gateway::proto::{self, server_frame::Payload as Out};

use crate::{
    client::{Bench, Session},
    ws::{Resume, WsSession},
    BenchResult,
};

/// What one replay measured.
#[derive(Clone, Copy)]
pub(crate) struct Replayed {
    /// The frames replayed.
    frames: u64,
    /// From the resume's request to the first replayed frame.
    first: Duration,
    /// From the resume's request to the last.
    whole: Duration,
}

impl Replayed {
    /// Frames/s from the first replayed frame to the last, as row 1 counts from its first
    /// event.
    pub(crate) fn streaming_rate(&self) -> f64 {
        self.frames as f64 / self.whole.saturating_sub(self.first).as_secs_f64()
    }

    /// Frames/s from the resume's request to the last frame.
    pub(crate) fn rate(&self) -> f64 {
        self.frames as f64 / self.whole.as_secs_f64()
    }

    /// Milliseconds from the resume's request to the first replayed frame.
    pub(crate) fn first_ms(&self) -> f64 {
        self.first.as_secs_f64() * 1e3
    }
}

impl Bench {
    /// Row 3: fills a session's log with `count` events while nobody reads, then resumes from
    /// seq 0 and reads them all.
    pub(crate) async fn replay(&self, count: u64, bytes: u64) -> BenchResult<Replayed> {
        let (mut session, welcome) = Session::open(self.channel.clone(), None).await?;
        let Some(Out::SessionWelcome(w)) = &welcome.payload else {
            unreachable!()
        };
        let token = w.resume_token.clone();
        session.start_chatter(count, bytes).await?;
        drop(session);
        let newest = self.logged(&welcome.session_id, count).await?;
        let start = Instant::now();
        let resume = proto::ResumeInfo {
            session_id: welcome.session_id.clone(),
            resume_token: token,
            last_event_seq: 0,
        };
        let (mut session, _) = Session::open(self.channel.clone(), Some(resume)).await?;
        let mut first = None;
        loop {
            let frame = session.recv().await?;
            first.get_or_insert_with(|| start.elapsed());
            if frame.event_seq == newest {
                break;
            }
        }
        Ok(Replayed {
            frames: newest,
            first: first.unwrap_or_default(),
            whole: start.elapsed(),
        })
    }

    /// Row 3 over WebSocket: the same log, filled over WebSocket and replayed over WebSocket.
    pub(crate) async fn replay_ws(&self, count: u64, bytes: u64) -> BenchResult<Replayed> {
        let mut session = WsSession::open(self.ws_addr, None).await?;
        session.start_chatter(count, bytes).await?;
        let (session_id, resume_token) = (session.session_id.clone(), session.resume_token.clone());
        drop(session);
        let newest = self.logged(&session_id, count).await?;
        let start = Instant::now();
        let resume = Resume {
            session_id,
            resume_token,
            last_event_seq: 0,
        };
        let mut session = WsSession::open(self.ws_addr, Some(resume)).await?;
        let first = session.read_through(newest).await?;
        Ok(Replayed {
            frames: newest,
            first: first.duration_since(start),
            whole: start.elapsed(),
        })
    }

    /// Waits until session `session`'s log holds a `chatter` job of `count` events whole
    /// (accepted, the events, the result: all logged while the client is away), and returns the
    /// newest sequence number.
    async fn logged(&self, session: &str, count: u64) -> BenchResult<u64> {
        let newest = count + 2;
        let id = arcp_gateway::ids::SessionId::new(session.to_owned());
        let log = self.gateway.stores().logs.open(&id).await?;
        while log.bounds().await?.newest.get() < newest {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(newest)
    }
}
