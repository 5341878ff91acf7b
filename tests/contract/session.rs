//! The session store's contract (`SessionStore`, `SessionRecord`).

use std::{sync::Arc, time::Duration};

use arcp_gateway::{
    error::ErrorCode,
    ids::{Epoch, EventSeq, Principal, SessionId},
    protocol::Features,
    store::session::{AckOutcome, Flow, NewSession, SessionRecord, SessionStore},
};
use tokio::{sync::oneshot, task::JoinHandle};

use super::{cancel_after, within, Factory, Replicas, MAX_POLLS};

async fn record(make: Factory, epoch: u64) -> Arc<dyn SessionRecord> {
    make(10)
        .sessions
        .create(NewSession {
            id: SessionId::generate(),
            principal: Principal::new("alice"),
            features: Features::supported().negotiate(&["ack"]),
            epoch: Epoch(epoch),
            max_per_principal: usize::MAX,
        })
        .await
        .expect("a session is created")
}

/// A new session is attached at its first epoch with nothing delivered or acknowledged, and
/// reads back as it was created, from any handle.
pub async fn a_new_session_is_attached_with_nothing_delivered(make: Factory) {
    let stores = make(10);
    let id = SessionId::generate();
    let created = stores
        .sessions
        .create(NewSession {
            id: id.clone(),
            principal: Principal::new("alice"),
            features: Features::supported().negotiate(&["ack", "heartbeat"]),
            epoch: Epoch(1),
            max_per_principal: usize::MAX,
        })
        .await
        .unwrap();
    let opened = stores.sessions.open(&id).await.unwrap();
    for record in [&created, &opened] {
        assert_eq!(record.id(), &id);
        assert_eq!(record.principal(), &Principal::new("alice"));
        assert!(record.features().has("ack") && record.features().has("heartbeat"));
        assert_eq!(
            record.flow(),
            Flow {
                epoch: Epoch(1),
                attached: true,
                delivered: EventSeq::ZERO,
                acked: EventSeq::ZERO,
            }
        );
    }
    stores.sessions.remove(&id).await.unwrap();
    let err = stores.sessions.open(&id).await.err().expect("removed");
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
}

/// Only a newer epoch attaches; once it has, the older attachment can neither record
/// deliveries, nor acknowledge, nor detach it.
pub async fn a_newer_attachment_fences_out_the_older(make: Factory) {
    let record = record(make, 1).await;
    assert!(record
        .record_delivered(Epoch(1), EventSeq(10))
        .await
        .unwrap());
    assert!(!record.attach(Epoch(1), None, EventSeq(4)).await.unwrap());
    assert!(record
        .attach(Epoch(2), Some(Features::default()), EventSeq(4))
        .await
        .unwrap());
    let flow = record.flow();
    assert_eq!(
        (flow.epoch, flow.attached, flow.delivered),
        (Epoch(2), true, EventSeq(4))
    );
    assert!(!record.features().has("ack"), "the attachment's features");
    // The superseded stream keeps trying.
    assert!(!record
        .record_delivered(Epoch(1), EventSeq(12))
        .await
        .unwrap());
    assert_eq!(
        record.record_ack(Epoch(1), EventSeq(3)).await.unwrap(),
        AckOutcome::Superseded
    );
    assert!(!record.detach(Epoch(1)).await.unwrap());
    let flow = record.flow();
    assert_eq!(
        (flow.attached, flow.delivered, flow.acked),
        (true, EventSeq(4), EventSeq::ZERO)
    );
    // The current one can.
    assert!(record.detach(Epoch(2)).await.unwrap());
    assert!(!record.detach(Epoch(2)).await.unwrap(), "detached once");
    assert!(!record.flow().attached);
    assert!(!record.attach(Epoch(1), None, EventSeq(4)).await.unwrap());
}

/// An ack may not name a frame the stream did not deliver, and acks never move backwards.
pub async fn acks_are_bounded_by_deliveries_and_never_move_back(make: Factory) {
    let record = record(make, 1).await;
    assert_eq!(
        record.record_ack(Epoch(1), EventSeq(1)).await.unwrap(),
        AckOutcome::BeyondDelivered {
            delivered: EventSeq::ZERO
        }
    );
    record
        .record_delivered(Epoch(1), EventSeq(8))
        .await
        .unwrap();
    assert_eq!(
        record.record_ack(Epoch(1), EventSeq(6)).await.unwrap(),
        AckOutcome::Recorded { acked: EventSeq(6) }
    );
    assert_eq!(
        record.record_ack(Epoch(1), EventSeq(2)).await.unwrap(),
        AckOutcome::Recorded { acked: EventSeq(6) }
    );
    assert_eq!(record.flow().acked, EventSeq(6));
    // Deliveries never move back within an attachment either.
    record
        .record_delivered(Epoch(1), EventSeq(5))
        .await
        .unwrap();
    assert_eq!(record.flow().delivered, EventSeq(8));
}

/// A task waiting on the flow wakes when another records the change it waits for.
pub async fn a_flow_waiter_wakes_on_the_change_it_waits_for(make: Factory) {
    let record = record(make, 1).await;
    let waiter = {
        let record = record.clone();
        tokio::spawn(async move {
            record
                .wait_flow(&|flow: &Flow| flow.delivered >= EventSeq(3) || !flow.attached)
                .await
        })
    };
    for n in 1..=3 {
        tokio::task::yield_now().await;
        record
            .record_delivered(Epoch(1), EventSeq(n))
            .await
            .unwrap();
    }
    within("the flow waiter", waiter).await.unwrap();
    let detached = {
        let record = record.clone();
        tokio::spawn(async move { record.wait_flow(&|flow: &Flow| !flow.attached).await })
    };
    record.detach(Epoch(1)).await.unwrap();
    within("the detach waking the waiter", detached)
        .await
        .unwrap();
}

/// The attachment lock admits one holder at a time, across handles, and a holder that gave
/// up waiting (its future dropped) does not keep it.
pub async fn the_attachment_lock_admits_one_holder(make: Factory) {
    let stores = make(10);
    let id = SessionId::generate();
    let first = stores
        .sessions
        .create(NewSession {
            id: id.clone(),
            principal: Principal::new("alice"),
            features: Features::default(),
            epoch: Epoch(1),
            max_per_principal: usize::MAX,
        })
        .await
        .unwrap();
    let second = stores.sessions.open(&id).await.unwrap();
    let held = first.lock_attachment().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), second.lock_attachment())
            .await
            .is_err(),
        "a second holder got the lock"
    );
    // A waiter that gives up does not take the lock with it.
    assert!(cancel_after(4, second.lock_attachment()).await.is_none());
    let waiter = {
        let second = second.clone();
        tokio::spawn(async move { second.lock_attachment().await.map(drop) })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    drop(held);
    within("the lock to pass on", waiter)
        .await
        .unwrap()
        .unwrap();
    within("the lock to be free", first.lock_attachment())
        .await
        .unwrap();
}

/// Of many attachments racing with distinct epochs, the record ends at the newest, and every
/// attach that reported success was newer than the record when it ran.
pub async fn racing_attachments_end_at_the_newest(make: Factory) {
    let record = record(make, 1).await;
    let racers: Vec<_> = (2..=17u64)
        .map(|e| {
            let record = record.clone();
            tokio::spawn(async move { record.attach(Epoch(e), None, EventSeq(e)).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        won += u32::from(within("the attachments", racer).await.unwrap());
    }
    assert!(won >= 1);
    let flow = record.flow();
    assert_eq!((flow.epoch, flow.delivered), (Epoch(17), EventSeq(17)));
}

/// The flow state as the store holds it: as a handle opened now sees it.
async fn held(sessions: &dyn SessionStore, id: &SessionId) -> Flow {
    sessions
        .open(id)
        .await
        .expect("the session is recorded")
        .flow()
}

/// Calls dropped at any suspension point took full effect or none, as the store holds it. (A
/// shared store's handle learns of a dropped call's effect when it next hears from the store,
/// so the test looks through a handle opened afterwards.)
pub async fn attaches_and_deliveries_cancelled_anywhere_took_effect_or_none(make: Factory) {
    let sessions = make(10).sessions;
    let record = sessions.create(capped("alice", usize::MAX)).await.unwrap();
    let id = record.id().clone();
    for polls in 0.. {
        assert!(polls < MAX_POLLS, "the calls never completed");
        let epoch = held(&*sessions, &id).await.epoch.next();
        let attached = cancel_after(polls, record.attach(epoch, None, EventSeq(polls as u64)))
            .await
            .map(|r| r.unwrap());
        let flow = held(&*sessions, &id).await;
        if flow.epoch == epoch {
            assert_ne!(attached, Some(false));
            assert_eq!(flow.delivered, EventSeq(polls as u64));
        } else {
            assert_eq!(attached, None, "a completed attach did not take effect");
        }
        // Beyond whatever was delivered, so a delivery that took effect shows.
        let (before, through) = (flow.delivered, EventSeq(polls as u64 + 1));
        let recorded = cancel_after(polls, record.record_delivered(flow.epoch, through))
            .await
            .map(|r| r.unwrap());
        let after = held(&*sessions, &id).await.delivered;
        match recorded {
            Some(recorded) => assert!(recorded && after == through),
            None => assert!(after == before || after == through),
        }
        if attached.is_some() && recorded.is_some() {
            // What the calls answered, their own handle shows.
            assert_eq!(record.flow(), held(&*sessions, &id).await);
            break;
        }
    }
}

/// An attempt at the attachment lock dropped at any suspension point leaves it free once the
/// attempt is gone, whether or not it took the lock.
pub async fn lock_attempts_cancelled_anywhere_leave_the_lock_free(make: Factory) {
    let record = record(make, 1).await;
    for polls in 0.. {
        assert!(polls < MAX_POLLS, "the lock was never taken");
        let taken = cancel_after(polls, record.lock_attachment()).await;
        let completed = taken.is_some();
        drop(taken);
        within("the lock to be free", record.lock_attachment())
            .await
            .unwrap();
        if completed {
            break;
        }
    }
}

/// A new session of `principal`, under a cap of `cap` sessions per principal.
fn capped(principal: &str, cap: usize) -> NewSession {
    NewSession {
        id: SessionId::generate(),
        principal: Principal::new(principal),
        features: Features::default(),
        epoch: Epoch(1),
        max_per_principal: cap,
    }
}

/// A create beyond its principal's cap is refused, naming the cap, and records nothing;
/// other principals are counted apart; a removal frees the slot, once.
pub async fn creates_over_the_principal_cap_are_refused_until_one_is_removed(make: Factory) {
    let sessions = make(10).sessions;
    let first = sessions.create(capped("alice", 2)).await.unwrap();
    sessions.create(capped("alice", 2)).await.unwrap();
    let over = capped("alice", 2);
    let err = sessions.create(over.clone()).await.err().expect("refused");
    assert_eq!(err.code(), ErrorCode::PermissionDenied, "{err}");
    assert!(
        err.message().contains("max_sessions_per_principal = 2"),
        "the refusal names the cap and its value: {err}"
    );
    assert!(sessions.open(&over.id).await.is_err(), "nothing recorded");
    sessions.create(capped("bob", 2)).await.unwrap();

    let first = first.id().clone();
    for _ in 0..2 {
        sessions.remove(&first).await.unwrap();
    }
    sessions.remove(&SessionId::generate()).await.unwrap();
    sessions.create(capped("alice", 2)).await.unwrap();
    let err = sessions
        .create(capped("alice", 2))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
}

/// Of many creates racing for a principal's last slots, exactly as many as the cap allows
/// succeed.
pub async fn racing_creates_take_each_slot_once(make: Factory) {
    let sessions = make(10).sessions;
    let racers: Vec<_> = (0..12)
        .map(|_| {
            let sessions = sessions.clone();
            tokio::spawn(async move { sessions.create(capped("alice", 3)).await.is_ok() })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        won += usize::from(within("the creates", racer).await.unwrap());
    }
    assert_eq!(won, 3);
}

/// A create dropped at any suspension point recorded its session, which holds a slot, or
/// recorded nothing and holds none.
pub async fn creates_cancelled_anywhere_hold_a_slot_only_if_recorded(make: Factory) {
    let sessions = make(10).sessions;
    for polls in 0.. {
        assert!(polls < MAX_POLLS, "the create never completed");
        let new = capped("carol", 1);
        let completed = cancel_after(polls, sessions.create(new.clone()))
            .await
            .is_some();
        let recorded = sessions.open(&new.id).await.is_ok();
        let next = sessions.create(capped("carol", 1)).await;
        assert_eq!(next.is_ok(), !recorded, "after {polls} polls");
        let holder = match next {
            Ok(record) => record.id().clone(),
            Err(_) => new.id,
        };
        sessions.remove(&holder).await.unwrap();
        if completed {
            break;
        }
    }
}

/// A new session of alice's on replica `a`, and its record on replica `b` too.
async fn on_two_replicas(make: Replicas) -> (Arc<dyn SessionRecord>, Arc<dyn SessionRecord>) {
    let (a, b) = make(10);
    let on_a = a
        .sessions
        .create(NewSession {
            features: Features::supported().negotiate(&["ack"]),
            ..capped("alice", usize::MAX)
        })
        .await
        .unwrap();
    let on_b = b.sessions.open(on_a.id()).await.unwrap();
    (on_a, on_b)
}

/// A task waiting on `record` until `ready` holds of its flow.
fn waiter(
    record: &Arc<dyn SessionRecord>,
    ready: impl Fn(&Flow) -> bool + Send + Sync + 'static,
) -> JoinHandle<()> {
    let record = record.clone();
    tokio::spawn(async move { record.wait_flow(&ready).await })
}

/// Every change made on one replica wakes a task waiting on the flow on the other, whose
/// handle then shows it: deliveries, acks, a detach, and an attach with its features.
pub async fn a_change_on_one_replica_wakes_a_waiter_on_the_other(make: Replicas) {
    let (on_a, on_b) = on_two_replicas(make).await;
    let expect = |epoch, attached, delivered, acked| Flow {
        epoch: Epoch(epoch),
        attached,
        delivered: EventSeq(delivered),
        acked: EventSeq(acked),
    };

    let delivered = waiter(&on_b, |flow| flow.delivered >= EventSeq(5));
    assert!(on_a.record_delivered(Epoch(1), EventSeq(5)).await.unwrap());
    within("the delivery on the other replica", delivered)
        .await
        .unwrap();
    assert_eq!(on_b.flow(), expect(1, true, 5, 0));

    let acked = waiter(&on_b, |flow| flow.acked >= EventSeq(3));
    assert_eq!(
        on_a.record_ack(Epoch(1), EventSeq(3)).await.unwrap(),
        AckOutcome::Recorded { acked: EventSeq(3) }
    );
    within("the ack on the other replica", acked).await.unwrap();
    assert_eq!(on_b.flow(), expect(1, true, 5, 3));

    let detached = waiter(&on_b, |flow| !flow.attached);
    assert!(on_a.detach(Epoch(1)).await.unwrap());
    within("the detach on the other replica", detached)
        .await
        .unwrap();
    assert_eq!(on_b.flow(), expect(1, false, 5, 3));

    // And the other way round: B's attach reaches A, features and all.
    let attached = waiter(&on_a, |flow| flow.epoch == Epoch(2));
    assert!(on_b
        .attach(Epoch(2), Some(Features::default()), EventSeq(4))
        .await
        .unwrap());
    within("the attach on the other replica", attached)
        .await
        .unwrap();
    assert_eq!(on_a.flow(), expect(2, true, 4, 3));
    assert!(!on_a.features().has("ack"), "the new attachment's features");
}

/// Attaches racing on two replicas end at the newest on both, and the older attachments' later
/// changes are refused on both, changing nothing.
pub async fn racing_attaches_on_two_replicas_end_at_the_newest(make: Replicas) {
    let (on_a, on_b) = on_two_replicas(make).await;
    let racers: Vec<_> = (2..=17u64)
        .map(|e| {
            let record = if e % 2 == 0 { &on_a } else { &on_b }.clone();
            tokio::spawn(async move { record.attach(Epoch(e), None, EventSeq(e)).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        won += u32::from(within("the attachments", racer).await.unwrap());
    }
    assert!(won >= 1);
    let newest = Flow {
        epoch: Epoch(17),
        attached: true,
        delivered: EventSeq(17),
        acked: EventSeq::ZERO,
    };
    for record in [&on_a, &on_b] {
        within(
            "the newest attachment on both replicas",
            record.wait_flow(&|flow: &Flow| flow.epoch == Epoch(17)),
        )
        .await;
        assert_eq!(record.flow(), newest);
    }
    for record in [&on_a, &on_b] {
        for older in [Epoch(16), Epoch(15), Epoch(1)] {
            assert!(!record.record_delivered(older, EventSeq(30)).await.unwrap());
            assert_eq!(
                record.record_ack(older, EventSeq(1)).await.unwrap(),
                AckOutcome::Superseded
            );
            assert!(!record.detach(older).await.unwrap());
            assert!(!record.attach(older, None, EventSeq(1)).await.unwrap());
        }
    }
    for record in [&on_a, &on_b] {
        assert_eq!(record.flow(), newest, "a refused change changed nothing");
    }
}

/// The attachment lock admits one holder over both replicas, and a holder's release lets the
/// other replica's waiter in.
pub async fn the_attachment_lock_admits_one_holder_across_replicas(make: Replicas) {
    let (on_a, on_b) = on_two_replicas(make).await;
    let held = on_a.lock_attachment().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), on_b.lock_attachment())
            .await
            .is_err(),
        "the other replica got the held lock"
    );
    let (locked, is_locked) = oneshot::channel();
    let (release, released) = oneshot::channel::<()>();
    let holder = {
        let on_b = on_b.clone();
        tokio::spawn(async move {
            let lock = on_b.lock_attachment().await.unwrap();
            locked.send(()).unwrap();
            let _ = released.await;
            drop(lock);
        })
    };
    drop(held);
    within("the lock to pass to the other replica", is_locked)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), on_a.lock_attachment())
            .await
            .is_err(),
        "the first replica got the lock back while the other held it"
    );
    release.send(()).unwrap();
    within("the lock to come back", on_a.lock_attachment())
        .await
        .unwrap();
    holder.await.unwrap();
}

/// Creates racing on two replicas for a principal's last slots take each slot once, and a
/// removal on one replica frees a slot for a create on the other.
pub async fn the_session_cap_holds_across_replicas(make: Replicas) {
    let (a, b) = make(10);
    let racers: Vec<_> = (0..12)
        .map(|n| {
            let sessions = if n % 2 == 0 { &a } else { &b }.sessions.clone();
            tokio::spawn(async move {
                let new = capped("dave", 3);
                sessions.create(new.clone()).await.ok().map(|_| new.id)
            })
        })
        .collect();
    let mut won = Vec::new();
    for racer in racers {
        won.extend(within("the creates", racer).await.unwrap());
    }
    assert_eq!(won.len(), 3);
    for stores in [&a, &b] {
        let err = stores.sessions.create(capped("dave", 3)).await.err();
        assert_eq!(err.expect("refused").code(), ErrorCode::PermissionDenied);
    }
    b.sessions.remove(&won[0]).await.unwrap();
    a.sessions.create(capped("dave", 3)).await.unwrap();
    let err = b.sessions.create(capped("dave", 3)).await.err();
    assert_eq!(err.expect("refused").code(), ErrorCode::PermissionDenied);
}

/// A shared store knows which replica made each attachment: B finds the sessions A attached,
/// each with its epoch there, but not one A detached; one B took over since is still among
/// A's, at A's older epoch, and among B's at its own; once forgotten, A has none.
pub async fn the_sessions_a_replica_attached_are_found_by_replica(make: Replicas) {
    let (a, b) = make(10);
    let create = |stores: &arcp_gateway::store::Stores| {
        let sessions = stores.sessions.clone();
        async move {
            sessions
                .create(capped("alice", usize::MAX))
                .await
                .expect("a session is created")
        }
    };
    let held = create(&a).await;
    let detached = create(&a).await;
    assert!(detached.detach(Epoch(1)).await.unwrap());
    let moved = create(&a).await;
    let on_b = b.sessions.open(moved.id()).await.unwrap();
    assert!(on_b.attach(Epoch(2), None, EventSeq::ZERO).await.unwrap());

    let (replica_a, replica_b) = (
        a.replicas.instance().replica(),
        b.replicas.instance().replica(),
    );
    let mut expected = vec![
        (held.id().clone(), Epoch(1)),
        (moved.id().clone(), Epoch(1)),
    ];
    expected.sort();
    assert_eq!(b.sessions.attached_on(replica_a).await.unwrap(), expected);
    assert_eq!(
        b.sessions.attached_on(replica_b).await.unwrap(),
        vec![(moved.id().clone(), Epoch(2))]
    );
    b.sessions.forget_attached_on(replica_a).await.unwrap();
    assert!(b.sessions.attached_on(replica_a).await.unwrap().is_empty());
}
