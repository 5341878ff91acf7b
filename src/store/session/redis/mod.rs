//! Session records in Redis, shared by every replica that connects to the same server.
//!
//! # Layout
//!
//! - `PREFIX:{SESSION}:session`, a hash: the principal, the features, the flow state (epoch,
//!   attached, delivered, acked) and a version that every change increments
//!   (`scripts.rs` lists the fields).
//! - `PREFIX:{SESSION}:attach-lock`, a string: the token of the attachment lock's holder,
//!   expiring unless its holder renews it.
//! - `PREFIX:{SESSION}:changes`, a pub/sub channel: every change script publishes the state it
//!   left, and a release of the lock says so.
//! - `PREFIX:{sessions:PRINCIPAL}:joined`, a sorted set: the principal's sessions, for its cap,
//!   each by the time (ms since the Unix epoch) it joined. (A single Redis kept a plain set,
//!   `…:held`, before: the sessions recorded then no longer count for the cap, and their
//!   removal still takes them out of it.)
//! - `PREFIX:{SESSION}:given-up`, on a Cluster only, for a while: the mark of a create whose
//!   slot a repair freed, refusing its record (see below).
//! - `PREFIX:{replica:REPLICA}:sessions`, a hash per replica: the sessions it attached a stream
//!   to, each to that attachment's epoch, for the replica that takes it over if it is lost
//!   (`store::replicas`). An attachment joins it in the round trip of the create or attach
//!   script (a plain `HSET` pipelined before the script, in the replica's slot) and leaves it
//!   in the detach's (a script pipelined after it that removes the entry only if it is still
//!   that epoch's), or at once if the attach was refused. A call dropped between the two
//!   leaves an entry for an attachment that ended, which a takeover finds detached already;
//!   so the hash holds every live attachment the replica made, and few others.
//!
//! Every change is one Lua script that checks the epoch and changes the state in one step, so
//! changes from any replicas linearise and a cancelled call took full effect or none. The
//! record also names the replica instance that made its newest attachment (`o`), for whoever
//! looks at it.
//!
//! # The local copy
//!
//! Jobs read the flow state on every frame, so it cannot be a round trip. Each replica keeps
//! one copy per session it holds handles of, shared by all of them (`copy.rs`), and
//! subscribes once to the session's channel. The copy takes the state each of the replica's
//! own scripts answers and each message on the channel, whichever is newer by version, since
//! the two arrive in either order. Messages published while the notifier's connection is down
//! are lost, so on every (re)subscription the copy re-reads the record; a waiter on the flow
//! also re-reads it every second, so that nothing waits forever on a lost message. So another
//! replica's change reaches `flow()` after a message's latency, not at once; and a call
//! cancelled before its answer arrived reaches it with its message or at the next read of the
//! record (`open`, taking the lock, a re-read).
//!
//! # On a Redis Cluster
//!
//! A session's keys share the hash tag `{SESSION}`, and every script but the create's and the
//! removal's touches only them. Those two also change the principal's sessions, in another
//! slot: on a single Redis each is one script over both (one round trip, as every call), on
//! a Cluster two steps, one per slot (`slots.rs`), ordered so that the cap is never exceeded:
//!
//! - A create joins the principal's sessions first (taking its slot, under the cap, with the
//!   time it joined), then writes the record (pipelined with the replica's attached-sessions
//!   entry): two round trips.
//! - A removal deletes the record first, then frees the slot its record named.
//!
//! So a create or a removal cut off between its steps (a dropped call, a failure, a crash)
//! leaves a slot held by no record: never a record without a slot. Such slots are repaired:
//!
//! - A create that did not finish its steps starts its own repair when it is dropped or fails
//!   (on its own task, since its caller is gone): it frees the slot unless the record is
//!   there.
//! - A create that finds the principal's sessions full waits for this replica's repairs of
//!   them under way, then takes the members that joined more than `slots::GRACE` (30 s) ago for
//!   candidates, frees those with no record, and tries once more if that freed any.
//!
//! Freeing a slot is itself two steps: in the session's slot, a script that answers whether
//! there is a record and, if not, marks the create given up (`…:given-up`, for ten minutes),
//! so that a write of the record still on its way is refused rather than recorded without a
//! slot (the create then fails with a retryable `INTERNAL_ERROR`); then the slot is freed. A
//! repair cut off between the two leaves the slot for the next. The grace keeps a create
//! between its steps on another replica from having its slot taken for one cut off: its two
//! calls each time out within seconds.
//!
//! Pub/sub is classic: a `PUBLISH` from a script reaches every node, and the notifier listens
//! on one.

mod copy;
mod lock;
mod record;
mod remote;
mod repairs;
mod scripts;
mod slots;

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use async_trait::async_trait;

use crate::{
    error::ArcpError,
    ids::{Epoch, EventSeq, ReplicaId, ReplicaInstance, SessionId},
    store::{
        caps::over_cap,
        redis::{millis, query_loading, replica_key, unix_millis, Connection, Redis},
    },
};

use self::{
    copy::{encode_features, Versioned},
    record::Records,
    remote::{corrupt, Remote, Snapshot},
    scripts::Scripts,
};

use super::{Flow, NewSession, SessionRecord, SessionStore};

/// Session records held in Redis.
pub struct RedisSessionStore(Arc<Records>);

impl RedisSessionStore {
    /// A store in `redis`, under its prefix, whose attachments replica instance `instance`
    /// makes.
    pub fn new(redis: &Redis, instance: ReplicaInstance) -> Self {
        let redis = redis.for_store("session store");
        let attached_here = replica_key(redis.prefix(), instance.replica(), "sessions");
        RedisSessionStore(Arc::new(Records::new(Remote {
            redis,
            scripts: Scripts::new(),
            instance,
            attached_here,
            repairs: Default::default(),
        })))
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, session: NewSession) -> Result<Arc<dyn SessionRecord>, ArcpError> {
        let store = &self.0.remote;
        let names = store.names(&session.id);
        let joined = store.joined(&session.principal);
        let features = encode_features(&session.features);
        let now = unix_millis(SystemTime::now());
        let args = (
            (
                names.channel.as_str(),
                session.id.as_str(),
                session.principal.as_str(),
                features.as_str(),
                session.epoch.get(),
            ),
            (
                session.max_per_principal,
                joined.as_str(),
                store.instance.as_str(),
                now,
                now.saturating_sub(millis(slots::GRACE)),
            ),
        );
        let mut conn = store.redis.get().await?;
        let version = match conn {
            Connection::Single(_) => {
                let mut pipe = ::redis::pipe();
                pipe.cmd("HSET")
                    .arg(&store.attached_here)
                    .arg(session.id.as_str())
                    .arg(session.epoch.get())
                    .ignore()
                    .invoke_script(
                        store
                            .scripts
                            .create
                            .key(&names.record)
                            .key(&joined)
                            .arg(args),
                    );
                let (answer,): (Vec<u64>,) =
                    query_loading(&mut conn, &pipe, &[&store.scripts.create])
                        .await
                        .map_err(|e| store.redis.unavailable(e))?;
                match answer.as_slice() {
                    [0] => {
                        store.unindex(&session.id, session.epoch).await;
                        None
                    }
                    [1, version] => Some(*version),
                    _ => return Err(corrupt("an unknown answer to a create")),
                }
            }
            Connection::Cluster(_) => {
                let create = slots::Create {
                    session: &session.id,
                    epoch: session.epoch,
                    names: &names,
                    joined: &joined,
                    args,
                };
                slots::create(store, &mut conn, create).await?
            }
        };
        let Some(version) = version else {
            let cap = session.max_per_principal;
            return Err(over_cap(
                "this principal already holds as many sessions",
                "max_sessions_per_principal",
                cap,
                "detached sessions count until their resume window closes",
            ));
        };
        let record = self.0.record(
            &session.id,
            Snapshot {
                principal: session.principal,
                state: Versioned {
                    version,
                    flow: Flow {
                        epoch: session.epoch,
                        attached: true,
                        delivered: EventSeq::ZERO,
                        acked: EventSeq::ZERO,
                    },
                },
                features_version: version,
                features,
            },
        );
        // Nobody else knows the session yet; whatever changes before the subscription is
        // confirmed, the re-read on its confirmation catches.
        if let Err(e) = record.listen().await {
            // The caller takes an error for nothing recorded: undo the record, if Redis lets.
            if let Err(e) = self.remove(&session.id).await {
                tracing::warn!(session = %session.id, "unlistened session not removed: {e}");
            }
            return Err(e);
        }
        Ok(record)
    }

    async fn open(&self, id: &SessionId) -> Result<Arc<dyn SessionRecord>, ArcpError> {
        let store = &self.0.remote;
        let snapshot = store
            .read(&store.names(id))
            .await?
            .ok_or_else(|| ArcpError::ResumeWindowExpired(format!("session {id} has no record")))?;
        let record = self.0.record(id, snapshot);
        if record.listen().await? {
            // Changes between the read and the subscription reached no listener here.
            record.refresh().await?;
        }
        Ok(record)
    }

    async fn remove(&self, id: &SessionId) -> Result<(), ArcpError> {
        let store = &self.0.remote;
        let names = store.names(id);
        let mut conn = store.redis.get().await?;
        if let Connection::Cluster(_) = conn {
            return slots::remove(store, &mut conn, id, &names).await;
        }
        let _: i64 = store
            .scripts
            .remove
            .key(&names.record)
            .key(&names.lock)
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store.redis.unavailable(e))?;
        Ok(())
    }

    async fn attached_on(&self, replica: &ReplicaId) -> Result<Vec<(SessionId, Epoch)>, ArcpError> {
        let store = &self.0.remote;
        let mut conn = store.redis.get().await?;
        let attached: HashMap<String, u64> = ::redis::cmd("HGETALL")
            .arg(store.attached_on(replica))
            .query_async(&mut conn)
            .await
            .map_err(|e| store.redis.unavailable(e))?;
        let mut attached: Vec<(SessionId, Epoch)> = attached
            .into_iter()
            .map(|(session, epoch)| (SessionId::new(session), Epoch(epoch)))
            .collect();
        attached.sort();
        Ok(attached)
    }

    async fn forget_attached_on(&self, replica: &ReplicaId) -> Result<(), ArcpError> {
        let store = &self.0.remote;
        let mut conn = store.redis.get().await?;
        let _: i64 = ::redis::cmd("DEL")
            .arg(store.attached_on(replica))
            .query_async(&mut conn)
            .await
            .map_err(|e| store.redis.unavailable(e))?;
        Ok(())
    }
}
