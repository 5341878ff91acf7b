//! A job's frames on their way into logs that pipeline appends (the Redis log): the job queues
//! each frame and goes on while the store works, and takes the answers as they come back, in
//! order. It waits for the oldest answer only when too many frames, or too many bytes, are on
//! their way ([`Bound`]), so a chatty job pays a round trip per batch of frames, not per frame.
//!
//! Only `super::emission` uses them, under the job's emission lock: what needs a frame's
//! sequence number (the job's newest, pacing, the back-pressure signal, a subscription's
//! starting point, the job's end) waits for its answer there.

use std::collections::VecDeque;

use futures::FutureExt;

use crate::{
    error::ArcpError,
    ids::SessionId,
    store::log::{Appended, QueuedAppend},
};

/// The most frames, and bytes of frames, one job may have on their way at once.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bound {
    frames: usize,
    bytes: u64,
}

impl Bound {
    /// Frames beyond the flow window a job is paced to by `flow_window` frames, and within a
    /// log of `max_log_bytes`: a quarter of each bound at most (and a thousand frames, a MiB),
    /// so that a reader the job is paced to still stays clear of eviction.
    pub(super) fn new(flow_window: u64, max_log_bytes: u64) -> Bound {
        Bound {
            frames: (flow_window / 2).clamp(1, 1024) as usize,
            bytes: (max_log_bytes / 4).clamp(1, 1024 * 1024),
        }
    }
}

/// Who a frame on its way was for.
pub(super) enum Destination {
    /// The job's own session; `signal` for a back-pressure signal, which raises none itself.
    Owner { signal: bool },
    /// A subscriber's session.
    Observer(SessionId),
}

/// One frame on its way.
struct Flight {
    answer: QueuedAppend,
    to: Destination,
    bytes: u64,
}

/// A job's frames on their way, oldest first.
#[derive(Default)]
pub(super) struct Flights {
    queue: VecDeque<Flight>,
    bytes: u64,
    /// A failure to log one of the job's frames that came back where nobody could be told (a
    /// subscription waiting for the job's frames), for its next emit.
    failed: Option<ArcpError>,
}

impl Flights {
    /// Counts a frame of `bytes` queued for `to`.
    pub(super) fn push(&mut self, answer: QueuedAppend, to: Destination, bytes: usize) {
        let bytes = bytes as u64;
        self.bytes += bytes;
        self.queue.push_back(Flight { answer, to, bytes });
    }

    /// Whether more is on its way than `bound` allows.
    pub(super) fn over(&self, bound: Bound) -> bool {
        self.queue.len() > bound.frames || self.bytes > bound.bytes
    }

    /// Keeps `failure` for the next emit, unless one is kept already.
    pub(super) fn keep_failure(&mut self, failure: ArcpError) {
        self.failed.get_or_insert(failure);
    }

    /// The failure kept for the next emit, if any.
    pub(super) fn take_failure(&mut self) -> Option<ArcpError> {
        self.failed.take()
    }

    /// The oldest frame's answer and who it was for: waiting for it with `wait`, else only if
    /// it is already there. `None` when nothing is on its way (or, without `wait`, the oldest
    /// answer is still to come). Cancel-safe: a frame leaves only with its answer.
    pub(super) async fn oldest(
        &mut self,
        wait: bool,
    ) -> Option<(Destination, Result<Appended, ArcpError>)> {
        let front = self.queue.front_mut()?;
        let outcome = if wait {
            (&mut front.answer).await
        } else {
            (&mut front.answer).now_or_never()?
        };
        let flight = self.queue.pop_front()?;
        self.bytes -= flight.bytes;
        Some((flight.to, outcome))
    }
}
