//! How a job frame enters a session's log.
//!
//! Every job frame a session receives, from its own jobs or from jobs it subscribed to, goes
//! through [`Outbox::deliver`], which applies what depends on the receiving session rather than
//! on the job: the features it negotiated (§6.2), whether it may see the job's credentials
//! (§14), and the back-pressure signal of §6.5 when its acknowledgements lag.

use std::sync::Arc;

use crate::{
    clock::Timestamp,
    error::ArcpError,
    ids::EventSeq,
    protocol::{
        event::EventBody,
        server::{JobPayload, NewFrame},
        Features,
    },
};

use super::Session;

/// One receiving session, as a job sees it.
#[derive(Clone)]
pub struct Recipient {
    /// The session.
    pub session: Arc<Session>,
    /// Its features when it started receiving this job's frames.
    pub features: Features,
    /// Whether it is the submitter's principal, the only one that sees credentials (§14).
    pub sees_secrets: bool,
    /// Whether it negotiated `ack`, looked up once rather than for every frame.
    acks: bool,
}

impl Recipient {
    /// The submitting session, receiving with `features`.
    pub fn submitter(session: Arc<Session>, features: Features) -> Recipient {
        Recipient {
            acks: features.has("ack"),
            session,
            features,
            sees_secrets: true,
        }
    }

    /// An observing session (§7.6); `sees_secrets` only for the submitter's principal.
    pub fn observer(session: Arc<Session>, features: Features, sees_secrets: bool) -> Recipient {
        Recipient {
            acks: features.has("ack"),
            session,
            features,
            sees_secrets,
        }
    }
}

/// Appends job frames to session logs.
#[derive(Clone)]
pub struct Outbox {
    lag_limit: u64,
    window: u64,
}

impl Outbox {
    /// An outbox signalling back-pressure past `lag_limit` unacknowledged frames, and letting a
    /// job run at most `window` frames ahead of its session's reader.
    pub fn new(lag_limit: u64, window: u64) -> Self {
        Outbox {
            lag_limit,
            window: window.max(1),
        }
    }

    /// Appends `frame` to the recipient's log, unless the recipient did not negotiate the
    /// feature the frame needs. Returns the sequence number it got, if it was appended.
    pub async fn deliver(
        &self,
        to: &Recipient,
        mut frame: NewFrame,
    ) -> Result<Option<EventSeq>, ArcpError> {
        if !allowed(&to.features, &frame.payload) {
            return Ok(None);
        }
        if !to.sees_secrets {
            frame.frame_mut().remove_secrets();
        }
        to.session.log.append(frame).await.map(Some)
    }

    /// [`Outbox::deliver`] for a frame a running job emits: when it leaves the client too far
    /// behind its acknowledgements, a `back_pressure` status for the same job follows (§6.5),
    /// framed by `job_frame` as the job frames its own events. Never after a terminal frame,
    /// which must stay the job's last.
    pub async fn deliver_live(
        &self,
        to: &Recipient,
        frame: NewFrame,
        job_frame: impl FnOnce(JobPayload) -> NewFrame,
    ) -> Result<Option<EventSeq>, ArcpError> {
        let terminal = frame.payload.is_terminal();
        let Some(seq) = self.deliver(to, frame).await? else {
            return Ok(None);
        };
        if terminal || !to.acks {
            return Ok(Some(seq));
        }
        if let Some((lag, acked)) = to.session.crossed_lag_limit(seq, self.lag_limit) {
            tracing::info!(session = %to.session.id, lag, "client lags; signalling back_pressure");
            let signal = job_frame(JobPayload::Event {
                ts: Timestamp::now(),
                body: EventBody::Status {
                    phase: "back_pressure".into(),
                    message: Some(format!(
                        "{lag} events are unacknowledged (last ack {acked}, limit {})",
                        self.lag_limit
                    )),
                    credential: None,
                },
            });
            return Ok(Some(to.session.log.append(signal).await?));
        }
        Ok(Some(seq))
    }
}

impl Outbox {
    /// Waits while `to`'s attached reader is more than the flow window behind `seq`
    /// (`Session::wait_for_reader`). Called for a job's submitting session only, and with no
    /// lock held, so neither a slow observer nor a stuck reader can hold up anyone else.
    pub async fn pace(&self, to: &Recipient, seq: EventSeq) {
        to.session.wait_for_reader(seq, self.window).await;
    }
}

/// §6.2: event kinds behind a feature go only to sessions that negotiated it.
fn allowed(features: &Features, payload: &JobPayload) -> bool {
    match payload {
        JobPayload::Event { body, .. } => body.required_feature().is_none_or(|f| features.has(f)),
        _ => true,
    }
}
