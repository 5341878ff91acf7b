//! Row 6: a resume storm. Many sessions drop their streams at once and all resume together, on
//! the same gateway, or (on a shared store) on another replica.

use std::time::Instant;

use arcp_gateway::proto::{self, server_frame::Payload as Out};

use crate::{
    client::{connections, open_all, Bench},
    BenchResult,
};

impl Bench {
    /// Row 6: `count` sessions drop their streams at once and resume; ms until every one has
    /// its welcome.
    pub(crate) async fn storm(&self, count: usize) -> BenchResult<f64> {
        self.storm_to(self, count).await
    }

    /// Row 6 across replicas: `count` sessions opened here drop their streams at once and
    /// resume on `other`, a replica on the same store; ms until every one has its welcome.
    pub(crate) async fn storm_to(&self, other: &Bench, count: usize) -> BenchResult<f64> {
        let channels = connections(self.addr, count).await?;
        let opened = open_all(&channels, vec![None; count]).await?;
        let mut resumes = Vec::new();
        for (session, welcome) in opened {
            let Some(Out::SessionWelcome(w)) = welcome.payload else {
                unreachable!()
            };
            resumes.push(Some(proto::ResumeInfo {
                session_id: welcome.session_id,
                resume_token: w.resume_token,
                last_event_seq: 0,
            }));
            // The stream drops here: every session is detached before the storm starts.
            drop(session);
        }
        let channels = if std::ptr::eq(self, other) {
            channels
        } else {
            connections(other.addr, count).await?
        };
        let start = Instant::now();
        open_all(&channels, resumes).await?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }
}
