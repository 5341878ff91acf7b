//! [`Repairs`]: the repairs of slots of principals' sessions this replica started, under way,
//! by the key of the principal's sessions, so that a create finding them full can wait for
//! the slots they free (`slots.rs`).

use std::{collections::HashMap, future::Future, sync::Arc};

use futures::{
    future::{join_all, BoxFuture, Shared},
    FutureExt,
};
use parking_lot::Mutex;

/// Repairs under way, each awaitable by every create that waits for it.
type Pending = Vec<Shared<BoxFuture<'static, ()>>>;

/// The repairs under way, by the key of the principal's sessions whose slot they free.
#[derive(Default)]
pub(super) struct Repairs(Arc<Mutex<HashMap<String, Pending>>>);

impl Repairs {
    /// Runs `repair` of a slot of `joined` on a task of its own, listed until it ends.
    /// Outside a runtime it does not run: the slot waits for another create's repair.
    pub(super) fn spawn(&self, joined: String, repair: impl Future<Output = ()> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let repair = repair.boxed().shared();
        self.0
            .lock()
            .entry(joined.clone())
            .or_default()
            .push(repair.clone());
        let pending = self.0.clone();
        runtime.spawn(async move {
            repair.await;
            let mut pending = pending.lock();
            if let Some(repairs) = pending.get_mut(&joined) {
                repairs.retain(|repair| repair.peek().is_none());
                if repairs.is_empty() {
                    pending.remove(&joined);
                }
            }
        });
    }

    /// Whether repairs of `joined` are under way.
    pub(super) fn under_way(&self, joined: &str) -> bool {
        self.0.lock().contains_key(joined)
    }

    /// Waits for the repairs of `joined` under way; returns how many there were.
    pub(super) async fn settle(&self, joined: &str) -> usize {
        let pending = self.0.lock().get(joined).cloned().unwrap_or_default();
        let count = pending.len();
        join_all(pending).await;
        count
    }
}
