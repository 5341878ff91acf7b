//! Sessions (§6): the state that outlives a transport for the resume window.
//!
//! - [`handshake`]: the first frame of a stream, turned into a new or resumed session.
//! - [`connection`]: one attached stream: dispatching client frames, and delivering control
//!   frames and the session's event log through one cursor.
//! - [`outbox`]: how a job frame enters a session's log: feature gating, redaction for
//!   observers, and back-pressure signals (§6.5).
//! - [`control`]: what an attached stream waits on besides the log: the order to stop, and the
//!   replies its reader queued.
//!
//! A session is attached to at most one stream. Attaching bumps the session's generation and
//! stops the previous stream; only the current generation's detach starts the resume window,
//! so a stream that was taken over cannot expire the session under its successor.

pub mod connection;
pub mod handshake;
pub mod outbox;
pub mod stream_control;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::RwLock;

use self::stream_control::StreamControl;

use crate::{
    event_log::SessionLog,
    ids::{EventSeq, Principal, SessionId},
    protocol::server::StreamEnd,
    protocol::Features,
    sync::wakeup::Wakeup,
};

/// One session.
pub struct Session {
    /// The session.
    pub id: SessionId,
    /// The principal it was opened by; every resume must present the same one.
    pub principal: Principal,
    /// Its event log: what its jobs append to and its streams read.
    pub log: Arc<dyn SessionLog>,
    features: RwLock<Features>,
    attachment: tokio::sync::Mutex<Attachment>,
    /// The attached stream's control; `None` while detached. Changed only under `attachment`, but
    /// kept outside it so that a shutdown can event it without waiting for a handshake.
    stream: parking_lot::Mutex<Option<Arc<StreamControl>>>,
    flow: Flow,
}

/// What the client has received and acknowledged (§6.5), and whether it has been told it
/// lags.
#[derive(Default)]
struct Flow {
    acked: AtomicU64,
    /// Set when a `back_pressure` status went out; cleared once an ack brings the lag back
    /// under the threshold, so one slow spell yields one signal, not one per frame.
    pressured: AtomicBool,
    /// Whether a stream is attached, and the newest sequence number it has taken from the
    /// log for its transport. Jobs of the session wait on these (see [`Session::wait_for_reader`]).
    attached: AtomicBool,
    delivered: AtomicU64,
    progress: Wakeup,
}

struct Attachment {
    generation: u64,
}

/// The claim a stream holds on its session.
#[derive(Clone)]
pub struct Attached {
    /// Which attachment this is.
    pub generation: u64,
    /// Rung when a newer stream takes the session over or the gateway shuts down, and by the
    /// stream's reader.
    pub control: Arc<StreamControl>,
}

impl Session {
    fn new(
        id: SessionId,
        principal: Principal,
        features: Features,
        log: Arc<dyn SessionLog>,
    ) -> Session {
        Session {
            id,
            principal,
            log,
            features: RwLock::new(features),
            attachment: tokio::sync::Mutex::new(Attachment { generation: 0 }),
            stream: parking_lot::Mutex::new(None),
            flow: Flow::default(),
        }
    }

    /// Makes `control` the attached stream's, stopping the stream it replaces: the newest
    /// attachment wins. Call under the attachment lock.
    fn replace_stream(&self, control: Arc<StreamControl>) {
        if let Some(previous) = self.stream.lock().replace(control) {
            tracing::info!(session = %self.id, "session taken over by a resuming stream");
            previous.stop(StreamEnd::Superseded);
        }
    }

    /// Ends the attached stream, if any, with `why`.
    pub(crate) fn stop_stream(&self, why: StreamEnd) {
        if let Some(control) = self.stream.lock().as_ref() {
            control.stop(why);
        }
    }

    /// Marks the session attached to a stream that will deliver the frames after `from`, or
    /// detached. Jobs waiting for a reader stop waiting when it detaches.
    pub(crate) fn set_reader(&self, from: Option<EventSeq>) {
        if let Some(from) = from {
            self.flow.delivered.store(from.get(), Ordering::Release);
        }
        self.flow.attached.store(from.is_some(), Ordering::Release);
        self.flow.progress.notify();
    }

    /// Records that the attached stream took everything up to `seq` from the log for its
    /// transport, and wakes the jobs waiting for it to catch up.
    pub(crate) fn record_delivered(&self, seq: EventSeq) {
        self.flow.delivered.store(seq.get(), Ordering::Release);
        self.flow.progress.notify();
    }

    /// The newest sequence number the attached stream took from the log.
    pub fn delivered(&self) -> EventSeq {
        EventSeq(self.flow.delivered.load(Ordering::Acquire))
    }

    /// Flow control for the session's own jobs: while a stream is attached and more than
    /// `window` frames up to `seq` are undelivered, waits for the stream to catch up. So a
    /// chatty agent runs at the pace of its reader instead of piling up frames until the log
    /// bound evicts them under the reader (§13.2 names throttling the agent). Detached
    /// sessions never wait: their jobs run on (§6.4) and the log bound holds memory.
    pub(crate) async fn wait_for_reader(&self, seq: EventSeq, window: u64) {
        let flow = &self.flow;
        flow.progress
            .wait_until(|| {
                let behind = seq
                    .get()
                    .saturating_sub(flow.delivered.load(Ordering::Acquire));
                !flow.attached.load(Ordering::Acquire) || behind <= window
            })
            .await;
    }

    /// Records a `session.ack`; returns the lag it leaves (`newest - acked`). Acks never move
    /// backwards.
    pub fn record_ack(&self, acked: EventSeq, newest: EventSeq, lag_limit: u64) -> u64 {
        let acked = self
            .flow
            .acked
            .fetch_max(acked.get(), Ordering::AcqRel)
            .max(acked.get());
        let lag = newest.get().saturating_sub(acked);
        if lag <= lag_limit {
            self.flow.pressured.store(false, Ordering::Release);
        }
        lag
    }

    /// Whether a frame just logged at `seq` puts the client more than `lag_limit` frames behind
    /// its last ack for the first time since it last caught up. Only meaningful with `ack`
    /// negotiated: without acks the lag is unknown.
    pub fn crossed_lag_limit(&self, seq: EventSeq, lag_limit: u64) -> Option<(u64, u64)> {
        let acked = self.flow.acked.load(Ordering::Acquire);
        let lag = seq.get().saturating_sub(acked);
        // Loaded before it is swapped: a client past the limit stays there for many frames,
        // and the load spares each of them a locked instruction.
        let signalled = || {
            self.flow.pressured.load(Ordering::Acquire)
                || self.flow.pressured.swap(true, Ordering::AcqRel)
        };
        (lag > lag_limit && !signalled()).then_some((lag, acked))
    }

    /// The effective features.
    pub fn features(&self) -> Features {
        self.features.read().clone()
    }

    fn set_features(&self, features: Features) {
        *self.features.write() = features;
    }
}

/// The sessions this process holds.
#[derive(Default)]
pub struct SessionTable {
    sessions: RwLock<HashMap<SessionId, Arc<Session>>>,
}

impl SessionTable {
    /// A session by id.
    pub fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.sessions.read().get(id).cloned()
    }

    /// Every session, attached or not.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.read().values().cloned().collect()
    }

    /// How many sessions exist, attached or not.
    pub fn len(&self) -> usize {
        self.sessions.read().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, session: Arc<Session>) {
        self.sessions.write().insert(session.id.clone(), session);
    }

    /// Removes a session whose window closed.
    pub fn remove(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.sessions.write().remove(id)
    }
}
