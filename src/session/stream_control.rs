//! [`StreamControl`]: everything an attached stream waits on besides its session's log.
//!
//! Between frames, a stream's outbound loop checks whether it must stop (a newer stream took
//! the session over, or the gateway is shutting down) and whether its reader queued a control
//! reply. A `CancellationToken` and a tokio `mpsc` channel each lock a mutex or touch a cold
//! block on every poll, and a stream that sends one frame at a time polls them for every
//! frame: with a thousand such streams that was near a tenth of the gateway's CPU
//! (`arcp-bench` row 4). Here a poll with no news is a few atomic loads on one struct and a
//! waker registration that does not clone an unchanged waker.

use std::{
    collections::VecDeque,
    future::{poll_fn, Future},
    task::{Context, Poll},
};

use crate::{
    protocol::{client::ReadFault, control::Control},
    sync::primitives::{
        AtomicBool, AtomicU8, AtomicUsize, AtomicWaker, Mutex, Ordering, Semaphore,
    },
};

use super::output::StreamEnd;

/// Control replies that may wait for the stream; past this the reader stops reading the
/// client until the stream catches up. One under loom, so its model checks reach a full queue.
const REPLY_QUEUE: usize = if cfg!(arcp_loom) { 1 } else { 64 };

const RUNNING: u8 = 0;
const SUPERSEDED: u8 = 1;
const SHUTTING_DOWN: u8 = 2;
/// Followed by one code per [`ReadFault`].
const UNREADABLE: u8 = 3;

/// A control frame from the reader, and what the stream does after it.
pub(crate) struct Reply {
    pub control: Control,
    pub then: Then,
}

/// What a stream does after a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// Carries on.
    Continue,
    /// Ends, as after `session.closed`.
    Close,
    /// Ends with this reason.
    End(StreamEnd),
}

/// What woke the stream.
pub(crate) enum StreamEvent {
    /// It must end, for this reason.
    Stop(StreamEnd),
    /// The reader answered a client frame.
    Reply(Reply),
    /// The reader is done (the client half-closed, or closed the session) and every reply
    /// was taken.
    ReaderDone,
}

fn fault_code(fault: ReadFault) -> u8 {
    match fault {
        ReadFault::TooLarge => 0,
        ReadFault::Framing => 1,
        ReadFault::Encoding => 2,
        ReadFault::Undecodable => 3,
    }
}

fn fault_of_code(code: u8) -> ReadFault {
    match code {
        0 => ReadFault::TooLarge,
        1 => ReadFault::Framing,
        2 => ReadFault::Encoding,
        _ => ReadFault::Undecodable,
    }
}

/// The stop signal and reply queue of one attached stream.
pub struct StreamControl {
    stop: AtomicU8,
    queued: AtomicUsize,
    reader_done: AtomicBool,
    waker: AtomicWaker,
    replies: Mutex<VecDeque<Reply>>,
    room: Semaphore,
}

impl Default for StreamControl {
    fn default() -> Self {
        StreamControl {
            stop: AtomicU8::new(RUNNING),
            queued: AtomicUsize::new(0),
            reader_done: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            replies: Mutex::new(VecDeque::new()),
            room: Semaphore::new(REPLY_QUEUE),
        }
    }
}

impl StreamControl {
    /// Tells the stream to end. The first reason given is the one it reports.
    pub fn stop(&self, why: StreamEnd) {
        let code = match why {
            StreamEnd::Superseded => SUPERSEDED,
            StreamEnd::ShuttingDown => SHUTTING_DOWN,
            StreamEnd::Unreadable(fault) => UNREADABLE + fault_code(fault),
        };
        let _ = self
            .stop
            .compare_exchange(RUNNING, code, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// Why the stream must end, once it must.
    pub fn stopped(&self) -> Option<StreamEnd> {
        match self.stop.load(Ordering::Acquire) {
            RUNNING => None,
            SUPERSEDED => Some(StreamEnd::Superseded),
            SHUTTING_DOWN => Some(StreamEnd::ShuttingDown),
            code => Some(StreamEnd::Unreadable(fault_of_code(code - UNREADABLE))),
        }
    }

    /// Queues a reply for the stream, waiting while [`REPLY_QUEUE`] replies are already
    /// waiting.
    pub(crate) async fn send(&self, reply: Reply) {
        // The semaphore is never closed, so acquiring only waits.
        if let Ok(permit) = self.room.acquire().await {
            permit.forget();
        }
        self.replies.lock().push_back(reply);
        self.queued.fetch_add(1, Ordering::Release);
        self.waker.wake();
    }

    /// Records that the reader sent its last reply.
    pub(crate) fn reader_done(&self) {
        self.reader_done.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// The next thing the stream must act on. With `replies` false, only a stop is reported
    /// (the stream has already seen [`StreamEvent::ReaderDone`]). Cancel-safe: a reply is taken only
    /// when it is returned.
    pub(crate) fn next_event(&self, replies: bool) -> impl Future<Output = StreamEvent> + '_ {
        poll_fn(move |cx| self.poll_event(cx, replies))
    }

    fn poll_event(&self, cx: &mut Context<'_>, replies: bool) -> Poll<StreamEvent> {
        if let Some(event) = self.check(replies) {
            return Poll::Ready(event);
        }
        self.waker.register(cx.waker());
        // A event between the check and the registration found no waker; check again.
        match self.check(replies) {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }

    fn check(&self, replies: bool) -> Option<StreamEvent> {
        if let Some(end) = self.stopped() {
            return Some(StreamEvent::Stop(end));
        }
        if !replies {
            return None;
        }
        if self.queued.load(Ordering::Acquire) > 0 {
            if let Some(reply) = self.replies.lock().pop_front() {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.room.add_permits(1);
                return Some(StreamEvent::Reply(reply));
            }
        }
        // `reader_done` is set after the reader's last send counted its reply.
        (self.reader_done.load(Ordering::Acquire) && self.queued.load(Ordering::Acquire) == 0)
            .then_some(StreamEvent::ReaderDone)
    }
}

/// A reply the tests tell apart by `n`.
#[cfg(test)]
fn reply(n: u64) -> Reply {
    Reply {
        control: Control {
            request_id: Some(n.to_string()),
            message: crate::protocol::control::ControlMessage::Closed { reason: None },
        },
        then: Then::Continue,
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    fn request_id(event: StreamEvent) -> Option<String> {
        match event {
            StreamEvent::Reply(reply) => reply.control.request_id,
            _ => None,
        }
    }

    #[tokio::test]
    async fn replies_come_in_order_then_reader_done_and_stop_wins_over_both() {
        let control = StreamControl::default();
        control.send(reply(1)).await;
        control.send(reply(2)).await;
        control.reader_done();
        assert_eq!(
            request_id(control.next_event(true).await).as_deref(),
            Some("1")
        );
        assert_eq!(
            request_id(control.next_event(true).await).as_deref(),
            Some("2")
        );
        assert!(matches!(
            control.next_event(true).await,
            StreamEvent::ReaderDone
        ));
        control.send(reply(3)).await;
        control.stop(StreamEnd::ShuttingDown);
        control.stop(StreamEnd::Superseded);
        assert!(matches!(
            control.next_event(true).await,
            StreamEvent::Stop(StreamEnd::ShuttingDown)
        ));
    }

    #[test]
    fn a_stop_for_an_unreadable_stream_reports_its_fault() {
        for fault in [
            ReadFault::TooLarge,
            ReadFault::Framing,
            ReadFault::Encoding,
            ReadFault::Undecodable,
        ] {
            let control = StreamControl::default();
            control.stop(StreamEnd::Unreadable(fault));
            control.stop(StreamEnd::Superseded);
            assert_eq!(control.stopped(), Some(StreamEnd::Unreadable(fault)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_holds_the_reader_back_and_a_waiting_stream_is_woken() {
        let control = Arc::new(StreamControl::default());
        for n in 0..REPLY_QUEUE as u64 {
            control.send(reply(n)).await;
        }
        let mut extra = tokio::spawn({
            let control = control.clone();
            async move {
                control.send(reply(REPLY_QUEUE as u64)).await;
                control.reader_done();
            }
        });
        // Waiting cannot end while the queue is full, however long it is given.
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut extra)
            .await
            .is_err());
        for n in 0..=REPLY_QUEUE as u64 {
            let event = tokio::time::timeout(Duration::from_secs(5), control.next_event(true))
                .await
                .expect("the stream is woken");
            assert_eq!(request_id(event), Some(n.to_string()));
        }
        extra.await.expect("the reader finishes once there is room");
        assert!(matches!(
            control.next_event(true).await,
            StreamEvent::ReaderDone
        ));
        let waiter = tokio::spawn({
            let control = control.clone();
            async move {
                match control.next_event(false).await {
                    StreamEvent::Stop(end) => end,
                    _ => panic!("only a stop is reported once the reader is done"),
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        control.stop(StreamEnd::Superseded);
        let end = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting stream is woken")
            .expect("the waiter ran");
        assert_eq!(end, StreamEnd::Superseded);
    }
}

/// Model checks over every interleaving, or every one within a preemption bound where there are
/// too many (see `loom_check`); `.ci/run` runs them as
/// `RUSTFLAGS="--cfg arcp_loom" cargo test --release --lib loom_`. The reply queue holds one
/// there, so that a full queue is reached. A missed stop or reply shows as loom reporting a
/// deadlock: the stream waits with nobody left to wake it.
#[cfg(all(test, arcp_loom))]
mod loom_tests {
    use loom::{future::block_on, sync::Arc, thread};

    use super::*;
    use crate::sync::primitives::loom_check;

    /// The stream's side, as `connection.rs` drives it: until a stop, taking replies until
    /// the reader is done and only a stop after that. Returns the replies taken, in order, and
    /// the stop, or `None` if `until_reader_done` and the reader finished first.
    fn run_stream(
        control: &StreamControl,
        until_reader_done: bool,
    ) -> (Vec<String>, Option<StreamEnd>) {
        block_on(async {
            let mut taken = Vec::new();
            let mut reader_open = true;
            loop {
                match control.next_event(reader_open).await {
                    StreamEvent::Stop(end) => return (taken, Some(end)),
                    StreamEvent::Reply(reply) => {
                        assert!(reader_open, "a reply came after ReaderDone");
                        taken.push(reply.control.request_id.unwrap());
                    }
                    StreamEvent::ReaderDone => {
                        // Every reply the reader sent before it was done has been taken.
                        assert_eq!(control.queued.load(Ordering::Relaxed), 0);
                        assert!(control.replies.lock().is_empty());
                        if until_reader_done {
                            return (taken, None);
                        }
                        reader_open = false;
                    }
                }
            }
        })
    }

    #[test]
    fn loom_replies_come_in_order_none_lost_then_reader_done() {
        // Two replies through a queue of one: the second send waits for room.
        loom_check(Some(3), || {
            let control = Arc::new(StreamControl::default());
            let reader = thread::spawn({
                let control = control.clone();
                move || {
                    block_on(async {
                        control.send(reply(1)).await;
                        control.send(reply(2)).await;
                    });
                    control.reader_done();
                }
            });
            let (taken, stop) = run_stream(&control, true);
            assert_eq!(taken, ["1", "2"]);
            assert_eq!(stop, None);
            reader.join().unwrap();
        });
    }

    #[test]
    fn loom_a_stop_is_never_missed_by_a_waiting_stream() {
        // The stream has seen ReaderDone and waits for a stop only.
        loom_check(None, || {
            let control = Arc::new(StreamControl::default());
            let stopper = thread::spawn({
                let control = control.clone();
                move || control.stop(StreamEnd::Superseded)
            });
            let end = block_on(control.next_event(false));
            assert!(matches!(end, StreamEvent::Stop(StreamEnd::Superseded)));
            stopper.join().unwrap();
        });
    }

    #[test]
    fn loom_a_stop_racing_replies_and_reader_done_ends_the_stream() {
        loom_check(Some(3), || {
            let control = Arc::new(StreamControl::default());
            let reader = thread::spawn({
                let control = control.clone();
                move || {
                    block_on(control.send(reply(1)));
                    control.reader_done();
                }
            });
            let stopper = thread::spawn({
                let control = control.clone();
                move || control.stop(StreamEnd::ShuttingDown)
            });
            let (taken, stop) = run_stream(&control, false);
            assert_eq!(stop, Some(StreamEnd::ShuttingDown));
            assert!(taken.is_empty() || taken == ["1"]);
            reader.join().unwrap();
            stopper.join().unwrap();
        });
    }
}
