//! Which provider of a download to ask for a block, as a state machine
//! without locks, clock or IO: it is handed `now` and what happened to each
//! request, and answers what to do next ([`Choice`]). [`super::ProviderSet`]
//! wraps it for the download's threads.
//!
//! Sharing: each block goes to the provider with the fewest requests in
//! flight among those with room, and a provider's room follows what it
//! delivers: as many blocks as it sends in [`RATE_WINDOW`] (measured over
//! the time it had requests in flight), at least [`MIN_IN_FLIGHT`], at most
//! [`PER_PEER_IN_FLIGHT`]. A slow provider so gets few requests, and a
//! download that reads in order does not wait long on any one of them.
//!
//! Failure policy: a peer that sends bytes that do not match the CID is
//! dropped from the download and blocked; a peer that fails (connection
//! closed, timeout) rests for [`FAILURE_REST`], doubled at each failure in
//! a row, and is dropped from the download after [`MAX_FAILURES`] in a
//! row; a peer that lacks a block is not asked for it again. When no
//! provider is left, discovery runs again, a bounded number of times, then
//! the fetch gives up.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::PeerId;

/// Block requests in flight to one provider at a time, at most (enough to
/// hide the round trip on loopback: 16 left half the CPU idle in the
/// benchmark).
pub const PER_PEER_IN_FLIGHT: usize = 32;
/// Block requests in flight to one provider at a time, at least. Before a
/// provider has delivered anything it may have an equal share of
/// [`PER_PEER_IN_FLIGHT`] among the download's providers.
pub const MIN_IN_FLIGHT: usize = 4;
/// A provider may have in flight what it delivers in this long.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// How long a provider whose request failed rests before it is asked
/// again (doubled at each failure in a row), and how many failures in a
/// row drop it from the download.
pub const FAILURE_REST: Duration = Duration::from_secs(1);
pub const MAX_FAILURES: u32 = 4;
/// Discovery rounds a download may run (the first one included).
pub const MAX_DISCOVERY_ROUNDS: u64 = 3;

/// What a worker that needs a block should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Ask this provider. The request counts as in flight until it is
    /// ended by [`ProviderPolicy::release`], [`ProviderPolicy::lacks`] or
    /// [`ProviderPolicy::failed`].
    Ask(PeerId),
    /// No provider that may hold the block has room: wait for a change (a
    /// request ending, a provider found, a discovery round ending), or
    /// until `until`, when a resting provider may be asked again.
    Wait { until: Option<Instant> },
    /// No provider is left for the block: start a discovery round, then
    /// choose again. The round counts as started already, so only one
    /// worker asks for it.
    Rediscover,
    /// No provider is left for the block and discovery gave up (or was
    /// closed). `found` providers were found in all, dropped ones included.
    GiveUp { found: usize },
}

#[derive(Default)]
struct PeerState {
    in_flight: usize,
    lacks: HashSet<Cid>,
    /// Blocks delivered, and the time spent with requests in flight: its
    /// rate.
    delivered: u64,
    busy: Duration,
    busy_since: Option<Instant>,
    /// Failures in a row, and until when the peer rests.
    failures: u32,
    rest_until: Option<Instant>,
}

impl PeerState {
    /// Requests this peer may have in flight at `now`, one of `providers`:
    /// before it has delivered anything, an equal share.
    fn room(&self, providers: usize, now: Instant) -> usize {
        let busy = self.busy
            + self.busy_since.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        if self.delivered == 0 || busy.is_zero() {
            return (PER_PEER_IN_FLIGHT / providers.max(1)).max(MIN_IN_FLIGHT);
        }
        let per_window = self.delivered as f64 * RATE_WINDOW.as_secs_f64() / busy.as_secs_f64();
        (per_window as usize).clamp(MIN_IN_FLIGHT, PER_PEER_IN_FLIGHT)
    }

    fn resting(&self, now: Instant) -> bool {
        self.rest_until.is_some_and(|until| now < until)
    }

    fn start(&mut self, now: Instant) {
        if self.in_flight == 0 {
            self.busy_since = Some(now);
        }
        self.in_flight += 1;
    }

    fn finish(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0
            && let Some(at) = self.busy_since.take()
        {
            self.busy += now.saturating_duration_since(at);
        }
    }
}

/// The providers of one download and what each has done.
#[derive(Default)]
pub struct ProviderPolicy {
    peers: HashMap<PeerId, PeerState>,
    /// Dropped from this download (failed or misbehaved).
    dropped: HashSet<PeerId>,
    /// Peers that sent a wrong block.
    bad: HashSet<PeerId>,
    /// Discovery rounds started and finished.
    rounds_started: u64,
    rounds_done: u64,
    /// Providers ever found.
    ever_found: usize,
    closed: bool,
}

impl ProviderPolicy {
    /// A policy whose first discovery round counts as started at once
    /// (`eager`), or only when a block has no provider.
    pub fn new(eager: bool) -> Self {
        ProviderPolicy { rounds_started: u64::from(eager), ..Default::default() }
    }

    /// The providers found and not dropped.
    pub fn peers(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    /// Whether discovery should stop.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Whether a discovery round was asked for (or the policy is eager).
    pub fn round_requested(&self) -> bool {
        self.rounds_started > 0
    }

    /// Providers found so far (including dropped ones).
    pub fn ever_found(&self) -> usize {
        self.ever_found
    }

    /// Peers that sent wrong blocks.
    pub fn bad_peers(&self) -> Vec<PeerId> {
        self.bad.iter().copied().collect()
    }

    /// Adds a provider; returns whether it is new (a dropped one is not
    /// taken back).
    pub fn add(&mut self, peer: PeerId) -> bool {
        if self.dropped.contains(&peer) || self.peers.contains_key(&peer) {
            return false;
        }
        self.peers.insert(peer, PeerState::default());
        self.ever_found += 1;
        true
    }

    /// A discovery round ended.
    pub fn round_done(&mut self) {
        self.rounds_done += 1;
    }

    /// Discovery stops: no round is started any more.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Whom to ask for `cid` at `now`: the provider with the fewest
    /// requests in flight among those that may hold it, are not resting
    /// and have room.
    pub fn choose(&mut self, cid: &Cid, now: Instant) -> Choice {
        let mut best: Option<(PeerId, usize)> = None;
        let mut any_candidate = false;
        let mut rest_ends: Option<Instant> = None;
        let providers = self.peers.len();
        for (peer, st) in &self.peers {
            if st.lacks.contains(cid) {
                continue;
            }
            any_candidate = true;
            if let Some(until) = st.rest_until.filter(|_| st.resting(now)) {
                rest_ends = Some(rest_ends.map_or(until, |t| t.min(until)));
                continue;
            }
            if st.in_flight < st.room(providers, now) && best.is_none_or(|(_, n)| st.in_flight < n)
            {
                best = Some((*peer, st.in_flight));
            }
        }
        if let Some((peer, _)) = best {
            self.peers.get_mut(&peer).expect("picked from the map").start(now);
            return Choice::Ask(peer);
        }
        if any_candidate || self.rounds_done < self.rounds_started {
            return Choice::Wait { until: rest_ends };
        }
        if self.rounds_started < MAX_DISCOVERY_ROUNDS && !self.closed {
            self.rounds_started += 1;
            return Choice::Rediscover;
        }
        Choice::GiveUp { found: self.ever_found }
    }

    /// A request to `peer` ended at `now`, with a block (`delivered`) or an
    /// answer without one (`Busy`: the peer may be asked again at once).
    pub fn release(&mut self, peer: &PeerId, delivered: bool, now: Instant) {
        if let Some(st) = self.peers.get_mut(peer) {
            st.finish(now);
            if delivered {
                st.delivered += 1;
                st.failures = 0;
            }
        }
    }

    /// A request to `peer` ended at `now`: it does not hold `cid` (or
    /// stayed busy), and is not asked for it again.
    pub fn lacks(&mut self, peer: &PeerId, cid: &Cid, now: Instant) {
        if let Some(st) = self.peers.get_mut(peer) {
            st.finish(now);
            st.lacks.insert(*cid);
        }
    }

    /// A request to `peer` failed at `now` (timeout, closed connection): it
    /// rests, or leaves the download after [`MAX_FAILURES`] in a row.
    /// Returns whether it left.
    pub fn failed(&mut self, peer: &PeerId, now: Instant) -> bool {
        let Some(st) = self.peers.get_mut(peer) else { return false };
        st.finish(now);
        st.failures += 1;
        let left = st.failures >= MAX_FAILURES;
        if left {
            self.peers.remove(peer);
            self.dropped.insert(*peer);
        } else {
            st.rest_until = Some(now + FAILURE_REST * 2u32.pow(st.failures - 1));
        }
        left
    }

    /// Drops a peer that sent a wrong block from the download, for good.
    pub fn drop_bad(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
        self.dropped.insert(*peer);
        self.bad.insert(*peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{RAW, cid_of};

    fn block(n: u32) -> Cid {
        cid_of(RAW, &n.to_be_bytes())
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A policy whose first discovery round ran and found `n` providers.
    fn found(n: usize) -> (ProviderPolicy, Vec<PeerId>) {
        let mut policy = ProviderPolicy::new(true);
        let peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        for peer in &peers {
            assert!(policy.add(*peer));
        }
        policy.round_done();
        (policy, peers)
    }

    fn asked(choice: Choice) -> PeerId {
        match choice {
            Choice::Ask(peer) => peer,
            other => panic!("expected a provider to ask, got {other:?}"),
        }
    }

    fn in_flight(policy: &ProviderPolicy, peer: &PeerId) -> usize {
        policy.peers[peer].in_flight
    }

    /// Asks for distinct blocks from `first` on until the policy says
    /// wait; returns the providers asked, in order.
    fn fill(policy: &mut ProviderPolicy, first: u32, now: Instant) -> Vec<PeerId> {
        let mut asked = Vec::new();
        for n in first.. {
            match policy.choose(&block(n), now) {
                Choice::Ask(peer) => asked.push(peer),
                Choice::Wait { .. } => return asked,
                other => panic!("expected a provider or a wait, got {other:?}"),
            }
        }
        unreachable!()
    }

    #[test]
    fn equal_providers_get_equal_shares() {
        let now = Instant::now();
        let (mut policy, peers) = found(3);
        let share = PER_PEER_IN_FLIGHT / 3;
        for n in 0..(3 * share) as u32 {
            asked(policy.choose(&block(n), now));
            let counts: Vec<usize> = peers.iter().map(|p| in_flight(&policy, p)).collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "after {} requests: {counts:?}", n + 1);
        }
        for peer in &peers {
            assert_eq!(in_flight(&policy, peer), share);
        }
        assert_eq!(policy.choose(&block(1000), now), Choice::Wait { until: None });
        // The provider whose request ends first gets the next one.
        policy.release(&peers[1], true, now);
        assert_eq!(policy.choose(&block(1001), now), Choice::Ask(peers[1]));
        policy.release(&peers[2], true, now);
        policy.release(&peers[2], true, now);
        assert_eq!(policy.choose(&block(1002), now), Choice::Ask(peers[2]));
        assert_eq!(policy.choose(&block(1003), now), Choice::Ask(peers[2]));
        assert_eq!(policy.choose(&block(1004), now), Choice::Wait { until: None });
    }

    #[test]
    fn a_first_share_is_an_equal_part_of_the_most_in_flight_but_no_less_than_the_least() {
        let now = Instant::now();
        for providers in [1, 2, 3, 5, 8, 16] {
            let (mut policy, peers) = found(providers);
            let asked = fill(&mut policy, 0, now);
            let share = (PER_PEER_IN_FLIGHT / providers).max(MIN_IN_FLIGHT);
            assert_eq!(asked.len(), providers * share, "{providers} providers");
            for peer in &peers {
                assert_eq!(in_flight(&policy, peer), share, "{providers} providers");
            }
        }
    }

    #[test]
    fn a_provider_may_have_in_flight_what_it_delivers_in_the_rate_window() {
        let t0 = Instant::now();
        // Delivered while busy this long: the room that follows.
        let half = RATE_WINDOW / 2;
        for (delivered, busy, room) in [
            (10, RATE_WINDOW, 10),
            (20, RATE_WINDOW * 2, 10),
            (1, RATE_WINDOW, MIN_IN_FLIGHT),
            (PER_PEER_IN_FLIGHT, half, PER_PEER_IN_FLIGHT),
        ] {
            let (mut policy, peers) = found(1);
            let mut n = 0;
            for _ in 0..delivered {
                asked(policy.choose(&block(n), t0));
                n += 1;
            }
            let t1 = t0 + busy;
            for _ in 0..delivered {
                policy.release(&peers[0], true, t1);
            }
            assert_eq!(fill(&mut policy, n, t1).len(), room, "{delivered} in {busy:?}");
        }
        // Time spent with nothing in flight does not count against it.
        let (mut policy, peers) = found(1);
        for n in 0..10 {
            asked(policy.choose(&block(n), t0));
        }
        for _ in 0..10 {
            policy.release(&peers[0], true, t0 + RATE_WINDOW);
        }
        assert_eq!(fill(&mut policy, 10, t0 + secs(60)).len(), 10);
    }

    #[test]
    fn a_busy_answer_frees_the_slot_and_counts_as_neither_a_delivery_nor_a_failure() {
        let t0 = Instant::now();
        let (mut policy, peers) = found(1);
        let p = peers[0];
        assert_eq!(fill(&mut policy, 0, t0).len(), PER_PEER_IN_FLIGHT);
        // Busy answers after a long time: had they counted as deliveries,
        // the provider's rate would be low and its room the least.
        let t1 = t0 + secs(10);
        for _ in 0..PER_PEER_IN_FLIGHT {
            policy.release(&p, false, t1);
        }
        assert_eq!(in_flight(&policy, &p), 0);
        assert_eq!(fill(&mut policy, 100, t1).len(), PER_PEER_IN_FLIGHT);
        for _ in 0..PER_PEER_IN_FLIGHT {
            policy.release(&p, false, t1);
        }
        // A busy answer does not end a run of failures: the next rest is
        // doubled.
        assert!(!policy.failed(&p, t1));
        let t2 = t1 + FAILURE_REST;
        asked(policy.choose(&block(200), t2));
        policy.release(&p, false, t2);
        asked(policy.choose(&block(201), t2));
        assert!(!policy.failed(&p, t2));
        let until = t2 + FAILURE_REST * 2;
        assert_eq!(policy.choose(&block(202), t2), Choice::Wait { until: Some(until) });
        // A delivery does.
        asked(policy.choose(&block(202), until));
        policy.release(&p, true, until);
        asked(policy.choose(&block(203), until));
        assert!(!policy.failed(&p, until));
        let until2 = until + FAILURE_REST;
        assert_eq!(policy.choose(&block(204), until), Choice::Wait { until: Some(until2) });
    }

    #[test]
    fn a_failing_provider_rests_longer_at_each_failure_then_is_dropped() {
        let mut now = Instant::now();
        let (mut policy, peers) = found(1);
        let p = peers[0];
        for failure in 1..MAX_FAILURES {
            assert_eq!(policy.choose(&block(0), now), Choice::Ask(p));
            assert!(!policy.failed(&p, now));
            let until = now + FAILURE_REST * 2u32.pow(failure - 1);
            assert_eq!(policy.choose(&block(0), now), Choice::Wait { until: Some(until) });
            let just_before = until - Duration::from_millis(1);
            assert_eq!(policy.choose(&block(0), just_before), Choice::Wait { until: Some(until) });
            now = until;
        }
        assert_eq!(policy.choose(&block(0), now), Choice::Ask(p));
        assert!(policy.failed(&p, now), "dropped after {MAX_FAILURES} failures in a row");
        assert!(policy.peers().is_empty());
        assert!(!policy.add(p), "a dropped provider is not taken back");
        assert_eq!(policy.ever_found(), 1);
        assert!(policy.bad_peers().is_empty(), "failing is not misbehaving");
        // Nothing left: discovery runs again.
        assert_eq!(policy.choose(&block(0), now), Choice::Rediscover);
    }

    #[test]
    fn a_resting_provider_leaves_its_work_to_the_others() {
        let now = Instant::now();
        let (mut policy, peers) = found(2);
        let (a, b) = (peers[0], peers[1]);
        let first = asked(policy.choose(&block(0), now));
        let other = if first == a { b } else { a };
        assert!(!policy.failed(&first, now));
        let asked_now = fill(&mut policy, 1, now);
        assert!(asked_now.iter().all(|p| *p == other), "the resting provider was asked");
        assert_eq!(asked_now.len(), PER_PEER_IN_FLIGHT / 2);
        // The other one fails twice: the wait ends with the earliest rest.
        policy.release(&other, false, now);
        assert!(!policy.failed(&other, now));
        asked(policy.choose(&block(100), now + FAILURE_REST));
        assert!(!policy.failed(&other, now + FAILURE_REST));
        // `other` now rests until now + 3 s, `first` until now + 1 s.
        let until = now + FAILURE_REST;
        let before = now + Duration::from_millis(500);
        assert_eq!(policy.choose(&block(101), before), Choice::Wait { until: Some(until) });
        assert_eq!(policy.choose(&block(101), until), Choice::Ask(first));
    }

    #[test]
    fn a_block_a_provider_lacks_goes_to_another_one() {
        let now = Instant::now();
        let (mut policy, peers) = found(2);
        let x = block(0);
        let lacking = asked(policy.choose(&x, now));
        policy.lacks(&lacking, &x, now);
        let other = *peers.iter().find(|p| **p != lacking).unwrap();
        // Asked for `x` again and again (parallel readers of one block):
        // never the provider that lacks it, though it has nothing in flight.
        for _ in 0..PER_PEER_IN_FLIGHT / 2 {
            assert_eq!(policy.choose(&x, now), Choice::Ask(other));
        }
        assert_eq!(policy.choose(&x, now), Choice::Wait { until: None });
        // It is still asked for other blocks.
        assert_eq!(policy.choose(&block(1), now), Choice::Ask(lacking));
        // Once the other one lacks `x` too, discovery runs again.
        for _ in 0..PER_PEER_IN_FLIGHT / 2 {
            policy.lacks(&other, &x, now);
        }
        assert_eq!(policy.choose(&x, now), Choice::Rediscover);
    }

    #[test]
    fn rediscovers_a_bounded_number_of_times_then_gives_up() {
        let now = Instant::now();
        let (mut policy, peers) = found(2);
        let x = block(0);
        for peer in &peers {
            assert!(matches!(policy.choose(&x, now), Choice::Ask(_)));
            policy.lacks(peer, &x, now);
        }
        for round in 2..=MAX_DISCOVERY_ROUNDS {
            assert_eq!(policy.choose(&x, now), Choice::Rediscover, "round {round}");
            // Only the worker that got `Rediscover` asks: others wait for the round.
            assert_eq!(policy.choose(&x, now), Choice::Wait { until: None });
            assert_eq!(policy.choose(&x, now), Choice::Wait { until: None });
            policy.round_done();
        }
        assert_eq!(policy.choose(&x, now), Choice::GiveUp { found: 2 });
        assert_eq!(policy.choose(&x, now), Choice::GiveUp { found: 2 });
        // Other blocks are still fetched.
        assert!(matches!(policy.choose(&block(1), now), Choice::Ask(_)));
    }

    #[test]
    fn gives_up_when_every_provider_lacked_or_failed_and_discovery_is_closed() {
        let now = Instant::now();
        let (mut policy, peers) = found(3);
        let x = block(0);
        let (lacking, failing, bad) = (peers[0], peers[1], peers[2]);
        policy.lacks(&lacking, &x, now);
        policy.drop_bad(&bad);
        for failure in 0..MAX_FAILURES {
            let at = now + secs(3600 * u64::from(failure));
            assert_eq!(policy.choose(&x, at), Choice::Ask(failing));
            assert_eq!(policy.failed(&failing, at), failure + 1 == MAX_FAILURES);
        }
        policy.close();
        assert!(policy.closed());
        // Rounds are left, but discovery stopped.
        assert_eq!(policy.choose(&x, now), Choice::GiveUp { found: 3 });
        // A download that found nobody says so.
        let mut nobody = ProviderPolicy::new(true);
        assert_eq!(nobody.choose(&x, now), Choice::Wait { until: None });
        nobody.round_done();
        nobody.close();
        assert_eq!(nobody.choose(&x, now), Choice::GiveUp { found: 0 });
    }

    #[test]
    fn waits_while_a_discovery_round_runs() {
        let now = Instant::now();
        // Eager: the first round runs from the start.
        let mut policy = ProviderPolicy::new(true);
        assert!(policy.round_requested());
        for n in 0..10 {
            assert_eq!(policy.choose(&block(n), now), Choice::Wait { until: None });
        }
        let p = PeerId::random();
        assert!(policy.add(p));
        assert_eq!(policy.choose(&block(0), now), Choice::Ask(p));
        // Lazy: the first block without a provider starts the first round.
        let mut lazy = ProviderPolicy::new(false);
        assert!(!lazy.round_requested());
        assert_eq!(lazy.choose(&block(0), now), Choice::Rediscover);
        assert!(lazy.round_requested());
        assert_eq!(lazy.choose(&block(0), now), Choice::Wait { until: None });
        lazy.round_done();
        assert_eq!(lazy.choose(&block(0), now), Choice::Rediscover);
    }

    #[test]
    fn a_provider_found_late_gets_work() {
        let now = Instant::now();
        let (mut policy, peers) = found(1);
        let early = peers[0];
        assert_eq!(fill(&mut policy, 0, now).len(), PER_PEER_IN_FLIGHT);
        let late = PeerId::random();
        assert!(policy.add(late));
        assert!(!policy.add(late), "added twice");
        assert_eq!(policy.ever_found(), 2);
        // Two providers now: the late one gets its first share, the early
        // one nothing more until it is under its own.
        let asked = fill(&mut policy, 100, now);
        assert_eq!(asked, vec![late; PER_PEER_IN_FLIGHT / 2]);
        for _ in 0..PER_PEER_IN_FLIGHT / 2 + 1 {
            policy.release(&early, true, now);
        }
        assert_eq!(policy.choose(&block(200), now), Choice::Ask(early));
        // A provider found while a block had none takes it.
        let x = block(300);
        policy.lacks(&early, &x, now);
        for _ in 0..PER_PEER_IN_FLIGHT / 2 {
            policy.lacks(&late, &x, now);
        }
        assert_eq!(policy.choose(&x, now), Choice::Rediscover);
        assert_eq!(policy.choose(&x, now), Choice::Wait { until: None });
        let latest = PeerId::random();
        policy.add(latest);
        assert_eq!(policy.choose(&x, now), Choice::Ask(latest));
    }

    #[test]
    fn a_peer_that_sent_a_wrong_block_is_never_asked_again() {
        let now = Instant::now();
        let (mut policy, peers) = found(2);
        let (bad, good) = (peers[0], peers[1]);
        asked(policy.choose(&block(0), now));
        asked(policy.choose(&block(1), now));
        policy.drop_bad(&bad);
        assert_eq!(policy.bad_peers(), vec![bad]);
        assert_eq!(policy.peers(), vec![good]);
        // Its requests still in flight end without effect.
        policy.release(&bad, true, now);
        policy.lacks(&bad, &block(1), now);
        assert!(!policy.failed(&bad, now));
        // Found again by discovery: not taken back.
        assert!(!policy.add(bad));
        assert_eq!(policy.ever_found(), 2);
        let asked_now = fill(&mut policy, 10, now + secs(60));
        assert!(!asked_now.is_empty());
        assert!(asked_now.iter().all(|p| *p == good), "the bad peer was asked");
        // With the good one lacking a block, the bad one is still not asked.
        let x = block(1000);
        for _ in 0..asked_now.len() {
            policy.release(&good, false, now);
        }
        policy.lacks(&good, &x, now);
        assert_eq!(policy.choose(&x, now), Choice::Rediscover);
        policy.round_done();
        policy.close();
        assert_eq!(policy.choose(&x, now), Choice::GiveUp { found: 2 });
    }
}
