//! Failed authentication and resume attempts, limited per peer address and per principal.
//!
//! Bearer tokens and resume tokens are long random strings and the errors give no oracle, so
//! guessing is hopeless; still, nothing should let one client try thousands of them a second.
//! Every failure is counted against the peer it came from (an IPv4 address, or the /64 an IPv6
//! address is in, since one host commonly holds a whole /64) and, when the attempt named one,
//! the principal it was made as. Once either has failed more than `limit` times within a
//! `window`, each further failure is answered only after `delay`: the same error as before,
//! later. Successes are never held back, so a principal whose credentials are right is served
//! at once even from a peer that is being slowed. The delay is fixed, so no answer waits longer
//! than `delay`; how many a peer can have waiting at once is bounded by its connections.
//!
//! Every failure is written to the audit log (target `arcp::audit`) with the peer, the
//! principal when known, what failed and whether it was slowed; never the token presented.
//!
//! Memory is bounded: at most `tracked` peers and principals are remembered. Entries are kept
//! in the order their windows began, so the oldest (the first to expire anyway) is the one
//! forgotten to make room, in constant time.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::Instant;

use ::metrics::counter;

use crate::{error::ErrorCode, ids::Principal, metrics::AUTH_FAILURES};

/// How failed attempts are limited.
#[derive(Clone, Debug)]
pub struct FailureLimits {
    /// Failures a peer or principal may have within `window` before its answers are slowed.
    pub limit: u32,
    /// How long failures are counted for.
    pub window: Duration,
    /// How long each failure over the limit waits before it is answered.
    pub delay: Duration,
    /// How many peers and principals are remembered at most.
    pub tracked: usize,
}

/// What an attempt failed to prove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// A bearer token.
    Bearer,
    /// A resume token.
    Resume,
}

impl Check {
    /// Its name in the audit log and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Bearer => "bearer",
            Check::Resume => "resume",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed attempt, as the audit log records it.
#[derive(Clone, Copy, Debug)]
pub struct Failure<'a> {
    /// What failed.
    pub check: Check,
    /// Where the credential was presented (`session.hello`, `grpc metadata`, ...).
    pub via: &'static str,
    /// The client's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// The principal the attempt was made as, when it had authenticated as one.
    pub principal: Option<&'a Principal>,
    /// The error it is answered with.
    pub code: ErrorCode,
}

/// Limits failed attempts (see the module documentation).
pub struct AuthThrottle {
    limits: FailureLimits,
    seen: Mutex<Seen>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    failures: AtomicU64,
    slowed: AtomicU64,
    waiting: AtomicUsize,
}

/// Who failed: a peer's network, or a principal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Peer(IpAddr),
    Principal(Principal),
}

struct Tally {
    since: Instant,
    failures: u32,
}

/// The tallies, and the order their windows began in.
#[derive(Default)]
struct Seen {
    tallies: HashMap<Key, Tally>,
    /// `(since, key)` for every window begun; one whose tally has since begun a newer window
    /// is stale, and skipped when it reaches the front.
    order: VecDeque<(Instant, Key)>,
}

impl AuthThrottle {
    /// A throttle with `limits`.
    pub fn new(limits: FailureLimits) -> AuthThrottle {
        AuthThrottle {
            limits,
            seen: Mutex::default(),
            counts: Arc::default(),
        }
    }

    /// Records `failure` in the audit log and the tallies, and waits before returning if the
    /// peer or the principal is over the limit.
    pub async fn failed(&self, failure: Failure<'_>) {
        self.record(failure).wait().await;
    }

    /// Records `failure` in the audit log and the tallies; the answer to it must wait for the
    /// returned penalty, for transports that cannot wait where the failure is found.
    pub fn record(&self, failure: Failure<'_>) -> Penalty {
        let now = Instant::now();
        let peer = failure.peer.map(|p| network_of(p.ip()));
        let worst = {
            let mut seen = self.seen.lock();
            seen.forget_expired(now, self.limits.window);
            let by_peer = peer.map(|ip| seen.count(Key::Peer(ip), now, &self.limits));
            let by_principal = failure
                .principal
                .map(|p| seen.count(Key::Principal(p.clone()), now, &self.limits));
            by_peer.max(by_principal).unwrap_or(0)
        };
        self.counts.failures.fetch_add(1, Ordering::Relaxed);
        counter!(AUTH_FAILURES, "check" => failure.check.as_str(), "code" => failure.code.as_str())
            .increment(1);
        let slowed = worst > self.limits.limit;
        let delay_ms = if slowed {
            u64::try_from(self.limits.delay.as_millis()).unwrap_or(u64::MAX)
        } else {
            0
        };
        tracing::info!(
            target: "arcp::audit",
            event = "auth_failure",
            check = %failure.check,
            via = failure.via,
            peer = failure.peer.map(tracing::field::display),
            principal = failure.principal.map(Principal::as_str),
            code = %failure.code,
            failures_in_window = worst,
            slowed,
            delay_ms,
            "failed {} attempt",
            failure.check
        );
        if !slowed {
            return Penalty(None);
        }
        self.counts.slowed.fetch_add(1, Ordering::Relaxed);
        self.counts.waiting.fetch_add(1, Ordering::AcqRel);
        Penalty(Some(Waiting {
            until: now + self.limits.delay,
            counts: self.counts.clone(),
        }))
    }

    /// How many failures were recorded.
    pub fn failures(&self) -> u64 {
        self.counts.failures.load(Ordering::Relaxed)
    }

    /// How many of them were over the limit, and so answered late.
    pub fn slowed(&self) -> u64 {
        self.counts.slowed.load(Ordering::Relaxed)
    }

    /// How many answers are waiting out their penalty now.
    pub fn waiting(&self) -> usize {
        self.counts.waiting.load(Ordering::Acquire)
    }

    /// How many peers and principals are remembered now.
    pub fn tracked(&self) -> usize {
        self.seen.lock().tallies.len()
    }
}

impl Seen {
    /// Counts a failure of `key`; returns its failures in the current window.
    fn count(&mut self, key: Key, now: Instant, limits: &FailureLimits) -> u32 {
        if let Some(tally) = self.tallies.get_mut(&key) {
            if now < tally.since + limits.window {
                tally.failures = tally.failures.saturating_add(1);
                return tally.failures;
            }
            *tally = Tally {
                since: now,
                failures: 1,
            };
        } else {
            self.make_room(limits.tracked.max(1));
            let tally = Tally {
                since: now,
                failures: 1,
            };
            self.tallies.insert(key.clone(), tally);
        }
        self.order.push_back((now, key));
        1
    }

    /// Drops the tallies whose window has passed.
    fn forget_expired(&mut self, now: Instant, window: Duration) {
        while let Some(&(since, _)) = self.order.front() {
            if now < since + window {
                return;
            }
            self.pop_front();
        }
    }

    /// Forgets the oldest tallies until fewer than `tracked` are left.
    fn make_room(&mut self, tracked: usize) {
        while self.tallies.len() >= tracked && !self.order.is_empty() {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((since, key)) = self.order.pop_front() {
            // Only if the tally is still the window this entry began.
            if self.tallies.get(&key).is_some_and(|t| t.since == since) {
                self.tallies.remove(&key);
            }
        }
    }
}

/// The network a peer address counts against: the address itself for IPv4, its /64 for IPv6.
fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
    }
}

/// How long the answer to a failure must wait; nothing under the limit.
#[must_use = "the answer must wait for the penalty"]
pub struct Penalty(Option<Waiting>);

struct Waiting {
    until: Instant,
    counts: Arc<Counts>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.counts.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Penalty {
    /// Whether the answer must wait at all.
    pub fn applies(&self) -> bool {
        self.0.is_some()
    }

    /// When the answer may go, if it must wait.
    pub fn until(&self) -> Option<Instant> {
        self.0.as_ref().map(|w| w.until)
    }

    /// Waits the penalty out.
    pub async fn wait(self) {
        if let Some(until) = self.until() {
            tokio::time::sleep_until(until).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(limit: u32, tracked: usize) -> FailureLimits {
        FailureLimits {
            limit,
            window: Duration::from_secs(60),
            delay: Duration::from_millis(500),
            tracked,
        }
    }

    fn failure<'a>(peer: &str, principal: Option<&'a Principal>) -> Failure<'a> {
        Failure {
            check: Check::Bearer,
            via: "test",
            peer: Some(peer.parse().expect("a socket address")),
            principal,
            code: ErrorCode::Unauthenticated,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_past_the_limit_wait_and_the_window_forgets_them() {
        let throttle = AuthThrottle::new(limits(3, 100));
        for _ in 0..3 {
            assert!(!throttle.record(failure("10.0.0.1:1", None)).applies());
        }
        let penalty = throttle.record(failure("10.0.0.1:2", None));
        assert_eq!(
            penalty.until(),
            Some(Instant::now() + Duration::from_millis(500))
        );
        assert_eq!(throttle.waiting(), 1);
        let started = Instant::now();
        penalty.wait().await;
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(throttle.waiting(), 0);
        // Another peer is not slowed.
        assert!(!throttle.record(failure("10.0.0.2:1", None)).applies());
        assert_eq!((throttle.failures(), throttle.slowed()), (5, 1));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!throttle.record(failure("10.0.0.1:3", None)).applies());
    }

    #[tokio::test(start_paused = true)]
    async fn a_principal_is_limited_across_peers() {
        let throttle = AuthThrottle::new(limits(2, 100));
        let alice = Principal::new("alice");
        assert!(!throttle
            .record(failure("10.0.0.1:1", Some(&alice)))
            .applies());
        assert!(!throttle
            .record(failure("10.0.0.2:1", Some(&alice)))
            .applies());
        assert!(throttle
            .record(failure("10.0.0.3:1", Some(&alice)))
            .applies());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_peer_counts_as_its_slash_64() {
        let throttle = AuthThrottle::new(limits(1, 100));
        assert!(!throttle.record(failure("[2001:db8::1]:1", None)).applies());
        assert!(throttle
            .record(failure("[2001:db8::ffff:2]:1", None))
            .applies());
        assert!(!throttle
            .record(failure("[2001:db8:0:1::1]:1", None))
            .applies());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_forgetting_the_oldest() {
        let throttle = AuthThrottle::new(limits(1, 8));
        for n in 0..1000u32 {
            let _ = throttle.record(failure(&format!("10.0.{}.{}:1", n / 256, n % 256), None));
            assert!(throttle.tracked() <= 8);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(throttle.seen.lock().order.len() <= 16);
        // The newest peer is still remembered, and slowed on its next failure.
        assert!(throttle.record(failure("10.0.3.231:1", None)).applies());
    }
}
