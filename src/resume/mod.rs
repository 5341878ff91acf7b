//! The resume-token registry: which token currently resumes which session, for whom, and until
//! when.
//!
//! Each welcome mints a token with [`ResumeToken::generate`] and registers it here, replacing
//! the session's previous token in the same step, so a rotated-out token fails at once. The
//! registry keeps only a SHA-256 digest of each token and compares digests in constant time. A
//! token has no expiry while its session is attached to a stream; when the transport drops, the
//! resume window starts and the token expires with it.
//!
//! The trait lets a shared store (Redis) replace [`memory::MemoryResumeRegistry`], so a client
//! may resume on any replica.

pub mod memory;
mod token;

use std::time::SystemTime;

use async_trait::async_trait;

pub use token::{ResumeToken, TokenDigest};

use crate::{
    error::ArcpError,
    ids::{Principal, SessionId},
};

/// Registry of the current resume token of every live session.
#[async_trait]
pub trait ResumeRegistry: Send + Sync + 'static {
    /// Mints and registers the first token of a new session, bound to its principal.
    async fn issue(
        &self,
        session: &SessionId,
        principal: &Principal,
    ) -> Result<ResumeToken, ArcpError>;

    /// Checks a presented token without consuming it: it must be the session's current token,
    /// within its window, and presented by the principal it is bound to. Returns the session.
    async fn check(&self, token: &str, principal: &Principal) -> Result<SessionId, ArcpError>;

    /// Replaces the session's token with a fresh one, but only if `presented` is still current
    /// (so of two racing resumes with one token, exactly one wins). Clears the expiry: the
    /// session is attached again.
    async fn rotate(
        &self,
        presented: &str,
        principal: &Principal,
    ) -> Result<ResumeToken, ArcpError>;

    /// Starts the resume window: the session's token expires at `deadline`.
    async fn start_window(&self, session: &SessionId, deadline: SystemTime);

    /// Sessions whose window closed before `now`. Their entries are removed.
    async fn take_expired(&self, now: SystemTime) -> Vec<SessionId>;

    /// Forgets the session's token.
    async fn remove(&self, session: &SessionId);
}

/// The error for a token that is unknown, malformed, rotated out or expired. One message for
/// all of them: telling them apart would help someone guessing tokens.
pub(crate) fn token_not_valid() -> ArcpError {
    ArcpError::ResumeWindowExpired(
        "resume token is not valid: unknown, superseded by a newer welcome, or past its resume window"
            .into(),
    )
}
