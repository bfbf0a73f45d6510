//! The connections a node keeps: which idle ones to close so that there is
//! room for newcomers and no full mesh ([`to_close`]), and the peers it
//! refuses for a while ([`Blocked`]). Both decide from plain inputs and
//! `now`; the loop's methods below carry the decisions out on the swarm.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use libp2p::PeerId;

use super::EventLoop;

/// Peers blocked at once (for sending wrong blocks), and for how long.
pub const MAX_BLOCKED: usize = 4096;
pub const BLOCK_DURATION: Duration = Duration::from_secs(3600);
/// Established connections kept free for newcomers: when fewer are left,
/// the connection of the peer idle longest that the node does not need
/// (not a bootstrap peer, nothing in flight either way) is closed.
pub const FREE_CONNECTIONS: usize = 32;
/// Connections kept open without need: above [`CONNECTIONS_HIGH`], those
/// idle for [`CONNECTION_GRACE`] are closed, idlest first, down to
/// [`CONNECTIONS_LOW`]. A DHT node talks to hundreds of peers (a join alone
/// asks 300–500 at 200–300 nodes) and each connection costs some 60 KiB;
/// kept until their idle timeout they made a full mesh (about 15 MiB per node at
/// 1,000 nodes in `bench dht`). Kademlia keeps a peer in its table when its
/// connection closes and dials it again when it needs it. (IPFS: 32 and 96,
/// 20 s grace.)
pub const CONNECTIONS_HIGH: usize = 96;
pub const CONNECTIONS_LOW: usize = 64;
pub const CONNECTION_GRACE: Duration = Duration::from_secs(20);

/// The peers whose connections to close to keep within bounds, idlest
/// first: when fewer than [`FREE_CONNECTIONS`] of `max_established` are
/// left, the one idle longest; above [`CONNECTIONS_HIGH`], those idle for
/// [`CONNECTION_GRACE`] at least, down to [`CONNECTIONS_LOW`]. Only
/// `connected` peers that are not `needed` are candidates; a peer with no
/// activity recorded counts as active `now`.
pub(super) fn to_close(
    established: usize,
    max_established: usize,
    connected: impl IntoIterator<Item = PeerId>,
    needed: &HashSet<PeerId>,
    last_active: &HashMap<PeerId, Instant>,
    now: Instant,
) -> Vec<PeerId> {
    let (keep, grace) = if established + FREE_CONNECTIONS >= max_established {
        (established.saturating_sub(1), Duration::ZERO)
    } else if established > CONNECTIONS_HIGH {
        (CONNECTIONS_LOW, CONNECTION_GRACE)
    } else {
        return Vec::new();
    };
    let mut idle: Vec<(Instant, PeerId)> = connected
        .into_iter()
        .filter(|p| !needed.contains(p))
        .map(|p| (last_active.get(&p).copied().unwrap_or(now), p))
        .filter(|(at, _)| now.saturating_duration_since(*at) >= grace)
        .collect();
    idle.sort_unstable();
    idle.into_iter().take(established.saturating_sub(keep)).map(|(_, peer)| peer).collect()
}

/// The peers blocked, and when each was.
#[derive(Default)]
pub(super) struct Blocked {
    at: HashMap<PeerId, Instant>,
}

impl Blocked {
    /// Notes a block of `peer`. When the list is over [`MAX_BLOCKED`], the
    /// block placed first ends first: returns that peer, to unblock.
    pub(super) fn block(&mut self, peer: PeerId, now: Instant) -> Option<PeerId> {
        self.at.insert(peer, now);
        if self.at.len() <= MAX_BLOCKED {
            return None;
        }
        let oldest = self.at.iter().min_by_key(|(_, at)| **at).map(|(p, _)| *p)?;
        self.at.remove(&oldest);
        Some(oldest)
    }

    /// Forgets the blocks [`BLOCK_DURATION`] old at `now`; returns their
    /// peers, to unblock.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let over: Vec<PeerId> = self
            .at
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= BLOCK_DURATION)
            .map(|(p, _)| *p)
            .collect();
        for peer in &over {
            self.at.remove(peer);
        }
        over
    }
}

impl EventLoop {
    /// Closes the connections [`to_close`] names. A peer is needed while it
    /// is a bootstrap peer, has requests in flight either way, or has a
    /// block stream open.
    pub(super) fn trim_connections(&mut self) {
        let established = self.swarm.network_info().connection_counters().num_established();
        let needed: HashSet<PeerId> = self
            .bootstrap
            .iter()
            .filter_map(|b| b.peer)
            .chain(self.outbound.peers())
            .chain(self.admission.peers())
            .chain(self.block_streams.peers())
            .collect();
        let close = to_close(
            established as usize,
            crate::net::behaviour::MAX_ESTABLISHED as usize,
            self.swarm.connected_peers().copied(),
            &needed,
            &self.last_active,
            Instant::now(),
        );
        for peer in close {
            tracing::trace!("closing the idle connection of {peer}: enough connections");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Disconnects `peer`, takes it out of the routing table and refuses
    /// it for [`BLOCK_DURATION`].
    pub(super) fn block_peer(&mut self, peer: PeerId) {
        tracing::warn!("blocking peer {peer}");
        let behaviour = self.swarm.behaviour_mut();
        behaviour.blocked.block_peer(peer);
        behaviour.kad.remove_peer(&peer);
        if let Some(oldest) = self.blocked.block(peer, Instant::now()) {
            behaviour.blocked.unblock_peer(oldest);
        }
    }

    /// Ends the blocks that are over.
    pub(super) fn end_blocks(&mut self) {
        for peer in self.blocked.expire(Instant::now()) {
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 512;

    /// A `now` late enough that every age below can be taken from it.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    /// `n` peers, the i-th last active `ages[i]` seconds before `now`.
    fn peers(now: Instant, ages: &[u64]) -> (Vec<PeerId>, HashMap<PeerId, Instant>) {
        let peers: Vec<PeerId> = ages.iter().map(|_| PeerId::random()).collect();
        let active =
            peers.iter().zip(ages).map(|(p, age)| (*p, now - Duration::from_secs(*age))).collect();
        (peers, active)
    }

    #[test]
    fn nothing_is_closed_up_to_the_high_mark() {
        let now = later();
        let (connected, active) = peers(now, &[3600; CONNECTIONS_HIGH]);
        let close = to_close(CONNECTIONS_HIGH, MAX, connected, &HashSet::new(), &active, now);
        assert!(close.is_empty());
    }

    #[test]
    fn above_the_high_mark_connections_idle_past_the_grace_close_idlest_first_down_to_the_low_mark()
    {
        let now = later();
        // 100 peers: 50 idle for 10 s (within the grace), 50 idle for
        // 21..=70 s.
        let ages: Vec<u64> = (0..50).map(|_| 10).chain(21..=70).collect();
        let (connected, active) = peers(now, &ages);
        let close = to_close(100, MAX, connected.clone(), &HashSet::new(), &active, now);
        assert_eq!(close.len(), 100 - CONNECTIONS_LOW);
        let expected: Vec<PeerId> = connected[50..].iter().rev().take(36).copied().collect();
        assert_eq!(close, expected, "the idlest, in order");
    }

    #[test]
    fn a_peer_with_no_recorded_activity_is_within_its_grace() {
        let now = later();
        let (connected, mut active) = peers(now, &[60; 100]);
        active.remove(&connected[0]);
        let close = to_close(100, MAX, connected.clone(), &HashSet::new(), &active, now);
        assert!(!close.contains(&connected[0]));
        assert_eq!(close.len(), 36);
    }

    #[test]
    fn near_the_limit_the_idlest_closes_even_within_its_grace_but_never_a_needed_one() {
        let now = later();
        let established = MAX - FREE_CONNECTIONS;
        let (connected, active) = peers(now, &[1, 5, 3, 2]);
        let needed: HashSet<PeerId> = [connected[1]].into();
        let close = to_close(established, MAX, connected.clone(), &needed, &active, now);
        assert_eq!(close, vec![connected[2]], "one, the idlest not needed");
        let just_under = to_close(established - 1, MAX, connected, &needed, &active, now);
        assert!(just_under.is_empty());
    }

    #[test]
    fn needed_peers_are_never_closed_above_the_high_mark() {
        let now = later();
        let (connected, active) = peers(now, &[600; 100]);
        let needed: HashSet<PeerId> = connected.iter().copied().collect();
        assert!(to_close(100, MAX, connected, &needed, &active, now).is_empty());
    }

    #[test]
    fn blocks_end_after_their_duration_and_the_oldest_makes_room() {
        let start = later();
        let mut blocked = Blocked::default();
        let first = PeerId::random();
        assert_eq!(blocked.block(first, start), None);
        for i in 1..MAX_BLOCKED {
            let at = start + Duration::from_millis(i as u64);
            assert_eq!(blocked.block(PeerId::random(), at), None);
        }
        let late = start + Duration::from_secs(1);
        assert_eq!(blocked.block(PeerId::random(), late), Some(first), "full: the oldest ends");
        assert!(blocked.expire(start + BLOCK_DURATION).is_empty(), "the oldest is gone");
        let over = blocked.expire(start + BLOCK_DURATION + Duration::from_millis(10));
        assert_eq!(over.len(), 10);
        assert_eq!(blocked.at.len(), MAX_BLOCKED - 10);
    }
}
