//! Server frames as the gRPC stream sends them, with job frames copied from the session's
//! event log.
//!
//! A job frame is stored in its protobuf encoding
//! ([`StoredFrame`](crate::encoding::StoredFrame)), so sending one is writing
//! the three fields of this delivery (`arcp`, `session_id`, `event_seq`) between the stored
//! bytes: nothing is converted or encoded again, however many times the frame is replayed.

use prost::{bytes::BufMut, Message};

use crate::{ids::SessionId, proto, store::log::LogEntry};

/// One frame of the gRPC session stream.
pub enum WireFrame {
    /// A frame already in protobuf form: the welcome and the other control frames. Boxed, as
    /// they are rare and large, so the job frames stay small to move.
    Message(Box<proto::ServerFrame>),
    /// A job frame from the session's log.
    Job {
        /// The session it belongs to, for the envelope.
        session: Option<SessionId>,
        /// The frame as logged.
        entry: LogEntry,
    },
}

impl WireFrame {
    /// Appends the frame's protobuf encoding (an `arcp.v1.ServerFrame`) to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) -> Result<(), NoRoom> {
        match self {
            WireFrame::Message(frame) => frame.encode(buf).map_err(|e| NoRoom {
                needed: e.required_capacity(),
                remaining: e.remaining(),
            }),
            WireFrame::Job { session, entry } => {
                let session = session.as_ref().map_or("", SessionId::as_str);
                let framed = entry.frame.framed(session, entry.seq.get());
                let needed = framed.len();
                if needed > buf.remaining_mut() {
                    return Err(NoRoom {
                        needed,
                        remaining: buf.remaining_mut(),
                    });
                }
                framed.put(buf);
                Ok(())
            }
        }
    }
}

/// A frame did not fit in a fixed-size buffer.
#[derive(Debug, thiserror::Error)]
#[error("a {needed}-byte frame does not fit in the {remaining} bytes left in the buffer")]
pub struct NoRoom {
    needed: usize,
    remaining: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        encoding::StoredFrame,
        ids::{EventSeq, JobId},
        protocol::job_frame::{JobFrame, JobPayload},
    };

    #[test]
    fn a_full_buffer_is_an_error_not_a_panic() {
        let frame = StoredFrame::encode(&JobFrame {
            job_id: JobId::new("job_1"),
            trace_id: None,
            payload: JobPayload::Cancelled { reason: None },
        });
        let mut room = [0u8; 8];
        let error = WireFrame::Job {
            session: None,
            entry: LogEntry {
                seq: EventSeq(1),
                frame,
            },
        }
        .encode(&mut &mut room[..])
        .expect_err("8 bytes cannot hold a frame");
        assert_eq!(error.remaining, 8);
        assert!(error.needed > 8, "{error}");
    }
}
