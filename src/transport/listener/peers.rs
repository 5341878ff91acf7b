//! The cap on connections per peer IP address, across both transports.

use std::{
    collections::{hash_map::Entry, HashMap},
    net::IpAddr,
    num::NonZeroUsize,
    sync::Arc,
};

use parking_lot::Mutex;

/// How many connections each peer address holds open. Only addresses with an open connection
/// have an entry, so the table is as large as the set of connected peers.
#[derive(Debug)]
pub(crate) struct PeerLimit {
    max: NonZeroUsize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection's place in its peer's count, given back when it is dropped.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    limit: Arc<PeerLimit>,
    ip: IpAddr,
}

impl PeerLimit {
    /// A table admitting at most `max` connections per peer address.
    pub(crate) fn new(max: NonZeroUsize) -> Arc<PeerLimit> {
        Arc::new(PeerLimit {
            max,
            open: Mutex::default(),
        })
    }

    /// The cap.
    pub(crate) fn max(&self) -> usize {
        self.max.get()
    }

    /// A slot for one more connection from `ip`, or `None` when `ip` is at the cap.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        // An IPv4 client on a dual-stack socket arrives as `::ffff:a.b.c.d`: one peer either way.
        let ip = ip.to_canonical();
        let mut open = self.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max.get() {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            limit: self.clone(),
            ip,
        })
    }

    /// How many connections `ip` holds open.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        self.open.lock().get(&ip).copied().unwrap_or(0)
    }

    /// How many peers hold a connection open.
    #[cfg(test)]
    fn peers(&self) -> usize {
        self.open.lock().len()
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock();
        if let Entry::Occupied(mut count) = open.entry(self.ip) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn limit(max: usize) -> Arc<PeerLimit> {
        PeerLimit::new(NonZeroUsize::new(max).expect("a positive cap"))
    }

    #[test]
    fn a_peer_at_the_cap_is_refused_until_one_of_its_slots_is_given_back() {
        let limit = limit(2);
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let first = limit.admit(peer).expect("first");
        let _second = limit.admit(peer).expect("second");
        assert!(limit.admit(peer).is_none(), "the third is over the cap");
        drop(first);
        assert_eq!(limit.open(peer), 1);
        assert!(limit.admit(peer).is_some(), "a freed slot admits again");
    }

    #[test]
    fn peers_are_counted_apart_and_forgotten_when_their_last_connection_ends() {
        let limit = limit(1);
        let a = limit.admit(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let b = limit.admit(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        assert!(a.is_some() && b.is_some());
        assert_eq!(limit.peers(), 2);
        drop((a, b));
        assert_eq!(limit.peers(), 0, "no entry outlives its peer's connections");
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_same_peer() {
        let limit = limit(1);
        let v4 = Ipv4Addr::new(192, 0, 2, 1);
        let _slot = limit.admit(IpAddr::V4(v4)).expect("admitted");
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert!(limit.admit(mapped).is_none());
        let other = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert!(limit.admit(other).is_some());
    }
}
