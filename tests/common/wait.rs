//! Waiting on state the test can observe, rather than on time.

use std::{future::Future, time::Duration};

use super::FRAME_TIMEOUT;

/// Re-checks `holds` until it is true; fails the test, saying `what` never happened, after
/// [`FRAME_TIMEOUT`], a guard against hangs rather than a timing assertion.
pub async fn eventually<F: Future<Output = bool>>(what: &str, mut holds: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while !holds().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {FRAME_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`eventually`] for a condition that needs no waiting to check.
pub async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(ready())).await
}
