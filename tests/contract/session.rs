//! The session store's contract (`SessionStore`, `SessionRecord`).

use std::{sync::Arc, time::Duration};

use arcp_gateway::{
    error::ErrorCode,
    ids::{Epoch, EventSeq, Principal, SessionId},
    protocol::Features,
    store::session::{AckOutcome, Flow, NewSession, SessionRecord},
};

use super::{cancel_after, within, Factory};

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

/// Calls dropped at any suspension point took full effect or none.
pub async fn attaches_and_deliveries_cancelled_anywhere_took_effect_or_none(make: Factory) {
    let record = record(make, 1).await;
    for polls in 0..6 {
        let epoch = record.flow().epoch.next();
        let attached = cancel_after(polls, record.attach(epoch, None, EventSeq(polls as u64)))
            .await
            .map(|r| r.unwrap());
        let flow = record.flow();
        if flow.epoch == epoch {
            assert_ne!(attached, Some(false));
            assert_eq!(flow.delivered, EventSeq(polls as u64));
        } else {
            assert_eq!(attached, None, "a completed attach did not take effect");
        }
        let before = record.flow().delivered;
        let recorded =
            cancel_after(polls, record.record_delivered(flow.epoch, EventSeq(100))).await;
        let after = record.flow().delivered;
        match recorded {
            Some(recorded) => assert!(recorded.unwrap() && after == EventSeq(100)),
            None => assert!(after == before || after == EventSeq(100)),
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
    for polls in 0..6 {
        let new = capped("carol", 1);
        cancel_after(polls, sessions.create(new.clone())).await;
        let recorded = sessions.open(&new.id).await.is_ok();
        let next = sessions.create(capped("carol", 1)).await;
        assert_eq!(next.is_ok(), !recorded, "after {polls} polls");
        let holder = match next {
            Ok(record) => record.id().clone(),
            Err(_) => new.id,
        };
        sessions.remove(&holder).await.unwrap();
    }
}
