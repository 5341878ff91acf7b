//! How a handle knows that the log it reaches is still the one it was made for, and what it
//! says when it is not.

use crate::{error::ArcpError, ids::SessionId};

/// One life of a session's log, from the `create` that began it: a random id kept in the log's
/// metadata and in every handle. A handle whose log Redis lost (flushed, restarted without
/// persistence, failed over to a replica that never had it) finds no id, and one whose log a
/// later `create` replaced finds another; either fails, rather than reading an empty or partial
/// log as if it were whole. (What centrifuge calls a stream's epoch; named apart from the
/// attachment [`Epoch`](crate::ids::Epoch).)
#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) struct Incarnation(String);

/// The hex digits of an incarnation.
const DIGITS: usize = 16;

impl Incarnation {
    /// A fresh one, for a log being created.
    pub(super) fn random() -> Self {
        Incarnation(format!(
            "{:0width$x}",
            rand::random::<u64>(),
            width = DIGITS
        ))
    }

    /// An incarnation as the metadata holds it.
    pub(super) fn parse(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text).ok()?;
        (text.len() == DIGITS && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Incarnation(text.to_owned()))
    }

    /// As the scripts take it.
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text`, from Redis, names this incarnation.
    pub(super) fn is(&self, text: &[u8]) -> bool {
        self.0.as_bytes() == text
    }
}

/// Why a handle's log is gone; once a handle knows, every call through it fails so.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Gone {
    /// The session's log was removed.
    Removed,
    /// The session's log was created again since the handle was made.
    Replaced,
    /// Redis no longer has the log at all.
    Lost,
    /// Redis has the log without events a handle saw in it, or without events it says it holds.
    LostEvents,
}

impl Gone {
    /// The error every call through a handle of a log gone this way fails with.
    pub(super) fn error(self, session: &SessionId) -> ArcpError {
        ArcpError::ResumeWindowExpired(match self {
            Gone::Removed => format!("session {session} has no event log"),
            Gone::Replaced => format!(
                "session {session}'s event log was created anew (or lost and created anew) \
                 since this handle on it was opened"
            ),
            Gone::Lost => format!(
                "the store lost session {session}'s event log (Redis was flushed or restarted \
                 without persistence)"
            ),
            Gone::LostEvents => format!(
                "the store lost events of session {session} (Redis failed over to a replica \
                 that had not received them, or lost part of the log)"
            ),
        })
    }
}

/// The error `open` fails with when Redis has no log for `session` and this replica never had
/// a handle on one: removed long ago, never created, or lost.
pub(super) fn no_log(session: &SessionId) -> ArcpError {
    ArcpError::ResumeWindowExpired(format!(
        "session {session} has no event log (it was removed, or the store lost it: Redis was \
         flushed or restarted without persistence)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incarnation_reads_back_as_itself_and_nothing_else_does() {
        let one = Incarnation::random();
        assert_eq!(
            Incarnation::parse(one.as_str().as_bytes()),
            Some(one.clone())
        );
        assert!(one.is(one.as_str().as_bytes()));
        assert_ne!(Incarnation::random(), one);
        for bad in [&b""[..], b"0123", b"0123456789abcdeg", b"0123456789abcdef0"] {
            assert_eq!(Incarnation::parse(bad), None);
        }
    }
}
