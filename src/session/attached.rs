//! What both halves of an attached stream share: the session's handles, this stream's
//! attachment and control, when the client was last heard from, and the release of the
//! attachment.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    ids::Epoch,
    store::{log::SessionLog, session::SessionRecord},
};

use super::{handshake::DetachGuard, stream_control::StreamControl, SessionServices};

/// One stream attached to a session, as its reader and its outbound half both see it.
pub(crate) struct AttachedStream {
    pub services: Arc<SessionServices>,
    pub record: Arc<dyn SessionRecord>,
    pub log: Arc<dyn SessionLog>,
    pub epoch: Epoch,
    pub control: Arc<StreamControl>,
    pub heard: LastHeard,
    /// §6.4: only with `heartbeat` negotiated does the runtime ping and declare loss.
    pub heartbeat: Option<Duration>,
    /// Held until the outbound half ends or the client is declared lost, whichever is first:
    /// the loss must not wait for a transport whose send is stuck.
    pub detach: Mutex<Option<DetachGuard>>,
    /// The transport's: cancelled once the client is declared lost (`ConnectInfo::lost`).
    pub lost: CancellationToken,
}

impl AttachedStream {
    /// Gives up this stream's hold on the session: its resume window starts, and the jobs stop
    /// pacing themselves to it. Only the first call does anything.
    pub(crate) fn release(&self) {
        let guard = self.detach.lock().take();
        drop(guard);
    }
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
