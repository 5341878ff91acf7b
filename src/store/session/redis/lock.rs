//! The attachment lock in Redis: a key holding its holder's random token, set only if absent
//! and expiring after [`TTL`], so that a replica that died holding it keeps the session locked
//! for a while, not forever. A task renews it while it is held; dropping it releases it with a
//! compare-and-delete that also announces the release on the session's channel, where waiters
//! on every replica hear it. Waiters also retry every [`RETRY`], for a release message that
//! was lost or a lock that expired.
//!
//! Taking the lock also reads the record, so the holder's copy is current as of the lock:
//! whatever the previous holder committed before releasing it is in the copy.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use tokio::task::JoinHandle;

use crate::{
    error::ArcpError,
    store::{redis::millis, session::AttachmentLock},
};

use super::{
    copy::{LocalCopy, Versioned},
    remote::{corrupt, Names, Remote},
};

/// How long a lock lasts unless renewed: long enough that a busy holder renews it in time,
/// short enough that a dead holder's lock frees before its client gives up resuming.
const TTL: Duration = Duration::from_secs(10);

/// How often a holder renews its lock.
const RENEW: Duration = Duration::from_millis(3_000);

/// How often a waiter tries again without having heard of a release.
const RETRY: Duration = Duration::from_millis(200);

/// A session's lock, as one replica's record of it takes it.
pub(super) struct Lockable<'a> {
    pub(super) remote: &'a Arc<Remote>,
    pub(super) names: &'a Names,
    /// The record's copy: it hears of releases, and takes the record's state with the lock.
    pub(super) copy: &'a Arc<LocalCopy>,
}

/// Takes the session's attachment lock, waiting for its holder to release it. Cancel-safe: a
/// call dropped after it may have taken the lock releases it.
pub(super) async fn acquire(session: Lockable<'_>) -> Result<AttachmentLock, ArcpError> {
    let token = format!("{:032x}", rand::random::<u128>());
    loop {
        let heard = session.copy.unlocks();
        // Releases the lock if this call is dropped, or fails, after sending the attempt.
        let mut attempt = Release::new(&session, token.clone());
        if try_lock(&session, &token).await? {
            return Ok(AttachmentLock::new(Held::start(attempt)));
        }
        attempt.disarm();
        tokio::select! {
            () = session.copy.wait_unlock(heard) => {}
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// One attempt at the lock; takes the record's state into its copy when it succeeds.
async fn try_lock(session: &Lockable<'_>, token: &str) -> Result<bool, ArcpError> {
    let store = session.remote;
    let mut conn = store.redis.get().await?;
    let answer: Vec<u64> = store
        .scripts
        .lock
        .key(&session.names.lock)
        .key(&session.names.record)
        .arg(token)
        .arg(millis(TTL))
        .invoke_async(&mut conn)
        .await
        .map_err(|e| store.redis.unavailable(e))?;
    match answer.split_first() {
        Some((0, [])) => Ok(false),
        Some((1, [])) => Ok(true),
        Some((1, fields)) => {
            let state = Versioned::from_fields(fields)
                .ok_or_else(|| corrupt("an unknown answer to a lock"))?;
            session.copy.update(state);
            Ok(true)
        }
        _ => Err(corrupt("an unknown answer to a lock")),
    }
}

/// What releases a lock that one token may hold: spawned when dropped, unless disarmed.
struct Release(Option<Unlock>);

/// How to release (or renew) the lock a token holds.
#[derive(Clone)]
struct Unlock {
    store: Arc<Remote>,
    names: Names,
    token: String,
    copy: Weak<LocalCopy>,
}

impl Release {
    fn new(session: &Lockable<'_>, token: String) -> Release {
        Release(Some(Unlock {
            store: session.remote.clone(),
            names: session.names.clone(),
            token,
            copy: Arc::downgrade(session.copy),
        }))
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(unlock) = self.0.take() else { return };
        // Outside a runtime the lock is left to expire.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(unlock.run());
        }
    }
}

impl Unlock {
    async fn run(self) {
        let store = &self.store;
        let released = async {
            let mut conn = store.redis.get().await?;
            store
                .scripts
                .unlock
                .key(&self.names.lock)
                .arg(&self.token)
                .arg(&self.names.channel)
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(|e| store.redis.unavailable(e))
        };
        match released.await {
            // This replica's waiters need not wait for the message to come round.
            Ok(1) => {
                if let Some(copy) = self.copy.upgrade() {
                    copy.heard_unlock();
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(channel = %self.names.channel, "attachment lock not released, it will expire: {e}")
            }
        }
    }

    async fn renew(&self) -> Result<bool, ArcpError> {
        let store = &self.store;
        let mut conn = store.redis.get().await?;
        let renewed: i64 = store
            .scripts
            .renew
            .key(&self.names.lock)
            .arg(&self.token)
            .arg(millis(TTL))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store.redis.unavailable(e))?;
        Ok(renewed == 1)
    }
}

/// A held lock: renewed until dropped, then released.
struct Held {
    renewal: Option<JoinHandle<()>>,
    _release: Release,
}

impl Held {
    /// Renews the lock `release` releases until dropped.
    fn start(release: Release) -> Held {
        let renewal = release.0.clone().map(|renewing| {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW).await;
                    match renewing.renew().await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(channel = %renewing.names.channel, "attachment lock expired while held");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(channel = %renewing.names.channel, "attachment lock not renewed: {e}")
                        }
                    }
                }
            })
        });
        Held {
            renewal,
            _release: release,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}
