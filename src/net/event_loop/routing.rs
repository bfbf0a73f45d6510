//! Who enters Kademlia's routing table, and the addresses the node keeps
//! for its peers. A peer that speaks the DHT enters when its bucket has
//! room ([`bucket_admits`]); a peer that cannot be dialed leaves
//! ([`drops_unreachable`]); the [`AddressBook`] remembers the addresses
//! identify and lookups report, within a bound; [`DialBackoff`] keeps the
//! node from dialing again and again a peer whose dials fail.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, kad::K_VALUE, multiaddr::Protocol, swarm::DialError};

use super::EventLoop;

/// Peers whose addresses the loop remembers (beyond Kademlia's table).
pub const ADDRESS_BOOK_SIZE: usize = 4096;

/// Whether the routing table takes (or updates) a peer whose bucket holds
/// `entries` peers, `holds_peer` among them if so. A full bucket keeps
/// the peers it has (Kademlia prefers peers that have stayed); one that
/// cannot be dialed any more is dropped when a query or a request tries
/// it ([`drops_unreachable`]), which makes room. libp2p's own rule instead
/// dials the oldest disconnected entry of the full bucket, to test it, for
/// every new peer that connects: with idle connections trimmed most
/// entries are disconnected, and each test is a new connection and a new
/// peer for the other side. In `bench dht` at 700 nodes that made
/// 1.2–1.35 new connections per DHT request, and the wave settled at
/// 94.7% of the closest peers known with 17 nodes in no table; with
/// this rule, 0.85–0.9 and 99.4% with 1.
pub(super) fn bucket_admits(entries: usize, holds_peer: bool) -> bool {
    entries < K_VALUE.get() || holds_peer
}

/// Whether a dial of `peer` that failed with `error` takes it out of the
/// routing table, which makes room in its bucket (see [`bucket_admits`]);
/// libp2p would keep it until a newcomer replaced it. A bootstrap peer
/// stays, and so does a peer still connected; a dial that was only
/// refused here or aborted says nothing of the peer.
pub(super) fn drops_unreachable(error: &DialError, bootstrap: bool, connected: bool) -> bool {
    !bootstrap && blames_peer(error) && !connected
}

/// Whether a failed dial says something of the peer (it could not be
/// reached at its addresses, or answered as another); one only refused
/// here or aborted does not.
fn blames_peer(error: &DialError) -> bool {
    matches!(
        error,
        DialError::Transport(_) | DialError::WrongPeerId { .. } | DialError::NoAddresses
    )
}

/// How long a peer is not dialed after its first failed dial; each
/// further failure doubles it, up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Peers backed off at once: past it, the one whose wait ends first is
/// forgotten.
pub const MAX_BACKED_OFF: usize = 4096;

/// Peers whose dials failed, and until when none is tried again: a
/// request, a provider lookup or a pull a peer causes dials an address
/// that does not answer once, not once per request. A connection to the
/// peer (made by either side) ends its back-off.
#[derive(Default)]
pub(super) struct DialBackoff {
    peers: HashMap<PeerId, (u32, Instant)>,
}

impl DialBackoff {
    /// A dial of `peer` failed with `error`; a dial only refused here or
    /// aborted says nothing of the peer.
    pub(super) fn failed(&mut self, peer: PeerId, error: &DialError) {
        if !blames_peer(error) {
            return;
        }
        let now = Instant::now();
        if self.peers.len() >= MAX_BACKED_OFF && !self.peers.contains_key(&peer) {
            self.peers.retain(|_, (_, until)| *until > now);
            if self.peers.len() >= MAX_BACKED_OFF
                && let Some(first) =
                    self.peers.iter().min_by_key(|(_, (_, until))| *until).map(|(p, _)| *p)
            {
                self.peers.remove(&first);
            }
        }
        let (failures, until) = self.peers.entry(peer).or_insert((0, now));
        *failures = failures.saturating_add(1);
        let wait = BACKOFF_FIRST.saturating_mul(1 << (*failures - 1).min(16)).min(BACKOFF_MAX);
        *until = now + wait;
    }

    /// `peer` is connected: dial it freely again.
    pub(super) fn connected(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// If `peer` is backed off: its failed dials in a row, and how long
    /// until it may be dialed again.
    pub(super) fn of(&self, peer: &PeerId) -> Option<(u32, Duration)> {
        let (failures, until) = self.peers.get(peer)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some((*failures, left))
    }
}

/// Whether another node could dial this address (not unspecified).
pub(super) fn is_dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        Protocol::P2pCircuit => true,
        _ => false,
    })
}

/// The addresses of at most [`ADDRESS_BOOK_SIZE`] peers.
#[derive(Default)]
pub(super) struct AddressBook {
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
}

impl AddressBook {
    /// Remembers `peer`'s addresses (none: nothing changes). When the book
    /// is full, a newcomer takes the place of a peer that is not
    /// `connected`; if every peer in it is, the newcomer is not kept.
    pub(super) fn remember(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        connected: impl Fn(&PeerId) -> bool,
    ) {
        if addrs.is_empty() {
            return;
        }
        if self.addrs.len() >= ADDRESS_BOOK_SIZE && !self.addrs.contains_key(&peer) {
            let victim = self.addrs.keys().find(|p| !connected(p)).copied();
            match victim {
                Some(v) => {
                    self.addrs.remove(&v);
                }
                None => return,
            }
        }
        self.addrs.insert(peer, addrs);
    }

    pub(super) fn get(&self, peer: &PeerId) -> Option<&Vec<Multiaddr>> {
        self.addrs.get(peer)
    }
}

impl EventLoop {
    /// Puts a peer that speaks the DHT into the routing table, or updates
    /// its addresses there, if [`bucket_admits`] it.
    pub(super) fn add_to_routing(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let room = kad.kbucket(peer).is_some_and(|bucket| {
            let holds = bucket.iter().any(|e| e.node.key.preimage() == &peer);
            bucket_admits(bucket.num_entries(), holds)
        });
        if room {
            for addr in addrs {
                kad.add_address(&peer, addr.clone());
            }
        }
    }

    /// Remembers the addresses of a peer (see [`AddressBook::remember`]).
    pub(super) fn remember(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let swarm = &self.swarm;
        self.addresses.remember(peer, addrs, |p| swarm.is_connected(p));
    }

    /// A peer told us (identify) what it listens on and speaks: its
    /// dialable addresses, if it speaks the DHT, go to the routing table.
    pub(super) fn identified(&mut self, peer: PeerId, info: libp2p::identify::Info) {
        let kad_ok = info.protocols.contains(&crate::net::behaviour::KAD_PROTOCOL);
        let addrs: Vec<Multiaddr> =
            info.listen_addrs.into_iter().filter(is_dialable).take(16).collect();
        if kad_ok {
            self.add_to_routing(peer, &addrs);
        }
        self.remember(peer, addrs);
    }

    /// A dial failed: the peer leaves the routing table if
    /// [`drops_unreachable`] says so.
    pub(super) fn dial_failed(&mut self, peer: Option<PeerId>, error: &DialError) {
        if let Some(peer) = peer
            && !self.swarm.is_connected(&peer)
        {
            self.backoff.failed(peer, error);
        }
        if let Some(peer) = peer
            && drops_unreachable(
                error,
                self.is_bootstrap_peer(&peer),
                self.swarm.is_connected(&peer),
            )
        {
            self.swarm.behaviour_mut().kad.remove_peer(&peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use libp2p::TransportError;

    use super::*;

    #[test]
    fn a_bucket_admits_while_it_has_room_or_holds_the_peer_already() {
        assert!(bucket_admits(0, false));
        assert!(bucket_admits(K_VALUE.get() - 1, false));
        assert!(!bucket_admits(K_VALUE.get(), false), "a full bucket keeps its peers");
        assert!(bucket_admits(K_VALUE.get(), true), "a peer it holds gets its addresses updated");
    }

    #[test]
    fn only_a_failed_dial_that_blames_the_peer_drops_it_from_the_table() {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let transport = DialError::Transport(vec![(
            addr.clone(),
            TransportError::Other(std::io::Error::other("connection refused")),
        )]);
        let wrong = DialError::WrongPeerId { obtained: PeerId::random(), address: addr };
        for error in [&transport, &wrong, &DialError::NoAddresses] {
            assert!(drops_unreachable(error, false, false), "{error}");
            assert!(!drops_unreachable(error, true, false), "a bootstrap peer stays: {error}");
            assert!(!drops_unreachable(error, false, true), "a connected peer stays: {error}");
        }
        assert!(!drops_unreachable(&DialError::Aborted, false, false));
    }

    #[test]
    fn a_peer_whose_dials_fail_waits_longer_each_time_until_it_connects() {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let refused = DialError::Transport(vec![(
            addr,
            TransportError::Other(std::io::Error::other("connection refused")),
        )]);
        let mut backoff = DialBackoff::default();
        let peer = PeerId::random();
        assert!(backoff.of(&peer).is_none());
        backoff.failed(peer, &DialError::Aborted);
        assert!(backoff.of(&peer).is_none(), "an aborted dial says nothing of the peer");
        let mut waits = Vec::new();
        for _ in 0..8 {
            backoff.failed(peer, &refused);
            waits.push(backoff.of(&peer).unwrap());
        }
        assert_eq!(waits[0].0, 1);
        assert!(waits[0].1 <= BACKOFF_FIRST && waits[0].1 > BACKOFF_FIRST / 2);
        assert!(waits[1].1 > BACKOFF_FIRST, "the second failure waits longer");
        assert!(waits[7].1 <= BACKOFF_MAX && waits[7].1 > BACKOFF_MAX / 2, "capped");
        backoff.connected(&peer);
        assert!(backoff.of(&peer).is_none());
        for _ in 0..MAX_BACKED_OFF + 10 {
            backoff.failed(PeerId::random(), &refused);
        }
        assert_eq!(backoff.peers.len(), MAX_BACKED_OFF);
    }

    #[test]
    fn only_addresses_another_node_could_dial_are_dialable() {
        let dialable = |a: &str| is_dialable(&a.parse().unwrap());
        assert!(dialable("/ip4/127.0.0.1/tcp/4001"));
        assert!(dialable("/ip6/::1/udp/4001/quic-v1"));
        assert!(!dialable("/ip4/0.0.0.0/tcp/4001"));
        assert!(!dialable("/ip6/::/tcp/4001"));
        assert!(!dialable("/ip4/1.2.3.4/tcp/4001/p2p-circuit"));
    }

    #[test]
    fn a_full_address_book_makes_room_only_by_forgetting_a_disconnected_peer() {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let mut book = AddressBook::default();
        let peers: Vec<PeerId> = (0..ADDRESS_BOOK_SIZE).map(|_| PeerId::random()).collect();
        for p in &peers {
            book.remember(*p, vec![addr.clone()], |_| true);
        }
        let newcomer = PeerId::random();
        book.remember(newcomer, vec![addr.clone()], |_| true);
        assert!(book.get(&newcomer).is_none(), "every peer is connected: none is forgotten");
        let other: Multiaddr = "/ip4/127.0.0.2/tcp/2".parse().unwrap();
        book.remember(peers[0], vec![other.clone()], |_| true);
        assert_eq!(book.get(&peers[0]), Some(&vec![other]), "a known peer is updated");
        let gone = peers[7];
        book.remember(newcomer, vec![addr.clone()], |p| *p != gone);
        assert!(book.get(&newcomer).is_some());
        assert!(book.get(&gone).is_none(), "the disconnected peer made room");
        assert_eq!(book.addrs.len(), ADDRESS_BOOK_SIZE);
        book.remember(gone, Vec::new(), |_| false);
        assert!(book.get(&gone).is_none(), "no addresses: nothing to remember");
    }
}
