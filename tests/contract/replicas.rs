//! The replica registry's contract (`ReplicaRegistry`): leases, and the claim of a lost
//! replica by exactly one survivor.

use std::{sync::Mutex, time::Duration};

use arcp_gateway::store::replicas::{Heartbeat, Registration};

use super::{Factory, Replicas};
use crate::common::eventually;

/// A lease no test outlives.
const LONG: Duration = Duration::from_secs(60);

/// A lease a test waits out.
const SHORT: Duration = Duration::from_millis(300);

/// A replica that registered and renews its lease is never claimed, not even by itself; on a
/// store of one process that is every replica there is.
pub async fn a_live_replica_is_never_claimed(make: Factory) {
    let stores = make(10);
    let replicas = &stores.replicas;
    assert_eq!(
        replicas.register(LONG).await.unwrap(),
        Registration::Registered
    );
    assert_eq!(replicas.heartbeat(LONG).await.unwrap(), Heartbeat::Alive);
    assert!(replicas.claim_lost(LONG).await.unwrap().is_empty());
    replicas.leave().await.unwrap();
    assert!(replicas.claim_lost(LONG).await.unwrap().is_empty());
}

/// A replica whose lease ran out is claimed by one of two racing claims, and only once it ran
/// out; it learns from its next heartbeat that it was lost, and cannot register again. A claim
/// whose claimant never finishes runs out and is taken again; a finished takeover is never
/// claimed again.
pub async fn a_silent_replica_is_claimed_once_and_learns_it_was_lost(make: Replicas) {
    let (a, b) = make(10);
    let (lost, survivor) = (&a.replicas, &b.replicas);
    assert_eq!(
        lost.register(SHORT).await.unwrap(),
        Registration::Registered
    );
    assert_eq!(
        survivor.register(LONG).await.unwrap(),
        Registration::Registered
    );
    assert!(
        survivor.claim_lost(LONG).await.unwrap().is_empty(),
        "A's lease still runs"
    );

    // A falls silent. Two claims race each round until the lease ran out: one gets A.
    let got = Mutex::new(Vec::new());
    eventually("A's lease to run out and be claimed", || async {
        let (one, two) = tokio::join!(survivor.claim_lost(SHORT), survivor.claim_lost(SHORT));
        let (one, two) = (one.unwrap(), two.unwrap());
        got.lock().unwrap().extend(one.iter().chain(&two).cloned());
        !one.is_empty() || !two.is_empty()
    })
    .await;
    assert_eq!(
        got.into_inner().unwrap(),
        vec![lost.instance().clone()],
        "claimed exactly once"
    );

    match lost.heartbeat(LONG).await.unwrap() {
        Heartbeat::Lost { by } => assert_eq!(by, survivor.instance().as_str()),
        Heartbeat::Alive => panic!("a claimed replica's heartbeat must tell it it was lost"),
    }
    assert_eq!(
        lost.register(LONG).await.unwrap(),
        Registration::Lost,
        "a lost instance stays lost"
    );
    lost.leave().await.unwrap();

    // The claim was for SHORT and the takeover never finished: it is claimed again.
    eventually(
        "the unfinished claim to run out and be claimed again",
        || async { survivor.claim_lost(LONG).await.unwrap() == vec![lost.instance().clone()] },
    )
    .await;
    survivor.taken_over(lost.instance()).await.unwrap();
    assert!(survivor.claim_lost(LONG).await.unwrap().is_empty());
    match lost.heartbeat(LONG).await.unwrap() {
        Heartbeat::Lost { .. } => {}
        Heartbeat::Alive => panic!("a taken-over replica stays lost"),
    }
}
