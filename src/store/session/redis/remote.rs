//! [`Remote`]: the store's side in Redis, as every record of one store reaches it: the
//! connection, the scripts, how a session's keys are named, and reading a record whole.

use crate::{
    error::ArcpError,
    ids::{Epoch, EventSeq, Principal, ReplicaId, ReplicaInstance, SessionId},
    store::{
        redis::{replica_key, RedisConnection},
        session::Flow,
    },
};

use super::{copy::Versioned, repairs::Repairs, scripts::Scripts};

/// The connection, the scripts, and the replica instance whose attachments the store makes.
pub(super) struct Remote {
    pub(super) redis: RedisConnection,
    pub(super) scripts: Scripts,
    pub(super) instance: ReplicaInstance,
    /// The sessions this replica attached: `attached_on(replica)` for this one.
    pub(super) attached_here: String,
    /// The repairs of slots this replica's cut-off creates held, under way (on a Cluster).
    pub(super) repairs: Repairs,
}

/// A session's keys and channel.
#[derive(Clone)]
pub(super) struct Names {
    /// The record, a hash.
    pub(super) record: String,
    /// The attachment lock: its holder's token.
    pub(super) lock: String,
    /// Where the scripts publish every change, and the lock its releases.
    pub(super) channel: String,
    /// On a Cluster, the mark of a create given up on (`slots.rs`), refusing its record.
    pub(super) given_up: String,
}

/// A record as read whole.
pub(super) struct Snapshot {
    pub(super) principal: Principal,
    pub(super) state: Versioned,
    /// The version that set the features.
    pub(super) features_version: u64,
    /// The features' names, as the record keeps them.
    pub(super) features: String,
}

/// A record's fields as `HMGET` returns them: principal, version, epoch, attached, delivered,
/// acked, features version, features.
type Fields = (
    Option<String>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<String>,
);

impl Remote {
    /// `session`'s keys and channel, under the hash tag `{SESSION}`.
    pub(super) fn names(&self, session: &SessionId) -> Names {
        let base = format!("{}:{{{session}}}", self.redis.prefix());
        Names {
            record: format!("{base}:session"),
            lock: format!("{base}:attach-lock"),
            channel: format!("{base}:changes"),
            given_up: format!("{base}:given-up"),
        }
    }

    /// The hash of the sessions `replica` attached, each to the epoch of its attachment
    /// there, under the replica's hash tag `{replica:REPLICA}`.
    pub(super) fn attached_on(&self, replica: &ReplicaId) -> String {
        replica_key(self.redis.prefix(), replica, "sessions")
    }

    /// The key of `principal`'s sessions, a sorted set by the time each joined, under the
    /// hash tag `{sessions:PRINCIPAL}` (which would end at the principal's first `}`, so that
    /// is escaped).
    pub(super) fn joined(&self, principal: &Principal) -> String {
        let tag = principal.as_str().replace('}', "%7D");
        format!("{}:{{sessions:{tag}}}:joined", self.redis.prefix())
    }

    /// Takes attachment `epoch` of `session` off this replica's attached sessions: it ended,
    /// or never began. Best effort: an entry left behind costs a takeover a refused detach.
    pub(super) async fn unindex(&self, session: &SessionId, epoch: Epoch) {
        let unindexed = async {
            let mut conn = self.redis.get().await?;
            self.scripts
                .unindex
                .key(&self.attached_here)
                .arg(session.as_str())
                .arg(epoch.get())
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(|e| self.redis.unavailable(e))
        };
        if let Err(e) = unindexed.await {
            tracing::debug!(session = %session, "attachment not taken off the replica's: {e}");
        }
    }

    /// The record, or `None` if there is none.
    pub(super) async fn read(&self, names: &Names) -> Result<Option<Snapshot>, ArcpError> {
        let mut conn = self.redis.get().await?;
        let fields: Fields = ::redis::cmd("HMGET")
            .arg(&names.record)
            .arg(&["p", "v", "e", "a", "d", "k", "fv", "f"])
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        let (principal, version, epoch, attached, delivered, acked, features_version, features) =
            fields;
        let Some(principal) = principal else {
            return Ok(None);
        };
        let (Some(version), Some(epoch), Some(attached), Some(delivered), Some(acked)) =
            (version, epoch, attached, delivered, acked)
        else {
            return Err(corrupt("a record without its flow state"));
        };
        Ok(Some(Snapshot {
            principal: Principal::new(principal),
            state: Versioned {
                version,
                flow: Flow {
                    epoch: Epoch(epoch),
                    attached: attached == 1,
                    delivered: EventSeq(delivered),
                    acked: EventSeq(acked),
                },
            },
            features_version: features_version.unwrap_or(0),
            features: features.unwrap_or_default(),
        }))
    }
}

/// Redis answered what no script of this store answers.
pub(super) fn corrupt(what: &str) -> ArcpError {
    ArcpError::Internal(format!("the session store returned {what}"))
}
