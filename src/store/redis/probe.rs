//! [`Probe`]: whether this replica's Redis answers, for gRPC health. A task PINGs it every
//! second, and at once after a store's call failed; the answer (or its absence, within the
//! connection's timeouts) is the store's [`Reachability`].
//!
//! The task also PINGs the notifier's connection, which carries only subscriptions and so
//! sends nothing of its own: its connection manager reconnects only when a call on it fails,
//! and without the PING a notifier that gave up reconnecting during a long outage would stay
//! down after Redis came back, leaving the logs' readers to their once-a-second look.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::{watch, Notify};

use crate::store::health::Reachability;

/// What the probe PINGs: one replica's connections to Redis.
#[async_trait]
pub(super) trait Target: Send + Sync + 'static {
    /// PINGs Redis over the stores' connection; why it did not answer, if it did not.
    async fn ping(&self) -> Result<(), String>;

    /// PINGs it over the notifier's connection, if there is one yet.
    async fn ping_notifier(&self);

    /// The probe of this target.
    fn probe(&self) -> &Probe;
}

/// How often Redis is PINGed while nothing failed.
const EVERY: Duration = Duration::from_secs(1);

/// A guard around one PING, on top of the connection's own timeouts, which bound it to about
/// three seconds already.
const PING_GUARD: Duration = Duration::from_secs(5);

/// The probe's state: the reachability it last found, and the nudge that makes it look now.
pub(super) struct Probe {
    state: watch::Sender<Reachability>,
    nudge: Arc<Notify>,
    started: std::sync::Once,
}

impl Probe {
    /// A probe that has not looked yet, and so reports Redis reachable.
    pub(super) fn new() -> Self {
        Probe {
            state: watch::Sender::new(Reachability::Reachable),
            nudge: Arc::new(Notify::new()),
            started: std::sync::Once::new(),
        }
    }

    /// A store's call failed: PING now rather than at the next tick. Costs nothing unless the
    /// probe runs.
    pub(super) fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// The reachability, probed from the first call on by a task that stops with `target`,
    /// whose probe this is.
    pub(super) fn watch<T: Target>(&self, target: &Arc<T>) -> watch::Receiver<Reachability> {
        self.started.call_once(|| {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(probe(Arc::downgrade(target), self.nudge.clone()));
            }
        });
        self.state.subscribe()
    }
}

/// PINGs until `target` is dropped.
async fn probe<T: Target>(target: Weak<T>, nudge: Arc<Notify>) {
    loop {
        let Some(redis) = target.upgrade() else {
            return;
        };
        let found = match tokio::time::timeout(PING_GUARD, redis.ping()).await {
            Ok(Ok(())) => Reachability::Reachable,
            Ok(Err(e)) => Reachability::Unreachable(e),
            Err(_) => Reachability::Unreachable(format!("no answer to PING within {PING_GUARD:?}")),
        };
        if found.is_reachable() {
            // Best effort: its only purpose is to make the notifier reconnect if it must.
            let _ = tokio::time::timeout(PING_GUARD, redis.ping_notifier()).await;
        }
        // Only a change between reachable and not is news: the reason changing is not.
        redis.probe().state.send_if_modified(|now| {
            let changed = now.is_reachable() != found.is_reachable();
            if changed {
                *now = found;
            }
            changed
        });
        drop(redis);
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = nudge.notified() => {}
        }
    }
}
