//! Identifier newtypes. Each wraps an `Arc<str>` so the hot path clones them without copying
//! bytes, and so a session id can never be passed where a job id is expected.

use std::{fmt, sync::Arc};

use crate::error::{excerpt, ArcpError, EXCERPT_CHARS};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The prefix every generated id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// Mints a fresh, time-ordered, globally unique id.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, uuid::Uuid::now_v7().simple()).into())
            }

            /// Wraps an id received from a peer or a store.
            pub fn new(id: impl Into<Arc<str>>) -> Self {
                Self(id.into())
            }

            /// The id as it appears on the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

string_id!(
    /// Identifies a session (§6); stable across resumes.
    SessionId,
    "sess_"
);
string_id!(
    /// Identifies a job (§7).
    JobId,
    "job_"
);
string_id!(
    /// Identifies a provisioned credential (§9.8.1) within its upstream: what rotation,
    /// revocation and the ledger of outstanding credentials name it by. Never its value.
    CredentialId,
    "cred_"
);

/// A W3C `traceparent` (or any opaque trace id a client sends) carried on every frame of a job
/// (§11).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TraceId(Arc<str>);

impl TraceId {
    /// Wraps a trace id received from a client.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The trace id as it appears on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The authenticated identity behind a session. Authorization decisions (resume, cancel) compare
/// principals, never tokens.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(Arc<str>);

impl Principal {
    /// Names a principal.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The principal's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({:?})", &*self.0)
    }
}

/// Names one gateway process among the replicas sharing a store: what owns a job or a
/// session there, and what a surviving replica names when it ends the jobs of a lost one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ReplicaId(Arc<str>);

impl ReplicaId {
    /// Names a replica, e.g. from `--replica-id`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// This machine's host name and a random suffix, so that two processes on one host, or a
    /// restarted one, never share an id.
    pub fn generate() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "gateway".to_owned());
        let suffix: u32 = rand::random();
        Self(format!("{host}-{suffix:08x}").into())
    }

    /// The replica's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One process's run as a replica: its [`ReplicaId`] and a random token drawn when it starts,
/// so that a process restarted under the same `--replica-id` is told apart from the one before
/// it. What a replica writes to a shared store names its instance, and what a surviving
/// replica fences out when it declares one lost is that instance, not the id.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ReplicaInstance {
    replica: ReplicaId,
    /// `REPLICA/TOKEN`, as stores keep it.
    name: Arc<str>,
}

impl ReplicaInstance {
    /// A new run of `replica`, with a fresh token.
    pub fn start(replica: ReplicaId) -> Self {
        let token: u64 = rand::random();
        Self::with_token(replica, &format!("{token:016x}"))
    }

    /// The run of `replica` named by `token`, as a store recorded it.
    pub fn with_token(replica: ReplicaId, token: &str) -> Self {
        let name = format!("{replica}/{token}").into();
        ReplicaInstance { replica, name }
    }

    /// The replica this is a run of.
    pub fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    /// The token that tells this run from the replica's others.
    pub fn token(&self) -> &str {
        &self.name[self.replica.as_str().len() + 1..]
    }

    /// `REPLICA/TOKEN`: the instance as stores name it.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ReplicaInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A session-scoped event sequence number (§8.3). Sequences start at 1; `EventSeq::ZERO` means
/// "nothing yet", which is what a client that has seen no event presents on resume.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct EventSeq(pub u64);

impl EventSeq {
    /// Before the first event.
    pub const ZERO: EventSeq = EventSeq(0);

    /// The sequence number that follows this one.
    pub fn next(self) -> EventSeq {
        EventSeq(self.0 + 1)
    }

    /// The raw number, as it goes on the wire.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for EventSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which attachment of a stream to a session this is: every attach gets a higher epoch than
/// the one before, and every operation a stream performs on its session's shared state carries
/// its epoch, so a stream that was taken over (on this process or another) cannot act on the
/// session after its successor attached. `Epoch::ZERO` is before the first attachment.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    /// Before the first attachment.
    pub const ZERO: Epoch = Epoch(0);

    /// The epoch of the next attachment.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }

    /// The raw number, for stores.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An agent as a submission names it: `name` or `name@version` (§7.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AgentRef<'a> {
    name: &'a str,
    version: Option<&'a str>,
}

impl<'a> AgentRef<'a> {
    /// Splits `name` / `name@version` per the §7.5 grammar; `INVALID_REQUEST` otherwise.
    pub fn parse(reference: &'a str) -> Result<AgentRef<'a>, ArcpError> {
        let (name, version) = match reference.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (reference, None),
        };
        if !AgentRef::valid_name(name) || version.is_some_and(|v| !AgentRef::valid_version(v)) {
            return Err(ArcpError::InvalidRequest(format!(
                "agent {} does not match `name` or `name@version` (§7.5)",
                excerpt(reference, EXCERPT_CHARS)
            )));
        }
        Ok(AgentRef { name, version })
    }

    /// The agent's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The pinned version, if any.
    pub fn version(&self) -> Option<&'a str> {
        self.version
    }

    /// `name ::= [a-z0-9][a-z0-9._-]*`
    pub fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    }

    /// `version ::= [a-zA-Z0-9.+_-]+`
    pub fn valid_version(version: &str) -> bool {
        !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+_-".contains(c))
    }
}
