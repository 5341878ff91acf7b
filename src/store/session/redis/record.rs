//! [`RedisSessionRecord`]: one replica's record of one session, shared by every handle of it
//! there ([`Records`] finds it): the local copy, the subscription that keeps it current, and
//! the change scripts.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use ::redis::{Script, ToRedisArgs};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::{
    error::ArcpError,
    ids::{Epoch, EventSeq, Principal, SessionId},
    protocol::Features,
    store::{
        redis::{
            notify::{Listener, Notice, Subscription},
            query_loading,
        },
        session::{AckOutcome, AttachmentLock, Flow, SessionRecord},
    },
};

use super::{
    copy::{decode_features, encode_features, LocalCopy, Message, Versioned},
    lock::{self, Lockable},
    remote::{corrupt, Names, Remote, Snapshot},
    scripts::{Outcome, UNINDEX},
};

/// How often a task waiting on a flow state re-reads the record, lest a lost message keep it
/// waiting.
const REREAD: Duration = Duration::from_secs(1);

/// The records one replica holds handles of, so that the handles of one session share one
/// copy and one subscription.
pub(super) struct Records {
    pub(super) remote: Arc<Remote>,
    /// An entry outlives its record only until the record's drop removes it.
    live: Mutex<HashMap<SessionId, Weak<RedisSessionRecord>>>,
}

impl Records {
    pub(super) fn new(remote: Remote) -> Self {
        Records {
            remote: Arc::new(remote),
            live: Mutex::default(),
        }
    }

    /// This replica's record of `id`, made from `snapshot` unless one is live, which then
    /// takes what `snapshot` knows that it does not.
    pub(super) fn record(
        self: &Arc<Self>,
        id: &SessionId,
        snapshot: Snapshot,
    ) -> Arc<RedisSessionRecord> {
        let mut live = self.live.lock();
        if let Some(record) = live.get(id).and_then(Weak::upgrade) {
            record.take(&snapshot);
            return record;
        }
        let record = RedisSessionRecord::new(self.clone(), id.clone(), snapshot);
        live.insert(id.clone(), Arc::downgrade(&record));
        record
    }
}

/// A session's record as one replica holds it.
pub(super) struct RedisSessionRecord {
    id: SessionId,
    principal: Principal,
    names: Names,
    copy: Arc<LocalCopy>,
    records: Arc<Records>,
    /// Itself, for the listener, which must not keep it alive.
    me: Weak<RedisSessionRecord>,
    subscription: OnceCell<Subscription>,
}

/// What a change does to this replica's attached sessions, in the change's round trip.
#[derive(Clone, Copy)]
enum Index {
    /// Nothing.
    Keep,
    /// Lists the attachment of this epoch, before the change makes it (and takes it off again
    /// if the change is refused).
    Add(Epoch),
    /// Takes the attachment of this epoch off, after the change ends it.
    Drop(Epoch),
}

/// What a change script answered: its outcome and the record's state after it, if there is a
/// record.
struct Answer {
    outcome: Outcome,
    state: Option<Versioned>,
}

impl RedisSessionRecord {
    fn new(records: Arc<Records>, id: SessionId, snapshot: Snapshot) -> Arc<Self> {
        let names = records.remote.names(&id);
        let features = decode_features(&snapshot.features);
        Arc::new_cyclic(|me| RedisSessionRecord {
            copy: Arc::new(LocalCopy::new(
                snapshot.state,
                snapshot.features_version,
                features,
            )),
            principal: snapshot.principal,
            id,
            names,
            records,
            me: me.clone(),
            subscription: OnceCell::new(),
        })
    }

    /// Takes what a whole read of the record says, if it is newer.
    fn take(&self, snapshot: &Snapshot) {
        self.copy.update_features(snapshot.features_version, || {
            decode_features(&snapshot.features)
        });
        self.copy.update(snapshot.state);
    }

    /// Re-reads the record into the copy. Returns whether there still is one.
    pub(super) async fn refresh(&self) -> Result<bool, ArcpError> {
        let snapshot = self.records.remote.read(&self.names).await?;
        if let Some(snapshot) = &snapshot {
            self.take(snapshot);
        }
        Ok(snapshot.is_some())
    }

    /// Subscribes the copy to the session's channel unless it is already. Returns whether this
    /// call made the subscription: changes before it reached no listener here.
    pub(super) async fn listen(&self) -> Result<bool, ArcpError> {
        if self.subscription.initialized() {
            return Ok(false);
        }
        let me = self.me.clone();
        let listener: Arc<Listener> = Arc::new(move |notice: Notice<'_>| {
            if let Some(record) = me.upgrade() {
                record.hear(notice);
            }
        });
        let notifier = self.records.remote.redis.notifier();
        self.subscription
            .get_or_try_init(|| async {
                notifier
                    .subscribe(self.names.channel.as_bytes(), listener)
                    .await
                    .map_err(|e| self.records.remote.redis.unavailable(e))
            })
            .await?;
        Ok(true)
    }

    /// Called on the notifier's task: records what a message says, or starts a re-read once
    /// messages may have been lost.
    fn hear(self: Arc<Self>, notice: Notice<'_>) {
        match notice {
            Notice::Message(payload) => match Message::parse(payload) {
                Some(message) => self.copy.hear(message),
                None => tracing::warn!(session = %self.id, "unreadable session-store message"),
            },
            Notice::Subscribed => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        if let Err(e) = self.refresh().await {
                            tracing::warn!(session = %self.id, "session record not re-read: {e}");
                        }
                    });
                }
            }
        }
    }

    /// Runs change `script` with `args` after the record's key and channel, and takes the state
    /// it answers into the copy, with `features` if it changed them.
    async fn change(
        &self,
        script: &Script,
        args: impl ToRedisArgs + Send,
        features: Option<Features>,
    ) -> Result<Answer, ArcpError> {
        self.change_indexed(script, args, features, Index::Keep)
            .await
    }

    /// [`RedisSessionRecord::change`], with what it does to this replica's attached sessions
    /// pipelined beside it.
    async fn change_indexed(
        &self,
        script: &Script,
        args: impl ToRedisArgs + Send,
        features: Option<Features>,
        index: Index,
    ) -> Result<Answer, ArcpError> {
        let remote = &self.records.remote;
        let mut conn = remote.redis.get().await?;
        let mut invocation = script.key(&self.names.record);
        invocation.arg(&self.names.channel).arg(args);
        let answer: Vec<u64> = match index {
            Index::Keep => invocation.invoke_async(&mut conn).await,
            Index::Add(epoch) => {
                let mut pipe = ::redis::pipe();
                pipe.cmd("HSET")
                    .arg(&remote.attached_here)
                    .arg(self.id.as_str())
                    .arg(epoch.get())
                    .ignore()
                    .invoke_script(&invocation);
                query_loading(&mut conn, &pipe, &[script])
                    .await
                    .map(|(answer,): (Vec<u64>,)| answer)
            }
            Index::Drop(epoch) => {
                // The unindexing goes as EVAL, never refused for a missing script, so that a
                // retry of the pipeline runs the detach, which is not idempotent, only once.
                let mut pipe = ::redis::pipe();
                pipe.invoke_script(&invocation)
                    .cmd("EVAL")
                    .arg(UNINDEX)
                    .arg(1)
                    .arg(&remote.attached_here)
                    .arg(self.id.as_str())
                    .arg(epoch.get())
                    .ignore();
                query_loading(&mut conn, &pipe, &[script])
                    .await
                    .map(|(answer,): (Vec<u64>,)| answer)
            }
        }
        .map_err(|e| remote.redis.unavailable(e))?;
        let (outcome, fields) = answer
            .split_first()
            .and_then(|(&code, fields)| Some((Outcome::from_code(code)?, fields)))
            .ok_or_else(|| corrupt("an unknown answer to a change"))?;
        let state = match fields {
            [] => None,
            fields => Some(
                Versioned::from_fields(fields)
                    .ok_or_else(|| corrupt("an unknown answer to a change"))?,
            ),
        };
        if let Some(state) = state {
            if let (Outcome::Done, Some(features)) = (outcome, features) {
                self.copy.update_features(state.version, || features);
            }
            self.copy.update(state);
        }
        Ok(Answer { outcome, state })
    }
}

impl Drop for RedisSessionRecord {
    fn drop(&mut self) {
        let mut live = self.records.live.lock();
        if live
            .get(&self.id)
            .is_some_and(|record| record.strong_count() == 0)
        {
            live.remove(&self.id);
        }
    }
}

#[async_trait]
impl SessionRecord for RedisSessionRecord {
    fn id(&self) -> &SessionId {
        &self.id
    }

    fn principal(&self) -> &Principal {
        &self.principal
    }

    fn features(&self) -> Features {
        self.copy.features()
    }

    fn flow(&self) -> Flow {
        self.copy.flow()
    }

    async fn wait_flow(&self, ready: &(dyn for<'f> Fn(&'f Flow) -> bool + Sync)) {
        if ready(&self.flow()) {
            return;
        }
        let reread = async {
            loop {
                tokio::time::sleep(REREAD).await;
                if let Err(e) = self.refresh().await {
                    tracing::debug!(session = %self.id, "session record not re-read: {e}");
                }
            }
        };
        tokio::select! {
            () = self.copy.wait_until(ready) => {}
            () = reread => {}
        }
    }

    async fn lock_attachment(&self) -> Result<AttachmentLock, ArcpError> {
        lock::acquire(Lockable {
            remote: &self.records.remote,
            names: &self.names,
            copy: &self.copy,
        })
        .await
    }

    async fn attach(
        &self,
        epoch: Epoch,
        features: Option<Features>,
        from: EventSeq,
    ) -> Result<bool, ArcpError> {
        let (given, encoded) = match &features {
            Some(features) => ("1", encode_features(features)),
            None => ("0", String::new()),
        };
        let remote = &self.records.remote;
        let answer = self
            .change_indexed(
                &remote.scripts.attach,
                (
                    epoch.get(),
                    from.get(),
                    given,
                    encoded,
                    remote.instance.as_str(),
                ),
                features,
                Index::Add(epoch),
            )
            .await?;
        if answer.outcome != Outcome::Done {
            remote.unindex(&self.id, epoch).await;
        }
        Ok(answer.outcome == Outcome::Done)
    }

    async fn detach(&self, epoch: Epoch) -> Result<bool, ArcpError> {
        let answer = self
            .change_indexed(
                &self.records.remote.scripts.detach,
                epoch.get(),
                None,
                Index::Drop(epoch),
            )
            .await?;
        Ok(answer.outcome == Outcome::Done)
    }

    async fn record_delivered(&self, epoch: Epoch, through: EventSeq) -> Result<bool, ArcpError> {
        let answer = self
            .change(
                &self.records.remote.scripts.delivered,
                (epoch.get(), through.get()),
                None,
            )
            .await?;
        Ok(answer.outcome == Outcome::Done)
    }

    async fn record_ack(&self, epoch: Epoch, through: EventSeq) -> Result<AckOutcome, ArcpError> {
        let answer = self
            .change(
                &self.records.remote.scripts.ack,
                (epoch.get(), through.get()),
                None,
            )
            .await?;
        Ok(match (answer.outcome, answer.state) {
            (Outcome::Done, Some(state)) => AckOutcome::Recorded {
                acked: state.flow.acked,
            },
            (Outcome::Beyond, Some(state)) => AckOutcome::BeyondDelivered {
                delivered: state.flow.delivered,
            },
            (Outcome::Refused | Outcome::Gone, _) => AckOutcome::Superseded,
            (Outcome::Done | Outcome::Beyond, None) => {
                return Err(corrupt("an ack's answer without the record's state"))
            }
        })
    }
}
