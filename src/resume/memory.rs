//! The embedded, in-process resume registry.

use std::{collections::HashMap, time::SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{
    error::ArcpError,
    ids::{Principal, SessionId},
};

use super::{token_not_valid, ResumeRegistry, ResumeToken, TokenDigest};

/// Resume tokens held in this process's memory.
#[derive(Default)]
pub struct MemoryResumeRegistry {
    entries: Mutex<HashMap<SessionId, Entry>>,
}

struct Entry {
    digest: TokenDigest,
    principal: Principal,
    /// `None` while a stream is attached.
    expires_at: Option<SystemTime>,
}

impl MemoryResumeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Finds the entry `presented` must match and checks it: digest, principal, window.
fn verify<'a>(
    entries: &'a mut HashMap<SessionId, Entry>,
    presented: &str,
    principal: &Principal,
) -> Result<(SessionId, &'a mut Entry), ArcpError> {
    let session = ResumeToken::session_of(presented).ok_or_else(token_not_valid)?;
    let entry = entries.get_mut(&session).ok_or_else(token_not_valid)?;
    if !entry.digest.matches(&TokenDigest::of(presented)) {
        return Err(token_not_valid());
    }
    if entry.expires_at.is_some_and(|at| at <= SystemTime::now()) {
        return Err(token_not_valid());
    }
    if &entry.principal != principal {
        return Err(ArcpError::PermissionDenied(
            "resume token belongs to a different principal".into(),
        ));
    }
    Ok((session, entry))
}

#[async_trait]
impl ResumeRegistry for MemoryResumeRegistry {
    async fn issue(
        &self,
        session: &SessionId,
        principal: &Principal,
    ) -> Result<ResumeToken, ArcpError> {
        let token = ResumeToken::generate(session);
        self.entries.lock().insert(
            session.clone(),
            Entry {
                digest: token.digest(),
                principal: principal.clone(),
                expires_at: None,
            },
        );
        Ok(token)
    }

    async fn check(&self, token: &str, principal: &Principal) -> Result<SessionId, ArcpError> {
        verify(&mut self.entries.lock(), token, principal).map(|(session, _)| session)
    }

    async fn rotate(
        &self,
        presented: &str,
        principal: &Principal,
    ) -> Result<ResumeToken, ArcpError> {
        let mut entries = self.entries.lock();
        let (session, entry) = verify(&mut entries, presented, principal)?;
        let token = ResumeToken::generate(&session);
        entry.digest = token.digest();
        entry.expires_at = None;
        Ok(token)
    }

    async fn start_window(&self, session: &SessionId, deadline: SystemTime) {
        if let Some(entry) = self.entries.lock().get_mut(session) {
            entry.expires_at = Some(deadline);
        }
    }

    async fn take_expired(&self, now: SystemTime) -> Vec<SessionId> {
        let mut entries = self.entries.lock();
        let expired: Vec<SessionId> = entries
            .iter()
            .filter(|(_, e)| e.expires_at.is_some_and(|at| at <= now))
            .map(|(s, _)| s.clone())
            .collect();
        for s in &expired {
            entries.remove(s);
        }
        expired
    }

    async fn remove(&self, session: &SessionId) {
        self.entries.lock().remove(session);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorCode;

    #[tokio::test]
    async fn rotation_invalidates_the_previous_token_at_once() {
        let reg = MemoryResumeRegistry::new();
        let s = SessionId::generate();
        let alice = Principal::new("alice");
        let t1 = reg.issue(&s, &alice).await.unwrap();
        assert_eq!(reg.check(t1.expose(), &alice).await.unwrap(), s);
        let t2 = reg.rotate(t1.expose(), &alice).await.unwrap();
        let err = reg.check(t1.expose(), &alice).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
        // A second resume racing with the same old token loses.
        assert!(reg.rotate(t1.expose(), &alice).await.is_err());
        assert_eq!(reg.check(t2.expose(), &alice).await.unwrap(), s);
    }

    #[tokio::test]
    async fn tokens_are_bound_to_their_principal_and_window() {
        let reg = MemoryResumeRegistry::new();
        let s = SessionId::generate();
        let t = reg.issue(&s, &Principal::new("alice")).await.unwrap();
        let err = reg
            .check(t.expose(), &Principal::new("mallory"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);

        reg.start_window(&s, SystemTime::now() - Duration::from_millis(1))
            .await;
        let err = reg
            .check(t.expose(), &Principal::new("alice"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
        assert_eq!(reg.take_expired(SystemTime::now()).await, vec![s]);
        assert!(reg.take_expired(SystemTime::now()).await.is_empty());
    }
}
