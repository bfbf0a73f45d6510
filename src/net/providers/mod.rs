//! The providers of one download: who may hold its blocks, how busy each
//! is, and who was dropped. Shared by the download's fetches (which wait on
//! it for a provider with room) and its discovery task (which adds what it
//! finds, see `discover`).
//!
//! Whom to ask, how much at once, and what a failure costs a provider is
//! decided by [`policy`], which has no lock, clock or IO; [`ProviderSet`]
//! holds it under a lock, reads the clock, and wakes the fetches and the
//! discovery task it concerns.

pub mod policy;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::PeerId;
use tokio::sync::Notify;

use self::policy::{Choice, ProviderPolicy};
pub use self::policy::{
    FAILURE_REST, MAX_DISCOVERY_ROUNDS, MAX_FAILURES, MIN_IN_FLIGHT, PER_PEER_IN_FLIGHT,
    RATE_WINDOW,
};
use crate::{
    error::{Error, Result},
    net::event_loop::{Cost, LookupCost},
};

/// Longest a fetch waiting for a provider sleeps before it looks again
/// (a change wakes it sooner).
const WAIT_POLL: Duration = Duration::from_millis(500);

/// The providers of one download, shared by its fetches and its discovery
/// task.
pub struct ProviderSet {
    root: Cid,
    /// What discovery cost so far.
    cost: Arc<LookupCost>,
    state: Mutex<ProviderPolicy>,
    changed: Notify,
    wake_discovery: Notify,
}

impl ProviderSet {
    /// A set whose first discovery round starts at once (`eager`), or only
    /// when a block turns out to be missing locally.
    pub fn new(root: Cid, eager: bool) -> Arc<Self> {
        Arc::new(ProviderSet {
            root,
            cost: Arc::default(),
            state: Mutex::new(ProviderPolicy::new(eager)),
            changed: Notify::new(),
            wake_discovery: Notify::new(),
        })
    }

    /// A set of `peer` alone, which never looks for more: a replica is
    /// pulled from the peer that asks for it, and nobody else.
    pub fn only(root: Cid, peer: PeerId) -> Arc<Self> {
        let set = ProviderSet::new(root, false);
        set.add(peer);
        set.close();
        set
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProviderPolicy> {
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
        self.lock().peers()
    }

    /// Whether discovery should stop.
    pub(super) fn closed(&self) -> bool {
        self.lock().closed()
    }

    /// Whether a discovery round was asked for (or the set is eager).
    pub(super) fn round_requested(&self) -> bool {
        self.lock().round_requested()
    }

    /// Waits until a worker asks for another discovery round, or the set
    /// closes.
    pub(super) async fn wait_for_round_request(&self) {
        self.wake_discovery.notified().await;
    }

    /// Adds a provider (ignored if it was dropped from this download).
    pub fn add(&self, peer: PeerId) {
        if self.lock().add(peer) {
            tracing::debug!("provider {peer} for {}", self.root);
            self.changed.notify_waiters();
        }
    }

    /// Providers found so far (including dropped ones).
    pub fn ever_found(&self) -> usize {
        self.lock().ever_found()
    }

    /// Peers that sent wrong blocks.
    pub fn bad_peers(&self) -> Vec<PeerId> {
        self.lock().bad_peers()
    }

    pub(super) fn round_done(&self) {
        self.lock().round_done();
        self.changed.notify_waiters();
    }

    pub(super) fn close(&self) {
        self.lock().close();
        self.changed.notify_waiters();
        self.wake_discovery.notify_one();
    }

    /// Waits until a provider that may hold `cid` has room, or fails when
    /// none is left and discovery gave up.
    pub(super) async fn acquire(&self, cid: &Cid) -> Result<PeerId> {
        loop {
            // Registered before the state is read, so that a change made
            // between the read and the wait still wakes this fetch.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            let choice = self.lock().choose(cid, now);
            match choice {
                Choice::Ask(peer) => return Ok(peer),
                Choice::Wait { until } => {
                    let timeout = until
                        .map_or(WAIT_POLL, |t| t.saturating_duration_since(now).min(WAIT_POLL));
                    let _ = tokio::time::timeout(timeout, changed).await;
                }
                Choice::Rediscover => self.wake_discovery.notify_one(),
                Choice::GiveUp { found } => return Err(self.give_up(cid, found)),
            }
        }
    }

    /// The error a fetch of `cid` gives up with when no provider is left
    /// and discovery gave up, `found` providers having been found in all.
    fn give_up(&self, cid: &Cid, found: usize) -> Error {
        Error::NoProviders { root: self.root, cid: Box::new(*cid), found }
    }

    /// A request to `peer` ended, with a block (`delivered`) or an answer
    /// without one (`Busy`).
    pub(super) fn release(&self, peer: &PeerId, delivered: bool) {
        self.lock().release(peer, delivered, Instant::now());
        self.changed.notify_waiters();
    }

    pub(super) fn lacks(&self, peer: &PeerId, cid: &Cid) {
        self.lock().lacks(peer, cid, Instant::now());
        self.changed.notify_waiters();
    }

    /// A request to `peer` failed (timeout, closed connection): it rests,
    /// or leaves the download after [`MAX_FAILURES`] in a row. Returns
    /// whether it left.
    pub(super) fn failed(&self, peer: &PeerId) -> bool {
        let left = self.lock().failed(peer, Instant::now());
        self.changed.notify_waiters();
        left
    }

    /// Drops a peer that sent a wrong block from the download, for good.
    pub(super) fn drop_bad(&self, peer: &PeerId) {
        self.lock().drop_bad(peer);
        self.changed.notify_waiters();
    }
}
