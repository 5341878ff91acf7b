//! This replica's side of the requests between replicas, and the upkeep of its own jobs in
//! Redis: one task per directory hears the replica's channel (cancel nudges, subscription
//! requests, replies to this replica's requests) and, every [`REFRESH`], writes what changed in
//! its running jobs, settles the changes dropped calls left unsettled, and every
//! [`CANCEL_SCAN`] reads its pending cancel requests in case a nudge was lost.

use std::sync::{Arc, Weak};

use tokio::{
    sync::mpsc::{self, UnboundedReceiver},
    time::MissedTickBehavior,
};

use crate::{
    error::ArcpError,
    ids::{JobId, SessionId},
    store::{
        jobs::{JobEntry, Subscriber},
        redis::notify::{Listener, Notice},
    },
};

use super::{
    fields::{self, encode},
    local::{Here, Settled},
    messages::{Message, Outcome},
    slots::is_cluster,
    Inner, CANCEL_SCAN, REFRESH,
};

/// What the channel's listener hands the task.
enum Heard {
    Message(Vec<u8>),
    /// The channel was (re)subscribed: nudges sent before may have been lost.
    Subscribed,
}

impl Inner {
    /// Listens on this replica's channel, once, and starts the task that handles what it hears
    /// and keeps this replica's jobs current in Redis.
    pub(super) async fn listening(self: &Arc<Self>) -> Result<(), ArcpError> {
        self.listening
            .get_or_try_init(|| async {
                let (tx, rx) = mpsc::unbounded_channel();
                // Called on the notifier's task: only hands over.
                let listener: Arc<Listener> = Arc::new(move |notice: Notice<'_>| {
                    let _ = tx.send(match notice {
                        Notice::Message(payload) => Heard::Message(payload.to_vec()),
                        Notice::Subscribed => Heard::Subscribed,
                    });
                });
                let channel = self.keys.replica_channel(self.replica.as_str());
                let subscription = self
                    .redis
                    .notifier()
                    .subscribe(channel, listener)
                    .await
                    .map_err(|e| self.redis.unavailable(e))?;
                tokio::spawn(upkeep(Arc::downgrade(self), rx));
                Ok(subscription)
            })
            .await
            .map(|_| ())
    }

    async fn heard(self: &Arc<Self>, payload: &[u8]) {
        let message = match serde_json::from_slice::<Message>(payload) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!("the job directory heard a message it cannot read: {e}");
                return;
            }
        };
        match message {
            Message::Cancel { .. } => self.give_cancels().await,
            Message::Subscribe {
                request,
                from,
                job,
                subscriber,
            } => {
                let inner = self.clone();
                tokio::spawn(async move {
                    let outcome = inner
                        .serve_subscribe(&JobId::new(job), subscriber.into())
                        .await;
                    inner.reply(&from, request, outcome).await;
                });
            }
            Message::Unsubscribe {
                request,
                from,
                job,
                session,
            } => {
                let inner = self.clone();
                tokio::spawn(async move {
                    let outcome = inner
                        .serve_unsubscribe(&JobId::new(job), &SessionId::new(session))
                        .await;
                    inner.reply(&from, request, outcome).await;
                });
            }
            Message::Reply { request, outcome } => self.replies.deliver(request, outcome),
        }
    }

    async fn serve_subscribe(&self, id: &JobId, subscriber: Subscriber) -> Outcome {
        if let Some(control) = self.local.control(id) {
            return match control.subscribe(subscriber).await {
                Ok(()) => Outcome::Subscribed,
                Err(e) => Outcome::failed(&e),
            };
        }
        self.not_running_here(id)
    }

    async fn serve_unsubscribe(&self, id: &JobId, session: &SessionId) -> Outcome {
        if let Some(control) = self.local.control(id) {
            return match control.unsubscribe(session).await {
                Ok(was) => Outcome::Unsubscribed { was },
                Err(e) => Outcome::failed(&e),
            };
        }
        self.not_running_here(id)
    }

    /// The answer for a job asked of this replica that no control here runs.
    fn not_running_here(&self, id: &JobId) -> Outcome {
        match self.local.here(id) {
            Here::Ended(entry) => match encode(&entry) {
                Ok(fields) => Outcome::Ended {
                    fields: fields
                        .into_iter()
                        .map(|(name, value)| (name.to_owned(), value))
                        .collect(),
                },
                Err(e) => Outcome::failed(&e),
            },
            _ => Outcome::failed(&super::lost_here(id, &self.replica)),
        }
    }

    async fn reply(&self, to: &str, request: u64, outcome: Outcome) {
        let sent = async {
            let reply = Message::Reply { request, outcome }.to_json()?;
            let mut conn = self.connection().await?;
            let _: i64 = ::redis::cmd("PUBLISH")
                .arg(self.keys.replica_channel(to))
                .arg(reply)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?;
            Ok::<_, ArcpError>(())
        };
        if let Err(e) = sent.await {
            tracing::warn!(replica = to, "a job directory reply was not sent: {e}");
        }
    }

    /// Reads this replica's pending cancel requests, gives each control the ones it has not
    /// had, and takes them off the pending ones unless more came meanwhile.
    async fn give_cancels(&self) {
        // On a Cluster a request that came while the last ones were acknowledged is listed
        // again, to be given at once; the bound only keeps a flood from holding the task.
        for _ in 0..4 {
            match self.try_give_cancels().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!("cancel requests not read: {e}");
                    return;
                }
            }
        }
    }

    /// Answers whether more requests are pending already.
    async fn try_give_cancels(&self) -> Result<bool, ArcpError> {
        let pending_key = self.keys.replica_cancels(self.replica.as_str());
        let mut conn = self.connection().await?;
        let cluster = is_cluster(&conn);
        let pending: Vec<(String, u64, String)> = if cluster {
            self.cluster_pending_cancels(&mut conn, &pending_key)
                .await?
        } else {
            self.scripts
                .pending_cancels
                .key(&pending_key)
                .arg(self.keys.prefix())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?
        };
        if pending.is_empty() {
            return Ok(false);
        }
        let mut read = Vec::with_capacity(pending.len());
        let mut ack = self.scripts.ack_cancels.prepare_invoke();
        ack.key(&pending_key).arg(self.keys.prefix());
        for (id, cancels, reason) in pending {
            let id = JobId::new(id);
            // Not one of this replica's running jobs (any more): nothing to give it.
            if let Some(control) = self.local.cancel_due(&id, cancels) {
                let reason: Option<String> = serde_json::from_str(&reason).unwrap_or(None);
                if let Err(e) = control.cancel(reason) {
                    tracing::debug!(job = %id, "a cancel from another replica was refused: {e}");
                }
            }
            ack.arg(id.as_str()).arg(cancels);
            read.push((id, cancels));
        }
        if cluster {
            return self
                .cluster_ack_cancels(&mut conn, &pending_key, &read)
                .await;
        }
        let _: i64 = ack
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(false)
    }

    /// One round of upkeep; `scan` also reads the pending cancel requests.
    async fn upkeep(&self, scan: bool) {
        let due = self.local.due();
        let entries: Vec<(u64, JobEntry)> = due
            .live
            .iter()
            .map(|(_, token, control)| (*token, control.entry()))
            .collect();
        let changed = self.local.changed(entries);
        if !changed.is_empty() {
            match self.refresh(&changed).await {
                Ok(()) => {
                    for (token, entry) in &changed {
                        self.local.wrote(*token, entry);
                    }
                }
                Err(e) => tracing::debug!("running jobs not refreshed: {e}"),
            }
        }
        for (id, token, control) in due.inserts {
            let entry = control.entry();
            let change = self.local.retrying(&id, token);
            match self.owner_of(&id).await {
                Ok(owner) if owner.as_deref() == Some(self.replica.as_str()) => {
                    change.settle(Settled::Live)
                }
                Ok(_) => match self.abandon_insert(&entry, &id, token).await {
                    Ok(()) => change.settle(Settled::Forgotten),
                    Err(e) => tracing::debug!(job = %id, "an insert not undone: {e}"),
                },
                Err(e) => tracing::debug!(job = %id, "an insert not settled: {e}"),
            }
        }
        for (id, token, entry) in due.finishes {
            let change = self.local.retrying(&id, token);
            match self.finish_script(&entry).await {
                Ok(()) => change.settle(Settled::Forgotten),
                Err(e) => tracing::debug!(job = %id, "a job's end not recorded: {e}"),
            }
        }
        for (id, token) in due.removals {
            let change = self.local.retrying(&id, token);
            match self.remove_script(&id).await {
                Ok(()) => change.settle(Settled::Forgotten),
                Err(e) => tracing::debug!(job = %id, "a job not removed: {e}"),
            }
        }
        if scan {
            self.give_cancels().await;
        }
    }

    /// Undoes the first steps of an insert dropped on a Cluster before it wrote the job's
    /// hash, unless the job was inserted here again since; a single Redis took the insert
    /// whole or not at all.
    async fn abandon_insert(
        &self,
        entry: &JobEntry,
        id: &JobId,
        token: u64,
    ) -> Result<(), ArcpError> {
        let mut conn = self.connection().await?;
        if !is_cluster(&conn) || !self.local.current(id, token) {
            return Ok(());
        }
        self.cluster_abandon_insert(
            &mut conn,
            &self.replica,
            id,
            &entry.session,
            &entry.principal,
        )
        .await
    }

    /// Writes the changing fields of `entries` into their hashes, in one script (one per
    /// job's slot on a Cluster).
    async fn refresh(&self, entries: &[(u64, JobEntry)]) -> Result<(), ArcpError> {
        let mut conn = self.connection().await?;
        if is_cluster(&conn) {
            return self.cluster_refresh(&mut conn, entries).await;
        }
        let mut call = self.scripts.refresh.prepare_invoke();
        call.arg(self.keys.prefix()).arg(self.replica.as_str());
        for (_, entry) in entries {
            let (seq, budget, credentials) = fields::changing(entry)?;
            call.key(self.keys.job(&entry.id))
                .arg(seq)
                .arg(budget)
                .arg(credentials);
        }
        let _: i64 = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }

    async fn owner_of(&self, id: &JobId) -> Result<Option<String>, ArcpError> {
        let mut conn = self.connection().await?;
        ::redis::cmd("HGET")
            .arg(self.keys.job(id))
            .arg(fields::OWNER)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))
    }
}

/// How many upkeep rounds pass between two scans for cancel requests.
const SCAN_EVERY: u32 = {
    let rounds = CANCEL_SCAN.as_millis() / REFRESH.as_millis();
    assert!(rounds > 0 && rounds < u32::MAX as u128);
    rounds as u32
};

/// The directory's task: handles what its channel hears and runs the upkeep, until the
/// directory is dropped.
async fn upkeep(inner: Weak<Inner>, mut heard: UnboundedReceiver<Heard>) {
    let mut rounds = tokio::time::interval(REFRESH);
    rounds.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut round = 0u32;
    loop {
        let next = tokio::select! {
            heard = heard.recv() => match heard {
                Some(heard) => Some(heard),
                None => return,
            },
            _ = rounds.tick() => None,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match next {
            Some(Heard::Message(payload)) => inner.heard(&payload).await,
            Some(Heard::Subscribed) => inner.give_cancels().await,
            None => {
                round = round.wrapping_add(1);
                inner.upkeep(round % SCAN_EVERY == 0).await;
            }
        }
    }
}
