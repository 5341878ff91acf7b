//! The jobs this replica runs, by their controls, and where each stands with Redis.
//!
//! A change to a local job is recorded here before its script is sent, and settled when the
//! script answered. A call dropped (or failed) in between leaves the job marked for a retry,
//! which the directory's maintenance settles: an insert by reading whether it took effect, a
//! finish or a removal by running its script again (both may run twice). Until then, lookups
//! answer as the unsettled call would leave things: a finishing job with its final entry, a
//! removed one not at all, and one whose insert is unsettled as Redis has it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;

use crate::{
    ids::{EventSeq, JobId},
    protocol::credential::Credential,
    store::jobs::{JobControl, JobEntry},
};

/// Every job this replica registered and has not yet seen settled as ended or removed.
#[derive(Default)]
pub(super) struct LocalJobs {
    jobs: Mutex<HashMap<JobId, Local>>,
    /// Numbers each change, so that the settling of an older one cannot undo a newer one.
    tokens: AtomicU64,
}

struct Local {
    control: Arc<dyn JobControl>,
    phase: Phase,
    /// The change this phase began with.
    token: u64,
    /// The changing fields as Redis last had them from here.
    written: Changing,
    /// How many cancel requests from other replicas the control was given.
    cancels_seen: u64,
}

enum Phase {
    /// Its insert was sent; whether it took effect is Redis's to say.
    Inserting { retry: bool },
    /// In Redis, and running here.
    Live,
    /// Ended with this entry; Redis may not have it yet.
    Finishing { entry: Box<JobEntry>, retry: bool },
    /// Removed; Redis may still have it.
    Removing { retry: bool },
}

/// The fields of an entry that change while its job runs, which Redis is kept current with.
#[derive(PartialEq)]
pub(super) struct Changing {
    seq: EventSeq,
    budget: Option<BTreeMap<String, f64>>,
    credentials: Vec<Credential>,
}

impl Changing {
    fn of(entry: &JobEntry) -> Changing {
        Changing {
            seq: entry.last_event_seq,
            budget: entry.budget.clone(),
            credentials: entry.credentials.clone(),
        }
    }
}

/// What this replica knows of a job by id.
pub(super) enum Here {
    /// It runs here: its control answers.
    Running(Arc<dyn JobControl>),
    /// It ended here, with this entry.
    Ended(Box<JobEntry>),
    /// It was removed here.
    Removed,
    /// It does not run here, or its insert is not settled: Redis knows.
    Unknown,
}

/// How a settled change leaves its job here.
pub(super) enum Settled {
    /// Running, and in Redis.
    Live,
    /// No longer this replica's to keep: ended or removed in Redis, or never inserted.
    Forgotten,
}

/// A change to a local job whose script is under way: unless settled, it is marked for a retry
/// when dropped.
pub(super) struct Change<'a> {
    jobs: &'a LocalJobs,
    id: JobId,
    token: u64,
    settled: bool,
}

impl Change<'_> {
    /// The script answered: the job is `how`.
    pub(super) fn settle(mut self, how: Settled) {
        self.settled = true;
        self.jobs.settle(&self.id, self.token, how);
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.jobs.mark_retry(&self.id, self.token);
        }
    }
}

/// What the maintenance has to do.
#[derive(Default)]
pub(super) struct Due {
    /// Running jobs, to refresh in Redis if they changed.
    pub live: Vec<(JobId, u64, Arc<dyn JobControl>)>,
    /// Inserts to settle by reading Redis, with the controls they inserted.
    pub inserts: Vec<(JobId, u64, Arc<dyn JobControl>)>,
    /// Finishes to send again.
    pub finishes: Vec<(JobId, u64, Box<JobEntry>)>,
    /// Removals to send again.
    pub removals: Vec<(JobId, u64)>,
}

impl LocalJobs {
    fn token(&self) -> u64 {
        self.tokens.fetch_add(1, Ordering::Relaxed)
    }

    /// What is known here of job `id`.
    pub(super) fn here(&self, id: &JobId) -> Here {
        match self.jobs.lock().get(id) {
            Some(Local {
                phase: Phase::Live,
                control,
                ..
            }) => Here::Running(control.clone()),
            Some(Local {
                phase: Phase::Finishing { entry, .. },
                ..
            }) => Here::Ended(entry.clone()),
            Some(Local {
                phase: Phase::Removing { .. },
                ..
            }) => Here::Removed,
            Some(Local {
                phase: Phase::Inserting { .. },
                ..
            })
            | None => Here::Unknown,
        }
    }

    /// The control of a job registered here that has not ended, settled or not.
    pub(super) fn control(&self, id: &JobId) -> Option<Arc<dyn JobControl>> {
        match self.jobs.lock().get(id) {
            Some(
                local @ Local {
                    phase: Phase::Live | Phase::Inserting { .. },
                    ..
                },
            ) => Some(local.control.clone()),
            _ => None,
        }
    }

    /// Records the insert of `control`, whose entry is `entry`, before its script is sent.
    pub(super) fn inserting(&self, control: Arc<dyn JobControl>, entry: &JobEntry) -> Change<'_> {
        let token = self.token();
        let local = Local {
            control,
            phase: Phase::Inserting { retry: false },
            token,
            written: Changing::of(entry),
            cancels_seen: 0,
        };
        self.jobs.lock().insert(entry.id.clone(), local);
        self.change(&entry.id, token)
    }

    /// Records the end of a local job before its script is sent; `None` for a job not
    /// registered here, whose end needs no keeping.
    pub(super) fn finishing(&self, entry: &JobEntry) -> Option<Change<'_>> {
        let token = self.token();
        let mut jobs = self.jobs.lock();
        let local = jobs.get_mut(&entry.id)?;
        local.phase = Phase::Finishing {
            entry: Box::new(entry.clone()),
            retry: false,
        };
        local.token = token;
        drop(jobs);
        Some(self.change(&entry.id, token))
    }

    /// Records the removal of a local job before its script is sent.
    pub(super) fn removing(&self, id: &JobId) -> Option<Change<'_>> {
        let token = self.token();
        let mut jobs = self.jobs.lock();
        let local = jobs.get_mut(id)?;
        local.phase = Phase::Removing { retry: false };
        local.token = token;
        drop(jobs);
        Some(self.change(id, token))
    }

    /// Whether `token` still names the latest change to job `id` here.
    pub(super) fn current(&self, id: &JobId, token: u64) -> bool {
        self.jobs.lock().get(id).is_some_and(|l| l.token == token)
    }

    /// A change the maintenance retries, to settle as the call that began it would have.
    pub(super) fn retrying(&self, id: &JobId, token: u64) -> Change<'_> {
        self.change(id, token)
    }

    fn change(&self, id: &JobId, token: u64) -> Change<'_> {
        Change {
            jobs: self,
            id: id.clone(),
            token,
            settled: false,
        }
    }

    fn settle(&self, id: &JobId, token: u64, how: Settled) {
        let mut jobs = self.jobs.lock();
        let Some(local) = jobs.get_mut(id).filter(|l| l.token == token) else {
            return;
        };
        match how {
            Settled::Live => local.phase = Phase::Live,
            Settled::Forgotten => {
                jobs.remove(id);
            }
        }
    }

    fn mark_retry(&self, id: &JobId, token: u64) {
        if let Some(local) = self.jobs.lock().get_mut(id).filter(|l| l.token == token) {
            match &mut local.phase {
                Phase::Inserting { retry }
                | Phase::Finishing { retry, .. }
                | Phase::Removing { retry } => *retry = true,
                Phase::Live => {}
            }
        }
    }

    /// What the maintenance has to do now. The retries it takes are no longer marked, so that
    /// a retry that fails again marks itself anew.
    pub(super) fn due(&self) -> Due {
        let mut due = Due::default();
        for (id, local) in self.jobs.lock().iter_mut() {
            let entry = (id.clone(), local.token);
            match &mut local.phase {
                Phase::Live => due
                    .live
                    .push((id.clone(), local.token, local.control.clone())),
                Phase::Inserting { retry } if *retry => {
                    *retry = false;
                    due.inserts
                        .push((id.clone(), local.token, local.control.clone()));
                }
                Phase::Finishing { entry: last, retry } if *retry => {
                    *retry = false;
                    due.finishes.push((id.clone(), local.token, last.clone()));
                }
                Phase::Removing { retry } if *retry => {
                    *retry = false;
                    due.removals.push(entry);
                }
                _ => {}
            }
        }
        due
    }

    /// Of `entries` (read from their controls under the given tokens), those whose changing
    /// fields differ from what Redis has from here.
    pub(super) fn changed(&self, entries: Vec<(u64, JobEntry)>) -> Vec<(u64, JobEntry)> {
        let jobs = self.jobs.lock();
        entries
            .into_iter()
            .filter(|(token, entry)| {
                jobs.get(&entry.id)
                    .is_some_and(|l| l.token == *token && l.written != Changing::of(entry))
            })
            .collect()
    }

    /// Records that Redis has `entry`'s changing fields.
    pub(super) fn wrote(&self, token: u64, entry: &JobEntry) {
        if let Some(local) = self.jobs.lock().get_mut(&entry.id) {
            if local.token == token {
                local.written = Changing::of(entry);
            }
        }
    }

    /// The control to give the `cancels`-th cancel request to, if it has not had it.
    pub(super) fn cancel_due(&self, id: &JobId, cancels: u64) -> Option<Arc<dyn JobControl>> {
        let mut jobs = self.jobs.lock();
        let local = jobs.get_mut(id)?;
        let running = matches!(local.phase, Phase::Live | Phase::Inserting { .. });
        if !running || cancels <= local.cancels_seen {
            return None;
        }
        local.cancels_seen = cancels;
        Some(local.control.clone())
    }
}
