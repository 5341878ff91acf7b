//! The embedded, in-process job directory.

use std::{collections::BTreeMap, ops::Bound, sync::Arc, time::SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{
    error::ArcpError,
    ids::{JobId, SessionId},
    protocol::job_frame::JobStatus,
};

use super::{
    already_ended, not_found, JobControl, JobDirectory, JobEntry, ListScope, Subscriber,
    Subscription,
};

/// Jobs held in this process's memory: running ones by their control, ended ones by their
/// final entry.
#[derive(Default)]
pub struct MemoryJobDirectory {
    jobs: Mutex<BTreeMap<JobId, Slot>>,
}

#[derive(Clone)]
enum Slot {
    Running(Arc<dyn JobControl>),
    Finished(Box<JobEntry>),
}

impl Slot {
    fn entry(&self) -> JobEntry {
        match self {
            Slot::Running(control) => control.entry(),
            Slot::Finished(entry) => (**entry).clone(),
        }
    }
}

impl MemoryJobDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many jobs it holds, running or ended.
    pub fn len(&self) -> usize {
        self.jobs.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, id: &JobId) -> Option<Slot> {
        self.jobs.lock().get(id).cloned()
    }

    /// The control of a running job; the right error for any other.
    fn running(&self, id: &JobId) -> Result<Arc<dyn JobControl>, ArcpError> {
        match self.slot(id) {
            Some(Slot::Running(control)) => Ok(control),
            Some(Slot::Finished(entry)) => Err(already_ended(id, entry.status)),
            None => Err(not_found(id)),
        }
    }
}

#[async_trait]
impl JobDirectory for MemoryJobDirectory {
    async fn insert(&self, control: Arc<dyn JobControl>) -> Result<(), ArcpError> {
        let id = control.entry().id;
        self.jobs.lock().insert(id, Slot::Running(control));
        Ok(())
    }

    async fn remove(&self, id: &JobId) -> Result<(), ArcpError> {
        self.jobs.lock().remove(id);
        Ok(())
    }

    async fn finish(&self, entry: JobEntry) -> Result<(), ArcpError> {
        self.jobs
            .lock()
            .insert(entry.id.clone(), Slot::Finished(Box::new(entry)));
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobEntry>, ArcpError> {
        Ok(self.slot(id).map(|slot| slot.entry()))
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
        let slots: Vec<Slot> = self
            .jobs
            .lock()
            .range((start, Bound::Unbounded))
            .map(|(_, slot)| slot.clone())
            .collect();
        let mut page = Vec::new();
        for entry in slots.iter().map(Slot::entry) {
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
    ) -> Result<Subscription, ArcpError> {
        match self.slot(id) {
            Some(Slot::Running(control)) => {
                control.subscribe(subscriber).await?;
                Ok(Subscription::Live)
            }
            Some(Slot::Finished(entry)) => Ok(Subscription::Ended(entry)),
            None => Err(not_found(id)),
        }
    }

    async fn unsubscribe(&self, id: &JobId, session: &SessionId) -> Result<bool, ArcpError> {
        match self.slot(id) {
            Some(Slot::Running(control)) => control.unsubscribe(session).await,
            Some(Slot::Finished(_)) => Ok(false),
            None => Err(not_found(id)),
        }
    }

    async fn purge_finished(&self, before: SystemTime) -> Result<(), ArcpError> {
        self.jobs.lock().retain(|_, slot| match slot {
            Slot::Finished(entry) => {
                entry.status == JobStatus::Running
                    || entry.finished_at.is_none_or(|at| at >= before)
            }
            Slot::Running(_) => true,
        });
        Ok(())
    }
}
