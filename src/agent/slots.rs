//! A cap on how many jobs of one agent backend run at once (`max_children`, `max_jobs`): a
//! job beyond it waits for a slot.

use std::{num::NonZeroUsize, sync::Arc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ArcpError;

/// The slots of one backend; unlimited without a cap.
#[derive(Debug)]
pub struct Slots(Option<Arc<Semaphore>>);

impl Slots {
    /// `cap` slots, or no limit.
    pub fn new(cap: Option<NonZeroUsize>) -> Slots {
        Slots(cap.map(|n| Arc::new(Semaphore::new(n.get()))))
    }

    /// Waits for a slot, held until the permit is dropped; `None` without a cap. Waiting ends
    /// with the job: the runner drops this future on cancel or timeout, which leaves the
    /// semaphore's queue.
    pub async fn take(&self) -> Result<Option<OwnedSemaphorePermit>, ArcpError> {
        match &self.0 {
            Some(slots) => slots
                .clone()
                .acquire_owned()
                .await
                .map(Some)
                .map_err(|_| ArcpError::Internal("the agent's slots closed".into())),
            None => Ok(None),
        }
    }
}
