//! Sessions (§6): the state that outlives a transport for the resume window.
//!
//! - [`handshake`]: the first frame of a stream, turned into a new or resumed session.
//! - [`connection`]: one attached stream: dispatching client frames, and delivering control
//!   frames and the session's event log through one cursor.
//!
//! A session is attached to at most one stream. Attaching bumps the session's generation and
//! stops the previous stream; only the current generation's detach starts the resume window,
//! so a stream that was taken over cannot expire the session under its successor.

pub mod connection;
pub mod handshake;

use std::{collections::HashMap, sync::Arc};

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::{
    ids::{Principal, SessionId},
    protocol::Features,
};

/// One session.
pub struct Session {
    /// The session.
    pub id: SessionId,
    /// The principal it was opened by; every resume must present the same one.
    pub principal: Principal,
    features: RwLock<Features>,
    attachment: tokio::sync::Mutex<Attachment>,
}

struct Attachment {
    generation: u64,
    /// Stops the attached stream; `None` while detached.
    stream: Option<CancellationToken>,
}

/// The claim a stream holds on its session.
#[derive(Clone)]
pub struct Attached {
    /// Which attachment this is.
    pub generation: u64,
    /// Cancelled when a newer stream takes the session over.
    pub superseded: CancellationToken,
}

impl Session {
    fn new(id: SessionId, principal: Principal, features: Features) -> Session {
        Session {
            id,
            principal,
            features: RwLock::new(features),
            attachment: tokio::sync::Mutex::new(Attachment {
                generation: 0,
                stream: None,
            }),
        }
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
