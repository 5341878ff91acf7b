//! The ARCP messages as transport-neutral Rust types. Transports (gRPC today) convert their
//! frames to and from these; the session, job and log layers speak only these.
//!
//! - [`client`]: what a client sends (`session.hello`, `job.submit`, ...).
//! - [`control`]: the session-control frames the runtime sends on one connection (welcome,
//!   errors, pong, the job listing).
//! - [`job_frame`]: the job frames the runtime logs with an `event_seq` (`job.accepted`,
//!   `job.event`, `job.result`, ...).
//! - [`event`]: the bodies of `job.event` (§8.2).
//! - [`credential`]: provisioned credentials (§9.8).

pub mod client;
pub mod control;
pub mod credential;
pub mod event;
pub mod job_frame;

use std::collections::BTreeMap;

/// A lease: capability namespace (`fs.read`, `cost.budget`, ...) to patterns (§9.2).
pub type Lease = BTreeMap<String, Vec<String>>;

/// Free-form JSON (job input, results, tool arguments).
pub type Json = serde_json::Value;

/// The features this runtime implements end to end and therefore advertises (§6.2). A feature
/// joins this list only once it works through the real server.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "heartbeat",
    "ack",
    "list_jobs",
    "subscribe",
    "lease_expires_at",
    "cost.budget",
    "model.use",
    "provisioned_credentials",
    "progress",
    "result_chunk",
    "agent_versions",
];

/// The protocol version written in every envelope's `arcp` field.
pub const PROTOCOL_VERSION: &str = "1.1";

/// A negotiated feature set (§6.2): the features both peers named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features(Vec<&'static str>);

impl Features {
    /// Everything this runtime supports.
    pub fn supported() -> Features {
        Features(SUPPORTED_FEATURES.to_vec())
    }

    /// These features less `feature`, for a runtime configured without what it needs.
    pub fn without(mut self, feature: &str) -> Features {
        self.0.retain(|f| *f != feature);
        self
    }

    /// The effective set (§6.2): the features of this (runtime's) set the client also named.
    pub fn negotiate<S: AsRef<str>>(&self, requested: &[S]) -> Features {
        Features(
            self.0
                .iter()
                .copied()
                .filter(|f| requested.iter().any(|o| o.as_ref() == *f))
                .collect(),
        )
    }

    /// Whether `feature` was negotiated.
    pub fn has(&self, feature: &str) -> bool {
        self.0.contains(&feature)
    }

    /// The names, for the welcome.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|f| (*f).to_owned()).collect()
    }
}
