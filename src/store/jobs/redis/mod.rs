//! The job directory in Redis, shared by every replica that connects to the same server: any
//! replica lists every job of a principal, finds any job by id, and a cancel, a subscription
//! or an unsubscription received on one replica reaches the job on the replica that runs it.
//!
//! # Keys
//!
//! Under the prefix `P` (braces mark the Cluster hash tags):
//!
//! - `P:{job:ID}`, a hash: the job's entry (see `fields`), the replica that runs it (`owner`),
//!   whether it still counts against the caps (`counted`), and the cancel requests other
//!   replicas wrote (`cancels`, how many, and `cancel_reason`, the last one's).
//! - `P:{job:ID}:subscribers`: the sessions whose subscriptions to the job are counted.
//! - `P:{SESSION}:jobs-running` and `P:{SESSION}:jobs-subscribed`: what a session holds, as
//!   its caps count it (under the session's tag, which its resume entry shares).
//! - `P:{jobs:PRINCIPAL}:running`: the principal's counted jobs; `P:{jobs:PRINCIPAL}:index`:
//!   all its jobs, a sorted set whose scores are all 0, so it reads in id order.
//! - `P:jobs:index`: every job in id order; `P:jobs:finished`: the ended jobs by the
//!   millisecond they ended, for purging.
//! - `P:{replica:REPLICA}:cancels`: the replica's jobs with cancel requests it has not yet
//!   read; `P:{replica:REPLICA}:jobs`: the jobs it runs; on a Cluster also
//!   `P:{replica:REPLICA}:job-holders`, each of those jobs' session and principal (JSON).
//! - The channel `P:replica:REPLICA`: what other replicas ask of this one, and their replies.
//!
//! On a single Redis every change is one Lua script (`scripts`), so a call dropped after
//! sending it took full effect or none: the insert counts both caps and registers in one step,
//! the subscription counts the session's cap and takes the slot in one step, a cancel checks
//! that the job runs and records the request in one step. A Cluster takes them in steps
//! (below).
//!
//! # A running job
//!
//! The replica running a job answers for it from the job's control, as the memory directory
//! does; the others read its hash. The owner writes the hash when the job is inserted and when
//! it ends, and in between rewrites what changes (its newest frame, budget and credentials)
//! every [`REFRESH`] if it changed: on another replica, a running job's entry may lag by that
//! much. Credentials are in the hash, secrets and all, so that their submitter sees them from
//! any replica.
//!
//! The owner records each change to its own jobs before sending the script and settles it when
//! the script answered, retrying what a dropped or failed call left unsettled (`local`), so its
//! own answers and Redis's agree once the retry ran.
//!
//! # Requests between replicas
//!
//! A cancel for a job another replica runs, in one script, counts the request in the job's hash
//! with its reason, lists the job among the owner's pending cancels and nudges the owner on its
//! channel. The owner then reads its pending cancels, gives each control the requests it has
//! not had, and takes them off the list unless more came meanwhile. Pub/sub drops what is
//! published while a listener is disconnected, and a read can fail, so the owner also reads
//! its pending cancels when it (re)subscribes and every [`CANCEL_SCAN`]: a lost nudge delays a
//! cancel, never loses it, and an idle replica's check is one command.
//!
//! A job that gave its slot back is ending: its terminal frame may already be in its session's
//! log while its entry still says running (until it is finished). The script refuses a cancel
//! of it, as the job does once it has ended: a request accepted then would reach the job too
//! late to be acted on, and the client would never hear of it.
//!
//! A subscription to a job another replica runs takes the session's slot and sends the
//! request (the subscriber, and a request id) to the owner in one script; the owner subscribes
//! the session through the job's control and replies on the asker's channel with the outcome,
//! an error by its code and message. The asker waits [`REPLY_DEADLINE`], then answers a
//! retryable error and keeps the slot, as a dropped call may: it frees when the job ends or the
//! session unsubscribes. An unsubscription goes the same way.
//!
//! # A lost replica
//!
//! Each entry names the replica that runs its job (`owner`), and `P:{replica:REPLICA}:jobs`
//! lists the jobs each replica runs (it joins in the insert and leaves with the end), so that
//! when a replica is declared lost (`store::replicas`) the one taking it over finds its jobs
//! and their subscribers in one script, and ends each with a script that checks that it still
//! runs there: of two takeovers one ends it. The hash then keeps who ended it (`lost`), and the
//! lost replica's own end and removal of it change nothing. An insert checks, in the same
//! script, that the inserting instance still holds its replica's lease
//! (`P:{replica:REPLICA}:lease`, under the same hash tag as its set of jobs), so that a lost
//! replica coming back from a pause starts nothing nobody would take over.
//!
//! # Round trips
//!
//! On a single Redis: an insert is one (and, the first time, the subscription to this
//! replica's channel), as are a release, a finish and `held_by`; `get` and `cancel` need none
//! for a job running here and one otherwise (and two on the owner, to read and acknowledge the
//! request); a listing one per 512 jobs it looks at; a subscription one, and for a job
//! elsewhere the owner's reply (and one more to give the slot back if the job refused); an
//! unsubscription one for a job here and two and the reply otherwise; a purge one per 256
//! jobs; finding a lost replica's jobs one, and ending each one. A Cluster needs more where a
//! change spans slots: see below.
//!
//! # On a Redis Cluster
//!
//! Each script and pipeline of a single Redis touches the job's, its session's, its
//! principal's, the listings' and its replica's slots at once, and some derive keys they were
//! not passed; a Cluster refuses that. There, the directory (`cluster`, chosen by the
//! connection, with the same keys) makes each change as steps that each keep to one slot: a
//! small script where a step must check before it writes, a pipeline of plain commands
//! otherwise (sent to each slot's node at once). Their order is what keeps a step cancelled or
//! lost between two (a dropped call, a crash) safe: a lost step may keep a slot taken, never
//! free one that counts, and leaves something the repair finds.
//!
//! - Insert (five round trips): the replica's slot first checks the lease and records the job
//!   with its session and principal (`jobs`, `job-holders`); then the session's cap is claimed,
//!   then the principal's (a refusal gives back what the steps before took); then the
//!   listings; last the job's hash, which is what makes the insert have taken effect (`get`
//!   and `held_by` see a job only with its hash). An insert dropped before its hash keeps its
//!   slots until repaired: by this replica's upkeep, which settles the dropped insert by
//!   reading the hash and undoes the first steps if there is none (unless the job was inserted
//!   here again meanwhile), or, if the replica was lost first, by its takeover, which undoes
//!   every insert of the lost replica's records that has no hash, from `job-holders`.
//! - Release, finish, takeover of a lost job (two or three): the job's hash stops counting
//!   (a finish writes the final fields; a takeover checks the job still runs on the lost
//!   replica) and answers the subscribers; then the session's, principal's and subscribers'
//!   slots free and the listings are written; last the subscriber set and the replica's
//!   records go, so that a finish retried after a lost step, or the takeover of a replica lost
//!   in between, still finds them: the takeover completes the later steps of every job in the
//!   lost replica's records that no longer runs. A release lost after its first step keeps
//!   the slots until the job ends.
//! - Removal and purge (three per batch): the hashes are read; then everything naming the jobs
//!   goes; last the hashes and the replicas' records, so a retry still finds the rest.
//! - Subscription (two): the session's slot is claimed first, then the job, if it still runs
//!   and counts, takes the subscriber and its owner is sent the request; a slot the job did not
//!   take goes back (one more). One dropped between the two keeps its slot, with no
//!   subscriber, until the session unsubscribes (as the slot a dropped call kept does anyway)
//!   or expires. The slot is given back in one pipeline.
//! - Cancel (two): the request is counted in the job's hash, then listed among its owner's
//!   pending ones with the nudge. One dropped between the two is a request nobody acts on, as
//!   if it were never made: the next request is counted past it and reaches the job. The owner
//!   reads its pending list, then each job's count (two), and acknowledges by taking the jobs
//!   off the list and then reading their counts again (two), listing again at once a job whose
//!   count grew meanwhile: its request's listing may have come before the removal.
//! - Listing (two per batch): the index, then the jobs' hashes. `held_by` (two): the
//!   session's sets, then whether each running job's hash exists. Finding a lost replica's
//!   jobs (two, and the repairs). A refresh: one per changed job.
//!
//! `PUBLISH` counts only the listeners on the node that ran it, and the notifier listens on
//! one node, so on a Cluster a request's listener count is not known: an owner that is not
//! listening is found by [`REPLY_DEADLINE`] rather than at once, and a cancel's nudge is not
//! reported unheard. Channels are not keys and need no change (sharded pub/sub could come
//! later).
//!
//! What is left: an insert that passed its first step just before its replica was declared
//! lost may write its hash after the takeover undid it: the job then runs on the lost
//! replica, counted in no cap, until that replica (which learns it was lost) ends it.
//! `running_on` repairs as it reads, so it is for replicas declared lost only, as it is used.

mod cluster;
mod fields;
mod keys;
mod local;
mod messages;
mod remote;
mod replies;
mod scripts;
mod slots;

use std::{collections::HashMap, sync::Arc, time::Duration, time::SystemTime};

use ::redis::{FromRedisValue, Value};
use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::{
    error::ArcpError,
    ids::{JobId, ReplicaId, ReplicaInstance, SessionId},
    store::{
        caps::over_cap,
        redis::{notify, unix_millis, Connection, Redis, RedisConnection},
    },
};

use self::{
    fields::{corrupt, encode, finished_millis},
    keys::Keys,
    local::{Change, Here, LocalJobs, Settled},
    messages::{Message, Outcome, WireSubscriber},
    replies::Replies,
    scripts::Scripts,
    slots::{is_cluster, ClusterScripts, Inserted},
};

use super::{
    already_ended, not_found, Holdings, JobCaps, JobControl, JobDirectory, JobEntry, ListScope,
    LostJob, Subscriber, Subscription,
};

/// How often the owner writes what changed in its running jobs' entries.
pub const REFRESH: Duration = Duration::from_millis(250);

/// How often the owner reads its pending cancel requests, in case a nudge was lost.
pub const CANCEL_SCAN: Duration = Duration::from_secs(2);

/// How long a request to the replica running a job is waited for.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// How many jobs a listing reads from Redis at a time, at most.
const LIST_BATCH: usize = 512;

/// How many ended jobs one purge script forgets, at most.
const PURGE_BATCH: usize = 256;

/// The job directory in Redis, as one replica reaches it.
pub struct RedisJobDirectory {
    inner: Arc<Inner>,
}

/// The directory's state, which its background task also holds (weakly).
struct Inner {
    redis: RedisConnection,
    keys: Keys,
    replica: ReplicaId,
    /// This process's run as `replica`, which an insert must still be.
    instance: ReplicaInstance,
    scripts: Scripts,
    /// The steps of each change on a Cluster.
    cluster: ClusterScripts,
    local: LocalJobs,
    /// This replica's channel, once listened to, with the task that handles what it hears.
    listening: OnceCell<notify::Subscription>,
    replies: Replies,
}

impl RedisJobDirectory {
    /// The directory in `redis`, under its prefix, as replica instance `instance` (whose
    /// replica id is unique among those sharing the server) reaches it.
    pub fn new(redis: &Redis, instance: ReplicaInstance) -> Self {
        let redis = redis.for_store("job directory");
        RedisJobDirectory {
            inner: Arc::new(Inner {
                keys: Keys::new(redis.prefix()),
                redis,
                replica: instance.replica().clone(),
                instance,
                scripts: Scripts::new(),
                cluster: ClusterScripts::new(),
                local: LocalJobs::default(),
                listening: OnceCell::new(),
                replies: Replies::default(),
            }),
        }
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

/// A hash's fields as a script returned them.
fn hash(value: Value) -> Result<HashMap<String, String>, ArcpError> {
    HashMap::from_redis_value(value).map_err(|e| corrupt(format_args!("a bad job hash: {e}")))
}

fn session_cap(cap: usize) -> ArcpError {
    over_cap(
        "this session already runs as many jobs",
        "max_jobs_per_session",
        cap,
        "one must end first",
    )
}

fn principal_cap(cap: usize) -> ArcpError {
    over_cap(
        "this principal already runs as many jobs over all its sessions",
        "max_jobs_per_principal",
        cap,
        "one must end first",
    )
}

fn subscription_cap(cap: usize) -> ArcpError {
    over_cap(
        "this session already holds as many subscriptions",
        "max_subscriptions_per_session",
        cap,
        "unsubscribe from one first",
    )
}

/// The answer for a job whose replica heard nothing of the request.
fn unreachable(id: &JobId, owner: &str) -> ArcpError {
    ArcpError::Internal(format!(
        "replica {owner}, which runs job {id}, is not listening; try again"
    ))
}

/// The answer for a job whose replica did not reply in time.
fn no_reply(id: &JobId, owner: &str) -> ArcpError {
    ArcpError::Internal(format!(
        "replica {owner}, which runs job {id}, did not answer within {}s; try again",
        REPLY_DEADLINE.as_secs()
    ))
}

/// The answer for an insert by an instance of this replica that was declared lost.
fn lost_replica(instance: &ReplicaInstance) -> ArcpError {
    ArcpError::Internal(format!(
        "replica {instance} was declared lost and takes no new jobs; submit the job again"
    ))
}

/// A job that Redis has running here but that this replica does not know.
fn lost_here(id: &JobId, replica: &ReplicaId) -> ArcpError {
    ArcpError::Internal(format!("job {id} does not run on replica {replica}"))
}

impl Inner {
    /// Settles an insert by its answer.
    fn inserted(&self, change: Change<'_>, answer: &str, caps: JobCaps) -> Result<(), ArcpError> {
        let refused = match answer {
            "ok" => {
                change.settle(Settled::Live);
                return Ok(());
            }
            "session" => session_cap(caps.per_session),
            "principal" => principal_cap(caps.per_principal),
            "lost" => lost_replica(&self.instance),
            other => return Err(corrupt(format_args!("an insert answered {other:?}"))),
        };
        change.settle(Settled::Forgotten);
        Err(refused)
    }

    async fn connection(&self) -> Result<Connection, ArcpError> {
        self.redis.get().await
    }

    async fn finish_script(&self, entry: &JobEntry) -> Result<(), ArcpError> {
        let mut conn = self.connection().await?;
        if is_cluster(&conn) {
            return self.cluster_finish(&mut conn, entry).await;
        }
        let fields = encode(entry)?;
        let keys = &self.keys;
        let mut call = self.scripts.finish.prepare_invoke();
        call.key(keys.job(&entry.id))
            .key(keys.principal_index(&entry.principal))
            .key(keys.all())
            .key(keys.finished())
            .key(keys.replica_jobs(&self.replica))
            .arg(keys.prefix())
            .arg(entry.id.as_str())
            .arg(finished_millis(entry).map_or_else(String::new, |ms| ms.to_string()))
            .arg(self.replica.as_str());
        for (name, value) in &fields {
            call.arg(*name).arg(value);
        }
        let _: i64 = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }

    async fn remove_script(&self, id: &JobId) -> Result<(), ArcpError> {
        let mut conn = self.connection().await?;
        if is_cluster(&conn) {
            return self
                .cluster_forget(&mut conn, std::slice::from_ref(id), true, false)
                .await;
        }
        let _: i64 = self
            .scripts
            .remove
            .key(self.keys.job(id))
            .arg(self.keys.prefix())
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }

    /// The entry Redis holds for `id`.
    async fn read(&self, id: &JobId) -> Result<Option<JobEntry>, ArcpError> {
        let mut conn = self.connection().await?;
        let fields: HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg(self.keys.job(id))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        fields::decode(&fields)
    }

    async fn drop_subscription(&self, id: &JobId, session: &SessionId) -> Result<(), ArcpError> {
        let mut conn = self.connection().await?;
        if is_cluster(&conn) {
            return self.cluster_drop_subscription(&mut conn, id, session).await;
        }
        let _: i64 = self
            .scripts
            .drop_subscription
            .key(self.keys.subscribers(id))
            .key(self.keys.session_subscribed(session))
            .arg(self.keys.prefix())
            .arg(id.as_str())
            .arg(session.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }

    /// Subscribes through a control on this replica, giving the slot back if it refuses.
    async fn subscribe_here(
        &self,
        control: Arc<dyn JobControl>,
        subscriber: Subscriber,
        taken: bool,
        id: &JobId,
    ) -> Result<Subscription, ArcpError> {
        let session = subscriber.session.clone();
        match control.subscribe(subscriber).await {
            Ok(()) => Ok(Subscription::Live),
            Err(e) => {
                if taken {
                    self.drop_subscription(id, &session).await?;
                }
                Err(e)
            }
        }
    }

    /// One page of a listing: up to `limit` entries of `index` after `after` that pass
    /// `filter`, and whether more follow.
    async fn list(
        &self,
        index: String,
        after: Option<&JobId>,
        limit: usize,
        filter: &(dyn for<'e> Fn(&'e JobEntry) -> bool + Sync),
    ) -> Result<(Vec<JobEntry>, bool), ArcpError> {
        let batch = limit.saturating_add(1).clamp(16, LIST_BATCH);
        let mut from = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let mut page = Vec::new();
        loop {
            let mut conn = self.connection().await?;
            let found: Vec<(String, Value)> = if is_cluster(&conn) {
                self.cluster_list(&mut conn, &index, &from, batch).await?
            } else {
                self.scripts
                    .list
                    .key(&index)
                    .arg(self.keys.prefix())
                    .arg(&from)
                    .arg(batch)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.redis.unavailable(e))?
            };
            let read = found.len();
            for (id, fields) in found {
                let id = JobId::new(id);
                let entry = match self.local.here(&id) {
                    Here::Running(control) => Some(control.entry()),
                    Here::Ended(entry) => Some(*entry),
                    Here::Removed => None,
                    Here::Unknown => fields::decode(&hash(fields)?)?,
                };
                from = format!("({id}");
                let Some(entry) = entry.filter(|e| filter(e)) else {
                    continue;
                };
                if page.len() == limit {
                    return Ok((page, true));
                }
                page.push(entry);
            }
            if read < batch {
                return Ok((page, false));
            }
        }
    }
}

#[async_trait]
impl JobDirectory for RedisJobDirectory {
    async fn insert(&self, control: Arc<dyn JobControl>, caps: JobCaps) -> Result<(), ArcpError> {
        let inner = &*self.inner;
        let entry = control.entry();
        let fields = encode(&entry)?;
        // Listening first, so that no cancel or subscription sent to this job is missed.
        self.inner.listening().await?;
        let mut conn = inner.connection().await?;
        if is_cluster(&conn) {
            let change = inner.local.inserting(control, &entry);
            let answer = match inner.cluster_insert(&mut conn, &entry, caps).await? {
                Inserted::Ok => "ok",
                Inserted::Session => "session",
                Inserted::Principal => "principal",
                Inserted::Lost => "lost",
            };
            return inner.inserted(change, answer, caps);
        }
        let keys = &inner.keys;
        let mut call = inner.scripts.insert.prepare_invoke();
        call.key(keys.job(&entry.id))
            .key(keys.session_running(&entry.session))
            .key(keys.principal_running(&entry.principal))
            .key(keys.principal_index(&entry.principal))
            .key(keys.all())
            .key(keys.replica_jobs(&inner.replica))
            .key(keys.replica_lease(&inner.replica))
            .arg(keys.prefix())
            .arg(entry.id.as_str())
            .arg(caps.per_session)
            .arg(caps.per_principal)
            .arg(inner.replica.as_str())
            .arg(inner.instance.token());
        for (name, value) in &fields {
            call.arg(*name).arg(value);
        }
        let change = inner.local.inserting(control, &entry);
        let answer: String = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| inner.redis.unavailable(e))?;
        inner.inserted(change, &answer, caps)
    }
    async fn remove(&self, id: &JobId) -> Result<(), ArcpError> {
        let inner = &*self.inner;
        let change = inner.local.removing(id);
        inner.remove_script(id).await?;
        if let Some(change) = change {
            change.settle(Settled::Forgotten);
        }
        Ok(())
    }

    async fn release_slot(&self, id: &JobId) -> Result<(), ArcpError> {
        let inner = &*self.inner;
        let mut conn = inner.connection().await?;
        if is_cluster(&conn) {
            return inner.cluster_release(&mut conn, id).await;
        }
        let _: i64 = inner
            .scripts
            .release
            .key(inner.keys.job(id))
            .arg(inner.keys.prefix())
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| inner.redis.unavailable(e))?;
        Ok(())
    }

    async fn finish(&self, entry: JobEntry) -> Result<(), ArcpError> {
        let inner = &*self.inner;
        let change = inner.local.finishing(&entry);
        inner.finish_script(&entry).await?;
        if let Some(change) = change {
            change.settle(Settled::Forgotten);
        }
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobEntry>, ArcpError> {
        match self.inner.local.here(id) {
            Here::Running(control) => Ok(Some(control.entry())),
            Here::Ended(entry) => Ok(Some(*entry)),
            Here::Removed => Ok(None),
            Here::Unknown => self.inner.read(id).await,
        }
    }

    async fn list(
        &self,
        scope: ListScope<'_>,
        after: Option<&JobId>,
        limit: usize,
        filter: &(dyn for<'e> Fn(&'e JobEntry) -> bool + Sync),
    ) -> Result<(Vec<JobEntry>, bool), ArcpError> {
        let keys = &self.inner.keys;
        match scope {
            ListScope::Principal(principal) => {
                let in_scope = |e: &JobEntry| &e.principal == principal && filter(e);
                let index = keys.principal_index(principal);
                self.inner.list(index, after, limit, &in_scope).await
            }
            ListScope::All => self.inner.list(keys.all(), after, limit, filter).await,
        }
    }

    async fn cancel(&self, id: &JobId, reason: Option<String>) -> Result<(), ArcpError> {
        let inner = &*self.inner;
        match inner.local.here(id) {
            Here::Running(control) => return control.cancel(reason),
            Here::Ended(entry) => return Err(already_ended(id, entry.status)),
            Here::Removed => return Err(not_found(id)),
            Here::Unknown => {}
        }
        let reason = serde_json::to_string(&reason).map_err(|e| {
            ArcpError::Internal(format!("a cancel reason could not be encoded: {e}"))
        })?;
        let nudge = Message::Cancel {
            job: id.as_str().to_owned(),
        }
        .to_json()?;
        let mut conn = inner.connection().await?;
        let answer: Vec<Value> = if is_cluster(&conn) {
            inner.cluster_cancel(&mut conn, id, &reason, &nudge).await?
        } else {
            inner
                .scripts
                .cancel
                .key(inner.keys.job(id))
                .arg(inner.keys.prefix())
                .arg(reason)
                .arg(nudge)
                .arg(id.as_str())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| inner.redis.unavailable(e))?
        };
        match (answer.first().and_then(text).as_deref(), answer.get(1)) {
            (Some("requested"), Some(heard)) => {
                if int(heard) == Some(0) {
                    // Recorded all the same: the owner reads it when it listens again.
                    tracing::warn!(job = %id, "the replica running the job heard no cancel");
                }
                Ok(())
            }
            (Some("ended"), Some(status)) => {
                let status = text(status)
                    .and_then(|s| fields::status(&s))
                    .ok_or_else(|| corrupt("an ended job without a status"))?;
                Err(already_ended(id, status))
            }
            (Some("ending"), _) => {
                Err(ArcpError::InvalidRequest(format!("job {id} already ended")))
            }
            (Some("missing"), _) => Err(not_found(id)),
            _ => Err(corrupt("an unknown cancel outcome")),
        }
    }

    async fn subscribe(
        &self,
        id: &JobId,
        subscriber: Subscriber,
        max_per_session: usize,
    ) -> Result<Subscription, ArcpError> {
        let inner = &*self.inner;
        match inner.local.here(id) {
            Here::Ended(entry) => return Ok(Subscription::Ended(entry)),
            Here::Removed => return Err(not_found(id)),
            Here::Running(_) | Here::Unknown => {}
        }
        // Listening first, so that the owner's reply cannot come before it is awaited.
        self.inner.listening().await?;
        let awaiting = inner.replies.expect();
        let request = Message::Subscribe {
            request: awaiting.request(),
            from: inner.replica.as_str().to_owned(),
            job: id.as_str().to_owned(),
            subscriber: WireSubscriber::from(&subscriber),
        }
        .to_json()?;
        let session = subscriber.session.clone();
        let mut conn = inner.connection().await?;
        let mut answer: Vec<Value> = if is_cluster(&conn) {
            inner
                .cluster_subscribe(&mut conn, id, &session, max_per_session, &request)
                .await?
        } else {
            inner
                .scripts
                .subscribe
                .key(inner.keys.job(id))
                .key(inner.keys.subscribers(id))
                .key(inner.keys.session_subscribed(&session))
                .arg(inner.keys.prefix())
                .arg(id.as_str())
                .arg(session.as_str())
                .arg(max_per_session)
                .arg(inner.replica.as_str())
                .arg(request)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| inner.redis.unavailable(e))?
        };
        let (owner, taken, heard) = match answer.first().and_then(text).as_deref() {
            Some("running") => {
                let owner = answer.get(1).and_then(text);
                let taken = answer.get(2).and_then(int);
                let heard = answer.get(3).and_then(int);
                match (owner, taken, heard) {
                    (Some(owner), Some(taken), Some(heard)) => (owner, taken == 1, heard),
                    _ => return Err(corrupt("a subscription without its owner")),
                }
            }
            Some("ended") if answer.len() == 2 => {
                let entry = fields::decode(&hash(answer.swap_remove(1))?)?
                    .ok_or_else(|| corrupt("an ended job without its entry"))?;
                return Ok(Subscription::Ended(Box::new(entry)));
            }
            Some("full") => return Err(subscription_cap(max_per_session)),
            Some("missing") => return Err(not_found(id)),
            _ => return Err(corrupt("an unknown subscription outcome")),
        };
        let outcome = if owner == inner.replica.as_str() {
            match inner.local.control(id) {
                Some(control) => return inner.subscribe_here(control, subscriber, taken, id).await,
                // It ended here after the lookup above; Redis does not have it yet.
                None => match inner.local.here(id) {
                    Here::Ended(entry) => Ok(Subscription::Ended(entry)),
                    _ => Err(lost_here(id, &inner.replica)),
                },
            }
        } else if heard == 0 {
            Err(unreachable(id, &owner))
        } else {
            match awaiting.within(REPLY_DEADLINE).await {
                // The owner may yet take the subscriber: the slot stays, as a dropped call's.
                None => return Err(no_reply(id, &owner)),
                Some(Outcome::Subscribed) => return Ok(Subscription::Live),
                Some(Outcome::Ended { fields }) => fields::decode(&fields)?
                    .map(|entry| Subscription::Ended(Box::new(entry)))
                    .ok_or_else(|| corrupt("an ended job without its entry")),
                Some(Outcome::Failed { code, message }) => Err(Outcome::error(&code, message)),
                Some(Outcome::Unsubscribed { .. }) => {
                    Err(corrupt("an unsubscription answering a subscription"))
                }
            }
        };
        // The job did not take the subscriber.
        if taken {
            inner.drop_subscription(id, &session).await?;
        }
        outcome
    }

    async fn unsubscribe(&self, id: &JobId, session: &SessionId) -> Result<bool, ArcpError> {
        let inner = &*self.inner;
        match inner.local.here(id) {
            Here::Running(control) => {
                let was = control.unsubscribe(session).await?;
                inner.drop_subscription(id, session).await?;
                return Ok(was);
            }
            Here::Ended(_) => return Ok(false),
            Here::Removed => return Err(not_found(id)),
            Here::Unknown => {}
        }
        self.inner.listening().await?;
        let awaiting = inner.replies.expect();
        let request = Message::Unsubscribe {
            request: awaiting.request(),
            from: inner.replica.as_str().to_owned(),
            job: id.as_str().to_owned(),
            session: session.as_str().to_owned(),
        }
        .to_json()?;
        let mut conn = inner.connection().await?;
        let answer: Vec<Value> = inner
            .scripts
            .ask
            .key(inner.keys.job(id))
            .arg(inner.keys.prefix())
            .arg(inner.replica.as_str())
            .arg(request)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| inner.redis.unavailable(e))?;
        let (owner, heard) = match answer.first().and_then(text).as_deref() {
            Some("running") => match (answer.get(1).and_then(text), answer.get(2).and_then(int)) {
                (Some(owner), Some(_)) if is_cluster(&conn) => (owner, slots::UNKNOWN),
                (Some(owner), Some(heard)) => (owner, heard),
                _ => return Err(corrupt("an unsubscription without its owner")),
            },
            Some("ended") => return Ok(false),
            Some("missing") => return Err(not_found(id)),
            _ => return Err(corrupt("an unknown unsubscription outcome")),
        };
        let was = if owner == inner.replica.as_str() {
            match (inner.local.control(id), inner.local.here(id)) {
                (Some(control), _) => control.unsubscribe(session).await?,
                // It ended here after the lookup above; Redis does not have it yet.
                (None, Here::Ended(_)) => false,
                (None, _) => return Err(lost_here(id, &inner.replica)),
            }
        } else if heard == 0 {
            return Err(unreachable(id, &owner));
        } else {
            match awaiting.within(REPLY_DEADLINE).await {
                None => return Err(no_reply(id, &owner)),
                Some(Outcome::Unsubscribed { was }) => was,
                Some(Outcome::Ended { .. }) => false,
                Some(Outcome::Failed { code, message }) => {
                    return Err(Outcome::error(&code, message))
                }
                Some(Outcome::Subscribed) => {
                    return Err(corrupt("a subscription answering an unsubscription"))
                }
            }
        };
        inner.drop_subscription(id, session).await?;
        Ok(was)
    }

    async fn held_by(&self, session: &SessionId) -> Result<Holdings, ArcpError> {
        let inner = &*self.inner;
        let mut conn = inner.connection().await?;
        let (running, subscriptions): (Vec<String>, Vec<String>) = ::redis::pipe()
            .cmd("SMEMBERS")
            .arg(inner.keys.session_running(session))
            .cmd("SMEMBERS")
            .arg(inner.keys.session_subscribed(session))
            .query_async(&mut conn)
            .await
            .map_err(|e| inner.redis.unavailable(e))?;
        let running = if is_cluster(&conn) {
            inner.cluster_inserted(&mut conn, running).await?
        } else {
            running
        };
        let sorted = |ids: Vec<String>| {
            let mut ids: Vec<JobId> = ids.into_iter().map(JobId::new).collect();
            ids.sort();
            ids
        };
        Ok(Holdings {
            running: sorted(running),
            subscriptions: sorted(subscriptions),
        })
    }

    async fn purge_finished(&self, before: SystemTime) -> Result<(), ArcpError> {
        let inner = &*self.inner;
        let mut conn = inner.connection().await?;
        if is_cluster(&conn) {
            return inner.cluster_purge(&mut conn, before).await;
        }
        loop {
            let looked: usize = inner
                .scripts
                .purge
                .key(inner.keys.finished())
                .arg(inner.keys.prefix())
                .arg(unix_millis(before))
                .arg(PURGE_BATCH)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| inner.redis.unavailable(e))?;
            if looked < PURGE_BATCH {
                return Ok(());
            }
        }
    }

    async fn running_on(&self, replica: &ReplicaId) -> Result<Vec<LostJob>, ArcpError> {
        let inner = &*self.inner;
        let mut conn = inner.connection().await?;
        if is_cluster(&conn) {
            let mut jobs = inner.cluster_running_on(&mut conn, replica).await?;
            jobs.sort_by(|a, b| a.entry.id.cmp(&b.entry.id));
            return Ok(jobs);
        }
        let running: Vec<Value> = inner
            .scripts
            .running_on
            .key(inner.keys.replica_jobs(replica))
            .arg(inner.keys.prefix())
            .arg(replica.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| inner.redis.unavailable(e))?;
        let mut jobs = Vec::with_capacity(running.len());
        for job in running {
            let Value::Array(parts) = job else {
                return Err(corrupt("a running job in an unknown shape"));
            };
            let Ok([_, fields, subscribers]) = <[Value; 3]>::try_from(parts) else {
                return Err(corrupt("a running job in an unknown shape"));
            };
            let Some(entry) = fields::decode(&hash(fields)?)? else {
                continue;
            };
            let subscribers = Vec::<String>::from_redis_value(subscribers)
                .map_err(|e| corrupt(format_args!("a job's bad subscribers: {e}")))?;
            jobs.push(LostJob {
                entry,
                subscribers: subscribers.into_iter().map(SessionId::new).collect(),
            });
        }
        jobs.sort_by(|a, b| a.entry.id.cmp(&b.entry.id));
        Ok(jobs)
    }

    async fn finish_lost(&self, entry: JobEntry, lost: &ReplicaId) -> Result<bool, ArcpError> {
        let inner = &*self.inner;
        let at = finished_millis(&entry).unwrap_or_else(|| unix_millis(SystemTime::now()));
        let mut conn = inner.connection().await?;
        if is_cluster(&conn) {
            return inner.cluster_finish_lost(&mut conn, &entry, lost, at).await;
        }
        let fields = encode(&entry)?;
        let keys = &inner.keys;
        let mut call = inner.scripts.finish_lost.prepare_invoke();
        call.key(keys.job(&entry.id))
            .key(keys.principal_index(&entry.principal))
            .key(keys.all())
            .key(keys.finished())
            .key(keys.replica_jobs(lost))
            .arg(keys.prefix())
            .arg(entry.id.as_str())
            .arg(at)
            .arg(lost.as_str())
            .arg(inner.instance.as_str());
        for (name, value) in &fields {
            call.arg(*name).arg(value);
        }
        let ended: i64 = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| inner.redis.unavailable(e))?;
        Ok(ended == 1)
    }
}
