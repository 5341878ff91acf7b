//! A Rust client of the gateway's gRPC service, so that Rust users and the CLI do not
//! reimplement resume: [`Client`] opens a session, submits, cancels, lists and subscribes, and
//! hands the session's frames to its caller with [`Client::next`], resuming the session on
//! its own when the stream drops.
//!
//! Exactly once, in order: the client keeps the latest resume token (rotated on every welcome)
//! and the newest `event_seq` it handed over, resumes from that, and drops any job frame at or
//! below it, so its caller sees each job frame once however often the stream drops. A gap (a
//! frame more than one past the last) is reported as an error rather than handed over. It
//! acknowledges what it handed over (§6.5) so the gateway can free it.
//!
//! After each resume it tells what the gateway replayed ([`Client::last_resume`]), for a
//! caller that reports drops (the CLI does).
//!
//! A session outlives its client: [`Client::resume_point`] is what a resume presents, and
//! [`Client::resume`] takes the session up again from it, in another process as well, within
//! the gateway's resume window. A resumed session keeps its authority over the jobs it
//! submitted (§7.7): it may cancel them, where another session may only watch.
//!
//! - `config`: how it connects and retries;
//! - `frames`: the frames it builds, and the answers it reads in the gateway's;
//! - `replay`: how much of a resumed stream was replay;
//! - `stream`: one attempt: a stream opened, the hello sent, the welcome read.

mod config;
mod frames;
mod replay;
mod stream;

use std::collections::VecDeque;

use tonic::transport::{Channel, Endpoint};

use crate::{
    clock::Timestamp,
    encoding::json_value::to_value,
    error::ArcpError,
    proto::{
        self, client_frame::Payload as In, server_frame::Payload as Out, ClientFrame, ServerFrame,
    },
    protocol::Json,
};

pub use self::{config::ClientConfig, replay::Resumed};
use self::{
    frames::{frame, request_id, session_error},
    replay::Replay,
    stream::{Attached, Welcomed},
};

/// Where a session can be taken up again: what a resume presents (§6.3). The token is a
/// secret, single-use: the gateway rotates it on every welcome, so a point is good until the
/// session is resumed from it (or its resume window closes).
#[derive(Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The session.
    pub session_id: String,
    /// The token its latest welcome issued.
    pub resume_token: String,
    /// The newest `event_seq` handed over: a resume replays what came after it.
    pub last_event_seq: u64,
}

impl std::fmt::Debug for ResumePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumePoint")
            .field("session_id", &self.session_id)
            .field("resume_token", &crate::protocol::client::REDACTED)
            .field("last_event_seq", &self.last_event_seq)
            .finish()
    }
}

/// One ARCP session on the gateway, resumed across dropped streams.
pub struct Client {
    config: ClientConfig,
    channel: Channel,
    attached: Attached,
    /// The session, its latest token, and the newest `event_seq` handed to the caller: what the
    /// next resume presents.
    point: ResumePoint,
    features: Vec<String>,
    /// The newest `event_seq` acknowledged.
    acked: u64,
    /// Frames read while waiting for an answer, in the order they came.
    pending: VecDeque<ServerFrame>,
    /// How many times the session was resumed (a client made by [`Client::resume`] starts
    /// at one).
    resumes: u64,
    /// Frames a resumed stream sent before the pong that dated the resume, not yet read.
    early: VecDeque<ServerFrame>,
    /// What the latest resume replayed.
    replay: Option<Replay>,
}

impl Client {
    /// Connects, says hello and waits for the welcome.
    pub async fn connect(config: ClientConfig) -> Result<Client, ArcpError> {
        let channel = channel(&config)?;
        let (attached, welcome) = Attached::open(&channel, &config, None).await?;
        Ok(Client {
            config,
            channel,
            attached,
            point: ResumePoint {
                session_id: welcome.session_id,
                resume_token: welcome.resume_token,
                last_event_seq: 0,
            },
            features: welcome.features,
            acked: 0,
            pending: VecDeque::new(),
            resumes: 0,
            early: VecDeque::new(),
            replay: None,
        })
    }

    /// Takes up the session at `point` (left by this client or another, in this process or
    /// another) on a new stream: the gateway replays what came after `point`'s `event_seq`,
    /// and the session goes on, its authority over its jobs with it. Retried like a drop; the
    /// gateway's refusal (a window that closed, a token already used) is the error. Counts as
    /// the client's first resume.
    pub async fn resume(config: ClientConfig, point: ResumePoint) -> Result<Client, ArcpError> {
        let channel = channel(&config)?;
        let mut early = VecDeque::new();
        let (attached, welcome, resumed_at) =
            retry_resume(&channel, &config, &point, &mut early).await?;
        let last_seq = point.last_event_seq;
        Ok(Client {
            config,
            channel,
            attached,
            point: ResumePoint {
                resume_token: welcome.resume_token,
                ..point
            },
            features: welcome.features,
            acked: last_seq,
            pending: VecDeque::new(),
            resumes: 1,
            early,
            replay: Some(Replay::new(last_seq, resumed_at)),
        })
    }

    /// Where the session can be taken up again now, by [`Client::resume`]: its latest token,
    /// and the newest `event_seq` handed over.
    pub fn resume_point(&self) -> ResumePoint {
        self.point.clone()
    }

    /// The session's id.
    pub fn session_id(&self) -> &str {
        &self.point.session_id
    }

    /// The features the gateway granted.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// The newest `event_seq` handed over.
    pub fn last_event_seq(&self) -> u64 {
        self.point.last_event_seq
    }

    /// How many times the session was resumed: after a drop, or by [`Client::resume`].
    pub fn resumes(&self) -> u64 {
        self.resumes
    }

    /// What the latest resume replayed so far: the frames handed over since that the gateway
    /// had logged while the client was away. `None` before the first resume.
    pub fn last_resume(&self) -> Option<&Resumed> {
        self.replay.as_ref().map(Replay::resumed)
    }

    /// Submits a job to `agent` (`name` or `name@version`) and waits for its acceptance;
    /// returns the job id. The submission carries an idempotency key, so one sent again after a
    /// drop cannot start a second job.
    pub async fn submit(&mut self, agent: &str, input: &Json) -> Result<String, ArcpError> {
        let key = uuid::Uuid::now_v7().to_string();
        let submit = In::JobSubmit(proto::JobSubmit {
            agent: agent.to_owned(),
            input: Some(to_value(input)),
            idempotency_key: key,
            ..Default::default()
        });
        let answer = self
            .request(submit, |frame| match &frame.payload {
                Some(Out::JobAccepted(a)) => Some(Ok(a.job_id.clone())),
                _ => None,
            })
            .await?;
        answer
    }

    /// Asks the gateway to cancel `job`; its end comes through [`Client::next`].
    pub async fn cancel(&mut self, job: &str) -> Result<(), ArcpError> {
        let cancel = In::JobCancel(proto::JobCancel {
            job_id: job.to_owned(),
            reason: String::new(),
        });
        self.send_once(frame(cancel, String::new())).await
    }

    /// The jobs the session's principal may see (§6.6), one page.
    pub async fn list_jobs(&mut self) -> Result<Vec<proto::JobSummary>, ArcpError> {
        let list = In::SessionListJobs(proto::SessionListJobs::default());
        self.request(list, |frame| match &frame.payload {
            Some(Out::SessionJobs(jobs)) => Some(Ok(jobs.jobs.clone())),
            _ => None,
        })
        .await?
    }

    /// Subscribes the session to `job` (§7.6), with its history when `history`; its frames
    /// then come through [`Client::next`].
    pub async fn subscribe(&mut self, job: &str, history: bool) -> Result<(), ArcpError> {
        let subscribe = In::JobSubscribe(proto::JobSubscribe {
            job_id: job.to_owned(),
            from_event_seq: None,
            history,
        });
        self.request(subscribe, |frame| match &frame.payload {
            Some(Out::JobSubscribed(s)) if s.job_id == job => Some(Ok(())),
            _ => None,
        })
        .await?
    }

    /// The session's next frame: a job frame (each once, in `event_seq` order) or a control
    /// frame; `None` once the gateway closed the session. A dropped stream is resumed on the
    /// way; the error of one that cannot be is returned.
    pub async fn next(&mut self) -> Result<Option<ServerFrame>, ArcpError> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Some(frame));
        }
        loop {
            let Some(frame) = self.receive().await? else {
                return Ok(None);
            };
            if let Some(frame) = self.take(frame)? {
                self.acknowledge().await;
                return Ok(Some(frame));
            }
        }
    }

    /// Sends `payload` with a fresh id and reads frames until `answer` recognises the reply
    /// (frames with the request's id first) or a `session_error` answers it; what comes
    /// meanwhile waits for [`Client::next`]. A drop in between sends the request again on the
    /// resumed stream.
    async fn request<T>(
        &mut self,
        payload: In,
        answer: impl Fn(&ServerFrame) -> Option<Result<T, ArcpError>>,
    ) -> Result<Result<T, ArcpError>, ArcpError> {
        let id = uuid::Uuid::now_v7().to_string();
        let request = frame(payload, id.clone());
        self.send_once(request.clone()).await?;
        let mut resumes = self.resumes;
        loop {
            let Some(frame) = self.receive().await? else {
                return Err(ArcpError::Internal(
                    "the gateway closed the session before answering".into(),
                ));
            };
            if self.resumes != resumes {
                // The request may not have reached the gateway; sent again, it is answered
                // once (a submission by its idempotency key).
                resumes = self.resumes;
                self.send_once(request.clone()).await?;
            }
            let answers_us = request_id(&frame) == Some(id.as_str());
            if let Some(Out::SessionError(e)) = &frame.payload {
                if answers_us {
                    return Ok(Err(session_error(e)));
                }
            }
            let Some(frame) = self.take(frame)? else {
                continue;
            };
            if answers_us || request_id(&frame).is_none() {
                if let Some(result) = answer(&frame) {
                    // A job frame that answers is the caller's too.
                    if frame.event_seq != 0 {
                        self.pending.push_back(frame);
                    }
                    return Ok(result);
                }
            }
            self.pending.push_back(frame);
        }
    }

    /// Sends `frame` on the current stream; a stream that is gone is resumed first.
    async fn send_once(&mut self, frame: ClientFrame) -> Result<(), ArcpError> {
        if self.attached.send(frame.clone()).await.is_ok() {
            return Ok(());
        }
        self.reattach().await?;
        self.attached.send(frame).await.map_err(|_| {
            ArcpError::Internal("the resumed stream closed before a frame could be sent".into())
        })
    }

    /// The next frame from the gateway, resuming through drops; `None` once it closed the
    /// session.
    async fn receive(&mut self) -> Result<Option<ServerFrame>, ArcpError> {
        loop {
            let received = match self.early.pop_front() {
                Some(frame) => Ok(Some(frame)),
                None => self.attached.recv().await,
            };
            match received {
                Ok(Some(frame)) => {
                    if matches!(frame.payload, Some(Out::SessionClosed(_))) {
                        self.pending.push_back(frame);
                        return Ok(self.pending.pop_front());
                    }
                    return Ok(Some(frame));
                }
                // A stream that ends or fails without `session_closed` was dropped.
                Ok(None) | Err(_) => self.reattach().await?,
            }
        }
    }

    /// Whether the caller gets `frame`: a job frame it has had already is dropped, one past a
    /// gap is an error.
    fn take(&mut self, frame: ServerFrame) -> Result<Option<ServerFrame>, ArcpError> {
        let seq = frame.event_seq;
        if seq == 0 {
            return Ok(Some(frame));
        }
        if seq <= self.point.last_event_seq {
            return Ok(None);
        }
        if seq != self.point.last_event_seq + 1 {
            return Err(ArcpError::Internal(format!(
                "event {seq} arrived after event {}: the events between were lost",
                self.point.last_event_seq
            )));
        }
        self.point.last_event_seq = seq;
        if let Some(replay) = &mut self.replay {
            replay.count(&frame);
        }
        Ok(Some(frame))
    }

    /// Acknowledges what was handed over every `ack_every` frames, when `ack` was granted. A
    /// lost acknowledgement costs only the gateway's memory until the next one.
    async fn acknowledge(&mut self) {
        if !self.features.iter().any(|f| f == "ack")
            || self.point.last_event_seq < self.acked + self.config.ack_every.max(1)
        {
            return;
        }
        let ack = In::SessionAck(proto::SessionAck {
            last_processed_seq: self.point.last_event_seq,
        });
        if self.attached.send(frame(ack, String::new())).await.is_ok() {
            self.acked = self.point.last_event_seq;
        }
    }

    /// Resumes the session on a new stream from the newest frame handed over, retrying with
    /// back-off; fails with the gateway's refusal (a resume window that ran out, a token it no
    /// longer knows) or once the attempts are spent.
    async fn reattach(&mut self) -> Result<(), ArcpError> {
        let (attached, welcome, resumed_at) =
            retry_resume(&self.channel, &self.config, &self.point, &mut self.early).await?;
        self.replay = Some(Replay::new(self.point.last_event_seq, resumed_at));
        self.attached = attached;
        self.point.resume_token = welcome.resume_token;
        self.features = welcome.features;
        self.acked = self.acked.min(self.point.last_event_seq);
        self.resumes += 1;
        Ok(())
    }
}

/// The channel to `config`'s endpoint, connected when first used.
fn channel(config: &ClientConfig) -> Result<Channel, ArcpError> {
    Ok(Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| ArcpError::InvalidRequest(format!("bad endpoint: {e}")))?
        .connect_lazy())
}

/// Resumes the session at `point` on a new stream, retrying with back-off as `config` says:
/// the stream, its welcome, and the gateway's time just after (the frames before its pong go
/// to `early`). Fails with the gateway's refusal, or once the attempts are spent.
async fn retry_resume(
    channel: &Channel,
    config: &ClientConfig,
    point: &ResumePoint,
    early: &mut VecDeque<ServerFrame>,
) -> Result<(Attached, Welcomed, Option<Timestamp>), ArcpError> {
    let mut backoff = config.first_backoff;
    let mut last = None;
    for _ in 0..config.reconnect_attempts.max(1) {
        let resume = proto::ResumeInfo {
            session_id: point.session_id.clone(),
            resume_token: point.resume_token.clone(),
            last_event_seq: point.last_event_seq,
        };
        let opened = match Attached::open(channel, config, Some(resume)).await {
            Ok((mut attached, welcome)) => attached
                .gateway_time(early)
                .await
                .map(|resumed_at| (attached, welcome, resumed_at)),
            Err(e) => Err(e),
        };
        match opened {
            Ok(opened) => return Ok(opened),
            Err(e) if !e.retryable() => return Err(e),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
    Err(last.unwrap_or_else(|| ArcpError::Internal("no reconnection was tried".into())))
}

#[cfg(test)]
mod tests {
    use super::ResumePoint;

    #[test]
    fn a_resume_point_shown_for_debugging_hides_its_token() {
        let point = ResumePoint {
            session_id: "sess_1".into(),
            resume_token: "rt_very_secret".into(),
            last_event_seq: 7,
        };
        let shown = format!("{point:?}");
        assert!(!shown.contains("rt_very_secret"), "{shown}");
        assert!(shown.contains("sess_1") && shown.contains('7'), "{shown}");
    }
}
