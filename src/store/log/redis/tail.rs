//! The frames this replica's committer appended to a log last, kept for a reader on this
//! replica, which then reads the log's metadata from Redis but not the frames it would get back
//! byte for byte: the round trip stays, the frames' way back and their decoding go.
//!
//! The tail holds only frames Redis acknowledged, each with the number Redis gave it, in an
//! unbroken run (a frame appended by another replica in between starts the run over). A read
//! served from it still checks the log's metadata as a read from the stream does (the log's
//! incarnation, that Redis holds every frame the handle saw, how far eviction went) and, as
//! the stream is not read, that it holds as many entries as the metadata counts; so a loss is
//! seen as surely as by a read of the stream.
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

/// An unbroken run of the frames this replica appended to one log last.
#[derive(Default)]
pub(super) struct Tail {
    frames: VecDeque<LogEntry>,
    bytes: usize,
    /// Whether a stream here reads the log live.
    read_live: bool,
}

impl Tail {
    /// Keeps `frames`, which Redis numbered from `first` on, while the log is read live here.
    pub(super) fn appended(&mut self, first: EventSeq, frames: &[StoredFrame]) {
        if !self.read_live {
            return;
        }
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

    /// A tail read live.
    fn live() -> Tail {
        let mut tail = Tail::default();
        tail.taken(EventSeq::ZERO);
        tail
    }

    #[test]
    fn serves_reads_from_a_frame_it_holds() {
        let mut tail = live();
        tail.appended(EventSeq(5), &frames(4));
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
        tail.appended(EventSeq(1), &frames(3));
        tail.appended(EventSeq(4), &frames(2));
        assert_eq!(seqs(tail.read(EventSeq(0), 10)), Some(vec![1, 2, 3, 4, 5]));
        // Frames 6 and 7 came from another replica.
        tail.appended(EventSeq(8), &frames(2));
        assert_eq!(seqs(tail.read(EventSeq(0), 10)), None);
        assert_eq!(seqs(tail.read(EventSeq(5), 10)), None);
        assert_eq!(seqs(tail.read(EventSeq(7), 10)), Some(vec![8, 9]));
        tail.taken(EventSeq(8));
        assert_eq!(seqs(tail.read(EventSeq(7), 10)), None);
        assert_eq!(seqs(tail.read(EventSeq(8), 10)), Some(vec![9]));
        tail.appended(EventSeq(10), &frames(MAX_FRAMES));
        assert_eq!(tail.frames.len(), MAX_FRAMES);
        assert_eq!(tail.frames.front().map(|f| f.seq), Some(EventSeq(10)));
    }

    #[test]
    fn keeps_frames_only_while_read_live() {
        let mut tail = Tail::default();
        tail.appended(EventSeq(1), &frames(2));
        assert_eq!(seqs(tail.read(EventSeq(0), 10)), None);
        tail.taken(EventSeq(2));
        tail.appended(EventSeq(3), &frames(2));
        assert_eq!(seqs(tail.read(EventSeq(2), 10)), Some(vec![3, 4]));
        tail.stop();
        assert_eq!(seqs(tail.read(EventSeq(2), 10)), None);
        tail.appended(EventSeq(5), &frames(1));
        assert_eq!(seqs(tail.read(EventSeq(4), 10)), None);
    }
}
