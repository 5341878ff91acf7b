//! Sessions (§6): the state machine of a session's attachments to streams.
//!
//! - `handshake`: the first frame of a stream, turned into a new or resumed session and this
//!   stream's attachment to it.
//! - `connection`: one attached stream: the welcome, then control frames and the session's
//!   event log through one cursor, until the stream ends.
//! - `dispatch`: the client frames of an attached stream, acted on.
//! - `liveness`: with `heartbeat`, a client silent for two intervals is lost, whatever its
//!   transport's sends are doing.
//! - `stream_control`: what an attached stream waits on besides the log: the order to stop,
//!   and the replies its reader queued.
//! - [`output`]: what a stream yields to its transport.
//!
//! A session is attached to at most one stream. Each attachment has an epoch, higher than
//! every earlier one; the session's record (in the [`SessionStore`]) refuses changes from all
//! but the newest, and the resume registry starts the window only for the newest's detach, so
//! a stream that was taken over, here or on another replica, cannot act on the session or
//! expire it under its successor. Every step of a handshake that changes shared state happens
//! after the detach that undoes it is armed, so a handshake cut short at any point leaves
//! nothing that the resume window does not sweep.

mod attached;
pub(crate) mod connection;
mod dispatch;
pub(crate) mod handshake;
mod liveness;
pub mod output;
pub(crate) mod stream_control;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ::metrics::gauge;

use futures::stream::BoxStream;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{throttle::AuthThrottle, Authenticator},
    engine::JobManager,
    ids::{Epoch, Principal, SessionId},
    metrics::{transport::Transport, SESSIONS_ATTACHED, SESSIONS_DETACHED},
    protocol::{
        client::{Inbound, RejectedFrame, ResumeRequest},
        control::AgentInfo,
        Features,
    },
    store::{log::EventLog, resume::ResumeRegistry, session::SessionStore},
};

use self::{output::StreamEnd, stream_control::StreamControl};

/// What the client sends on one stream, as the transport decoded it.
pub type InboundStream = BoxStream<'static, Result<Inbound, RejectedFrame>>;

/// What the transport established before the first frame: credentials from its metadata,
/// and who is connecting.
#[derive(Clone, Debug, Default)]
pub struct ConnectInfo {
    /// The principal authenticated from transport metadata (`authorization: Bearer ...`) or
    /// from the client's TLS certificate.
    pub principal: Option<Principal>,
    /// Resume coordinates from transport metadata, used when the hello carries none.
    pub resume: Option<ResumeRequest>,
    /// The client's address, when the transport knows it; failed authentication and resume
    /// attempts are limited per peer ([`AuthThrottle`]).
    pub peer: Option<SocketAddr>,
    /// Cancelled when the session declares the client lost (§6.4) and gives this stream up.
    /// The stream then ends at the next frame the transport takes; a transport whose send to
    /// that client may be stuck watches this to drop the connection without waiting.
    pub lost: CancellationToken,
    /// Whether the transport is encrypted (TLS); provisioned credentials (§9.8, §14) are
    /// offered only then, unless the gateway allows them over plaintext.
    pub encrypted: bool,
    /// Which transport the stream came over, for the metrics counted by transport.
    pub transport: Transport,
}

/// Everything the session code needs: the stores it reaches, the job engine, authentication,
/// what the runtime offers, and its settings.
pub(crate) struct SessionServices {
    /// Session records.
    pub sessions: Arc<dyn SessionStore>,
    /// The resume-token registry.
    pub resume: Arc<dyn ResumeRegistry>,
    /// Sessions' event logs.
    pub logs: Arc<dyn EventLog>,
    /// The job engine.
    pub jobs: Arc<JobManager>,
    /// Bearer authentication.
    pub auth: Authenticator,
    /// Slows the answers to repeated failed authentication and resume attempts.
    pub throttle: AuthThrottle,
    /// What every welcome offers.
    pub offer: Offer,
    /// How sessions behave.
    pub settings: SessionSettings,
    /// The streams attached on this process.
    pub attachments: Attachments,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
}

/// What the runtime offers in every welcome (§6.2).
#[derive(Clone, Debug)]
pub(crate) struct Offer {
    /// The features it supports.
    pub features: Features,
    /// The agent inventory.
    pub agents: Vec<AgentInfo>,
    /// Whether plaintext connections are offered `provisioned_credentials` too.
    pub plaintext_credentials: bool,
}

impl Offer {
    /// The features offered on `conn`: without `provisioned_credentials` on a plaintext
    /// transport, unless allowed there (§14).
    pub(crate) fn features_for(&self, conn: &ConnectInfo) -> Features {
        if conn.encrypted || self.plaintext_credentials {
            self.features.clone()
        } else {
            self.features.clone().without(CREDENTIALS)
        }
    }
}

/// The feature that carries provisioned credentials (§9.8).
const CREDENTIALS: &str = "provisioned_credentials";

/// How sessions behave.
#[derive(Clone, Debug)]
pub(crate) struct SessionSettings {
    /// How long a session survives a dropped transport.
    pub resume_window: Duration,
    /// How long a new stream may stay silent before its `session.hello`.
    pub hello_timeout: Duration,
    /// Advertised in the welcome (§6.4), and the interval of the runtime's own pings.
    pub heartbeat_interval_sec: u32,
    /// Sessions one principal may hold at once (§14), checked when a hello creates one.
    pub max_sessions_per_principal: usize,
    /// How long a stream waits for its session's log to answer again, from the first read
    /// that failed because the store did not answer, before it ends with that error.
    pub store_retry: Duration,
}

/// The streams attached to sessions on this process, so that a newer attachment here stops the
/// one it replaces at once, and a shutdown reaches every stream; and the sessions detached
/// from it whose resume window is open, with its end, for the sessions gauges.
#[derive(Default)]
pub struct Attachments {
    streams: Mutex<HashMap<SessionId, (Epoch, Arc<StreamControl>)>>,
    detached: Mutex<HashMap<SessionId, SystemTime>>,
}

impl Attachments {
    /// Records that `control`'s stream holds `session` at `epoch`, stopping the stream of an
    /// older attachment here.
    pub(crate) fn attach(&self, session: &SessionId, epoch: Epoch, control: Arc<StreamControl>) {
        let replaced = {
            let mut streams = self.streams.lock();
            match streams.get(session) {
                Some((newer, _)) if *newer > epoch => return control.stop(StreamEnd::Superseded),
                _ => streams.insert(session.clone(), (epoch, control)),
            }
        };
        self.gauge_attached();
        self.forget_detached(session);
        if let Some((_, previous)) = replaced {
            tracing::info!(session = %session, "session taken over by a resuming stream");
            previous.stop(StreamEnd::Superseded);
        }
    }

    /// Forgets the stream of attachment `epoch`, if it is still the one recorded.
    pub(crate) fn detach(&self, session: &SessionId, epoch: Epoch) {
        let mut streams = self.streams.lock();
        if streams.get(session).is_some_and(|(e, _)| *e == epoch) {
            streams.remove(session);
            gauge!(SESSIONS_ATTACHED).set(streams.len() as f64);
        }
    }

    fn gauge_attached(&self) {
        gauge!(SESSIONS_ATTACHED).set(self.streams.lock().len() as f64);
    }

    /// Counts `session` as detached from here until `until`, when its resume window closes.
    pub(crate) fn window_started(&self, session: &SessionId, until: SystemTime) {
        let mut detached = self.detached.lock();
        detached.insert(session.clone(), until);
        gauge!(SESSIONS_DETACHED).set(detached.len() as f64);
    }

    /// Stops counting `session` as detached: it was resumed, or its window closed.
    pub(crate) fn forget_detached(&self, session: &SessionId) {
        let mut detached = self.detached.lock();
        if detached.remove(session).is_some() {
            gauge!(SESSIONS_DETACHED).set(detached.len() as f64);
        }
    }

    /// Stops counting the sessions whose window has closed by `now`: another replica may
    /// have resumed or swept them, and this one would never hear of it.
    pub(crate) fn forget_closed_windows(&self, now: SystemTime) {
        let mut detached = self.detached.lock();
        detached.retain(|_, until| *until > now);
        gauge!(SESSIONS_DETACHED).set(detached.len() as f64);
    }

    /// Ends every attached stream with `why`.
    pub(crate) fn stop_all(&self, why: StreamEnd) {
        for (_, control) in self.streams.lock().values() {
            control.stop(why.clone());
        }
    }

    /// How many streams are attached here.
    pub fn len(&self) -> usize {
        self.streams.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
