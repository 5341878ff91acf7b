//! The job directory's contract (`JobDirectory`), with a stand-in for the running job it
//! routes to.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
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
    store::jobs::{
        Holdings, JobCaps, JobControl, JobDirectory, JobEntry, ListScope, Subscriber, Subscription,
    },
};
use async_trait::async_trait;

use super::{cancel_after, within, Factory, Replicas, ReplicasWithOutage};
use crate::common::{eventually, wait_until};
use arcp_gateway::store::replicas::Registration;

/// A running job as the directory sees it: an entry, and a record of the requests routed to
/// it.
struct Running {
    entry: Mutex<JobEntry>,
    cancels: Mutex<Vec<Option<String>>>,
    subscribers: Mutex<Vec<SessionId>>,
    /// Whether it refuses every subscriber, as a job does that cannot reach its log.
    refuses: AtomicBool,
    /// Whether it has ended and refuses cancels, as a job does from just before its terminal
    /// frame is logged.
    ended: AtomicBool,
}

/// Caps no test reaches.
const UNCAPPED: JobCaps = JobCaps {
    per_session: usize::MAX,
    per_principal: usize::MAX,
};

#[async_trait]
impl JobControl for Running {
    fn entry(&self) -> JobEntry {
        self.entry.lock().unwrap().clone()
    }

    fn cancel(&self, reason: Option<String>) -> Result<(), ArcpError> {
        if self.ended.load(Ordering::Relaxed) {
            return Err(ArcpError::InvalidRequest("the job ended".into()));
        }
        self.cancels.lock().unwrap().push(reason);
        Ok(())
    }

    async fn subscribe(&self, subscriber: Subscriber) -> Result<(), ArcpError> {
        if self.refuses.load(Ordering::Relaxed) {
            return Err(ArcpError::Internal(
                "the job cannot take subscribers".into(),
            ));
        }
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
    running_in(&SessionId::generate(), principal)
}

/// A running job of `session`, submitted by `principal`.
fn running_in(session: &SessionId, principal: &str) -> Arc<Running> {
    let mut entry = entry(principal);
    entry.session = session.clone();
    Arc::new(Running {
        entry: Mutex::new(entry),
        cancels: Mutex::new(Vec::new()),
        subscribers: Mutex::new(Vec::new()),
        refuses: AtomicBool::new(false),
        ended: AtomicBool::new(false),
    })
}

/// `job`'s entry as it ended.
fn ended(job: &Running) -> JobEntry {
    let mut entry = job.entry();
    entry.status = JobStatus::Finished(FinalStatus::Success);
    entry.finished_at = Some(SystemTime::now());
    entry
}

/// Asserts `err` is the refusal of a request over `setting`, naming its value `cap`.
fn expect_over_cap(err: ArcpError, setting: &str, cap: usize) {
    assert_eq!(err.code(), ErrorCode::PermissionDenied, "{err}");
    assert!(
        err.message().contains(&format!("{setting} = {cap}")),
        "the refusal names the cap and its value: {err}"
    );
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
        jobs.insert(job.clone(), UNCAPPED).await.unwrap();
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
    jobs.insert(job.clone(), UNCAPPED).await.unwrap();
    jobs.cancel(&id, Some("why".into())).await.unwrap();
    assert_eq!(*job.cancels.lock().unwrap(), vec![Some("why".to_owned())]);
    let s = SessionId::generate();
    assert!(matches!(
        jobs.subscribe(&id, subscriber(&s), usize::MAX)
            .await
            .unwrap(),
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
    match jobs
        .subscribe(&id, subscriber(&s), usize::MAX)
        .await
        .unwrap()
    {
        Subscription::Ended(entry) => assert_eq!(entry.status, ended.status),
        Subscription::Live => panic!("an ended job took a subscriber"),
    }
    let got = jobs.get(&id).await.unwrap().unwrap();
    assert_eq!(got.status, JobStatus::Finished(FinalStatus::Success));

    let unknown = JobId::generate();
    for err in [
        jobs.cancel(&unknown, None).await.unwrap_err(),
        jobs.subscribe(&unknown, subscriber(&s), usize::MAX)
            .await
            .unwrap_err(),
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
        jobs.insert(job.clone(), UNCAPPED).await.unwrap();
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
        let inserted = cancel_after(polls, jobs.insert(job.clone(), UNCAPPED)).await;
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

/// Inserts beyond either cap are refused, naming it, and register nothing; a slot frees once
/// the job's slot is released, it ends or it is removed, each exactly once.
pub async fn inserts_over_the_caps_are_refused_until_a_slot_frees(make: Factory) {
    let jobs = make(10).jobs;
    let caps = JobCaps {
        per_session: 2,
        per_principal: 3,
    };
    let (s1, s2) = (SessionId::generate(), SessionId::generate());
    let (a, b) = (running_in(&s1, "alice"), running_in(&s1, "alice"));
    jobs.insert(a.clone(), caps).await.unwrap();
    jobs.insert(b.clone(), caps).await.unwrap();
    let over = running_in(&s1, "alice");
    let err = jobs.insert(over.clone(), caps).await.unwrap_err();
    expect_over_cap(err, "max_jobs_per_session", 2);
    assert!(jobs.get(&over.entry().id).await.unwrap().is_none());

    let c = running_in(&s2, "alice");
    jobs.insert(c.clone(), caps).await.unwrap();
    let err = jobs
        .insert(running_in(&s2, "alice"), caps)
        .await
        .unwrap_err();
    expect_over_cap(err, "max_jobs_per_principal", 3);
    // Another principal's jobs are counted apart.
    jobs.insert(running_in(&SessionId::generate(), "bob"), caps)
        .await
        .unwrap();

    let mut both = vec![a.entry().id, b.entry().id];
    both.sort();
    assert_eq!(jobs.held_by(&s1).await.unwrap().running, both);

    // A released slot frees once, however often it is released, and its job's end frees
    // nothing more; the job itself is still there, running, until it ends.
    for _ in 0..2 {
        jobs.release_slot(&a.entry().id).await.unwrap();
    }
    assert_eq!(
        jobs.get(&a.entry().id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
    assert_eq!(jobs.held_by(&s1).await.unwrap().running, vec![b.entry().id]);
    let d = running_in(&s1, "alice");
    jobs.insert(d.clone(), caps).await.unwrap();
    jobs.finish(ended(&a)).await.unwrap();
    let err = jobs
        .insert(running_in(&s2, "alice"), caps)
        .await
        .unwrap_err();
    expect_over_cap(err, "max_jobs_per_principal", 3);

    // An end frees a slot, and so does a removal.
    jobs.finish(ended(&c)).await.unwrap();
    let e = running_in(&s2, "alice");
    jobs.insert(e.clone(), caps).await.unwrap();
    jobs.remove(&e.entry().id).await.unwrap();
    jobs.insert(running_in(&s2, "alice"), caps).await.unwrap();
}

/// Of many inserts racing for a session's last slots, exactly as many as the cap allows
/// succeed.
pub async fn racing_inserts_take_each_slot_once(make: Factory) {
    let jobs = make(10).jobs;
    for cap in [1, 3] {
        let session = SessionId::generate();
        let caps = JobCaps {
            per_session: cap,
            per_principal: usize::MAX,
        };
        let racers: Vec<_> = (0..12)
            .map(|_| {
                let (jobs, job) = (jobs.clone(), running_in(&session, "alice"));
                tokio::spawn(async move { jobs.insert(job, caps).await.is_ok() })
            })
            .collect();
        let mut won = 0;
        for racer in racers {
            won += usize::from(within("the inserts", racer).await.unwrap());
        }
        assert_eq!(won, cap);
        assert_eq!(jobs.held_by(&session).await.unwrap().running.len(), cap);
    }
}

/// Subscriptions beyond a session's cap are refused, naming it, without reaching the job; a
/// slot frees when the session unsubscribes, when the job ends, or when the job refuses the
/// subscriber; `held_by` lists what the session holds.
pub async fn subscriptions_over_the_cap_are_refused_until_one_ends(make: Factory) {
    let jobs = make(10).jobs;
    let s = SessionId::generate();
    let targets: Vec<_> = (0..4).map(|_| running("alice")).collect();
    for job in &targets {
        jobs.insert(job.clone(), UNCAPPED).await.unwrap();
    }
    let id = |i: usize| targets[i].entry().id;
    for i in 0..2 {
        jobs.subscribe(&id(i), subscriber(&s), 2).await.unwrap();
    }
    let err = jobs.subscribe(&id(2), subscriber(&s), 2).await.unwrap_err();
    expect_over_cap(err, "max_subscriptions_per_session", 2);
    assert!(targets[2].subscribers.lock().unwrap().is_empty());
    let mut two = vec![id(0), id(1)];
    two.sort();
    assert_eq!(
        jobs.held_by(&s).await.unwrap(),
        Holdings {
            running: Vec::new(),
            subscriptions: two,
        }
    );
    // Another session's cap is its own.
    jobs.subscribe(&id(2), subscriber(&SessionId::generate()), 2)
        .await
        .unwrap();

    assert!(jobs.unsubscribe(&id(0), &s).await.unwrap());
    jobs.subscribe(&id(2), subscriber(&s), 2).await.unwrap();
    jobs.finish(ended(&targets[1])).await.unwrap();
    let mut now = vec![id(2)];
    assert_eq!(jobs.held_by(&s).await.unwrap().subscriptions, now);
    // A job that refuses the subscriber gives its slot back.
    targets[3].refuses.store(true, Ordering::Relaxed);
    jobs.subscribe(&id(3), subscriber(&s), 2).await.unwrap_err();
    assert_eq!(jobs.held_by(&s).await.unwrap().subscriptions, now);
    targets[3].refuses.store(false, Ordering::Relaxed);
    jobs.subscribe(&id(3), subscriber(&s), 2).await.unwrap();
    now.push(id(3));
    now.sort();
    assert_eq!(jobs.held_by(&s).await.unwrap().subscriptions, now);
    // A subscription to an ended job replays it and holds nothing.
    assert!(matches!(
        jobs.subscribe(&id(1), subscriber(&s), 2).await.unwrap(),
        Subscription::Ended(_)
    ));
    assert_eq!(jobs.held_by(&s).await.unwrap().subscriptions, now);
    // A job whose slot is released frees its subscribers' slots too, before it ends, and
    // takes no counted subscriptions while it ends.
    jobs.release_slot(&id(3)).await.unwrap();
    assert_eq!(jobs.held_by(&s).await.unwrap().subscriptions, vec![id(2)]);
    let t = SessionId::generate();
    jobs.subscribe(&id(3), subscriber(&t), 0).await.unwrap();
    assert_eq!(jobs.held_by(&t).await.unwrap(), Holdings::default());
}

/// Of many subscriptions of one session racing for its last slot, one succeeds.
pub async fn racing_subscriptions_take_the_last_slot_once(make: Factory) {
    let jobs = make(10).jobs;
    let s = SessionId::generate();
    let mut racers = Vec::new();
    for _ in 0..12 {
        let job = running("alice");
        jobs.insert(job.clone(), UNCAPPED).await.unwrap();
        let (jobs, s) = (jobs.clone(), s.clone());
        racers.push(tokio::spawn(async move {
            jobs.subscribe(&job.entry().id, subscriber(&s), 1)
                .await
                .is_ok()
        }));
    }
    let mut won = 0;
    for racer in racers {
        won += usize::from(within("the subscriptions", racer).await.unwrap());
    }
    assert_eq!(won, 1);
    assert_eq!(jobs.held_by(&s).await.unwrap().subscriptions.len(), 1);
}

/// An insert, a release or a subscription dropped at any suspension point leaves the counts
/// as `held_by` reports them: a slot it did not take is free, and one it took frees with the
/// usual step.
pub async fn caps_hold_when_calls_are_cancelled_anywhere(make: Factory) {
    let jobs = make(10).jobs;
    let one = JobCaps {
        per_session: 1,
        per_principal: usize::MAX,
    };
    for polls in 0..6 {
        let session = SessionId::generate();
        let job = running_in(&session, "alice");
        let id = job.entry().id;
        cancel_after(polls, jobs.insert(job.clone(), one)).await;
        let inserted = jobs.get(&id).await.unwrap().is_some();
        let held = jobs.held_by(&session).await.unwrap().running;
        assert_eq!(held, if inserted { vec![id.clone()] } else { vec![] });
        if !inserted {
            jobs.insert(job.clone(), one).await.unwrap();
        }
        cancel_after(polls, jobs.release_slot(&id)).await;
        let released = jobs.held_by(&session).await.unwrap().running.is_empty();
        let next = running_in(&session, "alice");
        assert_eq!(jobs.insert(next.clone(), one).await.is_ok(), released);
        // However the release went, the end frees the slot.
        jobs.finish(ended(&job)).await.unwrap();
        if !released {
            jobs.insert(next.clone(), one).await.unwrap();
        }

        let s = SessionId::generate();
        cancel_after(polls, jobs.subscribe(&next.entry().id, subscriber(&s), 1)).await;
        let subscribed = jobs.held_by(&s).await.unwrap().subscriptions;
        assert!(subscribed.is_empty() || subscribed == vec![next.entry().id]);
        let other = running("alice");
        jobs.insert(other.clone(), UNCAPPED).await.unwrap();
        let admitted = jobs.subscribe(&other.entry().id, subscriber(&s), 1).await;
        assert_eq!(admitted.is_ok(), subscribed.is_empty());
        if !subscribed.is_empty() {
            // A slot a dropped call kept frees when the session unsubscribes.
            jobs.unsubscribe(&next.entry().id, &s).await.unwrap();
            jobs.subscribe(&other.entry().id, subscriber(&s), 1)
                .await
                .unwrap();
        }
    }
}

/// Every job of `scope` on `jobs`, by id.
async fn listed(jobs: &Arc<dyn JobDirectory>, scope: ListScope<'_>) -> Vec<JobId> {
    let (page, more) = jobs.list(scope, None, 100, &|_| true).await.unwrap();
    assert!(!more);
    ids(&page)
}

/// A job running on one replica is found by id and listed on the other, in either scope, and
/// its entry there catches up with what its control reports; once it ended, the other replica
/// has its final entry.
pub async fn a_job_on_one_replica_is_listed_and_found_on_the_other(make: Replicas) {
    let (a, b) = make(10);
    let (mine, theirs) = (running("alice"), running("bob"));
    for job in [&mine, &theirs] {
        a.jobs.insert(job.clone(), UNCAPPED).await.unwrap();
    }
    let id = mine.entry().id;
    let found = b.jobs.get(&id).await.unwrap().expect("B finds A's job");
    assert_eq!(
        (found.session, found.principal, found.status),
        (
            mine.entry().session,
            Principal::new("alice"),
            JobStatus::Running
        )
    );
    let alice = Principal::new("alice");
    assert_eq!(
        listed(&b.jobs, ListScope::Principal(&alice)).await,
        vec![id.clone()]
    );
    let mut both = vec![id.clone(), theirs.entry().id];
    both.sort();
    assert_eq!(listed(&b.jobs, ListScope::All).await, both);

    mine.entry.lock().unwrap().last_event_seq = EventSeq(9);
    eventually(
        "B's view of the job to catch up with its control",
        || async { b.jobs.get(&id).await.unwrap().unwrap().last_event_seq == EventSeq(9) },
    )
    .await;
    let (page, _) = b
        .jobs
        .list(ListScope::Principal(&alice), None, 10, &|_| true)
        .await
        .unwrap();
    assert_eq!(page[0].last_event_seq, EventSeq(9));

    a.jobs.finish(ended(&mine)).await.unwrap();
    let got = b.jobs.get(&id).await.unwrap().unwrap();
    assert_eq!(got.status, JobStatus::Finished(FinalStatus::Success));
}

/// Each cancel received on one replica reaches the job's control on the other, with its
/// reason; once the job ended, a cancel from either is `INVALID_REQUEST` and reaches nothing.
pub async fn a_cancel_on_one_replica_reaches_the_job_on_the_other(make: Replicas) {
    let (a, b) = make(10);
    let job = running("alice");
    let id = job.entry().id;
    a.jobs.insert(job.clone(), UNCAPPED).await.unwrap();
    b.jobs.cancel(&id, Some("from b".into())).await.unwrap();
    wait_until("the cancel to reach the job", || {
        !job.cancels.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        *job.cancels.lock().unwrap(),
        vec![Some("from b".to_owned())]
    );
    // Each request reaches it, as the job is the one to say whether it still stops.
    b.jobs.cancel(&id, Some("again".into())).await.unwrap();
    wait_until("the second cancel to reach the job", || {
        job.cancels.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(job.cancels.lock().unwrap()[1], Some("again".to_owned()));

    a.jobs.finish(ended(&job)).await.unwrap();
    for jobs in [&b.jobs, &a.jobs] {
        let err = jobs.cancel(&id, None).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{err}");
    }
    let err = b.jobs.cancel(&JobId::generate(), None).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::JobNotFound);
    assert_eq!(
        job.cancels.lock().unwrap().len(),
        2,
        "an ended job was asked"
    );
}

/// A job that gave its slot back is ending, and may already have logged its end while its entry
/// still says running: a cancel then, received on either replica, is `INVALID_REQUEST`, as the
/// job itself answers, rather than a request that reaches it too late to be answered.
pub async fn a_job_that_released_its_slot_refuses_cancels_on_every_replica(make: Replicas) {
    let (a, b) = make(10);
    let job = running("alice");
    let id = job.entry().id;
    a.jobs.insert(job.clone(), UNCAPPED).await.unwrap();
    a.jobs.release_slot(&id).await.unwrap();
    job.ended.store(true, Ordering::Relaxed);
    for jobs in [&b.jobs, &a.jobs] {
        let err = jobs.cancel(&id, Some("too late".into())).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{err}");
    }
    assert!(job.cancels.lock().unwrap().is_empty());
}

/// Subscriptions and unsubscriptions received on one replica reach the job's control on the
/// other; its refusal comes back with its code and message, and gives the slot back; the cap
/// counts slots on both replicas; an ended job answers with its final entry.
pub async fn subscriptions_on_one_replica_reach_the_job_on_the_other(make: Replicas) {
    let (a, b) = make(10);
    let (job, other) = (running("alice"), running("alice"));
    for j in [&job, &other] {
        a.jobs.insert(j.clone(), UNCAPPED).await.unwrap();
    }
    let (id, other_id) = (job.entry().id, other.entry().id);
    let s = SessionId::generate();
    assert!(matches!(
        b.jobs.subscribe(&id, subscriber(&s), 1).await.unwrap(),
        Subscription::Live
    ));
    assert_eq!(*job.subscribers.lock().unwrap(), vec![s.clone()]);
    for jobs in [&a.jobs, &b.jobs] {
        assert_eq!(
            jobs.held_by(&s).await.unwrap().subscriptions,
            vec![id.clone()]
        );
    }
    // The slot B took counts on A too.
    let err = a
        .jobs
        .subscribe(&other_id, subscriber(&s), 1)
        .await
        .unwrap_err();
    expect_over_cap(err, "max_subscriptions_per_session", 1);
    assert!(other.subscribers.lock().unwrap().is_empty());

    let t = SessionId::generate();
    other.refuses.store(true, Ordering::Relaxed);
    let err = b
        .jobs
        .subscribe(&other_id, subscriber(&t), 1)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ArcpError::Internal("the job cannot take subscribers".into())
    );
    assert_eq!(b.jobs.held_by(&t).await.unwrap(), Holdings::default());

    assert!(b.jobs.unsubscribe(&id, &s).await.unwrap());
    assert!(job.subscribers.lock().unwrap().is_empty());
    assert!(!b.jobs.unsubscribe(&id, &s).await.unwrap());
    assert_eq!(a.jobs.held_by(&s).await.unwrap(), Holdings::default());

    a.jobs.finish(ended(&job)).await.unwrap();
    match b.jobs.subscribe(&id, subscriber(&s), 1).await.unwrap() {
        Subscription::Ended(entry) => {
            assert_eq!(entry.status, JobStatus::Finished(FinalStatus::Success))
        }
        Subscription::Live => panic!("an ended job took a subscriber"),
    }
    assert!(!b.jobs.unsubscribe(&id, &s).await.unwrap());
    let unknown = JobId::generate();
    let err = b.jobs.unsubscribe(&unknown, &s).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::JobNotFound);
}

/// Inserts racing on both replicas for a session's last slots take each slot once, and so do
/// subscriptions racing for a session's last slot.
pub async fn caps_hold_across_replicas(make: Replicas) {
    let (a, b) = make(10);
    for cap in [1, 3] {
        let session = SessionId::generate();
        let caps = JobCaps {
            per_session: cap,
            per_principal: usize::MAX,
        };
        let racers: Vec<_> = (0..12)
            .map(|i| {
                let jobs = if i % 2 == 0 { &a.jobs } else { &b.jobs }.clone();
                let job = running_in(&session, "alice");
                tokio::spawn(async move { jobs.insert(job, caps).await.is_ok() })
            })
            .collect();
        let mut won = 0;
        for racer in racers {
            won += usize::from(within("the inserts", racer).await.unwrap());
        }
        assert_eq!(won, cap);
        for jobs in [&a.jobs, &b.jobs] {
            assert_eq!(jobs.held_by(&session).await.unwrap().running.len(), cap);
        }
    }

    let s = SessionId::generate();
    let mut racers = Vec::new();
    for i in 0..12 {
        let job = running("alice");
        a.jobs.insert(job.clone(), UNCAPPED).await.unwrap();
        let jobs = if i % 2 == 0 { &a.jobs } else { &b.jobs }.clone();
        let s = s.clone();
        racers.push(tokio::spawn(async move {
            jobs.subscribe(&job.entry().id, subscriber(&s), 1)
                .await
                .is_ok()
        }));
    }
    let mut won = 0;
    for racer in racers {
        won += usize::from(within("the subscriptions", racer).await.unwrap());
    }
    assert_eq!(won, 1);
    assert_eq!(b.jobs.held_by(&s).await.unwrap().subscriptions.len(), 1);
}

/// A cancel whose message to the job's replica was lost still reaches the job: the request is
/// kept where the replica looks for it once it listens again.
pub async fn a_cancel_whose_message_was_lost_still_reaches_the_job(make: ReplicasWithOutage) {
    let (a, b, outage) = make(10);
    let job = running("alice");
    let id = job.entry().id;
    a.jobs.insert(job.clone(), UNCAPPED).await.unwrap();
    outage.begin().await;
    b.jobs
        .cancel(&id, Some("while A was away".into()))
        .await
        .unwrap();
    outage.end().await;
    wait_until("the lost cancel to reach the job", || {
        !job.cancels.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        *job.cancels.lock().unwrap(),
        vec![Some("while A was away".to_owned())]
    );
}

/// When replica A is lost, replica B finds A's running jobs (not its ended ones), each with its
/// subscribers, and ends each once: its slots free, B lists it as ended as B left it, and A's
/// own end of it afterwards changes nothing. Once claimed, A inserts no more jobs.
pub async fn a_lost_replicas_jobs_are_found_and_ended_once(make: Replicas) {
    let (a, b) = make(10);
    let (job, other) = (running("alice"), running("alice"));
    a.jobs.insert(job.clone(), UNCAPPED).await.unwrap();
    a.jobs.insert(other.clone(), UNCAPPED).await.unwrap();
    a.jobs.finish(ended(&other)).await.unwrap();
    let id = job.entry().id;
    let watcher = SessionId::generate();
    let subscribed = b.jobs.subscribe(&id, subscriber(&watcher), 10).await;
    assert!(
        matches!(subscribed, Ok(Subscription::Live)),
        "{subscribed:?}"
    );
    let (replica_a, replica_b) = (
        a.replicas.instance().replica(),
        b.replicas.instance().replica(),
    );

    let lost = b.jobs.running_on(replica_a).await.unwrap();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].entry.id, id);
    assert_eq!(lost[0].subscribers, vec![watcher.clone()]);
    assert!(b.jobs.running_on(replica_b).await.unwrap().is_empty());

    let mut end = lost[0].entry.clone();
    end.status = JobStatus::Finished(FinalStatus::Error);
    end.finished_at = Some(SystemTime::now());
    end.last_event_seq = EventSeq(7);
    assert!(b.jobs.finish_lost(end.clone(), replica_a).await.unwrap());
    assert!(
        !b.jobs.finish_lost(end, replica_a).await.unwrap(),
        "a lost job is ended once"
    );
    let check = |entry: JobEntry| {
        assert_eq!(
            (entry.status, entry.last_event_seq),
            (JobStatus::Finished(FinalStatus::Error), EventSeq(7))
        )
    };
    check(b.jobs.get(&id).await.unwrap().unwrap());
    let session = job.entry().session;
    assert_eq!(b.jobs.held_by(&session).await.unwrap(), Holdings::default());
    assert_eq!(b.jobs.held_by(&watcher).await.unwrap(), Holdings::default());
    a.jobs.finish(ended(&job)).await.unwrap();
    check(b.jobs.get(&id).await.unwrap().unwrap());
    assert!(b.jobs.running_on(replica_a).await.unwrap().is_empty());

    let short = Duration::from_millis(300);
    assert_eq!(
        a.replicas.register(short).await.unwrap(),
        Registration::Registered
    );
    eventually("A's lease to run out and be claimed", || async {
        !b.replicas.claim_lost(short).await.unwrap().is_empty()
    })
    .await;
    let err = a.jobs.insert(running("alice"), UNCAPPED).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InternalError, "{err}");
}

/// What a replica's inserts and ends dropped at any suspension point left half done, the
/// replica then lost before it could retry them, its takeover completes or undoes: once the
/// survivor found the lost replica's running jobs and ended them, the session's and the
/// principal's slots are free, and nothing is left to find.
pub async fn a_lost_replicas_dropped_changes_are_repaired_by_its_takeover(make: Replicas) {
    let one = JobCaps {
        per_session: 1,
        per_principal: 1,
    };
    for polls in 0..super::MAX_POLLS {
        let (a, b) = make(10);
        let replica_a = a.replicas.instance().replica().clone();
        let principal = format!("lost-{}", SessionId::generate());
        let session = SessionId::generate();
        let job = running_in(&session, &principal);
        let inserted = cancel_after(polls, a.jobs.insert(job.clone(), one)).await;
        let finished = match inserted {
            Some(done) => {
                done.unwrap();
                cancel_after(polls, a.jobs.finish(ended(&job))).await
            }
            None => None,
        };
        // Lost before its upkeep could settle what the dropped call left.
        drop(a);

        for lost in b.jobs.running_on(&replica_a).await.unwrap() {
            let mut end = lost.entry;
            end.status = JobStatus::Finished(FinalStatus::Error);
            end.finished_at = Some(SystemTime::now());
            b.jobs.finish_lost(end, &replica_a).await.unwrap();
        }
        assert!(b.jobs.running_on(&replica_a).await.unwrap().is_empty());
        assert_eq!(
            b.jobs.held_by(&session).await.unwrap(),
            Holdings::default(),
            "after {polls} polls"
        );
        if let Some(entry) = b.jobs.get(&job.entry().id).await.unwrap() {
            assert_ne!(entry.status, JobStatus::Running, "after {polls} polls");
        }
        b.jobs
            .insert(running_in(&session, &principal), one)
            .await
            .unwrap_or_else(|e| panic!("after {polls} polls: {e}"));
        if finished.is_some() {
            return;
        }
    }
    panic!("the finish never completed");
}
