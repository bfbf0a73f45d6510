//! Joining the DHT: the lookup of the node's own id, which puts the node
//! in its neighbours' tables and fills its own, and when to make it
//! (again). [`Join`] is the schedule, handed `now` and what happened; the
//! loop's methods below start the lookups it asks for and announce what
//! the node holds once it has joined.

use std::time::Duration;

use libp2p::kad::{K_VALUE, QueryId, RecordKey, store::RecordStore};
use tokio::time::Instant;

use super::EventLoop;
use crate::net::behaviour::PERIODIC_BOOTSTRAP;

/// A join (the lookup of the node's own id) that no peer answered, or that
/// left the routing table with fewer than `K_VALUE` peers, is made again
/// after this, doubled each time, up to `behaviour::PERIODIC_BOOTSTRAP`,
/// and at once when a bootstrap peer connects. A join whose bootstrap peer
/// could not be reached at the first dial (refused, or timed out) otherwise
/// left the node out of every other node's table until its next refresh,
/// 10 minutes on: in `bench dht` at 1,000 nodes, some runs lost 56–75 nodes
/// of every wave past 500 with just those signs.
pub const JOIN_RETRY: Duration = Duration::from_secs(3);

/// What may start a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cue {
    /// A first peer entered the routing table.
    RoutingPeer,
    /// A connection was established, to a bootstrap peer or not.
    Connected { to_bootstrap: bool },
    /// The retry timer ticked while the node has peers.
    Tick,
}

/// How a join's lookup ended, and what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ended {
    /// The node has just joined: it announces what it holds.
    pub(super) announce: bool,
    /// When the join is made again, if it is.
    pub(super) again_at: Option<Instant>,
}

/// The join's state: whether the node has joined (a join lookup has been
/// answered since it was last alone), the lookup running now (`Q` names
/// it), and when it is made again and the wait after that.
#[derive(Debug)]
pub(super) struct Join<Q> {
    joined: bool,
    running: Option<Q>,
    next: Option<Instant>,
    backoff: Duration,
}

impl<Q: Copy + PartialEq> Default for Join<Q> {
    fn default() -> Self {
        Join { joined: false, running: None, next: None, backoff: JOIN_RETRY }
    }
}

impl<Q: Copy + PartialEq> Join<Q> {
    /// Whether `cue` starts a join now. None starts while one runs. A node
    /// that has not joined starts at a first peer in its table, and at a
    /// connection to a bootstrap peer, or to any peer when no retry is
    /// set (again after being alone, to peers the table still holds: no
    /// new entry starts it). A retry starts once it is due, joined or not.
    pub(super) fn starts(&self, cue: Cue, now: Instant) -> bool {
        if self.running.is_some() {
            return false;
        }
        match cue {
            Cue::RoutingPeer => !self.joined,
            Cue::Connected { to_bootstrap } => {
                !self.joined && (to_bootstrap || self.next.is_none())
            }
            Cue::Tick => self.next.is_some_and(|at| at <= now),
        }
    }

    /// The join's lookup `id` started.
    pub(super) fn started(&mut self, id: Q) {
        self.next = None;
        self.running = Some(id);
    }

    /// Whether `id` is the join's lookup.
    pub(super) fn is_lookup(&self, id: Q) -> bool {
        self.running == Some(id)
    }

    /// The join's lookup ended, `answered` by some peer or not, leaving
    /// `known` peers in the routing table. Answered, the node has joined.
    /// Unanswered, or with fewer than `K_VALUE` peers known, it is made
    /// again after the backoff, which doubles up to
    /// [`PERIODIC_BOOTSTRAP`]; otherwise the backoff starts over.
    pub(super) fn ended(&mut self, answered: bool, known: usize, now: Instant) -> Ended {
        self.running = None;
        let announce = answered && !self.joined;
        self.joined |= answered;
        if !answered || known < K_VALUE.get() {
            let at = now + self.backoff;
            self.next = Some(at);
            self.backoff = (self.backoff * 2).min(PERIODIC_BOOTSTRAP);
            Ended { announce, again_at: Some(at) }
        } else {
            self.backoff = JOIN_RETRY;
            Ended { announce, again_at: None }
        }
    }

    /// The node is connected to no peer any more: it joins again (and
    /// announces again) once it has peers.
    pub(super) fn alone(&mut self) {
        self.joined = false;
        self.next = None;
        self.backoff = JOIN_RETRY;
    }
}

impl EventLoop {
    /// Starts the join if `cue` starts it (see [`Join::starts`]). A retry
    /// first puts the bootstrap peers back in a table that lost them all.
    pub(super) fn join_on(&mut self, cue: Cue) {
        if !self.join.starts(cue, Instant::now()) {
            return;
        }
        if cue == Cue::Tick {
            let kad = &mut self.swarm.behaviour_mut().kad;
            if kad.kbuckets().all(|b| b.num_entries() == 0) {
                for b in &self.bootstrap {
                    if let Some(peer) = b.peer {
                        kad.add_address(&peer, b.addr.clone());
                    }
                }
            }
            tracing::debug!("joining the DHT again");
        }
        let local = *self.swarm.local_peer_id();
        let id = self.swarm.behaviour_mut().kad.get_closest_peers(local);
        self.join.started(id);
    }

    /// A lookup of the closest peers ended; if it was the join's, and the
    /// node has just joined, it announces what it holds to the peers now
    /// reachable.
    pub(super) fn lookup_ended(&mut self, id: QueryId, answered: bool) {
        if !self.join.is_lookup(id) {
            return;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        let known: usize = kad.kbuckets().map(|b| b.num_entries()).sum();
        let ended = self.join.ended(answered, known, Instant::now());
        if ended.announce {
            tracing::debug!("joined the DHT");
            let provided: Vec<RecordKey> =
                kad.store_mut().provided().map(|r| r.key.clone()).collect();
            for key in provided {
                let _ = kad.start_providing(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_node_that_has_not_joined_joins_at_its_first_peer_or_bootstrap_connection() {
        let now = Instant::now();
        let join = Join::<u32>::default();
        assert!(join.starts(Cue::RoutingPeer, now));
        assert!(join.starts(Cue::Connected { to_bootstrap: true }, now));
        assert!(join.starts(Cue::Connected { to_bootstrap: false }, now));
        assert!(!join.starts(Cue::Tick, now), "no retry is set");
    }

    #[test]
    fn no_join_starts_while_one_runs() {
        let now = Instant::now();
        let mut join = Join::default();
        join.started(1);
        assert!(join.is_lookup(1) && !join.is_lookup(2));
        for cue in [Cue::RoutingPeer, Cue::Connected { to_bootstrap: true }, Cue::Tick] {
            assert!(!join.starts(cue, now + secs(3600)), "{cue:?}");
        }
    }

    #[test]
    fn an_unanswered_join_is_retried_after_3_s_doubling_up_to_10_min() {
        let mut now = Instant::now();
        let mut join = Join::default();
        let mut waits = Vec::new();
        for id in 0..12 {
            join.started(id);
            let ended = join.ended(false, 0, now);
            assert!(!ended.announce);
            let at = ended.again_at.expect("retried");
            assert!(!join.starts(Cue::Tick, at - Duration::from_millis(1)), "not before it is due");
            assert!(join.starts(Cue::Tick, at));
            waits.push((at - now).as_secs());
            now = at;
        }
        assert_eq!(waits, [3, 6, 12, 24, 48, 96, 192, 384, 600, 600, 600, 600]);
        assert_eq!(PERIODIC_BOOTSTRAP, secs(600));
    }

    #[test]
    fn an_answered_join_announces_once_and_is_retried_while_fewer_than_20_peers_are_known() {
        let now = Instant::now();
        let mut join = Join::default();
        join.started(1);
        let first = join.ended(true, K_VALUE.get() - 1, now);
        assert_eq!(first, Ended { announce: true, again_at: Some(now + JOIN_RETRY) });
        // Joined: a new peer or connection starts nothing, the retry does.
        assert!(!join.starts(Cue::RoutingPeer, now));
        assert!(!join.starts(Cue::Connected { to_bootstrap: true }, now));
        assert!(join.starts(Cue::Tick, now + JOIN_RETRY));
        join.started(2);
        let second = join.ended(true, K_VALUE.get(), now);
        assert_eq!(second, Ended { announce: false, again_at: None });
        assert!(!join.starts(Cue::Tick, now + secs(3600)), "enough peers: no retry");
        // The backoff started over.
        join.started(3);
        assert_eq!(join.ended(false, 0, now).again_at, Some(now + JOIN_RETRY));
    }

    #[test]
    fn a_bootstrap_connection_joins_at_once_while_a_retry_waits() {
        let now = Instant::now();
        let mut join = Join::default();
        join.started(1);
        join.ended(false, 0, now);
        assert!(!join.starts(Cue::Connected { to_bootstrap: false }, now), "the retry is set");
        assert!(
            join.starts(Cue::Connected { to_bootstrap: true }, now),
            "a bootstrap peer: at once"
        );
        join.started(2);
        assert!(!join.starts(Cue::Tick, now + secs(3600)), "starting cleared the retry");
    }

    #[test]
    fn a_node_left_alone_joins_and_announces_again() {
        let now = Instant::now();
        let mut join = Join::default();
        join.started(1);
        join.ended(false, 0, now);
        join.started(2);
        join.ended(false, 0, now);
        join.started(3);
        assert!(join.ended(true, 0, now).announce);
        join.alone();
        assert!(join.starts(Cue::Connected { to_bootstrap: false }, now));
        join.started(4);
        let again = join.ended(true, 0, now);
        assert_eq!(again, Ended { announce: true, again_at: Some(now + JOIN_RETRY) });
    }
}
