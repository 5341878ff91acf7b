//! The resume-token registry: which token currently resumes which session, for whom, and until
//! when.
//!
//! Each welcome mints a token with [`ResumeToken::generate`] and registers it here, replacing
//! the session's previous token in the same step, so a rotated-out token fails at once. The
//! registry keeps only a SHA-256 digest of each token and compares digests in constant time.
//!
//! An entry also records the epoch of the attachment that registered its token. A token has no
//! expiry while that attachment holds the session; when it detaches, the resume window starts
//! and the token expires with it. Epochs fence the attachments: a rotation must come from a
//! newer attachment than the entry's, and only the entry's own attachment can start its window,
//! so a stream that was taken over cannot expire the session under its successor.
//!
//! [`memory::MemoryResumeRegistry`] is the embedded store; [`redis::RedisResumeRegistry`] one
//! that replicas share.

pub mod memory;
pub mod redis;
mod token;

use std::time::SystemTime;

use async_trait::async_trait;

pub use token::{ResumeToken, TokenDigest};

use crate::{
    error::ArcpError,
    ids::{Epoch, Principal, SessionId},
};

/// Registry of the current resume token of every live session.
///
/// Every call may suspend and may be cancelled by dropping its future; a dropped call has
/// either taken full effect or none.
#[async_trait]
pub trait ResumeRegistry: Send + Sync + 'static {
    /// Mints and registers the first token of a new session, bound to its principal, for its
    /// first attachment `epoch`. The entry has no expiry until that attachment's window starts.
    async fn issue(
        &self,
        session: &SessionId,
        principal: &Principal,
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError>;

    /// Checks a presented token without consuming it: it must be the session's current token,
    /// within its window, and presented by the principal it is bound to. Returns the session.
    async fn check(&self, token: &str, principal: &Principal) -> Result<SessionId, ArcpError>;

    /// Replaces the session's token with a fresh one for attachment `epoch`, but only if
    /// `presented` is still current and `epoch` is newer than the entry's (so of two racing
    /// resumes with one token, exactly one wins). Clears the expiry: the session is attached
    /// again.
    async fn rotate(
        &self,
        presented: &str,
        principal: &Principal,
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError>;

    /// Starts the resume window of attachment `epoch`: the session's token expires at
    /// `deadline`. A no-op, returning `false`, unless `epoch` is the entry's.
    async fn start_window(
        &self,
        session: &SessionId,
        epoch: Epoch,
        deadline: SystemTime,
    ) -> Result<bool, ArcpError>;

    /// Sessions whose window closed before `now`. Their entries are removed, so of several
    /// sweepers sharing the registry exactly one gets each session.
    async fn take_expired(&self, now: SystemTime) -> Result<Vec<SessionId>, ArcpError>;

    /// Forgets the session's token.
    async fn remove(&self, session: &SessionId) -> Result<(), ArcpError>;
}

/// Checks the entry of the session a presented token names, in the same order in every store
/// so that they refuse alike: its digest (in constant time), its window (`expires_at`, if it
/// started), then its principal (`owner`).
pub(crate) fn verify_entry(
    stored: &TokenDigest,
    presented: &str,
    expires_at: Option<SystemTime>,
    owner: &Principal,
    principal: &Principal,
) -> Result<(), ArcpError> {
    if !stored.matches(&TokenDigest::of(presented)) {
        return Err(token_not_valid());
    }
    if expires_at.is_some_and(|at| at <= SystemTime::now()) {
        return Err(token_not_valid());
    }
    if owner != principal {
        return Err(ArcpError::PermissionDenied(
            "resume token belongs to a different principal".into(),
        ));
    }
    Ok(())
}

/// The error for a token that is unknown, malformed, rotated out or expired. One message for
/// all of them: telling them apart would help someone guessing tokens.
pub fn token_not_valid() -> ArcpError {
    ArcpError::ResumeWindowExpired(
        "resume token is not valid: unknown, superseded by a newer welcome, or past its resume window"
            .into(),
    )
}
