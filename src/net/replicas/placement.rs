//! Where copies go, so that identities ground to sit next to a root cannot
//! capture its copies.
//!
//! A peer id costs nothing to make, so a stranger can grind ids until some
//! share many leading bits with a root's key: placement by XOR distance to
//! the root alone hands it every copy. Three rules stand against that:
//!
//! - **A salt nobody knows ahead.** Each put and each repair draws a fresh
//!   random salt and ranks candidates by XOR distance to
//!   SHA-256(`dfs-p2p placement` ‖ root ‖ salt), not to the root: an id
//!   ground for a root is no closer to that key than any other, and the
//!   key exists only once the copies are being placed.
//! - **Peers that stayed first.** Candidates connected for at least
//!   [`SETTLED_AFTER`] come before newer ones (and before peers known only
//!   from the DHT): a swarm of fresh identities that joined to catch a
//!   copy waits behind every settled peer.
//! - **One copy per network.** At most one copy goes to each address group
//!   (the /24 of a public IPv4 address, the /48 of a public IPv6 one, the
//!   exact address of a private one; loopback is exempt, for tests on one
//!   machine): many identities from one network count once. A repair
//!   counts the groups of the holders it keeps too.

use std::{
    collections::HashSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::{PeerId, kad::KBucketKey};
use sha2::{Digest, Sha256};

use crate::net::event_loop::PeerInfo;

pub use crate::net::ledger::SETTLED_AFTER;

/// The address group of `ip` that holds at most one copy of a root;
/// `None` for loopback (exempt).
pub fn address_group(ip: IpAddr) -> Option<Vec<u8>> {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => None,
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let private =
                v4.is_private() || v4.is_link_local() || (o[0] == 100 && o[1] & 0xC0 == 64);
            Some(if private { o.to_vec() } else { vec![o[0], o[1], o[2]] })
        }
        IpAddr::V6(v6) if v6.is_loopback() => None,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return address_group(IpAddr::V4(v4));
            }
            let o = v6.octets();
            let local = o[0] & 0xFE == 0xFC || (o[0] == 0xFE && o[1] & 0xC0 == 0x80);
            Some(if local { o.to_vec() } else { o[..6].to_vec() })
        }
    }
}

/// A fresh placement key for `root` (see the module docs).
pub fn placement_key(root: &Cid) -> Vec<u8> {
    let salt: [u8; 32] = rand::random();
    let mut hash = Sha256::new();
    hash.update(b"dfs-p2p placement");
    hash.update(root.to_bytes());
    hash.update(salt);
    hash.finalize().to_vec()
}

/// Orders `candidates` for a copy: connected peers settled (connected for
/// `settled_after`, [`SETTLED_AFTER`] by default) first, then the
/// rest, each by XOR distance to `key`; drops every peer whose address
/// group already has a copy (the groups of `holders`) or a better-ranked
/// candidate.
pub fn rank(
    key: &[u8],
    candidates: Vec<PeerId>,
    connected: &[PeerInfo],
    holders: &[PeerId],
    settled_after: Duration,
    now: Instant,
) -> Vec<PeerId> {
    let target = KBucketKey::new(key.to_vec());
    let info = |peer: &PeerId| connected.iter().find(|p| p.peer_id == *peer);
    let settled = |peer: &PeerId| {
        info(peer).is_some_and(|p| now.saturating_duration_since(p.since) >= settled_after)
    };
    let group = |peer: &PeerId| info(peer).and_then(|p| p.ip).and_then(address_group);
    let mut ranked = candidates;
    ranked.sort_by_cached_key(|p| (!settled(p), target.distance(&KBucketKey::from(*p))));
    ranked.dedup();
    let mut taken: HashSet<Vec<u8>> = holders.iter().filter_map(group).collect();
    ranked.retain(|p| match group(p) {
        Some(g) => taken.insert(g),
        None => true,
    });
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str, age: u64, now: Instant) -> PeerInfo {
        PeerInfo {
            peer_id: PeerId::random(),
            addrs: Vec::new(),
            ip: Some(ip.parse().unwrap()),
            since: now - Duration::from_secs(age),
        }
    }

    #[test]
    fn ids_ground_for_a_root_are_no_closer_to_its_placement_key() {
        let root = crate::block::cid_of(crate::block::DAG_CBOR, b"a root");
        let root_key = KBucketKey::new(root.to_bytes());
        let mut peers: Vec<PeerId> = (0..200).map(|_| PeerId::random()).collect();
        peers.sort_by_key(|p| root_key.distance(&KBucketKey::from(*p)));
        // The two XOR-closest to the root: what grinding buys.
        let ground = [peers[0], peers[1]];
        let mut taken = 0;
        for _ in 0..100 {
            let key = placement_key(&root);
            let ranked = rank(&key, peers.clone(), &[], &[], SETTLED_AFTER, Instant::now());
            taken += ranked[..2].iter().filter(|p| ground.contains(p)).count();
        }
        // By the root's key they would take 200 of the 200 places; by a
        // salted key, about 2.
        assert!(taken <= 20, "ground ids took {taken} of 200 places");
    }

    #[test]
    fn groups_are_networks_and_loopback_is_exempt() {
        let g = |ip: &str| address_group(ip.parse().unwrap());
        assert_eq!(g("127.0.0.1"), None);
        assert_eq!(g("::1"), None);
        assert_eq!(g("8.8.8.8"), g("8.8.8.200"));
        assert_ne!(g("8.8.8.8"), g("8.8.9.8"));
        assert_ne!(g("10.0.0.1"), g("10.0.0.2"), "a private address is its own group");
        assert_eq!(g("2001:db8:1:2::1"), g("2001:db8:1:3::1"));
        assert_eq!(g("::ffff:8.8.8.8"), g("8.8.8.1"));
    }

    #[test]
    fn settled_peers_first_and_one_per_group() {
        let now = Instant::now() + Duration::from_secs(3600);
        let old_a = peer("8.8.8.1", 600, now);
        let old_b = peer("9.9.9.1", 600, now);
        let young = peer("7.7.7.1", 1, now);
        let same_net = peer("8.8.8.2", 600, now);
        let connected = vec![old_a.clone(), old_b.clone(), young.clone(), same_net.clone()];
        let ids: Vec<PeerId> = connected.iter().map(|p| p.peer_id).collect();
        let key = placement_key(&crate::block::cid_of(crate::block::DAG_CBOR, b"root"));
        let ranked = rank(&key, ids.clone(), &connected, &[], SETTLED_AFTER, now);
        assert_eq!(ranked.len(), 3, "one of 8.8.8.0/24 only");
        assert_eq!(*ranked.last().unwrap(), young.peer_id, "the newcomer last");
        let both = [old_a.peer_id, same_net.peer_id];
        assert!(ranked.iter().filter(|p| both.contains(p)).count() == 1);
        // A holder's group takes no second copy.
        let ranked = rank(&key, ids, &connected, &[old_a.peer_id], SETTLED_AFTER, now);
        assert!(!ranked.contains(&same_net.peer_id));
    }
}
