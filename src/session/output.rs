//! What a connection's outbound half yields to its transport: control frames, job frames read
//! from the session's log, and the reason the stream ends.

use crate::{
    ids::SessionId,
    protocol::{client::ReadFault, control::Control},
    store::log::LogEntry,
};

/// A frame on its way to one connection: a control frame, or a logged job frame.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// Session control. Boxed: control frames are rare and large, and every job frame is
    /// moved through the stream as this type.
    Control(Box<Control>),
    /// A job frame from the session's log; its encoding is shared with the log and other
    /// readers.
    Job(LogEntry),
}

/// Why a connection's outbound stream ended other than by the client going away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The session was resumed on another stream, which now owns it.
    Superseded,
    /// The gateway is shutting down; resume elsewhere.
    ShuttingDown,
    /// The transport could read no further client frames, for this reason; the `session.error`
    /// before this end said what was wrong. An attached session stays resumable.
    Unreadable(ReadFault),
}

/// Everything a connection's outbound stream yields, with the session it belongs to.
#[derive(Clone, Debug)]
pub enum OutboundItem {
    /// A frame for the client, stamped with the session id (absent before a welcome).
    Frame(Option<SessionId>, Outbound),
    /// The stream ends for this reason.
    End(StreamEnd),
}
