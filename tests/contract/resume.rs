//! The resume registry's contract (`ResumeRegistry`).

use std::time::{Duration, SystemTime};

use arcp_gateway::{
    error::ErrorCode,
    ids::{Epoch, Principal, SessionId},
};

use super::{cancel_after, within, Factory, Replicas};

fn alice() -> Principal {
    Principal::new("alice")
}

fn past() -> SystemTime {
    SystemTime::now() - Duration::from_millis(1)
}

/// A rotation makes the previous token fail at once and the new one work; a second rotation
/// with the old token loses.
pub async fn rotation_invalidates_the_previous_token_at_once(make: Factory) {
    let reg = make(10).resume;
    let s = SessionId::generate();
    let t1 = reg.issue(&s, &alice(), Epoch(1)).await.unwrap();
    assert_eq!(reg.check(t1.expose(), &alice()).await.unwrap(), s);
    let t2 = reg.rotate(t1.expose(), &alice(), Epoch(2)).await.unwrap();
    let err = reg.check(t1.expose(), &alice()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
    assert!(reg.rotate(t1.expose(), &alice(), Epoch(3)).await.is_err());
    assert_eq!(reg.check(t2.expose(), &alice()).await.unwrap(), s);
    for bad in ["garbage", "rt_sess_x.", "", &format!("rt_{s}.AAAA")] {
        let err = reg.check(bad, &alice()).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ResumeWindowExpired, "{bad:?}");
    }
}

/// A token answers only to its principal, and presenting it as another does not burn it.
pub async fn tokens_are_bound_to_their_principal(make: Factory) {
    let reg = make(10).resume;
    let s = SessionId::generate();
    let t = reg.issue(&s, &alice(), Epoch(1)).await.unwrap();
    let mallory = Principal::new("mallory");
    let err = reg.check(t.expose(), &mallory).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    let err = reg
        .rotate(t.expose(), &mallory, Epoch(2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    assert!(reg.rotate(t.expose(), &alice(), Epoch(2)).await.is_ok());
}

/// Epochs fence the attachments: a rotation must come from a newer attachment than the
/// token's, and only the token's own attachment starts its window.
pub async fn epochs_fence_rotation_and_the_window(make: Factory) {
    let reg = make(10).resume;
    let s = SessionId::generate();
    let t1 = reg.issue(&s, &alice(), Epoch(3)).await.unwrap();
    for stale in [Epoch(1), Epoch(3)] {
        assert!(reg.rotate(t1.expose(), &alice(), stale).await.is_err());
    }
    // A failed rotation leaves the token as it was.
    let t2 = reg.rotate(t1.expose(), &alice(), Epoch(4)).await.unwrap();
    // A detach of an older attachment is a no-op: the token stays valid past that deadline.
    assert!(!reg.start_window(&s, Epoch(3), past()).await.unwrap());
    assert_eq!(reg.check(t2.expose(), &alice()).await.unwrap(), s);
    assert!(reg
        .take_expired(SystemTime::now())
        .await
        .unwrap()
        .is_empty());
    // The token's own attachment starts it; the token then expires with the window.
    assert!(reg.start_window(&s, Epoch(4), past()).await.unwrap());
    let err = reg.check(t2.expose(), &alice()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
    assert_eq!(
        reg.take_expired(SystemTime::now()).await.unwrap(),
        vec![s.clone()]
    );
    assert!(reg
        .take_expired(SystemTime::now())
        .await
        .unwrap()
        .is_empty());
    assert!(
        !reg.start_window(&s, Epoch(4), past()).await.unwrap(),
        "a swept session"
    );
}

/// A rotation clears the window: a session resumed in time does not expire.
pub async fn a_rotation_clears_the_window(make: Factory) {
    let reg = make(10).resume;
    let s = SessionId::generate();
    let t1 = reg.issue(&s, &alice(), Epoch(1)).await.unwrap();
    let soon = SystemTime::now() + Duration::from_millis(50);
    assert!(reg.start_window(&s, Epoch(1), soon).await.unwrap());
    let t2 = reg.rotate(t1.expose(), &alice(), Epoch(2)).await.unwrap();
    assert!(reg
        .take_expired(soon + Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(reg.check(t2.expose(), &alice()).await.unwrap(), s);
}

/// Of many rotations racing with one token, exactly one wins, and its token is the current
/// one.
pub async fn concurrent_rotations_with_one_token_have_one_winner(make: Factory) {
    let reg = make(10).resume;
    let s = SessionId::generate();
    let t1 = reg.issue(&s, &alice(), Epoch(1)).await.unwrap();
    let racers: Vec<_> = (0..16u64)
        .map(|i| {
            let (reg, presented) = (reg.clone(), t1.expose().to_owned());
            // Half with the same epoch, half with distinct ones.
            let epoch = Epoch(2 + i % 2 * i);
            tokio::spawn(async move { reg.rotate(&presented, &alice(), epoch).await })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        if let Ok(token) = within("the rotations", racer).await.unwrap() {
            winners.push(token);
        }
    }
    assert_eq!(winners.len(), 1, "one token, one rotation");
    assert_eq!(reg.check(winners[0].expose(), &alice()).await.unwrap(), s);
}

/// Sweepers sharing a registry get each expired session exactly once.
pub async fn each_expired_session_is_taken_once(make: Factory) {
    let reg = make(10).resume;
    let mut sessions = Vec::new();
    for _ in 0..20 {
        let s = SessionId::generate();
        reg.issue(&s, &alice(), Epoch(1)).await.unwrap();
        reg.start_window(&s, Epoch(1), past()).await.unwrap();
        sessions.push(s);
    }
    let sweepers: Vec<_> = (0..4)
        .map(|_| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.take_expired(SystemTime::now()).await.unwrap() })
        })
        .collect();
    let mut taken = Vec::new();
    for sweeper in sweepers {
        taken.extend(within("the sweepers", sweeper).await.unwrap());
    }
    taken.sort();
    sessions.sort();
    assert_eq!(taken, sessions);
}

/// The sweep takes a session at its own window's deadline, not before, however often it looks
/// in between, and even when an older attachment's refused start named an earlier deadline;
/// a session removed, or resumed, meanwhile it never takes.
pub async fn a_session_is_taken_at_its_own_deadline_only(make: Factory) {
    let reg = make(10).resume;
    let now = SystemTime::now();
    let deadline = now + Duration::from_secs(60);
    let s = SessionId::generate();
    let t1 = reg.issue(&s, &alice(), Epoch(1)).await.unwrap();
    reg.rotate(t1.expose(), &alice(), Epoch(2)).await.unwrap();
    assert!(reg.start_window(&s, Epoch(2), deadline).await.unwrap());
    assert!(!reg.start_window(&s, Epoch(1), now).await.unwrap());
    let removed = SessionId::generate();
    reg.issue(&removed, &alice(), Epoch(1)).await.unwrap();
    assert!(reg.start_window(&removed, Epoch(1), now).await.unwrap());
    reg.remove(&removed).await.unwrap();
    let resumed = SessionId::generate();
    let t = reg.issue(&resumed, &alice(), Epoch(1)).await.unwrap();
    assert!(reg
        .start_window(&resumed, Epoch(1), deadline)
        .await
        .unwrap());
    reg.rotate(t.expose(), &alice(), Epoch(2)).await.unwrap();
    for at in [
        now,
        now + Duration::from_secs(30),
        now + Duration::from_secs(59),
    ] {
        assert!(reg.take_expired(at).await.unwrap().is_empty(), "{at:?}");
    }
    assert_eq!(reg.take_expired(deadline).await.unwrap(), vec![s]);
    let later = deadline + Duration::from_secs(60);
    assert!(reg.take_expired(later).await.unwrap().is_empty());
}

/// A rotation dropped at any suspension point either rotated (the old token is dead, and the
/// attachment's window can start) or did not (the old token still works).
pub async fn a_cancelled_rotation_rotated_or_did_not(make: Factory) {
    let reg = make(10).resume;
    for polls in 0..6 {
        let s = SessionId::generate();
        let t1 = reg.issue(&s, &alice(), Epoch(1)).await.unwrap();
        let finished = cancel_after(polls, reg.rotate(t1.expose(), &alice(), Epoch(2))).await;
        match reg.check(t1.expose(), &alice()).await {
            Ok(_) => {
                assert!(
                    finished.is_none(),
                    "a completed rotation left the old token valid"
                );
                assert!(reg.start_window(&s, Epoch(1), past()).await.unwrap());
            }
            Err(_) => assert!(reg.start_window(&s, Epoch(2), past()).await.unwrap()),
        }
        assert_eq!(reg.take_expired(SystemTime::now()).await.unwrap(), vec![s]);
    }
}

/// Two replicas racing to rotate one token: exactly one wins, and on both replicas the old
/// token is dead and the winner's is the current one from that moment on.
pub async fn a_rotation_on_one_replica_is_seen_on_the_other_at_once(make: Replicas) {
    let (a, b) = make(10);
    let s = SessionId::generate();
    let t1 = a.resume.issue(&s, &alice(), Epoch(1)).await.unwrap();
    assert_eq!(b.resume.check(t1.expose(), &alice()).await.unwrap(), s);
    let racers: Vec<_> = [(a.resume.clone(), 2), (b.resume.clone(), 3)]
        .into_iter()
        .map(|(reg, epoch)| {
            let presented = t1.expose().to_owned();
            tokio::spawn(async move { reg.rotate(&presented, &alice(), Epoch(epoch)).await })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        if let Ok(token) = within("the rotations", racer).await.unwrap() {
            winners.push(token);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "one token, one rotation over both replicas"
    );
    for reg in [&a.resume, &b.resume] {
        let err = reg.check(t1.expose(), &alice()).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
        assert_eq!(reg.check(winners[0].expose(), &alice()).await.unwrap(), s);
    }
}
