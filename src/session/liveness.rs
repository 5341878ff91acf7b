//! Liveness (§6.4, §13.1): with `heartbeat` negotiated, a client the runtime has heard nothing
//! from for two intervals is lost. Its stream then gives the session up at once (the resume
//! window starts, and the jobs stop pacing themselves to it) and asks its transport to end.
//!
//! The watch runs beside the stream's reader, not in its outbound half. The outbound half runs
//! only when the transport asks it for a frame, and a transport whose send is stuck on a client
//! that stopped reading never asks, so a check there never ran for exactly the clients it is
//! for. Only what the client sends counts: whether the runtime's own sends complete says
//! nothing about it. A client whose replies back up so far that the reader stops reading it
//! (see `stream_control`) is not being heard either, and is judged the same way.
//!
//! The timer is not reset per frame: the reader only moves `heard` on, and the watch, when its
//! timer fires, re-arms it for two intervals after the latest frame if that is still ahead.

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    error::ArcpError,
    protocol::control::{Control, ControlMessage},
};

use super::{
    attached::{AttachedStream, LastHeard},
    stream_control::{Reply, Then},
};

/// Returns once nothing was heard from the client for two intervals.
pub(crate) async fn until_lost(heard: &LastHeard, interval: Duration) {
    let bound = 2 * interval;
    loop {
        let due = heard.at() + bound;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

/// Gives up a stream whose client is lost. The session goes on for its resume window and its
/// jobs run on (§6.4); the client hears `HEARTBEAT_LOST` if its transport ever takes another
/// frame.
pub(crate) async fn declare_lost(stream: &AttachedStream, interval: Duration) {
    tracing::info!(session = %stream.record.id(), "heartbeat lost; giving up the transport");
    stream.release();
    stream.lost.cancel();
    let error = ArcpError::HeartbeatLost(format!(
        "nothing received from the client for two heartbeat intervals ({}s)",
        2 * interval.as_secs()
    ));
    let reply = Reply {
        control: Control {
            request_id: None,
            message: ControlMessage::Error(error),
        },
        then: Then::Close,
    };
    stream.control.send(reply).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_is_lost_two_intervals_after_it_was_last_heard() {
        let heard = LastHeard::new();
        let interval = Duration::from_secs(1);
        let start = Instant::now();
        let watch = until_lost(&heard, interval);
        tokio::pin!(watch);
        // Heard after 1.5 s: the watch that would have fired at 2 s re-arms for 3.5 s.
        tokio::select! {
            () = &mut watch => panic!("lost while the client was heard from"),
            () = tokio::time::sleep(Duration::from_millis(1500)) => heard.now(),
        }
        watch.await;
        let lost_after = start.elapsed();
        assert!(
            lost_after >= Duration::from_millis(3500) && lost_after < Duration::from_millis(3600),
            "lost after {lost_after:?}"
        );
    }
}
