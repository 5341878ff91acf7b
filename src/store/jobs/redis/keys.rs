//! The directory's key and channel names, as [`super::scripts`] also derives them.

use crate::{
    ids::{JobId, Principal, ReplicaId, SessionId},
    store::redis::replica_key,
};

/// Names under one prefix.
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The job's hash: its entry, owner, count and cancel requests.
    pub(super) fn job(&self, id: &JobId) -> String {
        format!("{}:{{job:{id}}}", self.prefix)
    }

    /// The sessions whose subscriptions to the job are counted.
    pub(super) fn subscribers(&self, id: &JobId) -> String {
        format!("{}:subscribers", self.job(id))
    }

    /// The session's running jobs, as its cap counts them.
    pub(super) fn session_running(&self, session: &SessionId) -> String {
        format!("{}:{{{session}}}:jobs-running", self.prefix)
    }

    /// The running jobs the session's subscriptions are counted on.
    pub(super) fn session_subscribed(&self, session: &SessionId) -> String {
        format!("{}:{{{session}}}:jobs-subscribed", self.prefix)
    }

    /// The principal's running jobs, as its cap counts them.
    pub(super) fn principal_running(&self, principal: &Principal) -> String {
        format!("{}:{{jobs:{}}}:running", self.prefix, tag(principal))
    }

    /// Every job of the principal, in id order.
    pub(super) fn principal_index(&self, principal: &Principal) -> String {
        format!("{}:{{jobs:{}}}:index", self.prefix, tag(principal))
    }

    /// Every job, in id order.
    pub(super) fn all(&self) -> String {
        format!("{}:jobs:index", self.prefix)
    }

    /// The ended jobs by when they ended.
    pub(super) fn finished(&self) -> String {
        format!("{}:jobs:finished", self.prefix)
    }

    /// The jobs of the replica with cancel requests it has not yet read.
    pub(super) fn replica_cancels(&self, replica: &str) -> String {
        format!("{}:{{replica:{replica}}}:cancels", self.prefix)
    }

    /// The jobs the replica runs (and some it ran, until a takeover reads them).
    pub(super) fn replica_jobs(&self, replica: &ReplicaId) -> String {
        replica_key(&self.prefix, replica, "jobs")
    }

    /// On a Cluster, the session and principal of each job the replica runs, from the
    /// insert's first step on, so that a takeover can undo an insert whose job's hash was
    /// never written.
    pub(super) fn replica_inserts(&self, replica: &ReplicaId) -> String {
        replica_key(&self.prefix, replica, "job-holders")
    }

    /// The replica's lease (`store::replicas::redis`), which an insert checks.
    pub(super) fn replica_lease(&self, replica: &ReplicaId) -> String {
        replica_key(&self.prefix, replica, "lease")
    }

    /// The channel the replica hears requests and replies on.
    pub(super) fn replica_channel(&self, replica: &str) -> String {
        format!("{}:replica:{replica}", self.prefix)
    }
}

/// The principal as it appears inside a hash tag, which ends at the first `}`.
fn tag(principal: &Principal) -> String {
    principal.as_str().replace('}', "%7D")
}
