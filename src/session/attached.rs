//! What both halves of an attached stream share: the session's handles, this stream's
//! attachment and control, and when the client was last heard from.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    ids::Epoch,
    store::{log::SessionLog, session::SessionRecord},
};

use super::{stream_control::StreamControl, SessionServices};

/// One stream attached to a session, as its reader and its outbound half both see it.
pub(crate) struct AttachedStream {
    pub services: Arc<SessionServices>,
    pub record: Arc<dyn SessionRecord>,
    pub log: Arc<dyn SessionLog>,
    pub epoch: Epoch,
    pub control: Arc<StreamControl>,
    pub heard: LastHeard,
}

/// When the client was last heard from (§6.4): written by the reader for every frame, read by
/// the outbound half's heartbeat check.
pub(crate) struct LastHeard {
    opened: Instant,
    /// Milliseconds after `opened` at which the client last sent anything.
    heard_ms: AtomicU64,
}

impl LastHeard {
    pub(crate) fn new() -> LastHeard {
        LastHeard {
            opened: Instant::now(),
            heard_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn now(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard_ms.store(ms, Ordering::Release);
    }

    pub(crate) fn at(&self) -> Instant {
        self.opened + Duration::from_millis(self.heard_ms.load(Ordering::Acquire))
    }
}
