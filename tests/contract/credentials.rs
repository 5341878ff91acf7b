//! The credential ledger's contract (`CredentialLedger`): an entry from its record until its
//! revocation is accepted, failures counted, every change whole when its call is dropped, and
//! a lost replica's entries moved to the one taking it over, never lost on the way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arcp_gateway::{
    error::ErrorCode,
    ids::{CredentialId, JobId},
    store::{
        credentials::{CredentialLedger, Outstanding, Revocation},
        replicas::Registration,
        Stores,
    },
};

use super::{cancel_after, Factory, Replicas, MAX_POLLS};
use crate::common::eventually;

/// Now, to the millisecond, as the ledger keeps times.
fn now_ms() -> SystemTime {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
}

/// The entry `stores`' replica records for `id` and `job` at `at`.
fn held(stores: &Stores, id: &CredentialId, job: &JobId, at: SystemTime) -> Outstanding {
    Outstanding {
        id: id.clone(),
        job: job.clone(),
        issued_by: stores.replicas.instance().clone(),
        issued_at: at,
        revocation: Revocation::Held,
    }
}

/// Every entry of the ledger's part, by id.
async fn listed(ledger: &dyn CredentialLedger) -> Vec<Outstanding> {
    let mut entries = ledger.outstanding().await.unwrap();
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    entries
}

/// A recorded credential is listed as held by its job, with its job, issuer and time; failed
/// attempts add up with the next one's time; once its revocation is accepted it is gone, and
/// a second revocation or failure finds nothing. Other entries are untouched throughout.
pub async fn an_entry_is_outstanding_until_its_revocation_is_accepted(make: Factory) {
    let stores = make(10);
    let ledger = &*stores.credentials;
    assert!(listed(ledger).await.is_empty());
    let (one, two) = (CredentialId::generate(), CredentialId::generate());
    let (job_one, job_two) = (JobId::generate(), JobId::generate());
    let at = now_ms();
    ledger.record(&one, &job_one, at).await.unwrap();
    ledger.record(&two, &job_two, at).await.unwrap();
    let mut expected = vec![
        held(&stores, &one, &job_one, at),
        held(&stores, &two, &job_two, at),
    ];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(listed(ledger).await, expected);

    let next = at + Duration::from_secs(1);
    assert_eq!(ledger.failed(&one, 5, next).await.unwrap(), Some(5));
    let later = at + Duration::from_secs(3);
    assert_eq!(ledger.failed(&one, 1, later).await.unwrap(), Some(6));
    let entry = listed(ledger)
        .await
        .into_iter()
        .find(|e| e.id == one)
        .expect("still outstanding");
    assert_eq!(
        entry.revocation,
        Revocation::Failing {
            attempts: 6,
            next: later
        }
    );
    assert_eq!(
        (entry.job, entry.issued_at),
        (job_one, at),
        "a failure changes only the revocation"
    );

    assert!(ledger.revoked(&one).await.unwrap());
    assert!(!ledger.revoked(&one).await.unwrap(), "revoked once");
    assert_eq!(ledger.failed(&one, 1, later).await.unwrap(), None);
    assert_eq!(
        listed(ledger).await,
        vec![held(&stores, &two, &job_two, at)]
    );
    assert!(ledger.revoked(&two).await.unwrap());
    assert!(listed(ledger).await.is_empty());
}

/// A record, a failure or a revocation dropped at any of its suspension points took effect
/// whole or not at all: the entry is listed as recorded, or not at all; its attempts are the
/// ones before or after; and it is listed until a revocation completed.
pub async fn changes_cancelled_anywhere_took_effect_or_none(make: Factory) {
    let stores = make(10);
    let ledger = &*stores.credentials;
    let job = JobId::generate();
    let at = now_ms();
    let mut completed = [false; 3];
    for polls in 0..MAX_POLLS {
        let id = CredentialId::generate();
        let recorded = cancel_after(polls, ledger.record(&id, &job, at)).await;
        let entries = listed(ledger).await;
        match entries.as_slice() {
            [] => {
                assert!(recorded.is_none(), "a completed record was lost");
                ledger.record(&id, &job, at).await.unwrap();
            }
            [entry] => assert_eq!(entry, &held(&stores, &id, &job, at), "a whole entry"),
            more => panic!("one entry at most: {more:?}"),
        }
        completed[0] |= recorded.is_some();

        let next = at + Duration::from_secs(1);
        let failed = cancel_after(polls, ledger.failed(&id, 2, next)).await;
        let entry = listed(ledger).await.pop().expect("still outstanding");
        match entry.revocation {
            Revocation::Held => assert!(failed.is_none(), "a completed failure was lost"),
            Revocation::Failing {
                attempts,
                next: at_next,
            } => {
                assert_eq!((attempts, at_next), (2, next), "a whole failure")
            }
        }
        completed[1] |= failed.is_some();

        let revoked = cancel_after(polls, ledger.revoked(&id)).await;
        let left = listed(ledger).await;
        match &revoked {
            Some(done) => {
                assert!(done.as_ref().unwrap(), "it was there");
                assert!(left.is_empty(), "a completed revocation forgot it");
            }
            None => assert!(left.len() <= 1, "{left:?}"),
        }
        completed[2] |= revoked.is_some();
        ledger.revoked(&id).await.unwrap();
        assert!(listed(ledger).await.is_empty());
        if completed.iter().all(|c| *c) {
            return;
        }
    }
    panic!("some change never completed within {MAX_POLLS} polls");
}

/// A replica adopting its own replica id's part (a restarted process taking over its
/// predecessor) moves nothing and loses nothing.
pub async fn adopting_ones_own_part_changes_nothing(make: Factory) {
    let stores = make(10);
    let ledger = &*stores.credentials;
    let (id, job, at) = (CredentialId::generate(), JobId::generate(), now_ms());
    ledger.record(&id, &job, at).await.unwrap();
    let own = stores.replicas.instance().replica().clone();
    assert_eq!(ledger.adopt(&own).await.unwrap(), 0);
    assert_eq!(listed(ledger).await, vec![held(&stores, &id, &job, at)]);
}

/// What one replica records, the other does not list as its own: each replica revokes what is
/// in its own part. On the memory stores both are one replica, which lists everything.
pub async fn each_replica_lists_its_own_part(make: Replicas) {
    let (a, b) = make(10);
    let (id, job, at) = (CredentialId::generate(), JobId::generate(), now_ms());
    a.credentials.record(&id, &job, at).await.unwrap();
    assert_eq!(listed(&*a.credentials).await, vec![held(&a, &id, &job, at)]);
    let on_b = listed(&*b.credentials).await;
    if a.replicas.instance() == b.replicas.instance() {
        assert_eq!(on_b, vec![held(&a, &id, &job, at)], "one replica, one part");
    } else {
        assert!(on_b.is_empty(), "{on_b:?}");
        assert!(
            !b.credentials.revoked(&id).await.unwrap(),
            "not B's to forget"
        );
        assert_eq!(listed(&*a.credentials).await.len(), 1);
    }
}

/// The replica taking over a lost one moves every entry of the lost replica's part into its
/// own, as they were (issuer, time, attempts); the lost part is empty after, and adopting it
/// again moves nothing. An adoption dropped at any point leaves every entry in one part or
/// both, never in neither, and one that completes leaves each in the adopter's part only.
pub async fn a_lost_replicas_entries_move_to_the_adopter_and_are_never_lost(make: Replicas) {
    let (a, b) = make(10);
    let lost = a.replicas.instance().replica().clone();
    let (job, at) = (JobId::generate(), now_ms());
    let (held_one, failing) = (CredentialId::generate(), CredentialId::generate());
    a.credentials.record(&held_one, &job, at).await.unwrap();
    a.credentials.record(&failing, &job, at).await.unwrap();
    let next = at + Duration::from_secs(1);
    a.credentials.failed(&failing, 5, next).await.unwrap();
    let before = listed(&*a.credentials).await;

    assert_eq!(b.credentials.adopt(&lost).await.unwrap(), 2);
    assert_eq!(listed(&*b.credentials).await, before, "moved as they were");
    assert!(listed(&*a.credentials).await.is_empty());
    assert_eq!(b.credentials.adopt(&lost).await.unwrap(), 0);
    for id in [&held_one, &failing] {
        assert!(b.credentials.revoked(id).await.unwrap());
    }

    let mut completed = false;
    for polls in 0..MAX_POLLS {
        let id = CredentialId::generate();
        a.credentials.record(&id, &job, at).await.unwrap();
        let adopted = cancel_after(polls, b.credentials.adopt(&lost)).await;
        let (on_a, on_b) = (listed(&*a.credentials).await, listed(&*b.credentials).await);
        assert!(
            on_a.iter().chain(&on_b).any(|e| e.id == id),
            "an adoption dropped after {polls} polls lost the entry"
        );
        if adopted.is_some() {
            assert!(
                on_a.is_empty(),
                "a completed adoption leaves nothing behind"
            );
            completed = true;
        }
        // The takeover done again completes it.
        b.credentials.adopt(&lost).await.unwrap();
        assert!(listed(&*a.credentials).await.is_empty());
        let on_b = listed(&*b.credentials).await;
        assert_eq!(on_b.len(), 1, "{on_b:?}");
        assert!(b.credentials.revoked(&id).await.unwrap());
        if completed {
            return;
        }
    }
    panic!("no adoption completed within {MAX_POLLS} polls");
}

/// An instance declared lost records nothing more, with a retryable error: nobody would take
/// over what it recorded after its takeover.
pub async fn a_lost_instance_records_nothing(make: Replicas) {
    let (a, b) = make(10);
    let short = Duration::from_millis(300);
    let long = Duration::from_secs(60);
    assert_eq!(
        a.replicas.register(short).await.unwrap(),
        Registration::Registered
    );
    let (job, at) = (JobId::generate(), now_ms());
    a.credentials
        .record(&CredentialId::generate(), &job, at)
        .await
        .unwrap();
    eventually("A's lease to run out and be claimed", || async {
        !b.replicas.claim_lost(long).await.unwrap().is_empty()
    })
    .await;
    let refused = a
        .credentials
        .record(&CredentialId::generate(), &job, at)
        .await
        .expect_err("a lost instance's record is refused");
    assert_eq!(refused.code(), ErrorCode::InternalError, "{refused}");
    assert!(refused.code().retryable());
    let lost = a.replicas.instance().replica().clone();
    assert_eq!(
        b.credentials.adopt(&lost).await.unwrap(),
        1,
        "only what it recorded while it held its lease"
    );
}
