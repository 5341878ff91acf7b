//! A session's log, read straight from the gateway rather than through a client.

use std::{sync::Arc, time::Duration};

use arcp_gateway::{ids::SessionId, store::log::SessionLog};

use super::{TestServer, FRAME_TIMEOUT};

/// The session's log, straight from the gateway.
pub async fn session_log(server: &TestServer, session: &str) -> Arc<dyn SessionLog> {
    server
        .gateway
        .stores()
        .logs
        .open(&SessionId::new(session))
        .await
        .expect("the session has a log")
}

/// The session's newest event_seq, straight from the gateway's log.
pub async fn newest(server: &TestServer, session: &str) -> u64 {
    session_log(server, session)
        .await
        .bounds()
        .await
        .expect("the log is readable")
        .newest
        .get()
}

/// Polls the log until it holds `seq` frames. A guard against hangs bounded by a deadline, not
/// a timing assertion.
pub async fn wait_for_log(server: &TestServer, session: &str, seq: u64) {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let n = newest(server, session).await;
        if n >= seq {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never reached {seq} (newest {n})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
