//! The opening of a stream (§6.2, §6.3): authenticate, then create a session or resume one,
//! and attach the stream to it.
//!
//! A resume holds the session's attachment lock from checking the client's token to rotating
//! it, so two resumes of one session never interleave. Inside it the new attachment first
//! takes the session over (the previous stream is fenced out and the session's jobs are paced
//! to the new reader), then fences the log against early release by older attachments, then
//! reads the first frames after the client's `last_event_seq`: that read is the check that
//! the log still covers the resume point, so nothing can be freed between the check and the
//! replay. Only then is the token rotated. A resume that fails keeps the client's token.
//!
//! Every step that changes shared state comes after the [`DetachGuard`] that undoes it is
//! armed: a handshake cut short at any await leaves, at worst, a session whose resume window
//! is running, which the sweeper removes.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use ::metrics::counter;
use tracing::Instrument;

use crate::{
    auth::{
        self,
        throttle::{Check, Failure},
    },
    error::ArcpError,
    ids::{Epoch, EventSeq, Principal, SessionId},
    metrics::RESUME_ATTEMPTS,
    protocol::{
        client::{ClientMessage, Hello, Inbound, ResumeRequest},
        control::Welcome,
        Features,
    },
    store::{
        log::{LogEntry, SessionLog, Wait},
        resume::{token_not_valid, ResumeToken},
        session::{NewSession, SessionRecord},
    },
    telemetry::store_span,
};

use super::{output::StreamEnd, stream_control::StreamControl, ConnectInfo, SessionServices};

/// The runtime's name in `session.welcome`.
pub const RUNTIME_NAME: &str = "arcp-gateway";
/// The runtime's version in `session.welcome`.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How many log frames one read takes; bounds the latency a control frame waits behind them.
const LOG_BATCH: usize = 256;

/// How many frames one read of `log` takes: [`LOG_BATCH`], or more for a log that reads are
/// round trips to, lest a reader behind its jobs pay one per small batch.
pub(crate) fn log_batch(log: &dyn SessionLog) -> usize {
    log.read_batch()
        .map_or(LOG_BATCH, |batch| batch.max(LOG_BATCH))
}

/// A stream that now holds a session.
pub struct Attachment {
    /// The session's record.
    pub record: Arc<dyn SessionRecord>,
    /// Its log.
    pub log: Arc<dyn SessionLog>,
    /// This stream's attachment.
    pub epoch: Epoch,
    /// Rung when a newer stream takes the session over or the gateway shuts down, and by the
    /// stream's reader.
    pub control: Arc<StreamControl>,
    /// The welcome to send first.
    pub welcome: Welcome,
    /// Deliver the log after this sequence number.
    pub replay_after: EventSeq,
    /// The first frames after `replay_after`, read when the resume was checked.
    pub first: Vec<LogEntry>,
    /// The newest frame logged when the stream resumed (`ZERO` for a new session): the
    /// frames through it that the stream delivers are replayed ones.
    pub replay_through: EventSeq,
}

/// Turns the first frame of a stream into an attachment. `guard` is armed before the first
/// change to shared state; the caller keeps it for as long as the stream lives, and dropping
/// it (however the handshake or the stream ends) detaches whatever was attached.
pub async fn open(
    services: &Arc<SessionServices>,
    conn: &ConnectInfo,
    first: Inbound,
    guard: &mut Option<DetachGuard>,
) -> Result<Attachment, ArcpError> {
    let hello = match first.message {
        ClientMessage::Hello(hello) | ClientMessage::Resume(hello) => hello,
        other => {
            return Err(ArcpError::InvalidRequest(format!(
                "the first frame must be session.hello or session.resume, not {}",
                other.type_name()
            )))
        }
    };
    let principal = authenticate(services, conn, &hello).await?;
    let offered = services.offer.features_for(conn);
    let features = hello
        .features
        .as_deref()
        .map(|requested| offered.negotiate(requested));
    match hello.resume.or_else(|| conn.resume.clone()) {
        None => create(services, principal, features.unwrap_or_default(), guard).await,
        Some(resume) => {
            let resumed = resume_session(services, conn, principal, features, resume, guard).await;
            let outcome = match &resumed {
                Ok(_) => "ok",
                Err(e) => e.code().as_str(),
            };
            counter!(RESUME_ATTEMPTS, "outcome" => outcome).increment(1);
            resumed
        }
    }
}

/// The principal from the in-band token and/or the transport's credentials; they must agree.
/// A token that is refused is answered late once its peer has failed too often.
async fn authenticate(
    services: &SessionServices,
    conn: &ConnectInfo,
    hello: &Hello,
) -> Result<Principal, ArcpError> {
    auth::check_scheme(hello.scheme.as_deref())?;
    let in_band = match hello
        .token
        .as_deref()
        .map(|t| services.auth.authenticate(t))
    {
        None => None,
        Some(Ok(principal)) => Some(principal),
        Some(Err(error)) => {
            services
                .throttle
                .failed(failure(Check::Bearer, conn, None, &error))
                .await;
            return Err(error);
        }
    };
    match (in_band, conn.principal.clone()) {
        (Some(a), Some(b)) if a != b => Err(ArcpError::Unauthenticated(
            "session.hello auth and the authorization metadata name different principals".into(),
        )),
        (Some(p), _) | (None, Some(p)) => Ok(p),
        (None, None) => Err(ArcpError::Unauthenticated(
            "no bearer token: set session.hello auth.token or the authorization metadata".into(),
        )),
    }
}

/// A failed attempt on this stream, for the throttle's tallies and audit log.
fn failure<'a>(
    check: Check,
    conn: &ConnectInfo,
    principal: Option<&'a Principal>,
    error: &ArcpError,
) -> Failure<'a> {
    Failure {
        check,
        via: "session.hello",
        peer: conn.peer,
        principal,
        code: error.code(),
    }
}

async fn create(
    services: &Arc<SessionServices>,
    principal: Principal,
    features: Features,
    guard: &mut Option<DetachGuard>,
) -> Result<Attachment, ArcpError> {
    let id = SessionId::generate();
    let epoch = Epoch::ZERO.next();
    let guard = guard.insert(DetachGuard::new(services.clone(), id.clone(), epoch));
    // The registry entry comes first: once it exists, the guard's detach starts its window,
    // and the sweep that closes the window removes whatever else was created.
    let token = services
        .resume
        .issue(&id, &principal, epoch)
        .instrument(store_span("resume.issue"))
        .await?;
    let log = services
        .logs
        .create(&id)
        .instrument(store_span("log.create"))
        .await?;
    let created = services
        .sessions
        .create(NewSession {
            id: id.clone(),
            principal,
            features,
            epoch,
            max_per_principal: services.settings.max_sessions_per_principal,
        })
        .await;
    let record = match created {
        Ok(record) => record,
        Err(e) => {
            forget_unopened(services, &id).await;
            return Err(e);
        }
    };
    guard.record = Some(record.clone());
    let control = attach_here(services, &id, epoch);
    tracing::info!(session = %id, principal = %record.principal(), "session opened");
    Ok(Attachment {
        welcome: welcome(services, &token, &record.features()),
        record,
        log,
        epoch,
        control,
        replay_after: EventSeq::ZERO,
        first: Vec::new(),
        replay_through: EventSeq::ZERO,
    })
}

/// Removes what was made for a session whose create was refused (over the principal's cap)
/// or failed, now rather than when its window closes, so that refused hellos hold nothing. A
/// shared store may have recorded the session before failing (Redis ran the script, the
/// answer was lost), and that record holds one of its principal's slots, so it goes too. The
/// registry entry goes last: while it exists, the detach starts its window and the sweep
/// removes whatever is left, should this be cut short or the record's removal fail.
async fn forget_unopened(services: &SessionServices, id: &SessionId) {
    if let Err(e) = services.sessions.remove(id).await {
        tracing::warn!(session = %id, "unopened session's record left to the sweep: {e}");
        return;
    }
    services.logs.remove(id).await;
    if let Err(e) = services.resume.remove(id).await {
        tracing::warn!(session = %id, "unopened session's token not removed: {e}");
    }
}

async fn resume_session(
    services: &Arc<SessionServices>,
    conn: &ConnectInfo,
    principal: Principal,
    features: Option<Features>,
    resume: ResumeRequest,
    guard: &mut Option<DetachGuard>,
) -> Result<Attachment, ArcpError> {
    let id = check_token(services, conn, &principal, &resume).await?;
    // The token was valid, so its holder may learn why the session cannot be resumed: the
    // store unavailable (retryable), or its log gone, and how (the store says if it lost it).
    let record = services
        .sessions
        .open(&id)
        .instrument(store_span("session.open"))
        .await
        .map_err(|e| if e.retryable() { e } else { token_not_valid() })?;
    let log = services
        .logs
        .open(&id)
        .instrument(store_span("log.open"))
        .await?;
    let after = resume.last_event_seq;
    // A resume that cannot succeed must not disturb the stream that holds the session.
    let bounds = log.bounds().await?;
    bounds.check_resume_from(after)?;
    // A session that negotiated credentials over TLS loses them when it resumes over
    // plaintext: none is issued on a transport that may not carry one (§14).
    let offered = services.offer.features_for(conn);
    let features = match features {
        Some(features) => Some(features),
        None => {
            let kept = record.features();
            let allowed = offered.negotiate(&kept.names());
            (allowed != kept).then_some(allowed)
        }
    };

    let lock = record.lock_attachment().await?;
    // The token may have been rotated while this resume waited for the lock.
    services.resume.check(&resume.token, &principal).await?;
    let epoch = record.flow().epoch.next();
    let guard = guard.insert(DetachGuard::new(services.clone(), id.clone(), epoch));
    guard.record = Some(record.clone());
    if !record.attach(epoch, features, after).await? {
        return Err(token_not_valid());
    }
    let control = attach_here(services, &id, epoch);
    log.fence(epoch).await?;
    let first = log.read(after, log_batch(&*log), Wait::No).await?;
    let token = services
        .resume
        .rotate(&resume.token, &principal, epoch)
        .await?;
    drop(lock);
    tracing::info!(session = %id, after = %after, "session resumed");
    Ok(Attachment {
        welcome: welcome(services, &token, &record.features()),
        record,
        log,
        epoch,
        control,
        replay_after: after,
        replay_through: first
            .last()
            .map_or(bounds.newest, |last| last.seq.max(bounds.newest)),
        first,
    })
}

/// The session `resume`'s token names, if it is valid for `principal` and is the session the
/// client claims. A refusal is answered late once its peer or principal has failed too often.
async fn check_token(
    services: &SessionServices,
    conn: &ConnectInfo,
    principal: &Principal,
    resume: &ResumeRequest,
) -> Result<SessionId, ArcpError> {
    let checked = match services
        .resume
        .check(&resume.token, principal)
        .instrument(store_span("resume.check"))
        .await
    {
        Ok(id)
            if resume
                .session_id
                .as_ref()
                .is_some_and(|claimed| claimed != &id) =>
        {
            Err(token_not_valid())
        }
        checked => checked,
    };
    // A store that does not answer is no failure of the client's, to count against it.
    if let Some(error) = checked.as_ref().err().filter(|e| !e.retryable()) {
        let failed = failure(Check::Resume, conn, Some(principal), error);
        services.throttle.failed(failed).await;
    }
    checked
}

/// Records this stream as the one attached here, stopping the one it replaces; stops it at
/// once if the gateway began shutting down, which rings only the streams attached before it.
fn attach_here(services: &SessionServices, id: &SessionId, epoch: Epoch) -> Arc<StreamControl> {
    let control = Arc::new(StreamControl::default());
    services.attachments.attach(id, epoch, control.clone());
    if services.shutdown.is_cancelled() {
        control.stop(StreamEnd::ShuttingDown);
    }
    control
}

fn welcome(services: &SessionServices, token: &ResumeToken, features: &Features) -> Welcome {
    Welcome {
        runtime_name: RUNTIME_NAME,
        runtime_version: RUNTIME_VERSION,
        resume_token: token.expose().to_owned(),
        resume_window_sec: u32::try_from(services.settings.resume_window.as_secs())
            .unwrap_or(u32::MAX),
        heartbeat_interval_sec: services.settings.heartbeat_interval_sec,
        features: features.names(),
        agents: services.offer.agents.clone(),
    }
}

/// Releases a stream's attachment when dropped, however the stream or its handshake ends: if
/// it still holds the session, the session's flow stops waiting for it and its resume window
/// starts. Attachments that were taken over are left alone by the stores' epoch checks.
pub struct DetachGuard {
    services: Arc<SessionServices>,
    session: SessionId,
    epoch: Epoch,
    record: Option<Arc<dyn SessionRecord>>,
}

impl DetachGuard {
    fn new(services: Arc<SessionServices>, session: SessionId, epoch: Epoch) -> Self {
        DetachGuard {
            services,
            session,
            epoch,
            record: None,
        }
    }
}

impl Drop for DetachGuard {
    fn drop(&mut self) {
        let services = self.services.clone();
        let (session, epoch, record) = (self.session.clone(), self.epoch, self.record.take());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { detach(&services, &session, epoch, record).await });
        }
    }
}

/// Releases attachment `epoch` of `session`: the record stops counting it as live, and the
/// resume window starts, each only if `epoch` is still the newest.
async fn detach(
    services: &SessionServices,
    session: &SessionId,
    epoch: Epoch,
    record: Option<Arc<dyn SessionRecord>>,
) {
    services.attachments.detach(session, epoch);
    let record = match record {
        Some(record) => Some(record),
        None => services.sessions.open(session).await.ok(),
    };
    if let Some(record) = record {
        match record.detach(epoch).await {
            // The log's budget evicts detached sessions' frames first.
            Ok(true) => services.logs.detached(session, epoch).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(session = %session, "could not record the detach: {e}"),
        }
    }
    let window = services.settings.resume_window;
    let deadline = SystemTime::now() + window;
    let mut backoff = WINDOW_FIRST_BACKOFF;
    let mut waited = false;
    loop {
        match services.resume.start_window(session, epoch, deadline).await {
            Ok(true) => {
                services.attachments.window_started(session, deadline);
                tracing::info!(session = %session, window_sec = window.as_secs(), "transport detached; resume window started");
                return;
            }
            Ok(false) => {
                tracing::debug!(session = %session, %epoch, "detach of an attachment that was taken over");
                return;
            }
            // A session whose window never starts is never swept: the start (which sets the
            // same deadline however often it runs) is tried until the store answers.
            Err(e) if e.retryable() => {
                if !std::mem::replace(&mut waited, true) {
                    tracing::warn!(session = %session, "could not start the resume window yet; trying until the store answers: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(WINDOW_MAX_BACKOFF);
            }
            Err(e) => {
                tracing::warn!(session = %session, "could not start the resume window: {e}");
                return;
            }
        }
    }
}

/// The wait before a resume window's start that the store did not answer is tried again,
/// doubling up to the most.
const WINDOW_FIRST_BACKOFF: Duration = Duration::from_millis(200);
const WINDOW_MAX_BACKOFF: Duration = Duration::from_secs(5);
