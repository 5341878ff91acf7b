//! The requests this replica sent to others and awaits replies to, by request id.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::messages::Outcome;

/// Requests awaiting their replies.
#[derive(Default)]
pub(super) struct Replies {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
}

/// One request's place among those awaiting replies; dropping it forgets the request, so a
/// reply that comes after is dropped.
pub(super) struct Awaiting<'a> {
    replies: &'a Replies,
    request: u64,
    reply: oneshot::Receiver<Outcome>,
}

impl Replies {
    /// A new request id, registered before the request is sent so that no reply can come
    /// before it is awaited.
    pub(super) fn expect(&self) -> Awaiting<'_> {
        let request = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, reply) = oneshot::channel();
        self.waiting.lock().insert(request, tx);
        Awaiting {
            replies: self,
            request,
            reply,
        }
    }

    /// Hands `outcome` to whoever awaits request `request`, if anyone still does.
    pub(super) fn deliver(&self, request: u64, outcome: Outcome) {
        if let Some(waiting) = self.waiting.lock().remove(&request) {
            let _ = waiting.send(outcome);
        }
    }
}

impl Awaiting<'_> {
    /// The request's id.
    pub(super) fn request(&self) -> u64 {
        self.request
    }

    /// The reply, or `None` if none came within `deadline`.
    pub(super) async fn within(mut self, deadline: Duration) -> Option<Outcome> {
        tokio::time::timeout(deadline, &mut self.reply)
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        self.replies.waiting.lock().remove(&self.request);
    }
}
