//! How long an accept loop waits after a failed accept.

use std::time::Duration;

/// The first wait: short enough that a brief shortage of descriptors costs nothing visible.
const FIRST: Duration = Duration::from_millis(5);
/// The longest wait: a listener out of descriptors wakes once a second, not thousands of times.
const LONGEST: Duration = Duration::from_secs(1);

/// Exponential back-off: each failure waits twice as long as the one before, up to
/// [`LONGEST`]; a success starts again from [`FIRST`].
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST }
    }
}

impl Backoff {
    /// Records a failure; returns how long to wait before trying again.
    pub(crate) fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(LONGEST);
        wait
    }

    /// Records a success: the next failure waits [`FIRST`] again.
    pub(crate) fn succeeded(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_a_second_and_a_success_starts_again() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = (0..10)
            .map(|_| backoff.failed().as_millis() as u64)
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), FIRST);
    }
}
