//! The job directory's contract (`JobDirectory`), with a stand-in for the running job it
//! routes to.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arcp_gateway::{
    clock::Timestamp,
    error::{ArcpError, ErrorCode},
    ids::{EventSeq, JobId, Principal, SessionId},
    protocol::{
        job_frame::{FinalStatus, JobStatus},
        Features,
    },
    store::jobs::{JobControl, JobEntry, ListScope, Subscriber, Subscription},
};
use async_trait::async_trait;

use super::{cancel_after, Factory};

/// A running job as the directory sees it: an entry, and a record of the requests routed to
/// it.
struct Running {
    entry: Mutex<JobEntry>,
    cancels: Mutex<Vec<Option<String>>>,
    subscribers: Mutex<Vec<SessionId>>,
}

#[async_trait]
impl JobControl for Running {
    fn entry(&self) -> JobEntry {
        self.entry.lock().unwrap().clone()
    }

    fn cancel(&self, reason: Option<String>) -> Result<(), ArcpError> {
        self.cancels.lock().unwrap().push(reason);
        Ok(())
    }

    async fn subscribe(&self, subscriber: Subscriber) -> Result<(), ArcpError> {
        self.subscribers.lock().unwrap().push(subscriber.session);
        Ok(())
    }

    async fn unsubscribe(&self, session: &SessionId) -> Result<bool, ArcpError> {
        let mut subscribers = self.subscribers.lock().unwrap();
        let before = subscribers.len();
        subscribers.retain(|s| s != session);
        Ok(subscribers.len() != before)
    }
}

fn entry(principal: &str) -> JobEntry {
    JobEntry {
        id: JobId::generate(),
        session: SessionId::generate(),
        principal: Principal::new(principal),
        agent: "echo@1.0.0".into(),
        status: JobStatus::Running,
        lease: Default::default(),
        expires_at: None,
        budget: None,
        parent: None,
        created_at: Timestamp::now(),
        finished_at: None,
        trace_id: None,
        last_event_seq: EventSeq(1),
        credentials: Vec::new(),
    }
}

fn running(principal: &str) -> Arc<Running> {
    Arc::new(Running {
        entry: Mutex::new(entry(principal)),
        cancels: Mutex::new(Vec::new()),
        subscribers: Mutex::new(Vec::new()),
    })
}

fn subscriber(session: &SessionId) -> Subscriber {
    Subscriber {
        session: session.clone(),
        principal: Principal::new("alice"),
        features: Features::default(),
        history: None,
        request_id: None,
    }
}

fn ids(entries: &[JobEntry]) -> Vec<JobId> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// A running job's entry is what its control reports now; listings go in id order after the
/// cursor, within their scope and filter, and say whether more follow.
pub async fn lists_jobs_in_id_order_within_scope_and_filter(make: Factory) {
    let jobs = make(10).jobs;
    let mut all = Vec::new();
    for i in 0..6 {
        let job = running(if i % 2 == 0 { "alice" } else { "bob" });
        jobs.insert(job.clone()).await.unwrap();
        all.push(job);
    }
    let alice = Principal::new("alice");
    let everyone = |_: &JobEntry| true;
    let (page, more) = jobs.list(ListScope::All, None, 4, &everyone).await.unwrap();
    assert_eq!(
        ids(&page),
        all[..4].iter().map(|j| j.entry().id).collect::<Vec<_>>()
    );
    assert!(more);
    let (rest, more) = jobs
        .list(ListScope::All, Some(&page[3].id), 4, &everyone)
        .await
        .unwrap();
    assert_eq!(
        ids(&rest),
        all[4..].iter().map(|j| j.entry().id).collect::<Vec<_>>()
    );
    assert!(!more);
    let (mine, _) = jobs
        .list(ListScope::Principal(&alice), None, 10, &everyone)
        .await
        .unwrap();
    assert_eq!(mine.len(), 3);
    assert!(mine.iter().all(|e| e.principal == alice));
    let odd = |e: &JobEntry| e.id == all[1].entry().id || e.id == all[5].entry().id;
    let (filtered, more) = jobs.list(ListScope::All, None, 1, &odd).await.unwrap();
    assert_eq!((ids(&filtered), more), (vec![all[1].entry().id], true));
    // A running job's entry is live.
    all[0].entry.lock().unwrap().last_event_seq = EventSeq(9);
    let got = jobs.get(&all[0].entry().id).await.unwrap().unwrap();
    assert_eq!(got.last_event_seq, EventSeq(9));
    assert!(jobs.get(&JobId::generate()).await.unwrap().is_none());
}

/// Cancels and subscriptions by id reach the running job; an ended job refuses cancels and
/// answers a subscription with its final entry; an unknown one is `JOB_NOT_FOUND`.
pub async fn requests_by_id_reach_the_running_job(make: Factory) {
    let jobs = make(10).jobs;
    let job = running("alice");
    let id = job.entry().id;
    jobs.insert(job.clone()).await.unwrap();
    jobs.cancel(&id, Some("why".into())).await.unwrap();
    assert_eq!(*job.cancels.lock().unwrap(), vec![Some("why".to_owned())]);
    let s = SessionId::generate();
    assert!(matches!(
        jobs.subscribe(&id, subscriber(&s)).await.unwrap(),
        Subscription::Live
    ));
    assert_eq!(*job.subscribers.lock().unwrap(), vec![s.clone()]);
    assert!(jobs.unsubscribe(&id, &s).await.unwrap());
    assert!(!jobs.unsubscribe(&id, &s).await.unwrap());

    let mut ended = job.entry();
    ended.status = JobStatus::Finished(FinalStatus::Success);
    ended.finished_at = Some(SystemTime::now());
    jobs.finish(ended.clone()).await.unwrap();
    let err = jobs.cancel(&id, None).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert_eq!(
        job.cancels.lock().unwrap().len(),
        1,
        "an ended job's control was asked"
    );
    match jobs.subscribe(&id, subscriber(&s)).await.unwrap() {
        Subscription::Ended(entry) => assert_eq!(entry.status, ended.status),
        Subscription::Live => panic!("an ended job took a subscriber"),
    }
    let got = jobs.get(&id).await.unwrap().unwrap();
    assert_eq!(got.status, JobStatus::Finished(FinalStatus::Success));

    let unknown = JobId::generate();
    for err in [
        jobs.cancel(&unknown, None).await.unwrap_err(),
        jobs.subscribe(&unknown, subscriber(&s)).await.unwrap_err(),
        jobs.unsubscribe(&unknown, &s).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), ErrorCode::JobNotFound);
    }
}

/// Purging forgets only jobs that ended before the cutoff; removing forgets a job at once.
pub async fn purging_forgets_only_jobs_that_ended_before_the_cutoff(make: Factory) {
    let jobs = make(10).jobs;
    let cutoff = SystemTime::now();
    let (old, recent, live, dropped) = (running("a"), running("a"), running("a"), running("a"));
    for job in [&old, &recent, &live, &dropped] {
        jobs.insert(job.clone()).await.unwrap();
    }
    for (job, at) in [
        (&old, cutoff - Duration::from_secs(5)),
        (&recent, cutoff + Duration::from_secs(5)),
    ] {
        let mut entry = job.entry();
        entry.status = JobStatus::Finished(FinalStatus::Error);
        entry.finished_at = Some(at);
        jobs.finish(entry).await.unwrap();
    }
    jobs.remove(&dropped.entry().id).await.unwrap();
    jobs.purge_finished(cutoff).await.unwrap();
    assert!(jobs.get(&old.entry().id).await.unwrap().is_none());
    assert!(jobs.get(&dropped.entry().id).await.unwrap().is_none());
    assert!(jobs.get(&recent.entry().id).await.unwrap().is_some());
    assert!(jobs.get(&live.entry().id).await.unwrap().is_some());
}

/// An insert or a finish dropped at any suspension point took full effect or none.
pub async fn inserts_and_finishes_cancelled_anywhere_took_effect_or_none(make: Factory) {
    let jobs = make(10).jobs;
    for polls in 0..6 {
        let job = running("alice");
        let id = job.entry().id;
        let inserted = cancel_after(polls, jobs.insert(job.clone())).await;
        let found = jobs.get(&id).await.unwrap();
        assert_eq!(found.is_some() || inserted.is_some(), found.is_some());
        if found.is_none() {
            continue;
        }
        let mut ended = job.entry();
        ended.status = JobStatus::Finished(FinalStatus::Cancelled);
        let finished = cancel_after(polls, jobs.finish(ended)).await;
        let status = jobs.get(&id).await.unwrap().unwrap().status;
        assert!(finished.is_none() || status == JobStatus::Finished(FinalStatus::Cancelled));
    }
}
