//! The embedded, in-process job directory.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Bound,
    sync::Arc,
    time::SystemTime,
};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{
    error::ArcpError,
    ids::{JobId, Principal, ReplicaId, SessionId},
    protocol::job_frame::JobStatus,
    store::caps::over_cap,
};

use super::{
    already_ended, not_found, Holdings, JobCaps, JobControl, JobDirectory, JobEntry, ListScope,
    LostJob, Subscriber, Subscription,
};

/// Jobs held in this process's memory: running ones by their control, ended ones by their
/// final entry, with the counts the caps are checked against. One lock over all of it, so
/// that a check and the change it admits are one step.
#[derive(Default)]
pub struct MemoryJobDirectory {
    jobs: Mutex<Jobs>,
}

#[derive(Default)]
struct Jobs {
    slots: BTreeMap<JobId, Slot>,
    /// What each session holds; a session holding nothing has no entry.
    sessions: HashMap<SessionId, Held>,
    /// Running jobs per principal; a principal running none has no entry.
    principals: HashMap<Principal, usize>,
}

#[derive(Default)]
struct Held {
    running: HashSet<JobId>,
    subscriptions: HashSet<JobId>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.running.is_empty() && self.subscriptions.is_empty()
    }
}

enum Slot {
    Running(Running),
    Finished(Box<JobEntry>),
}

struct Running {
    control: Arc<dyn JobControl>,
    session: SessionId,
    principal: Principal,
    /// Whether it still counts against the caps: until its slot is released, when it stops
    /// counting for its session, its principal and its subscribers alike.
    counted: bool,
    /// The sessions whose subscriptions to it are counted.
    subscribers: HashSet<SessionId>,
}

/// A slot as a lookup hands it out, copied so the lock is not held while the job is asked.
enum Found {
    Running(Arc<dyn JobControl>),
    Finished(Box<JobEntry>),
}

impl Found {
    fn entry(&self) -> JobEntry {
        match self {
            Found::Running(control) => control.entry(),
            Found::Finished(entry) => (**entry).clone(),
        }
    }
}

impl Slot {
    fn found(&self) -> Found {
        match self {
            Slot::Running(running) => Found::Running(running.control.clone()),
            Slot::Finished(entry) => Found::Finished(entry.clone()),
        }
    }
}

impl Jobs {
    fn found(&self, id: &JobId) -> Option<Found> {
        self.slots.get(id).map(Slot::found)
    }

    fn held(&mut self, session: &SessionId) -> &mut Held {
        self.sessions.entry(session.clone()).or_default()
    }

    /// Drops `session`'s entry once it holds nothing.
    fn tidy(&mut self, session: &SessionId) {
        if self.sessions.get(session).is_some_and(Held::is_empty) {
            self.sessions.remove(session);
        }
    }

    /// Stops counting `running` against the caps.
    fn uncount(&mut self, id: &JobId, session: &SessionId, principal: &Principal) {
        if let Some(held) = self.sessions.get_mut(session) {
            held.running.remove(id);
        }
        self.tidy(session);
        if let Some(n) = self.principals.get_mut(principal) {
            *n -= 1;
            if *n == 0 {
                self.principals.remove(principal);
            }
        }
    }

    /// Forgets the slot of a running job: it no longer counts and its subscriptions end.
    fn vacate(&mut self, id: &JobId, mut running: Running) {
        if running.counted {
            self.uncount(id, &running.session, &running.principal);
        }
        self.free_subscribers(id, &mut running.subscribers);
    }

    /// Frees the subscription slots `subscribers` hold on job `id`.
    fn free_subscribers(&mut self, id: &JobId, subscribers: &mut HashSet<SessionId>) {
        for subscriber in subscribers.drain() {
            if let Some(held) = self.sessions.get_mut(&subscriber) {
                held.subscriptions.remove(id);
            }
            self.tidy(&subscriber);
        }
    }

    fn drop_subscription(&mut self, id: &JobId, session: &SessionId) {
        if let Some(Slot::Running(running)) = self.slots.get_mut(id) {
            running.subscribers.remove(session);
        }
        if let Some(held) = self.sessions.get_mut(session) {
            held.subscriptions.remove(id);
        }
        self.tidy(session);
    }
}

impl MemoryJobDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many jobs it holds, running or ended.
    pub fn len(&self) -> usize {
        self.jobs.lock().slots.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn found(&self, id: &JobId) -> Option<Found> {
        self.jobs.lock().found(id)
    }

    /// The control of a running job; the right error for any other.
    fn running(&self, id: &JobId) -> Result<Arc<dyn JobControl>, ArcpError> {
        match self.found(id) {
            Some(Found::Running(control)) => Ok(control),
            Some(Found::Finished(entry)) => Err(already_ended(id, entry.status)),
            None => Err(not_found(id)),
        }
    }
}

#[async_trait]
impl JobDirectory for MemoryJobDirectory {
    async fn insert(&self, control: Arc<dyn JobControl>, caps: JobCaps) -> Result<(), ArcpError> {
        // Read before locking: a running job's entry takes its own locks.
        let entry = control.entry();
        let mut jobs = self.jobs.lock();
        let in_session = jobs
            .sessions
            .get(&entry.session)
            .map_or(0, |h| h.running.len());
        if in_session >= caps.per_session {
            return Err(over_cap(
                "this session already runs as many jobs",
                "max_jobs_per_session",
                caps.per_session,
                "one must end first",
            ));
        }
        let of_principal = jobs.principals.get(&entry.principal).copied().unwrap_or(0);
        if of_principal >= caps.per_principal {
            return Err(over_cap(
                "this principal already runs as many jobs over all its sessions",
                "max_jobs_per_principal",
                caps.per_principal,
                "one must end first",
            ));
        }
        jobs.held(&entry.session).running.insert(entry.id.clone());
        *jobs.principals.entry(entry.principal.clone()).or_default() += 1;
        let running = Running {
            control,
            session: entry.session,
            principal: entry.principal,
            counted: true,
            subscribers: HashSet::new(),
        };
        if let Some(Slot::Running(old)) =
            jobs.slots.insert(entry.id.clone(), Slot::Running(running))
        {
            // The same id registered twice: the first registration's counts go with it.
            jobs.vacate(&entry.id, old);
        }
        Ok(())
    }

    async fn remove(&self, id: &JobId) -> Result<(), ArcpError> {
        let mut jobs = self.jobs.lock();
        if let Some(Slot::Running(running)) = jobs.slots.remove(id) {
            jobs.vacate(id, running);
        }
        Ok(())
    }

    async fn release_slot(&self, id: &JobId) -> Result<(), ArcpError> {
        let mut jobs = self.jobs.lock();
        let (session, principal, mut subscribers) = match jobs.slots.get_mut(id) {
            Some(Slot::Running(running)) if running.counted => {
                running.counted = false;
                (
                    running.session.clone(),
                    running.principal.clone(),
                    std::mem::take(&mut running.subscribers),
                )
            }
            _ => return Ok(()),
        };
        jobs.uncount(id, &session, &principal);
        jobs.free_subscribers(id, &mut subscribers);
        Ok(())
    }

    async fn finish(&self, entry: JobEntry) -> Result<(), ArcpError> {
        let mut jobs = self.jobs.lock();
        let id = entry.id.clone();
        if let Some(Slot::Running(running)) = jobs
            .slots
            .insert(id.clone(), Slot::Finished(Box::new(entry)))
        {
            jobs.vacate(&id, running);
        }
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobEntry>, ArcpError> {
        Ok(self.found(id).map(|found| found.entry()))
    }

    async fn list(
        &self,
        scope: ListScope<'_>,
        after: Option<&JobId>,
        limit: usize,
        filter: &(dyn for<'e> Fn(&'e JobEntry) -> bool + Sync),
    ) -> Result<(Vec<JobEntry>, bool), ArcpError> {
        let start = after.cloned().map_or(Bound::Unbounded, Bound::Excluded);
        // Copied out first: a running job's entry takes its own locks.
        let found: Vec<Found> = {
            let jobs = self.jobs.lock();
            jobs.slots
                .range((start, Bound::Unbounded))
                .map(|(_, slot)| slot.found())
                .collect()
        };
        let mut page = Vec::new();
        for entry in found.iter().map(Found::entry) {
            let in_scope = match scope {
                ListScope::Principal(p) => &entry.principal == p,
                ListScope::All => true,
            };
            if !in_scope || !filter(&entry) {
                continue;
            }
            if page.len() == limit {
                return Ok((page, true));
            }
            page.push(entry);
        }
        Ok((page, false))
    }

    async fn cancel(&self, id: &JobId, reason: Option<String>) -> Result<(), ArcpError> {
        self.running(id)?.cancel(reason)
    }

    async fn subscribe(
        &self,
        id: &JobId,
        subscriber: Subscriber,
        max_per_session: usize,
    ) -> Result<Subscription, ArcpError> {
        let session = subscriber.session.clone();
        // The slot is taken before the job is asked, so racing subscriptions of one session
        // cannot both pass the cap, and given back if the job refuses. A call dropped while
        // the job takes the subscriber keeps it: the job may hold the subscriber, and a slot
        // counted once too often frees when the job ends, where one too few would let the cap
        // be passed.
        let (control, reserved) = {
            let mut jobs = self.jobs.lock();
            let held = jobs.sessions.get(&session);
            let subscriptions = held.map_or(0, |h| h.subscriptions.len());
            let repeat = held.is_some_and(|h| h.subscriptions.contains(id));
            match jobs.slots.get_mut(id) {
                None => return Err(not_found(id)),
                Some(Slot::Finished(entry)) => return Ok(Subscription::Ended(entry.clone())),
                // A repeat is the job's to refuse, and takes no second slot; a job that is
                // ending holds no slots.
                Some(Slot::Running(running)) if repeat || !running.counted => {
                    (running.control.clone(), false)
                }
                Some(Slot::Running(_)) if subscriptions >= max_per_session => {
                    return Err(over_cap(
                        "this session already holds as many subscriptions",
                        "max_subscriptions_per_session",
                        max_per_session,
                        "unsubscribe from one first",
                    ))
                }
                Some(Slot::Running(running)) => {
                    running.subscribers.insert(session.clone());
                    let control = running.control.clone();
                    jobs.held(&session).subscriptions.insert(id.clone());
                    (control, true)
                }
            }
        };
        match control.subscribe(subscriber).await {
            Ok(()) => Ok(Subscription::Live),
            Err(e) => {
                if reserved {
                    self.jobs.lock().drop_subscription(id, &session);
                }
                Err(e)
            }
        }
    }

    async fn unsubscribe(&self, id: &JobId, session: &SessionId) -> Result<bool, ArcpError> {
        let control = match self.found(id) {
            Some(Found::Running(control)) => control,
            Some(Found::Finished(_)) => return Ok(false),
            None => return Err(not_found(id)),
        };
        let was = control.unsubscribe(session).await?;
        self.jobs.lock().drop_subscription(id, session);
        Ok(was)
    }

    async fn held_by(&self, session: &SessionId) -> Result<Holdings, ArcpError> {
        let jobs = self.jobs.lock();
        let Some(held) = jobs.sessions.get(session) else {
            return Ok(Holdings::default());
        };
        let sorted = |ids: &HashSet<JobId>| {
            let mut ids: Vec<JobId> = ids.iter().cloned().collect();
            ids.sort();
            ids
        };
        Ok(Holdings {
            running: sorted(&held.running),
            subscriptions: sorted(&held.subscriptions),
        })
    }

    async fn purge_finished(&self, before: SystemTime) -> Result<(), ArcpError> {
        self.jobs.lock().slots.retain(|_, slot| match slot {
            Slot::Finished(entry) => {
                entry.status == JobStatus::Running
                    || entry.finished_at.is_none_or(|at| at >= before)
            }
            Slot::Running(_) => true,
        });
        Ok(())
    }

    /// This process is the only replica, and it never outlives itself: it has no lost
    /// replica's jobs.
    async fn running_on(&self, _replica: &ReplicaId) -> Result<Vec<LostJob>, ArcpError> {
        Ok(Vec::new())
    }

    async fn finish_lost(&self, _entry: JobEntry, _lost: &ReplicaId) -> Result<bool, ArcpError> {
        Ok(false)
    }
}
