//! The contract every store must keep, as tests generic over the implementation: each takes a
//! factory of fresh [`Stores`] (event logs bounded to the given number of frames, or within the
//! given [`LogLimits`], or two replicas' handles on them, [`Replicas`]) and checks one promise
//! of the traits in `arcp_gateway::store`. `tests/store_contract.rs` runs them all against
//! each implementation, and against each wrapped in [`wrapped::yielding`].
#![allow(dead_code)]

pub mod credentials;
pub mod idempotency;
pub mod jobs;
pub mod log;
pub mod replicas;
pub mod resume;
pub mod session;
pub mod wrapped;

use std::{future::Future, pin::pin, task::Poll, time::Duration};

use arcp_gateway::{
    clock::Timestamp,
    encoding::StoredFrame,
    ids::JobId,
    protocol::{
        event::EventBody,
        job_frame::{JobFrame, JobPayload},
    },
    store::{log::LogLimits, Stores},
};
use async_trait::async_trait;

/// Fresh stores whose event logs keep at most the given number of frames.
pub type Factory = fn(usize) -> Stores;

/// Fresh stores whose event logs are within the given limits.
pub type LimitedFactory = fn(LogLimits) -> Stores;

/// Two replicas' handles on one fresh set of stores (event logs bounded to the given number
/// of frames): what one replica changes, the other must see. For the memory stores both are
/// the same; for a shared store each has its own connections.
pub type Replicas = fn(usize) -> (Stores, Stores);

/// Two replicas as a [`Replicas`] factory makes them, and an [`Outage`] of replica A's
/// notifications, for the tests of what a replica does when a message to it was lost.
pub type ReplicasWithOutage = fn(usize) -> (Stores, Stores, Box<dyn Outage>);

/// Cuts replica A off what other replicas publish to it. While the outage lasts, every message
/// to A is lost, as it is while its pub/sub connection is down; once it ends, A listens again
/// and hears that it resubscribed. Stores that send no messages have nothing to cut.
#[async_trait]
pub trait Outage: Send + Sync {
    /// From when this returns, messages to A are lost.
    async fn begin(&self);

    /// From when this returns, A is resubscribing (or has).
    async fn end(&self);
}

/// The outage of stores that send no messages.
pub struct NoOutage;

#[async_trait]
impl Outage for NoOutage {
    async fn begin(&self) {}

    async fn end(&self) {}
}

/// A guard against hangs, not a timing assertion: every wait here is due at once.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A `thought` event of job `job_t` carrying `text`, encoded.
pub fn frame(text: &str) -> StoredFrame {
    StoredFrame::encode(&JobFrame {
        job_id: JobId::new("job_t"),
        trace_id: None,
        payload: JobPayload::Event {
            ts: Timestamp::now(),
            body: EventBody::Thought { text: text.into() },
        },
    })
}

/// The text of a frame made by [`frame`].
pub fn text(frame: &StoredFrame) -> String {
    match frame.decode().expect("a stored frame decodes").1.payload {
        JobPayload::Event {
            body: EventBody::Thought { text },
            ..
        } => text,
        other => panic!("not a thought: {other:?}"),
    }
}

/// The most polls a cancellation test tries before it decides the call never completes: each
/// test cancels its call after 0, 1, 2, ... polls until one completes, so that a store whose
/// calls take a network round trip is cancelled at each of its suspension points too, before
/// and after its request left.
pub const MAX_POLLS: usize = 100_000;

/// `future` awaited with [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {DEADLINE:?}"))
}

/// Polls `future` `polls` times (or until it completes), then drops it: a call cancelled at
/// one of its suspension points. Returns its output if it completed.
pub async fn cancel_after<T>(polls: usize, future: impl Future<Output = T>) -> Option<T> {
    let mut future = pin!(future);
    let mut polled = 0;
    std::future::poll_fn(|cx| {
        if polled == polls {
            return Poll::Ready(None);
        }
        polled += 1;
        match future.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            // Woken again at once, so the next poll comes after the store made progress.
            Poll::Pending => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    })
    .await
}
