//! [`Running`]: the jobs this replica runs, as a drain sees them. A replica that is shutting
//! down lets them finish for a grace, so their clients (resuming on other replicas of a shared
//! store) see them end as they would have; then it ends the rest, each with a retryable
//! `INTERNAL_ERROR` naming the replica, so no client waits for a job nobody runs any more.

use std::{future::Future, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::ids::ReplicaId;

/// Every job started on this replica, until it has logged its terminal frame.
pub struct Running {
    replica: ReplicaId,
    tasks: TaskTracker,
    /// Cancelled when the drain's grace is over: every job still running ends.
    ending: CancellationToken,
}

/// What a drain did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Drained {
    /// Jobs that finished by themselves within the grace.
    pub finished: usize,
    /// Jobs ended when the grace was over.
    pub ended: usize,
}

impl Running {
    /// No jobs yet, on replica `replica`.
    pub fn new(replica: ReplicaId) -> Running {
        Running {
            replica,
            tasks: TaskTracker::new(),
            ending: CancellationToken::new(),
        }
    }

    /// The replica the jobs run on.
    pub fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    /// Runs a job's driver, counted until it returns.
    pub(crate) fn spawn(&self, driver: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(driver);
    }

    /// Resolves once the drain's grace is over and every job must end.
    pub(crate) async fn ending(&self) {
        self.ending.cancelled().await
    }

    /// Waits up to `grace` for the running jobs to finish, then ends the rest and waits for
    /// their terminal frames to be logged (for at most `settle` more).
    pub async fn drain(&self, grace: Duration, settle: Duration) -> Drained {
        let before = self.tasks.len();
        self.tasks.close();
        let finished_in_time = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        let still = if finished_in_time {
            0
        } else {
            self.tasks.len()
        };
        self.ending.cancel();
        if tokio::time::timeout(settle, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                jobs = self.tasks.len(),
                "jobs still ending after the drain; exiting without their terminal frames"
            );
        }
        Drained {
            finished: before.saturating_sub(still),
            ended: still,
        }
    }
}
