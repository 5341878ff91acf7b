//! The opening of a stream (§6.2, §6.3): authenticate, then create a session or resume one.
//!
//! A resume is validated completely (token, principal, session, log coverage) before anything
//! changes; only then is the token rotated, under the session's attachment lock, so a failed
//! resume never burns the client's token and two racing resumes with one token cannot both win.

use std::sync::Arc;

use crate::{
    error::ArcpError,
    gateway::{ConnectInfo, Gateway},
    ids::{EventSeq, Principal, SessionId},
    protocol::{
        client::{ClientMessage, Hello, Inbound, ResumeRequest},
        server::{StreamEnd, Welcome},
        Features,
    },
    resume::{token_not_valid, ResumeToken},
};

use super::{stream_control::StreamControl, Attached, Session};

/// A stream that now owns a session.
pub struct Opened {
    /// The session.
    pub session: Arc<Session>,
    /// This stream's claim on it.
    pub attached: Attached,
    /// The welcome to send first.
    pub welcome: Welcome,
    /// Deliver the log after this sequence number.
    pub replay_after: EventSeq,
}

/// Turns the first frame of a stream into an attached session.
pub async fn open(gw: &Gateway, conn: &ConnectInfo, first: Inbound) -> Result<Opened, ArcpError> {
    let hello = match first.message {
        ClientMessage::Hello(hello) | ClientMessage::Resume(hello) => hello,
        other => {
            return Err(ArcpError::InvalidRequest(format!(
                "the first frame must be session.hello or session.resume, not {}",
                other.type_name()
            )))
        }
    };
    let principal = authenticate(gw, conn, &hello)?;
    let features = hello
        .features
        .as_deref()
        .map(|requested| gw.features.negotiate(requested));
    match hello.resume.or_else(|| conn.resume.clone()) {
        None => create(gw, principal, features.unwrap_or_default()).await,
        Some(resume) => resume_session(gw, principal, features, resume).await,
    }
}

/// The principal from the in-band token and/or the transport's credentials; they must agree.
fn authenticate(gw: &Gateway, conn: &ConnectInfo, hello: &Hello) -> Result<Principal, ArcpError> {
    let in_band = hello
        .token
        .as_deref()
        .map(|t| gw.auth.authenticate(t))
        .transpose()?;
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

async fn create(
    gw: &Gateway,
    principal: Principal,
    features: Features,
) -> Result<Opened, ArcpError> {
    let id = SessionId::generate();
    let log = gw.log.create(&id).await?;
    let token = gw.registry.issue(&id, &principal).await?;
    let session = Arc::new(Session::new(id, principal, features, log));
    let control = Arc::new(StreamControl::default());
    {
        let mut attachment = session.attachment.lock().await;
        attachment.generation = 1;
        session.replace_stream(control.clone());
    }
    gw.sessions.insert(session.clone());
    stop_if_shutting_down(gw, &control);
    tracing::info!(session = %session.id, principal = %session.principal, "session opened");
    Ok(Opened {
        welcome: gw.welcome(&token, &session.features()),
        attached: Attached {
            generation: 1,
            control,
        },
        session,
        replay_after: EventSeq::ZERO,
    })
}

async fn resume_session(
    gw: &Gateway,
    principal: Principal,
    features: Option<Features>,
    resume: ResumeRequest,
) -> Result<Opened, ArcpError> {
    let id = gw.registry.check(&resume.token, &principal).await?;
    if resume
        .session_id
        .as_ref()
        .is_some_and(|claimed| claimed != &id)
    {
        return Err(token_not_valid());
    }
    let session = gw.sessions.get(&id).ok_or_else(token_not_valid)?;
    session
        .log
        .bounds()
        .await?
        .check_resume_from(resume.last_event_seq)?;

    let (token, attached): (ResumeToken, Attached) = {
        let mut attachment = session.attachment.lock().await;
        let token = gw.registry.rotate(&resume.token, &principal).await?;
        let control = Arc::new(StreamControl::default());
        session.replace_stream(control.clone());
        attachment.generation += 1;
        (
            token,
            Attached {
                generation: attachment.generation,
                control,
            },
        )
    };
    stop_if_shutting_down(gw, &attached.control);
    if let Some(features) = features {
        session.set_features(features);
    }
    tracing::info!(session = %id, after = %resume.last_event_seq, "session resumed");
    Ok(Opened {
        welcome: gw.welcome(&token, &session.features()),
        attached,
        session,
        replay_after: resume.last_event_seq,
    })
}

/// Stops a stream that attached while the gateway began shutting down: [`Gateway::shutdown`]
/// rings the streams attached before it, and this catches the ones it could not see yet.
fn stop_if_shutting_down(gw: &Gateway, control: &StreamControl) {
    if gw.shutdown.is_cancelled() {
        control.stop(StreamEnd::ShuttingDown);
    }
}

/// Releases a stream's claim on its session. If the stream still owned the session, the resume
/// window starts now.
pub async fn detach(gw: &Gateway, session: &Session, generation: u64) {
    let attachment = session.attachment.lock().await;
    if attachment.generation != generation || session.stream.lock().take().is_none() {
        return;
    }
    session.set_reader(None);
    let deadline = std::time::SystemTime::now() + gw.config.resume_window;
    gw.registry.start_window(&session.id, deadline).await;
    tracing::info!(session = %session.id, window_sec = gw.config.resume_window.as_secs(), "transport detached; resume window started");
}
