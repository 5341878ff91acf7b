//! The frames this replica's committer appended to a log last, kept for a reader on this
//! replica, which then need not read back from Redis the frames it would get byte for byte:
//! their way back and their decoding go, and so, mostly, does the round trip.
//!
//! The tail holds only frames Redis acknowledged, each with the number Redis gave it, in an
//! unbroken run (a frame appended by another replica in between starts the run over). The
//! append script checks, as a read of the log's metadata would, the log's incarnation, that
//! Redis holds every frame the handle saw and that the stream holds as many entries as the
//! metadata counts; its answer says how far eviction went, which the tail keeps
//! ([`Vouched`]). A read served from the tail while nothing newer than the last answer is known
//! of needs no round trip of its own: Redis vouched for those frames when it took them, and a
//! loss after that is seen by the next append or read of the stream. A read that knows of
//! newer frames (another replica appended) checks the metadata first.
//!
//! A tail keeps frames only while a stream on this replica reads the log live: from its first
//! waiting read until the session detaches. A session read on another replica, or on none,
//! costs this one nothing.

use std::collections::VecDeque;

use crate::{encoding::StoredFrame, ids::EventSeq, store::log::LogEntry};

/// The most frames a tail keeps, and about the most bytes. It holds what the live reader has
/// not read yet, which pacing keeps within the flow window (8,192 frames by default) and the
/// frames a job has on their way; a reader further behind reads the stream.
const MAX_FRAMES: usize = 16 * 1024;
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// What the newest append's answer said of the log: the newest frame (the batch's last) and
/// the last one evicted. Both only grow, so of answers handled out of order the larger of each
/// is the later answer's.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(super) struct Vouched {
    pub(super) newest: EventSeq,
    pub(super) evicted_through: EventSeq,
}

/// An unbroken run of the frames this replica appended to one log last.
#[derive(Default)]
pub(super) struct Tail {
    frames: VecDeque<LogEntry>,
    bytes: usize,
    /// Whether a stream here reads the log live.
    read_live: bool,
    vouched: Vouched,
}

impl Tail {
    /// Keeps `frames`, which Redis numbered from `first` on, while the log is read live here,
    /// and what the append's answer vouched for.
    pub(super) fn appended(&mut self, first: EventSeq, frames: &[StoredFrame], vouched: Vouched) {
        if !self.read_live {
            return;
        }
        self.vouched = Vouched {
            newest: self.vouched.newest.max(vouched.newest),
            evicted_through: self.vouched.evicted_through.max(vouched.evicted_through),
        };
        if self
            .frames
            .back()
            .is_some_and(|last| last.seq.next() != first)
        {
            self.frames.clear();
            self.bytes = 0;
        }
        let mut seq = first;
        for frame in frames {
            self.bytes += frame.len();
            self.frames.push_back(LogEntry {
                seq,
                frame: frame.clone(),
            });
            seq = seq.next();
        }
        while self.frames.len() > MAX_FRAMES || self.bytes > MAX_BYTES {
            let Some(oldest) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= oldest.frame.len();
        }
    }

    /// The frames after `after` it holds, at most `max` of them, if it holds the first.
    pub(super) fn read(&self, after: EventSeq, max: usize) -> Option<Vec<LogEntry>> {
        // The frame before the oldest held: sequence numbers start at 1.
        let before = self.frames.front()?.seq.get() - 1;
        let from = usize::try_from(after.get().checked_sub(before)?).ok()?;
        if from >= self.frames.len() {
            return None;
        }
        let to = self.frames.len().min(from.saturating_add(max));
        Some(self.frames.range(from..to).cloned().collect())
    }

    /// What the newest append's answer vouched for, if it is not older than `known`, the newest
    /// frame the handle heard of: else a frame the answers did not see was appended since.
    pub(super) fn vouched(&self, known: u64) -> Option<Vouched> {
        (self.vouched.newest.get() >= known).then_some(self.vouched)
    }

    /// Whether a stream here reads the log live.
    pub(super) fn is_live(&self) -> bool {
        self.read_live
    }

    /// Forgets the frames through `through`: the live reader has them. Until [`Tail::stop`],
    /// the tail keeps what is appended.
    pub(super) fn taken(&mut self, through: EventSeq) {
        self.read_live = true;
        while self.frames.front().is_some_and(|f| f.seq <= through) {
            if let Some(oldest) = self.frames.pop_front() {
                self.bytes -= oldest.frame.len();
            }
        }
    }

    /// Forgets every frame and keeps none until the log is read live again: its session
    /// detached.
    pub(super) fn stop(&mut self) {
        *self = Tail::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Timestamp,
        ids::JobId,
        protocol::{
            event::EventBody,
            job_frame::{JobFrame, JobPayload},
        },
    };

    fn frames(count: usize) -> Vec<StoredFrame> {
        (0..count)
            .map(|n| {
                StoredFrame::encode(&JobFrame {
                    job_id: JobId::new("job_t"),
                    trace_id: None,
                    payload: JobPayload::Event {
                        ts: Timestamp::now(),
                        body: EventBody::Thought {
                            text: n.to_string(),
                        },
                    },
                })
            })
            .collect()
    }

    fn seqs(entries: Option<Vec<LogEntry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.seq.get()).collect())
    }

    impl Tail {
        /// Keeps `frames` from `first` on, as an append that evicted nothing answered them.
        fn appended_run(&mut self, first: EventSeq, frames: &[StoredFrame]) {
            let newest = EventSeq(first.get() + frames.len() as u64 - 1);
            self.appended(
                first,
                frames,
                Vouched {
                    newest,
                    evicted_through: EventSeq::ZERO,
                },
            );
        }
    }

    /// A tail read live.
    fn live() -> Tail {
        let mut tail = Tail::default();
        tail.taken(EventSeq::ZERO);
        tail
    }

    #[test]
    fn serves_reads_from_a_frame_it_holds() {
        let mut tail = live();
        tail.appended_run(EventSeq(5), &frames(4));
        assert_eq!(seqs(tail.read(EventSeq(4), 10)), Some(vec![5, 6, 7, 8]));
        assert_eq!(seqs(tail.read(EventSeq(6), 1)), Some(vec![7]));
        assert_eq!(seqs(tail.read(EventSeq(6), 10)), Some(vec![7, 8]));
        assert_eq!(
            seqs(tail.read(EventSeq(3), 10)),
            None,
            "frame 4 is not here"
        );
        assert_eq!(seqs(tail.read(EventSeq(8), 10)), None, "nothing after 8");
    }

    #[test]
    fn a_gap_starts_the_run_over_and_taken_frames_go() {
        let mut tail = live();
        tail.appended_run(EventSeq(1), &frames(3));
        tail.appended_run(EventSeq(4), &frames(2));
        assert_eq!(seqs(tail.read(EventSeq(0), 10)), Some(vec![1, 2, 3, 4, 5]));
        // Frames 6 and 7 came from another replica.
        tail.appended_run(EventSeq(8), &frames(2));
        assert_eq!(seqs(tail.read(EventSeq(0), 10)), None);
        assert_eq!(seqs(tail.read(EventSeq(5), 10)), None);
        assert_eq!(seqs(tail.read(EventSeq(7), 10)), Some(vec![8, 9]));
        tail.taken(EventSeq(8));
        assert_eq!(seqs(tail.read(EventSeq(7), 10)), None);
        assert_eq!(seqs(tail.read(EventSeq(8), 10)), Some(vec![9]));
        tail.appended_run(EventSeq(10), &frames(MAX_FRAMES));
        assert_eq!(tail.frames.len(), MAX_FRAMES);
        assert_eq!(tail.frames.front().map(|f| f.seq), Some(EventSeq(10)));
    }

    #[test]
    fn vouches_with_the_newest_answer_unless_a_newer_frame_is_known() {
        let mut tail = live();
        let vouched = |newest, evicted_through| Vouched {
            newest: EventSeq(newest),
            evicted_through: EventSeq(evicted_through),
        };
        // Two answers handled in the opposite order to the one Redis gave them in.
        tail.appended(EventSeq(4), &frames(2), vouched(5, 2));
        tail.appended(EventSeq(1), &frames(3), vouched(3, 1));
        assert_eq!(tail.vouched(5), Some(vouched(5, 2)));
        assert_eq!(tail.vouched(0), Some(vouched(5, 2)));
        assert_eq!(tail.vouched(6), None, "frame 6 came from elsewhere");
        tail.stop();
        assert_eq!(
            tail.vouched(1),
            None,
            "a tail that stopped vouches for nothing"
        );
    }

    #[test]
    fn keeps_frames_only_while_read_live() {
        let mut tail = Tail::default();
        tail.appended_run(EventSeq(1), &frames(2));
        assert_eq!(seqs(tail.read(EventSeq(0), 10)), None);
        tail.taken(EventSeq(2));
        tail.appended_run(EventSeq(3), &frames(2));
        assert_eq!(seqs(tail.read(EventSeq(2), 10)), Some(vec![3, 4]));
        tail.stop();
        assert_eq!(seqs(tail.read(EventSeq(2), 10)), None);
        tail.appended_run(EventSeq(5), &frames(1));
        assert_eq!(seqs(tail.read(EventSeq(4), 10)), None);
    }
}
