//! The directory's changes on a Redis Cluster, as steps that each keep to one slot (see "On a
//! Redis Cluster" in the module doc for their order and how what a lost step leaves is
//! repaired). A single Redis runs the scripts of [`super::scripts`] instead, one per change.

use std::{collections::HashMap, time::SystemTime};

use ::redis::{FromRedisValue, Value};

use crate::{
    error::ArcpError,
    ids::{JobId, Principal, ReplicaId, SessionId},
    store::{
        jobs::{JobCaps, JobEntry, LostJob},
        redis::{unix_millis, Connection},
    },
};

use super::{
    fields::{self, corrupt, encode, finished_millis},
    hash, int,
    slots::{Inserted, UNKNOWN},
    text, Inner, PURGE_BATCH,
};

/// A subscription's outcome on a Cluster, as the single Redis's script answers it.
pub(super) type Answer = Vec<Value>;

/// What a job's first uncounting step found: its session and principal, and the sessions
/// whose subscriptions it counted.
struct Counted {
    session: String,
    principal: String,
    subscribers: Vec<String>,
}

fn strings(value: Option<&Value>) -> Result<Vec<String>, ArcpError> {
    match value {
        Some(value) => Vec::<String>::from_redis_value(value.clone())
            .map_err(|e| corrupt(format_args!("a bad set of a job: {e}"))),
        None => Ok(Vec::new()),
    }
}

impl Inner {
    /// Runs one step's script.
    async fn step<T: FromRedisValue>(
        &self,
        conn: &mut Connection,
        call: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, ArcpError> {
        call.invoke_async(conn)
            .await
            .map_err(|e| self.redis.unavailable(e))
    }

    /// Sends one step's pipeline (on a Cluster, each command to its slot's node at once).
    async fn send<T: FromRedisValue>(
        &self,
        conn: &mut Connection,
        pipe: &::redis::Pipeline,
    ) -> Result<T, ArcpError> {
        pipe.query_async(conn)
            .await
            .map_err(|e| self.redis.unavailable(e))
    }

    /// The insert, in the replica's, the session's, the principal's, the listings' and last
    /// the job's slot: the hash is what makes it took effect.
    pub(super) async fn cluster_insert(
        &self,
        conn: &mut Connection,
        entry: &JobEntry,
        caps: JobCaps,
    ) -> Result<Inserted, ArcpError> {
        let keys = &self.keys;
        let id = entry.id.as_str();
        let holders = serde_json::to_string(&[entry.session.as_str(), entry.principal.as_str()])
            .map_err(|e| corrupt(format_args!("a job's holders not encoded: {e}")))?;
        let mut join = self.cluster.join.prepare_invoke();
        join.key(keys.replica_lease(&self.replica))
            .key(keys.replica_jobs(&self.replica))
            .key(keys.replica_inserts(&self.replica))
            .arg(self.instance.token())
            .arg(id)
            .arg(holders);
        if self.step::<i64>(conn, &join).await? == 0 {
            return Ok(Inserted::Lost);
        }
        let mut claim = self.cluster.claim.prepare_invoke();
        claim
            .key(keys.session_running(&entry.session))
            .arg(id)
            .arg(caps.per_session);
        if self.step::<i64>(conn, &claim).await? == 0 {
            let mut undo = ::redis::pipe();
            self.left(&mut undo, &self.replica, &[id]);
            let () = self.send(conn, &undo).await?;
            return Ok(Inserted::Session);
        }
        let mut claim = self.cluster.claim.prepare_invoke();
        claim
            .key(keys.principal_running(&entry.principal))
            .arg(id)
            .arg(caps.per_principal);
        if self.step::<i64>(conn, &claim).await? == 0 {
            let mut undo = ::redis::pipe();
            undo.cmd("SREM")
                .arg(keys.session_running(&entry.session))
                .arg(id)
                .ignore();
            self.left(&mut undo, &self.replica, &[id]);
            let () = self.send(conn, &undo).await?;
            return Ok(Inserted::Principal);
        }
        let mut listed = ::redis::pipe();
        listed
            .cmd("ZADD")
            .arg(keys.principal_index(&entry.principal))
            .arg(0)
            .arg(id)
            .ignore()
            .cmd("ZADD")
            .arg(keys.all())
            .arg(0)
            .arg(id)
            .ignore();
        let () = self.send(conn, &listed).await?;
        let mut write = self.cluster.write.prepare_invoke();
        write
            .key(keys.job(&entry.id))
            .key(keys.subscribers(&entry.id))
            .arg(self.replica.as_str());
        for (name, value) in encode(entry)? {
            write.arg(name).arg(value);
        }
        let _: i64 = self.step(conn, &write).await?;
        Ok(Inserted::Ok)
    }

    /// Undoes the first steps of an insert by `replica` of job `id` for `session` and
    /// `principal` whose hash was never written: the slots and listings first, then the
    /// replica's record of it, which finds the rest.
    pub(super) async fn cluster_abandon_insert(
        &self,
        conn: &mut Connection,
        replica: &ReplicaId,
        id: &JobId,
        session: &SessionId,
        principal: &Principal,
    ) -> Result<(), ArcpError> {
        let keys = &self.keys;
        let id = id.as_str();
        let mut undo = ::redis::pipe();
        undo.cmd("SREM")
            .arg(keys.session_running(session))
            .arg(id)
            .ignore()
            .cmd("SREM")
            .arg(keys.principal_running(principal))
            .arg(id)
            .ignore()
            .cmd("ZREM")
            .arg(keys.principal_index(principal))
            .arg(id)
            .ignore()
            .cmd("ZREM")
            .arg(keys.all())
            .arg(id)
            .ignore();
        let () = self.send(conn, &undo).await?;
        let mut undo = ::redis::pipe();
        self.left(&mut undo, replica, &[id]);
        self.send(conn, &undo).await
    }

    /// Adds to `pipe` the removal of jobs `ids` from `replica`'s records.
    fn left(&self, pipe: &mut ::redis::Pipeline, replica: &ReplicaId, ids: &[&str]) {
        pipe.cmd("SREM")
            .arg(self.keys.replica_jobs(replica))
            .arg(ids)
            .ignore()
            .cmd("HDEL")
            .arg(self.keys.replica_inserts(replica))
            .arg(ids)
            .ignore();
    }

    /// The steps after a job stopped counting in its hash: its slots in its session's and its
    /// principal's sets and its subscribers' ones free, and then its subscriber set goes, so
    /// that a retry after a lost step still finds the subscribers. `listed` also lists the job
    /// as ended, ranked for purging by `finished` (none: not ranked).
    async fn uncounted(
        &self,
        conn: &mut Connection,
        id: &JobId,
        counted: &Counted,
        listed: Option<Option<u64>>,
        replica: Option<&ReplicaId>,
    ) -> Result<(), ArcpError> {
        let keys = &self.keys;
        let mut pipe = ::redis::pipe();
        pipe.cmd("SREM")
            .arg(keys.session_running(&SessionId::new(counted.session.clone())))
            .arg(id.as_str())
            .ignore()
            .cmd("SREM")
            .arg(keys.principal_running(&Principal::new(counted.principal.clone())))
            .arg(id.as_str())
            .ignore();
        for session in &counted.subscribers {
            pipe.cmd("SREM")
                .arg(keys.session_subscribed(&SessionId::new(session.clone())))
                .arg(id.as_str())
                .ignore();
        }
        if let Some(finished) = listed {
            let principal = Principal::new(counted.principal.clone());
            pipe.cmd("ZADD")
                .arg(keys.principal_index(&principal))
                .arg(0)
                .arg(id.as_str())
                .ignore()
                .cmd("ZADD")
                .arg(keys.all())
                .arg(0)
                .arg(id.as_str())
                .ignore();
            match finished {
                Some(ms) => pipe
                    .cmd("ZADD")
                    .arg(keys.finished())
                    .arg(ms)
                    .arg(id.as_str())
                    .ignore(),
                None => pipe
                    .cmd("ZREM")
                    .arg(keys.finished())
                    .arg(id.as_str())
                    .ignore(),
            };
        }
        let () = self.send(conn, &pipe).await?;
        // Last, what finds the steps above again: the subscribers and the replica's records.
        let mut gone = ::redis::pipe();
        if !counted.subscribers.is_empty() {
            gone.cmd("SREM")
                .arg(keys.subscribers(id))
                .arg(&counted.subscribers)
                .ignore();
        }
        if let Some(replica) = replica {
            self.left(&mut gone, replica, &[id.as_str()]);
        }
        if gone.cmd_iter().next().is_some() {
            let () = self.send(conn, &gone).await?;
        }
        Ok(())
    }

    /// The release: the hash stops counting, then the slots free.
    pub(super) async fn cluster_release(
        &self,
        conn: &mut Connection,
        id: &JobId,
    ) -> Result<(), ArcpError> {
        let mut call = self.cluster.release.prepare_invoke();
        call.key(self.keys.job(id)).key(self.keys.subscribers(id));
        let answer: Vec<Value> = self.step(conn, &call).await?;
        if answer.first().and_then(int) != Some(1) {
            return Ok(());
        }
        let counted = Counted {
            session: answer.get(1).and_then(text).unwrap_or_default(),
            principal: answer.get(2).and_then(text).unwrap_or_default(),
            subscribers: strings(answer.get(3))?,
        };
        self.uncounted(conn, id, &counted, None, None).await
    }

    /// The finish: the hash takes the final fields and stops counting, then the slots free
    /// and the job is listed as ended, then its subscribers and this replica's records go.
    pub(super) async fn cluster_finish(
        &self,
        conn: &mut Connection,
        entry: &JobEntry,
    ) -> Result<(), ArcpError> {
        let mut call = self.cluster.finish.prepare_invoke();
        call.key(self.keys.job(&entry.id))
            .key(self.keys.subscribers(&entry.id))
            .arg(self.replica.as_str());
        for (name, value) in encode(entry)? {
            call.arg(name).arg(value);
        }
        let answer: Vec<Value> = self.step(conn, &call).await?;
        if answer.first().and_then(int) != Some(1) {
            let mut pipe = ::redis::pipe();
            self.left(&mut pipe, &self.replica, &[entry.id.as_str()]);
            return self.send(conn, &pipe).await;
        }
        let counted = Counted {
            session: entry.session.as_str().to_owned(),
            principal: entry.principal.as_str().to_owned(),
            subscribers: strings(answer.get(1))?,
        };
        let listed = Some(finished_millis(entry));
        self.uncounted(conn, &entry.id, &counted, listed, Some(&self.replica))
            .await
    }

    /// The end of lost replica `lost`'s job, ranked for purging at `at`, in the finish's steps;
    /// one that an earlier takeover began has its later steps run again. Answers whether this
    /// call ended it.
    pub(super) async fn cluster_finish_lost(
        &self,
        conn: &mut Connection,
        entry: &JobEntry,
        lost: &ReplicaId,
        at: u64,
    ) -> Result<bool, ArcpError> {
        let mut call = self.cluster.finish_lost.prepare_invoke();
        call.key(self.keys.job(&entry.id))
            .key(self.keys.subscribers(&entry.id))
            .arg(lost.as_str())
            .arg(self.instance.as_str());
        for (name, value) in encode(entry)? {
            call.arg(name).arg(value);
        }
        let answer: Vec<Value> = self.step(conn, &call).await?;
        let ended = answer.first().and_then(int).unwrap_or(0);
        if ended == 0 {
            let mut pipe = ::redis::pipe();
            self.left(&mut pipe, lost, &[entry.id.as_str()]);
            let () = self.send(conn, &pipe).await?;
            return Ok(false);
        }
        let counted = Counted {
            session: entry.session.as_str().to_owned(),
            principal: entry.principal.as_str().to_owned(),
            subscribers: strings(answer.get(1))?,
        };
        self.uncounted(conn, &entry.id, &counted, Some(Some(at)), Some(lost))
            .await?;
        Ok(ended == 1)
    }

    /// Forgets the jobs `ids`, each unless another replica ended it for its lost owner when
    /// `spare_lost`, and each running one only off the purge ranking when `spare_running`.
    /// Everything naming a job goes before its hash and its replica's records of it, so that
    /// a retry or a takeover still finds it.
    pub(super) async fn cluster_forget(
        &self,
        conn: &mut Connection,
        ids: &[JobId],
        spare_lost: bool,
        spare_running: bool,
    ) -> Result<(), ArcpError> {
        let keys = &self.keys;
        let mut read = ::redis::pipe();
        for id in ids {
            read.cmd("HMGET")
                .arg(keys.job(id))
                .arg(&["status", "session", "principal", "owner", "lost"])
                .cmd("SMEMBERS")
                .arg(keys.subscribers(id));
        }
        let found: Vec<(Vec<Option<String>>, Vec<String>)> = if ids.is_empty() {
            Vec::new()
        } else {
            self.send(conn, &read).await?
        };
        let mut names = ::redis::pipe();
        let mut hashes = ::redis::pipe();
        for (id, (held, subscribers)) in ids.iter().zip(found) {
            let [status, session, principal, owner, lost] =
                <[Option<String>; 5]>::try_from(held)
                    .map_err(|_| corrupt("a job's fields in an unknown shape"))?;
            if spare_lost && lost.is_some() {
                continue;
            }
            if spare_running && status.as_deref() == Some("running") {
                names
                    .cmd("ZREM")
                    .arg(keys.finished())
                    .arg(id.as_str())
                    .ignore();
                continue;
            }
            let id_str = id.as_str();
            if let Some(session) = session {
                names
                    .cmd("SREM")
                    .arg(keys.session_running(&SessionId::new(session)))
                    .arg(id_str)
                    .ignore();
            }
            if let Some(principal) = principal {
                let principal = Principal::new(principal);
                names
                    .cmd("SREM")
                    .arg(keys.principal_running(&principal))
                    .arg(id_str)
                    .ignore()
                    .cmd("ZREM")
                    .arg(keys.principal_index(&principal))
                    .arg(id_str)
                    .ignore();
            }
            if let Some(owner) = owner {
                self.left(&mut hashes, &ReplicaId::new(owner), &[id_str]);
            }
            for session in subscribers {
                names
                    .cmd("SREM")
                    .arg(keys.session_subscribed(&SessionId::new(session)))
                    .arg(id_str)
                    .ignore();
            }
            names
                .cmd("ZREM")
                .arg(keys.all())
                .arg(id_str)
                .ignore()
                .cmd("ZREM")
                .arg(keys.finished())
                .arg(id_str)
                .ignore();
            hashes
                .cmd("DEL")
                .arg(keys.job(id))
                .arg(keys.subscribers(id))
                .ignore();
        }
        if names.cmd_iter().next().is_some() {
            let () = self.send(conn, &names).await?;
        }
        if hashes.cmd_iter().next().is_some() {
            let () = self.send(conn, &hashes).await?;
        }
        Ok(())
    }

    /// The cancel: the request is counted in the job's hash, then listed among its owner's
    /// pending ones with a nudge. Answers as the single Redis's script.
    pub(super) async fn cluster_cancel(
        &self,
        conn: &mut Connection,
        id: &JobId,
        reason: &str,
        nudge: &str,
    ) -> Result<Answer, ArcpError> {
        let mut call = self.cluster.cancel.prepare_invoke();
        call.key(self.keys.job(id)).arg(reason);
        let answer: Vec<Value> = self.step(conn, &call).await?;
        if answer.first().and_then(text).as_deref() != Some("requested") {
            return Ok(answer);
        }
        let owner = answer
            .get(1)
            .and_then(text)
            .ok_or_else(|| corrupt("a running job without its owner"))?;
        let mut call = self.cluster.nudge.prepare_invoke();
        call.key(self.keys.replica_cancels(&owner))
            .arg(id.as_str())
            .arg(self.keys.replica_channel(&owner))
            .arg(nudge);
        let _: i64 = self.step(conn, &call).await?;
        Ok(vec![
            Value::SimpleString("requested".into()),
            Value::Int(UNKNOWN),
        ])
    }

    /// The subscription: the session's slot is claimed first, then the job takes the
    /// subscriber; a slot the job did not count goes back. Answers as the single Redis's
    /// script.
    pub(super) async fn cluster_subscribe(
        &self,
        conn: &mut Connection,
        id: &JobId,
        session: &SessionId,
        max_per_session: usize,
        request: &str,
    ) -> Result<Answer, ArcpError> {
        let slots = self.keys.session_subscribed(session);
        let mut claim = self.cluster.claim.prepare_invoke();
        claim.key(&slots).arg(id.as_str()).arg(max_per_session);
        let claimed: i64 = self.step(conn, &claim).await?;
        let mut call = self.cluster.subscribe.prepare_invoke();
        call.key(self.keys.job(id))
            .key(self.keys.subscribers(id))
            .arg(session.as_str())
            .arg(self.replica.as_str())
            .arg(request)
            .arg(if claimed == 0 { "full" } else { "claimed" })
            .arg(self.keys.replica_channel(""));
        let mut answer: Vec<Value> = self.step(conn, &call).await?;
        let counted = answer.first().and_then(text).as_deref() == Some("running")
            && answer.get(2).and_then(int) == Some(1);
        if claimed == 1 && !counted {
            let mut back = ::redis::pipe();
            back.cmd("SREM").arg(&slots).arg(id.as_str()).ignore();
            let () = self.send(conn, &back).await?;
        }
        if counted {
            // Taken by this call only if the slot was not held already.
            answer[2] = Value::Int(i64::from(claimed == 1));
        }
        if answer.first().and_then(text).as_deref() == Some("running") && answer.len() == 4 {
            answer[3] = Value::Int(UNKNOWN);
        }
        Ok(answer)
    }

    /// Gives back `session`'s slot on job `id`, in one pipeline: either half alone keeps the
    /// slot or frees one the job no longer counts, both safe, and a retry completes it.
    pub(super) async fn cluster_drop_subscription(
        &self,
        conn: &mut Connection,
        id: &JobId,
        session: &SessionId,
    ) -> Result<(), ArcpError> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("SREM")
            .arg(self.keys.subscribers(id))
            .arg(session.as_str())
            .ignore()
            .cmd("SREM")
            .arg(self.keys.session_subscribed(session))
            .arg(id.as_str())
            .ignore();
        self.send(conn, &pipe).await
    }

    /// Up to `batch` jobs of the listing `index` from `from` on, each with its hash's fields.
    pub(super) async fn cluster_list(
        &self,
        conn: &mut Connection,
        index: &str,
        from: &str,
        batch: usize,
    ) -> Result<Vec<(String, Value)>, ArcpError> {
        let ids: Vec<String> = ::redis::cmd("ZRANGEBYLEX")
            .arg(index)
            .arg(from)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(batch)
            .query_async(conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut read = ::redis::pipe();
        for id in &ids {
            read.cmd("HGETALL")
                .arg(self.keys.job(&JobId::new(id.clone())));
        }
        let hashes: Vec<Value> = self.send(conn, &read).await?;
        Ok(ids.into_iter().zip(hashes).collect())
    }

    /// The running jobs of a session, as its cap counts them: those whose insert wrote their
    /// hash (an insert dropped before has a slot until its repair, but no job).
    pub(super) async fn cluster_inserted(
        &self,
        conn: &mut Connection,
        running: Vec<String>,
    ) -> Result<Vec<String>, ArcpError> {
        if running.is_empty() {
            return Ok(running);
        }
        let mut read = ::redis::pipe();
        for id in &running {
            read.cmd("EXISTS")
                .arg(self.keys.job(&JobId::new(id.clone())));
        }
        let exists: Vec<i64> = self.send(conn, &read).await?;
        Ok(running
            .into_iter()
            .zip(exists)
            .filter(|(_, e)| *e == 1)
            .map(|(id, _)| id)
            .collect())
    }

    /// The jobs still running on `replica`, and the sweep of its records: an insert that
    /// never wrote its job's hash is undone, an end whose later steps never ran is completed,
    /// and what no longer runs there leaves the records.
    pub(super) async fn cluster_running_on(
        &self,
        conn: &mut Connection,
        replica: &ReplicaId,
    ) -> Result<Vec<LostJob>, ArcpError> {
        let set = self.keys.replica_jobs(replica);
        let ids: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut read = ::redis::pipe();
        for id in &ids {
            let id = JobId::new(id.clone());
            read.cmd("HGETALL")
                .arg(self.keys.job(&id))
                .cmd("SMEMBERS")
                .arg(self.keys.subscribers(&id))
                .cmd("HGET")
                .arg(self.keys.replica_inserts(replica))
                .arg(id.as_str());
        }
        let found: Vec<(Value, Vec<String>, Option<String>)> = self.send(conn, &read).await?;
        let mut jobs = Vec::new();
        let mut gone = Vec::new();
        for (id, (fields, subscribers, holders)) in ids.into_iter().zip(found) {
            let fields: HashMap<String, String> = hash(fields)?;
            let id = JobId::new(id);
            let Some(entry) = fields::decode(&fields)? else {
                match holders.and_then(|h| serde_json::from_str::<(String, String)>(&h).ok()) {
                    Some((session, principal)) => {
                        let (session, principal) =
                            (SessionId::new(session), Principal::new(principal));
                        self.cluster_abandon_insert(conn, replica, &id, &session, &principal)
                            .await?
                    }
                    None => gone.push(id),
                }
                continue;
            };
            if fields.get(fields::OWNER).map(String::as_str) != Some(replica.as_str()) {
                gone.push(id);
            } else if fields.get("status").map(String::as_str) == Some("running") {
                jobs.push(LostJob {
                    entry,
                    subscribers: subscribers.into_iter().map(SessionId::new).collect(),
                });
            } else {
                let counted = Counted {
                    session: entry.session.as_str().to_owned(),
                    principal: entry.principal.as_str().to_owned(),
                    subscribers,
                };
                let listed = Some(finished_millis(&entry));
                self.uncounted(conn, &id, &counted, listed, Some(replica))
                    .await?;
            }
        }
        if !gone.is_empty() {
            let gone: Vec<&str> = gone.iter().map(JobId::as_str).collect();
            let mut pipe = ::redis::pipe();
            self.left(&mut pipe, replica, &gone);
            let () = self.send(conn, &pipe).await?;
        }
        Ok(jobs)
    }

    /// This replica's pending cancels (`pending`), each with how many requests its job had and
    /// the last one's reason (JSON).
    pub(super) async fn cluster_pending_cancels(
        &self,
        conn: &mut Connection,
        pending: &str,
    ) -> Result<Vec<(String, u64, String)>, ArcpError> {
        let ids: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg(pending)
            .query_async(conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut read = ::redis::pipe();
        for id in &ids {
            read.cmd("HMGET")
                .arg(self.keys.job(&JobId::new(id.clone())))
                .arg(&["cancels", "cancel_reason"]);
        }
        let found: Vec<(Option<u64>, Option<String>)> = self.send(conn, &read).await?;
        Ok(ids
            .into_iter()
            .zip(found)
            .map(|(id, (cancels, reason))| {
                (
                    id,
                    cancels.unwrap_or(0),
                    reason.unwrap_or_else(|| "null".to_owned()),
                )
            })
            .collect())
    }

    /// Takes the jobs `read` (each with how many requests were read) off the pending cancels,
    /// then lists again those that had more meanwhile: a cancel lists its job after counting
    /// the request, so one counted before the removal is seen here and one after lists itself.
    /// Answers whether any was listed again.
    pub(super) async fn cluster_ack_cancels(
        &self,
        conn: &mut Connection,
        pending: &str,
        read: &[(JobId, u64)],
    ) -> Result<bool, ArcpError> {
        let ids: Vec<&str> = read.iter().map(|(id, _)| id.as_str()).collect();
        let mut pipe = ::redis::pipe();
        pipe.cmd("SREM").arg(pending).arg(&ids).ignore();
        let () = self.send(conn, &pipe).await?;
        let mut counts = ::redis::pipe();
        for (id, _) in read {
            counts.cmd("HGET").arg(self.keys.job(id)).arg("cancels");
        }
        let now: Vec<Option<u64>> = self.send(conn, &counts).await?;
        let again: Vec<&str> = read
            .iter()
            .zip(now)
            .filter(|((_, seen), now)| now.unwrap_or(0) > *seen)
            .map(|((id, _), _)| id.as_str())
            .collect();
        if again.is_empty() {
            return Ok(false);
        }
        let mut pipe = ::redis::pipe();
        pipe.cmd("SADD").arg(pending).arg(&again).ignore();
        let () = self.send(conn, &pipe).await?;
        Ok(true)
    }

    /// Forgets the jobs that ended before `before`, [`PURGE_BATCH`] at a time.
    pub(super) async fn cluster_purge(
        &self,
        conn: &mut Connection,
        before: SystemTime,
    ) -> Result<(), ArcpError> {
        loop {
            let due: Vec<String> = ::redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.finished())
                .arg("-inf")
                .arg(format!("({}", unix_millis(before)))
                .arg("LIMIT")
                .arg(0)
                .arg(PURGE_BATCH)
                .query_async(conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?;
            let ids: Vec<JobId> = due.into_iter().map(JobId::new).collect();
            self.cluster_forget(conn, &ids, false, true).await?;
            if ids.len() < PURGE_BATCH {
                return Ok(());
            }
        }
    }

    /// Writes the changing fields of running jobs, one script per job's slot.
    pub(super) async fn cluster_refresh(
        &self,
        conn: &mut Connection,
        entries: &[(u64, JobEntry)],
    ) -> Result<(), ArcpError> {
        for (_, entry) in entries {
            let (seq, budget, credentials) = fields::changing(entry)?;
            let mut call = self.scripts.refresh.prepare_invoke();
            call.arg(self.keys.prefix())
                .arg(self.replica.as_str())
                .key(self.keys.job(&entry.id))
                .arg(seq)
                .arg(budget)
                .arg(credentials);
            let _: i64 = self.step(conn, &call).await?;
        }
        Ok(())
    }
}
