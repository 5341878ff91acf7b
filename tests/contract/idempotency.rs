//! The idempotency store's contract (`IdempotencyStore`).

use std::time::{Duration, SystemTime};

use arcp_gateway::{
    error::ErrorCode,
    ids::{JobId, Principal},
    store::idempotency::{Claim, IdempotencyKey, KeyTerms},
};

use super::{cancel_after, frame, text, within, Factory};

const WINDOW: KeyTerms = terms(Duration::from_secs(60));

/// Keys held for `window`, with room for every key a test claims.
const fn terms(window: Duration) -> KeyTerms {
    KeyTerms {
        window,
        max_per_principal: 1000,
    }
}

fn key(principal: &str, key: &str) -> IdempotencyKey {
    IdempotencyKey {
        principal: Principal::new(principal),
        key: key.into(),
    }
}

/// A new key is claimed; a repeat with the same parameters finds its job, then its
/// acceptance; other parameters conflict; another principal's key space is separate.
pub async fn a_key_names_its_first_job_and_acceptance(make: Factory) {
    let keys = make(10).idempotency;
    let (k, first, second) = (key("alice", "k"), JobId::generate(), JobId::generate());
    assert!(matches!(
        keys.claim(&k, [1; 32], &first, WINDOW).await.unwrap(),
        Claim::New
    ));
    match keys.claim(&k, [1; 32], &second, WINDOW).await.unwrap() {
        Claim::Existing { job, accepted } => assert_eq!((job, accepted), (first.clone(), None)),
        other => panic!("{other:?}"),
    }
    keys.accepted(&k, &first, frame("accepted")).await.unwrap();
    match keys.claim(&k, [1; 32], &second, WINDOW).await.unwrap() {
        Claim::Existing { job, accepted } => {
            assert_eq!(job, first);
            assert_eq!(text(&accepted.expect("the acceptance")), "accepted");
        }
        other => panic!("{other:?}"),
    }
    match keys.claim(&k, [2; 32], &second, WINDOW).await.unwrap() {
        Claim::Conflict { job } => assert_eq!(job, first),
        other => panic!("{other:?}"),
    }
    let bobs = key("bob", "k");
    assert!(matches!(
        keys.claim(&bobs, [2; 32], &second, WINDOW).await.unwrap(),
        Claim::New
    ));
}

/// A key is given back only by the job holding it; a waiter learns of the acceptance, or of
/// the release.
pub async fn waiters_learn_of_the_acceptance_or_the_release(make: Factory) {
    let keys = make(10).idempotency;
    let (k, job, other) = (key("alice", "k"), JobId::generate(), JobId::generate());
    keys.claim(&k, [1; 32], &job, WINDOW).await.unwrap();
    keys.release(&k, &other).await.unwrap();
    assert!(matches!(
        keys.claim(&k, [1; 32], &other, WINDOW).await.unwrap(),
        Claim::Existing { .. }
    ));
    let waiter = {
        let (keys, k, job) = (keys.clone(), k.clone(), job.clone());
        tokio::spawn(async move { keys.wait_accepted(&k, &job).await })
    };
    tokio::task::yield_now().await;
    keys.accepted(&k, &job, frame("ok")).await.unwrap();
    let got = within("the acceptance", waiter).await.unwrap().unwrap();
    assert_eq!(text(&got.expect("accepted")), "ok");

    let k2 = key("alice", "k2");
    keys.claim(&k2, [1; 32], &job, WINDOW).await.unwrap();
    let waiter = {
        let (keys, k2, job) = (keys.clone(), k2.clone(), job.clone());
        tokio::spawn(async move { keys.wait_accepted(&k2, &job).await })
    };
    tokio::task::yield_now().await;
    keys.release(&k2, &job).await.unwrap();
    assert!(within("the release", waiter)
        .await
        .unwrap()
        .unwrap()
        .is_none());
    assert!(matches!(
        keys.claim(&k2, [1; 32], &other, WINDOW).await.unwrap(),
        Claim::New
    ));
}

/// Of many submissions racing with a new key, exactly one claims it.
pub async fn concurrent_claims_of_a_new_key_have_one_winner(make: Factory) {
    let keys = make(10).idempotency;
    let k = key("alice", "race");
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let (keys, k) = (keys.clone(), k.clone());
            tokio::spawn(async move { keys.claim(&k, [7; 32], &JobId::generate(), WINDOW).await })
        })
        .collect();
    let mut new = 0;
    for racer in racers {
        new += u32::from(matches!(
            within("the claims", racer).await.unwrap().unwrap(),
            Claim::New
        ));
    }
    assert_eq!(new, 1);
}

/// A key lives for its window: after it, the key is new again, and a sweep forgets it.
pub async fn a_key_lives_for_its_window(make: Factory) {
    let keys = make(10).idempotency;
    let k = key("alice", "brief");
    keys.claim(
        &k,
        [1; 32],
        &JobId::generate(),
        terms(Duration::from_millis(1)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(matches!(
        keys.claim(&k, [2; 32], &JobId::generate(), WINDOW)
            .await
            .unwrap(),
        Claim::New
    ));
    keys.sweep(SystemTime::now() + WINDOW.window * 2)
        .await
        .unwrap();
    assert!(matches!(
        keys.claim(&k, [3; 32], &JobId::generate(), WINDOW)
            .await
            .unwrap(),
        Claim::New
    ));
}

/// A claim dropped at any suspension point claimed the key or did not; if it did, the key
/// names that job.
pub async fn a_cancelled_claim_claimed_or_did_not(make: Factory) {
    let keys = make(10).idempotency;
    for polls in 0..6 {
        let k = key("alice", &format!("c{polls}"));
        let job = JobId::generate();
        let claimed = cancel_after(polls, keys.claim(&k, [1; 32], &job, WINDOW)).await;
        let later = JobId::generate();
        match keys.claim(&k, [1; 32], &later, WINDOW).await.unwrap() {
            Claim::New => assert!(claimed.is_none(), "a completed claim was lost"),
            Claim::Existing { job: holder, .. } => assert_eq!(holder, job),
            other => panic!("{other:?}"),
        }
    }
}

/// A principal holds at most `max_per_principal` keys: a new key beyond them forgets its
/// oldest accepted key (a repeat of which then starts anew), never one still being accepted;
/// when every key it holds is being accepted, the claim is refused. Other principals are
/// unaffected.
pub async fn a_principal_holds_a_bounded_number_of_keys(make: Factory) {
    let keys = make(10).idempotency;
    let two = KeyTerms {
        max_per_principal: 2,
        ..WINDOW
    };
    let claim = |name: &'static str, job: JobId| {
        let keys = keys.clone();
        async move { keys.claim(&key("alice", name), [1; 32], &job, two).await }
    };
    let (j1, j2, j3) = (JobId::generate(), JobId::generate(), JobId::generate());
    assert!(matches!(claim("k1", j1.clone()).await.unwrap(), Claim::New));
    keys.accepted(&key("alice", "k1"), &j1, frame("1"))
        .await
        .unwrap();
    assert!(matches!(claim("k2", j2.clone()).await.unwrap(), Claim::New));
    keys.accepted(&key("alice", "k2"), &j2, frame("2"))
        .await
        .unwrap();
    // A third key forgets the oldest, k1.
    assert!(matches!(claim("k3", j3.clone()).await.unwrap(), Claim::New));
    match claim("k2", JobId::generate()).await.unwrap() {
        Claim::Existing { job, .. } => assert_eq!(job, j2, "k2 is still held"),
        other => panic!("{other:?}"),
    }
    // k1 was forgotten: it is new again, and claiming it forgets k2 (k3 is being accepted).
    assert!(matches!(
        claim("k1", JobId::generate()).await.unwrap(),
        Claim::New
    ));
    match claim("k3", JobId::generate()).await.unwrap() {
        Claim::Existing { job, accepted } => {
            assert_eq!((job, accepted), (j3, None), "a key being accepted stays")
        }
        other => panic!("{other:?}"),
    }
    // Both held keys are being accepted: nothing may be forgotten, so the claim is refused.
    let refused = claim("k4", JobId::generate()).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidRequest);
    assert!(matches!(
        keys.claim(&key("bob", "k4"), [1; 32], &JobId::generate(), two)
            .await
            .unwrap(),
        Claim::New
    ));
}
