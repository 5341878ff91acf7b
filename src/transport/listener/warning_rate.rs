//! Warnings at a bounded rate: a condition that repeats thousands of times a second (a
//! listener out of descriptors, a peer over its cap) must not flood the log.

use std::time::Duration;

use tokio::time::Instant;

/// Lets one occurrence per interval through to the log and counts the ones it holds back, so
/// the next warning can say how many there were.
#[derive(Debug)]
pub(crate) struct WarningRate {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarningRate {
    /// Lets one warning through per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        WarningRate {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Records an occurrence. `Some(n)` when it should be logged, `n` being how many were held
    /// back since the last one logged; `None` when it is held back.
    pub(crate) fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_occurrence_per_interval_is_logged_with_the_count_held_back() {
        let mut warnings = WarningRate::new(Duration::from_secs(5));
        assert_eq!(warnings.admit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(warnings.admit(), None);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(warnings.admit(), Some(1000));
        assert_eq!(warnings.admit(), None);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(warnings.admit(), Some(1));
    }
}
