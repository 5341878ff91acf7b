//! How a job frame enters a session's log.
//!
//! Every job frame a session receives, from its own jobs or from jobs it subscribed to, goes
//! through [`DeliveryPolicy::deliver`], which applies what depends on the receiving session
//! rather than on the job: the features it negotiated (§6.2), whether it may see the job's
//! credentials (§14), and the back-pressure signal of §6.5 when its acknowledgements lag. A job
//! is also paced here to its submitting session's reader ([`DeliveryPolicy::pace`]).
//!
//! A frame is encoded once, as an [`Outgoing`], and every recipient that may see all of it
//! gets the same bytes; only a recipient that may not see its credentials gets a copy
//! encoded without them.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use ::metrics::counter;

use crate::{
    clock::Timestamp,
    encoding::StoredFrame,
    error::ArcpError,
    ids::{EventSeq, JobId, Principal, SessionId},
    metrics::BACK_PRESSURE,
    protocol::{
        event::EventBody,
        job_frame::{JobFrame, JobPayload, Subscribed},
        Features,
    },
    store::{
        jobs::{JobEntry, Subscriber},
        log::{Appended, EventLog, QueuedAppend, SessionLog, Wait},
        session::{Flow, SessionRecord},
    },
};

/// One receiving session, as a job sees it.
pub struct Recipient {
    /// The session.
    pub session: SessionId,
    /// Its log.
    pub log: Arc<dyn SessionLog>,
    /// Its features when it started receiving this job's frames.
    pub features: Features,
    /// Whether it is the submitter's principal, the only one that sees credentials (§14).
    pub sees_secrets: bool,
    /// The submitting session's record, whose reader the job is paced to and whose acks it
    /// watches; observers have none.
    record: Option<Arc<dyn SessionRecord>>,
    /// Whether it negotiated `ack`, looked up once rather than for every frame.
    acks: bool,
    /// Set when a `back_pressure` status went out; cleared once the lag is back under the
    /// threshold, so one slow spell yields one signal, not one per frame.
    pressured: AtomicBool,
}

impl Recipient {
    /// The submitting session, receiving with `features`.
    pub fn submitter(
        record: Arc<dyn SessionRecord>,
        log: Arc<dyn SessionLog>,
        features: Features,
    ) -> Recipient {
        Recipient {
            session: record.id().clone(),
            acks: features.has("ack"),
            record: Some(record),
            log,
            features,
            sees_secrets: true,
            pressured: AtomicBool::new(false),
        }
    }

    /// An observing session (§7.6); `sees_secrets` only for the submitter's principal.
    pub fn observer(
        session: SessionId,
        log: Arc<dyn SessionLog>,
        features: Features,
        sees_secrets: bool,
    ) -> Recipient {
        Recipient {
            session,
            log,
            acks: false,
            record: None,
            features,
            sees_secrets,
            pressured: AtomicBool::new(false),
        }
    }

    /// `subscriber`'s session, as a job of `job_principal` delivers to it: only the job's own
    /// principal sees its credentials (§14).
    pub async fn subscriber(
        logs: &dyn EventLog,
        subscriber: &Subscriber,
        job_principal: &Principal,
    ) -> Result<Recipient, ArcpError> {
        let log = logs.open(&subscriber.session).await?;
        Ok(Recipient::observer(
            subscriber.session.clone(),
            log,
            subscriber.features.clone(),
            &subscriber.principal == job_principal,
        ))
    }

    /// The same session, receiving another job's frames (a delegated child's), with a
    /// back-pressure signal of its own.
    pub fn same_session(&self) -> Recipient {
        Recipient {
            session: self.session.clone(),
            log: self.log.clone(),
            features: self.features.clone(),
            sees_secrets: self.sees_secrets,
            record: self.record.clone(),
            acks: self.acks,
            pressured: AtomicBool::new(false),
        }
    }

    /// Whether a frame just logged at `seq` puts the client more than `lag_limit` frames
    /// behind its last ack for the first time since it last caught up; the lag and the ack if
    /// so. Only meaningful with `ack` negotiated: without acks the lag is unknown.
    fn crossed_lag_limit(&self, seq: EventSeq, lag_limit: u64) -> Option<(u64, EventSeq)> {
        let acked = self.record.as_ref()?.flow().acked;
        let lag = seq.get().saturating_sub(acked.get());
        // Loaded before it is changed: a client past the limit stays there for many frames,
        // and the load spares each of them a locked instruction.
        if lag <= lag_limit {
            if self.pressured.load(Ordering::Relaxed) {
                self.pressured.store(false, Ordering::Relaxed);
            }
            return None;
        }
        let signalled =
            self.pressured.load(Ordering::Relaxed) || self.pressured.swap(true, Ordering::AcqRel);
        (!signalled).then_some((lag, acked))
    }
}

/// A job frame on its way to the sessions that receive it: its encoding, and what delivery
/// decides on without decoding it.
pub struct Outgoing {
    frame: StoredFrame,
    feature: Option<&'static str>,
    secrets: bool,
    terminal: bool,
}

impl Outgoing {
    /// Encodes `frame` for delivery.
    pub fn new(frame: &JobFrame) -> Outgoing {
        Outgoing {
            frame: StoredFrame::encode(frame),
            feature: frame.required_feature(),
            secrets: frame.has_secrets(),
            terminal: frame.payload.is_terminal(),
        }
    }

    /// How many bytes its encoding takes: what a log stores and the largest event bounds.
    pub(crate) fn encoded_len(&self) -> usize {
        self.frame.len()
    }

    /// The encoding for `to`, or `None` if `to` may not receive the frame.
    fn for_recipient(&self, to: &Recipient) -> Result<Option<StoredFrame>, ArcpError> {
        if self.feature.is_some_and(|f| !to.features.has(f)) {
            return Ok(None);
        }
        if self.secrets && !to.sees_secrets {
            let (_, mut frame) = self.frame.decode()?;
            frame.remove_secrets();
            return Ok(Some(StoredFrame::encode(&frame)));
        }
        Ok(Some(self.frame.clone()))
    }
}

/// Appends job frames to session logs, and paces jobs to their readers.
#[derive(Clone)]
pub struct DeliveryPolicy {
    lag_limit: u64,
    window: u64,
}

impl DeliveryPolicy {
    /// A policy signalling back-pressure past `lag_limit` unacknowledged frames, and letting a
    /// job run at most `window` frames ahead of its session's reader.
    pub fn new(lag_limit: u64, window: u64) -> Self {
        DeliveryPolicy {
            lag_limit,
            window: window.max(1),
        }
    }

    /// Appends `frame` to the recipient's log, unless the recipient did not negotiate the
    /// feature the frame needs. Returns what the append did, if it was appended.
    pub async fn deliver(
        &self,
        to: &Recipient,
        frame: &Outgoing,
    ) -> Result<Option<Appended>, ArcpError> {
        match frame.for_recipient(to)? {
            Some(stored) => to.log.append_measured(stored).await.map(Some),
            None => Ok(None),
        }
    }

    /// [`DeliveryPolicy::deliver`] for a frame a running job emits: when it leaves the client
    /// too far behind its acknowledgements, a `back_pressure` status for the same job follows
    /// (§6.5), framed by `job_frame` as the job frames its own events. Never after a terminal
    /// frame, which must stay the job's last.
    pub async fn deliver_live(
        &self,
        to: &Recipient,
        frame: &Outgoing,
        job_frame: impl FnOnce(JobPayload) -> JobFrame,
    ) -> Result<Option<Appended>, ArcpError> {
        let Some(appended) = self.deliver(to, frame).await? else {
            return Ok(None);
        };
        if frame.terminal || !to.acks {
            return Ok(Some(appended));
        }
        if let Some((lag, acked)) = to.crossed_lag_limit(appended.seq, self.lag_limit) {
            let signal = self.back_pressure(to, lag, acked, job_frame);
            let signalled = to.log.append_measured(StoredFrame::encode(&signal)).await?;
            return Ok(Some(signalled));
        }
        Ok(Some(appended))
    }

    /// [`DeliveryPolicy::deliver`] through [`SessionLog::queue_append`]: returns once the frame
    /// is queued, with what answers for it, or `None` if the recipient does not receive it.
    pub(crate) async fn queue(
        &self,
        to: &Recipient,
        frame: &Outgoing,
    ) -> Result<Option<QueuedAppend>, ArcpError> {
        match frame.for_recipient(to)? {
            Some(stored) => to.log.queue_append(stored).await.map(Some),
            None => Ok(None),
        }
    }

    /// The `back_pressure` status to follow a frame of a running job logged at `seq` in its
    /// submitting session `to`, when `seq` leaves the client past the lag limit for the first
    /// time since it last caught up; framed by `job_frame`. Only with `ack` negotiated.
    pub(crate) fn lag_signal(
        &self,
        to: &Recipient,
        seq: EventSeq,
        job_frame: impl FnOnce(JobPayload) -> JobFrame,
    ) -> Option<JobFrame> {
        if !to.acks {
            return None;
        }
        let (lag, acked) = to.crossed_lag_limit(seq, self.lag_limit)?;
        Some(self.back_pressure(to, lag, acked, job_frame))
    }

    /// The `back_pressure` status (§6.5) for `to`, `lag` frames behind its last ack `acked`.
    fn back_pressure(
        &self,
        to: &Recipient,
        lag: u64,
        acked: EventSeq,
        job_frame: impl FnOnce(JobPayload) -> JobFrame,
    ) -> JobFrame {
        tracing::info!(session = %to.session, lag, "client lags; signalling back_pressure");
        // Once per crossing of the lag limit, not per frame.
        counter!(BACK_PRESSURE, "signal" => "status").increment(1);
        job_frame(JobPayload::Event {
            ts: Timestamp::now(),
            body: EventBody::Status {
                phase: "back_pressure".into(),
                message: Some(format!(
                    "{lag} events are unacknowledged (last ack {acked}, limit {})",
                    self.lag_limit
                )),
                credential: None,
            },
        })
    }

    /// How many frames a job may run ahead of its session's reader.
    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    /// Flow control for a job's submitting session: while a stream is attached and the frames
    /// up to the one just `appended` that it has not taken are more than the window of frames,
    /// or more bytes than the log's byte window ([`Appended::window_start`]), waits for the
    /// stream to catch up. So a chatty agent runs at the pace of its reader instead of piling
    /// up frames until the log's bounds evict them under the reader (§13.2 names throttling
    /// the agent). Detached sessions never wait: their jobs run on (§6.4) and the log's bounds
    /// hold memory.
    ///
    /// Called with no lock held, so neither a slow observer nor a stuck reader can hold up
    /// anyone else. The check is a few loads; only a job that must wait suspends.
    pub async fn pace(&self, to: &Recipient, appended: Appended) {
        let Some(record) = &to.record else { return };
        // Both windows are a position the reader must have reached.
        let reach = appended
            .seq
            .get()
            .saturating_sub(self.window)
            .max(appended.window_start.get());
        let caught_up = move |flow: &Flow| !flow.attached || flow.delivered.get() >= reach;
        if !caught_up(&record.flow()) {
            // Only a job that must wait gets here; the frame path that need not wait does not.
            counter!(BACK_PRESSURE, "signal" => "flow_wait").increment(1);
            record.wait_flow(&caught_up).await;
        }
    }

    /// Announces a subscription to `to` and replays the job's history: logs the announcement
    /// built by `announce` from the job's newest sequence number (and whether history follows),
    /// then, with `history`, the job's frames in its own session's log `owner` after `history`
    /// through `newest`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn announce_and_replay(
        &self,
        to: &Recipient,
        owner: &dyn SessionLog,
        job: &JobId,
        history: Option<EventSeq>,
        newest: EventSeq,
        announce: impl FnOnce(EventSeq, bool) -> JobFrame,
    ) -> Result<(), ArcpError> {
        let replay = match history {
            Some(from) => job_history(owner, job, from, newest).await?,
            None => Vec::new(),
        };
        self.deliver(to, &Outgoing::new(&announce(newest, !replay.is_empty())))
            .await?;
        for mut frame in replay {
            // The submit's id correlates only for the submitting session.
            if let JobPayload::Accepted(accepted) = &mut frame.payload {
                accepted.request_id = None;
            }
            self.deliver(to, &Outgoing::new(&frame)).await?;
        }
        Ok(())
    }
}

/// The `job.subscribed` that announces the job of `entry` to `subscriber`, with live frames
/// from the job's sequence number `newest` on, and whether history follows.
pub(crate) fn announcement(
    entry: &JobEntry,
    subscriber: &Subscriber,
    newest: EventSeq,
    replayed: bool,
) -> JobFrame {
    JobFrame {
        job_id: entry.id.clone(),
        trace_id: entry.trace_id.clone(),
        payload: JobPayload::Subscribed(Box::new(Subscribed {
            summary: entry.summary(&subscriber.principal),
            subscribed_from: newest,
            replayed,
            request_id: subscriber.request_id.clone(),
        })),
    }
}

/// The frames of `job` in `owner` with sequence numbers in `(from, through]`.
async fn job_history(
    owner: &dyn SessionLog,
    job: &JobId,
    from: EventSeq,
    through: EventSeq,
) -> Result<Vec<JobFrame>, ArcpError> {
    const BATCH: usize = 1024;
    let gone = || {
        ArcpError::ResumeWindowExpired(format!(
            "the history of job {job} after {from} is no longer buffered"
        ))
    };
    let mut frames = Vec::new();
    let mut position = from;
    while position < through {
        let batch = owner
            .read(position, BATCH, Wait::No)
            .await
            .map_err(|_| gone())?;
        let Some(last) = batch.last() else { break };
        position = last.seq;
        for entry in batch.iter().filter(|e| e.seq <= through) {
            if entry.frame.job_id()? == job.as_str() {
                frames.push(entry.frame.decode()?.1);
            }
        }
    }
    Ok(frames)
}
