//! The providers of one download: who may hold its blocks, how busy each
//! is, and who was dropped. Shared by the download's blocking worker
//! threads (which wait on it with a condition variable) and its discovery
//! task (which adds what it finds, see `discover`).
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
//! the fetch fails with a clear error.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::PeerId;
use tokio::sync::Notify;

use crate::{
    error::{Error, Result},
    net::event_loop::{Cost, LookupCost},
};

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
    /// Requests this peer may have in flight now, one of `providers`:
    /// before it has delivered anything, an equal share.
    fn room(&self, providers: usize) -> usize {
        let busy = self.busy + self.busy_since.map_or(Duration::ZERO, |at| at.elapsed());
        if self.delivered == 0 || busy.is_zero() {
            return (PER_PEER_IN_FLIGHT / providers.max(1)).max(MIN_IN_FLIGHT);
        }
        let per_window = self.delivered as f64 * RATE_WINDOW.as_secs_f64() / busy.as_secs_f64();
        (per_window as usize).clamp(MIN_IN_FLIGHT, PER_PEER_IN_FLIGHT)
    }

    fn resting(&self) -> bool {
        self.rest_until.is_some_and(|until| Instant::now() < until)
    }

    fn start(&mut self) {
        if self.in_flight == 0 {
            self.busy_since = Some(Instant::now());
        }
        self.in_flight += 1;
    }

    fn finish(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0
            && let Some(at) = self.busy_since.take()
        {
            self.busy += at.elapsed();
        }
    }
}

#[derive(Default)]
struct SetState {
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

/// The providers of one download, shared by its worker threads and its
/// discovery task.
pub struct ProviderSet {
    root: Cid,
    /// What discovery cost so far.
    cost: Arc<LookupCost>,
    state: Mutex<SetState>,
    changed: Condvar,
    wake_discovery: Notify,
}

/// The outcome of asking for a provider.
enum Pick {
    Peer(PeerId),
    Wait,
    Rediscover,
    None,
}

impl ProviderSet {
    /// A set whose first discovery round starts at once (`eager`), or only
    /// when a block turns out to be missing locally.
    pub fn new(root: Cid, eager: bool) -> Arc<Self> {
        Arc::new(ProviderSet {
            root,
            cost: Arc::default(),
            state: Mutex::new(SetState { rounds_started: u64::from(eager), ..Default::default() }),
            changed: Condvar::new(),
            wake_discovery: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SetState> {
        self.state.lock().expect("provider set lock")
    }

    /// The root this set finds providers of.
    pub fn root(&self) -> Cid {
        self.root
    }

    /// What discovering providers has cost so far (see `net::discover`).
    pub fn cost(&self) -> Cost {
        self.cost.snapshot()
    }

    pub(super) fn cost_counter(&self) -> &Arc<LookupCost> {
        &self.cost
    }

    /// The providers found and not dropped.
    pub fn peers(&self) -> Vec<PeerId> {
        self.lock().peers.keys().copied().collect()
    }

    /// Whether discovery should stop.
    pub(super) fn closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether a discovery round was asked for (or the set is eager).
    pub(super) fn round_requested(&self) -> bool {
        self.lock().rounds_started > 0
    }

    /// Waits until a worker asks for another discovery round, or the set
    /// closes.
    pub(super) async fn wait_for_round_request(&self) {
        self.wake_discovery.notified().await;
    }

    /// Adds a provider (ignored if it was dropped from this download).
    pub fn add(&self, peer: PeerId) {
        let mut s = self.lock();
        if s.dropped.contains(&peer) || s.peers.contains_key(&peer) {
            return;
        }
        tracing::debug!("provider {peer} for {}", self.root);
        s.peers.insert(peer, PeerState::default());
        s.ever_found += 1;
        self.changed.notify_all();
    }

    /// Providers found so far (including dropped ones).
    pub fn ever_found(&self) -> usize {
        self.lock().ever_found
    }

    /// Peers that sent wrong blocks.
    pub fn bad_peers(&self) -> Vec<PeerId> {
        self.lock().bad.iter().copied().collect()
    }

    pub(super) fn round_done(&self) {
        self.lock().rounds_done += 1;
        self.changed.notify_all();
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
        self.wake_discovery.notify_one();
    }

    fn pick(&self, s: &mut SetState, cid: &Cid) -> Pick {
        let mut best: Option<(PeerId, usize)> = None;
        let mut any_candidate = false;
        let providers = s.peers.len();
        for (peer, st) in &s.peers {
            if st.lacks.contains(cid) {
                continue;
            }
            any_candidate = true;
            if !st.resting()
                && st.in_flight < st.room(providers)
                && best.is_none_or(|(_, n)| st.in_flight < n)
            {
                best = Some((*peer, st.in_flight));
            }
        }
        if let Some((peer, _)) = best {
            s.peers.get_mut(&peer).expect("picked from the map").start();
            return Pick::Peer(peer);
        }
        if any_candidate || s.rounds_done < s.rounds_started {
            return Pick::Wait;
        }
        if s.rounds_started < MAX_DISCOVERY_ROUNDS && !s.closed {
            return Pick::Rediscover;
        }
        Pick::None
    }

    /// Blocks until a provider that may hold `cid` has room, or fails when
    /// none is left and discovery gave up.
    pub(super) fn acquire(&self, cid: &Cid) -> Result<PeerId> {
        let mut s = self.lock();
        loop {
            match self.pick(&mut s, cid) {
                Pick::Peer(p) => return Ok(p),
                Pick::Wait => {
                    s = self
                        .changed
                        .wait_timeout(s, Duration::from_millis(500))
                        .expect("provider set lock")
                        .0;
                }
                Pick::Rediscover => {
                    // Counted now so that only one worker asks.
                    s.rounds_started += 1;
                    self.wake_discovery.notify_one();
                }
                Pick::None => {
                    let (root, cid, found) = (self.root, Box::new(*cid), s.ever_found);
                    return Err(Error::NoProviders { root, cid, found });
                }
            }
        }
    }

    /// A request to `peer` ended, with a block (`delivered`) or an answer
    /// without one (`Busy`).
    pub(super) fn release(&self, peer: &PeerId, delivered: bool) {
        if let Some(st) = self.lock().peers.get_mut(peer) {
            st.finish();
            if delivered {
                st.delivered += 1;
                st.failures = 0;
            }
        }
        self.changed.notify_all();
    }

    pub(super) fn lacks(&self, peer: &PeerId, cid: &Cid) {
        if let Some(st) = self.lock().peers.get_mut(peer) {
            st.finish();
            st.lacks.insert(*cid);
        }
        self.changed.notify_all();
    }

    /// A request to `peer` failed (timeout, closed connection): it rests,
    /// or leaves the download after [`MAX_FAILURES`] in a row. Returns
    /// whether it left.
    pub(super) fn failed(&self, peer: &PeerId) -> bool {
        let mut s = self.lock();
        let Some(st) = s.peers.get_mut(peer) else { return false };
        st.finish();
        st.failures += 1;
        let left = st.failures >= MAX_FAILURES;
        if left {
            s.peers.remove(peer);
            s.dropped.insert(*peer);
        } else {
            st.rest_until = Some(Instant::now() + FAILURE_REST * 2u32.pow(st.failures - 1));
        }
        drop(s);
        self.changed.notify_all();
        left
    }

    /// Drops a peer that sent a wrong block from the download, for good.
    pub(super) fn drop_bad(&self, peer: &PeerId) {
        let mut s = self.lock();
        s.peers.remove(peer);
        s.dropped.insert(*peer);
        s.bad.insert(*peer);
        self.changed.notify_all();
    }
}
