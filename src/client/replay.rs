//! How much of a resumed stream was replay: the frames the gateway had logged before it resumed
//! the session, told apart from the live ones after them by the gateway's own clock.
//!
//! The protocol does not mark where a resume's replay ends, so right after the welcome the
//! client asks the gateway for its time (a `session.ping`, whose pong says when it was
//! received) and compares it with the time each frame carries: an event's `ts`, a terminal
//! frame's `completed_at`. A frame stamped at or before the pong was logged while the client
//! was away. Frames that carry no time (`job.accepted`, `job.cancelled`, `job.subscribed`)
//! count with the replay until a live frame came. Both times are the gateway's, to the
//! millisecond: no clock of the client's is compared with them.

use crate::{
    clock::Timestamp,
    proto::{server_frame::Payload as Out, ServerFrame},
};

/// What one resume of the session replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resumed {
    /// The newest `event_seq` handed over before the drop: the replay starts after it.
    pub after_seq: u64,
    /// The job frames handed over since the resume that the gateway had logged before it.
    pub replayed: u64,
    /// Whether a frame logged after the resume came, which ends the replay.
    pub caught_up: bool,
}

/// The count of one resume's replay as its frames are handed over.
#[derive(Debug)]
pub(super) struct Replay {
    resumed: Resumed,
    /// The gateway's time just after it resumed the session; `None` when it closed the session
    /// before saying, and nothing more is replayed.
    resumed_at: Option<Timestamp>,
}

impl Replay {
    /// A resume after `after_seq`, which the gateway made at `resumed_at`.
    pub(super) fn new(after_seq: u64, resumed_at: Option<Timestamp>) -> Replay {
        Replay {
            resumed: Resumed {
                after_seq,
                replayed: 0,
                caught_up: resumed_at.is_none(),
            },
            resumed_at,
        }
    }

    /// What the resume replayed so far.
    pub(super) fn resumed(&self) -> &Resumed {
        &self.resumed
    }

    /// Counts `frame`, a job frame handed over.
    pub(super) fn count(&mut self, frame: &ServerFrame) {
        if self.resumed.caught_up {
            return;
        }
        match (stamped(frame), self.resumed_at) {
            (Some(at), Some(resumed_at)) if at > resumed_at => self.resumed.caught_up = true,
            _ => self.resumed.replayed += 1,
        }
    }
}

/// The time the gateway stamped on `frame`, if it carries one.
fn stamped(frame: &ServerFrame) -> Option<Timestamp> {
    let text = match &frame.payload {
        Some(Out::JobEvent(e)) => &e.ts,
        Some(Out::JobResult(r)) => &r.completed_at,
        Some(Out::JobError(e)) => &e.completed_at,
        _ => return None,
    };
    Timestamp::parse_rfc3339(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, ServerFrame};

    fn event_at(ts: &str) -> ServerFrame {
        ServerFrame {
            event_seq: 1,
            payload: Some(Out::JobEvent(proto::JobEvent {
                kind: "log".into(),
                ts: ts.into(),
                body: None,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn frames_stamped_up_to_the_resume_are_replay_and_the_first_later_one_ends_it() {
        let at = Timestamp::parse_rfc3339("2026-05-13T19:42:13.500Z");
        let mut replay = Replay::new(7, at);
        replay.count(&event_at("2026-05-13T19:42:13.100Z"));
        replay.count(&ServerFrame::default());
        replay.count(&event_at("2026-05-13T19:42:13.500Z"));
        assert_eq!(
            replay.resumed(),
            &Resumed {
                after_seq: 7,
                replayed: 3,
                caught_up: false
            }
        );
        replay.count(&event_at("2026-05-13T19:42:13.501Z"));
        replay.count(&event_at("2026-05-13T19:42:13.000Z"));
        assert_eq!(replay.resumed().replayed, 3);
        assert!(replay.resumed().caught_up);
    }

    #[test]
    fn a_resume_the_gateway_gave_no_time_for_replays_nothing() {
        let mut replay = Replay::new(3, None);
        replay.count(&event_at("2026-05-13T19:42:13.100Z"));
        assert_eq!(replay.resumed().replayed, 0);
        assert!(replay.resumed().caught_up);
    }
}
