//! The embedded, in-process resume registry.

use std::{collections::HashMap, time::SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{
    error::ArcpError,
    ids::{Epoch, Principal, SessionId},
};

use super::{token_not_valid, verify_entry, ResumeRegistry, ResumeToken, TokenDigest};

/// Resume tokens held in this process's memory.
#[derive(Default)]
pub struct MemoryResumeRegistry {
    entries: Mutex<HashMap<SessionId, Entry>>,
}

struct Entry {
    digest: TokenDigest,
    principal: Principal,
    epoch: Epoch,
    /// `None` while the attachment of `epoch` holds the session.
    expires_at: Option<SystemTime>,
}

impl MemoryResumeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many sessions have a token.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// How many sessions have a token with no expiry: those a stream holds attached.
    pub fn attached(&self) -> usize {
        self.entries
            .lock()
            .values()
            .filter(|e| e.expires_at.is_none())
            .count()
    }

    /// Whether no session has a token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Finds the entry `presented` must match and checks it: digest, window, principal.
fn verify<'a>(
    entries: &'a mut HashMap<SessionId, Entry>,
    presented: &str,
    principal: &Principal,
) -> Result<(SessionId, &'a mut Entry), ArcpError> {
    let session = ResumeToken::session_of(presented).ok_or_else(token_not_valid)?;
    let entry = entries.get_mut(&session).ok_or_else(token_not_valid)?;
    verify_entry(
        &entry.digest,
        presented,
        entry.expires_at,
        &entry.principal,
        principal,
    )?;
    Ok((session, entry))
}

#[async_trait]
impl ResumeRegistry for MemoryResumeRegistry {
    async fn issue(
        &self,
        session: &SessionId,
        principal: &Principal,
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError> {
        let token = ResumeToken::generate(session);
        self.entries.lock().insert(
            session.clone(),
            Entry {
                digest: token.digest(),
                principal: principal.clone(),
                epoch,
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
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError> {
        let mut entries = self.entries.lock();
        let (session, entry) = verify(&mut entries, presented, principal)?;
        if epoch <= entry.epoch {
            return Err(token_not_valid());
        }
        let token = ResumeToken::generate(&session);
        entry.digest = token.digest();
        entry.epoch = epoch;
        entry.expires_at = None;
        Ok(token)
    }

    async fn start_window(
        &self,
        session: &SessionId,
        epoch: Epoch,
        deadline: SystemTime,
    ) -> Result<bool, ArcpError> {
        Ok(match self.entries.lock().get_mut(session) {
            Some(entry) if entry.epoch == epoch => {
                entry.expires_at = Some(deadline);
                true
            }
            _ => false,
        })
    }

    async fn take_expired(&self, now: SystemTime) -> Result<Vec<SessionId>, ArcpError> {
        let mut entries = self.entries.lock();
        let expired: Vec<SessionId> = entries
            .iter()
            .filter(|(_, e)| e.expires_at.is_some_and(|at| at <= now))
            .map(|(s, _)| s.clone())
            .collect();
        for s in &expired {
            entries.remove(s);
        }
        Ok(expired)
    }

    async fn remove(&self, session: &SessionId) -> Result<(), ArcpError> {
        self.entries.lock().remove(session);
        Ok(())
    }
}
