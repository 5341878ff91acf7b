//! What is loaded from files and swapped while the process runs (the TLS certificate and key,
//! the JWKS): the value in use, the digest of the contents it came from, and a watch that
//! looks at the files on an interval. A change that does not load leaves the value in use and
//! is reported once per distinct content, not on every look.

use std::{
    fmt::Display,
    sync::{Arc, Weak},
    time::Duration,
};

use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

/// A value loaded from files, replaced when their contents change and load.
pub(crate) struct Reloaded<T> {
    current: RwLock<T>,
    /// The digest of the contents last loaded, and of the last ones refused.
    digests: Mutex<([u8; 32], Option<[u8; 32]>)>,
}

/// The digest that tells one content of the files from another.
pub(crate) fn digest(contents: &[u8]) -> [u8; 32] {
    Sha256::digest(contents).into()
}

impl<T> Reloaded<T> {
    /// `value`, loaded from contents of digest `digest`.
    pub(crate) fn new(value: T, digest: [u8; 32]) -> Reloaded<T> {
        Reloaded {
            current: RwLock::new(value),
            digests: Mutex::new((digest, None)),
        }
    }

    /// The value in use.
    pub(crate) fn current(&self) -> parking_lot::RwLockReadGuard<'_, T> {
        self.current.read()
    }

    /// Contents of digest `digest` were read: unless they are the ones in use, `load` makes a
    /// value of them, which replaces the one in use. `Ok(true)` when it did; an error of `load`
    /// leaves the value in use.
    pub(crate) fn offer<E>(
        &self,
        digest: [u8; 32],
        load: impl FnOnce() -> Result<T, E>,
    ) -> Result<bool, E> {
        let mut digests = self.digests.lock();
        if digests.0 == digest {
            return Ok(false);
        }
        match load() {
            Ok(value) => {
                *self.current.write() = value;
                *digests = (digest, None);
                Ok(true)
            }
            Err(e) => {
                digests.1 = Some(digest);
                Err(e)
            }
        }
    }

    fn refused(&self) -> Option<[u8; 32]> {
        self.digests.lock().1
    }
}

/// Calls `reload` on `owner` every `interval` for as long as `owner` is held elsewhere:
/// `changed` after a reload that took, and an error naming `what` once per distinct content
/// that does not load.
pub(crate) fn watch<S, T, E>(
    owner: &Arc<S>,
    interval: Duration,
    what: &'static str,
    reloaded: fn(&S) -> &Reloaded<T>,
    reload: fn(&S) -> Result<bool, E>,
    changed: fn(&S),
) -> tokio::task::JoinHandle<()>
where
    S: Send + Sync + 'static,
    T: 'static,
    E: Display + 'static,
{
    let weak: Weak<S> = Arc::downgrade(owner);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(owner) = weak.upgrade() else { return };
            let refused_before = reloaded(&owner).refused();
            match reload(&owner) {
                Ok(true) => changed(&owner),
                Ok(false) => {}
                Err(e) => {
                    // Once per distinct broken content (a read error each time).
                    let refused = reloaded(&owner).refused();
                    if refused.is_none() || refused != refused_before {
                        tracing::error!(
                            "{what} changed but does not load; keeping the one in use: {e}"
                        );
                    }
                }
            }
        }
    })
}
