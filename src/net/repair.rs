//! Repair: keeping every pinned root at the replica count its owner asked
//! for, as holders come and go.
//!
//! Every repair interval (± [`REPAIR_JITTER`]), a node that listens looks
//! at each root it holds pinned whose target is two copies or more:
//!
//! 1. leases that ran out are dropped, with the copies no owner holds any
//!    longer ([`Store::expire_leases`]);
//! 2. it counts the peers that hold the root pinned *now*: the root's DHT
//!    providers, the holders it saw last time and the connected peers
//!    closest to the root are asked `Holds` (provider records outlive their
//!    nodes, so a record alone counts for nothing);
//! 3. the owner (the node whose own content it is) renews its lease on
//!    each holder that answered, every quarter of `--lease`;
//! 4. when fewer than the target answer for [`SHORT_ROUNDS`] rounds in a
//!    row (a node that blinks causes no repair), the one holder XOR-closest
//!    to the root among those that answered repairs: it looks for the
//!    owners' delete records first (a deleted root is dropped, never
//!    repaired), then asks the closest peers that do not hold the root to
//!    replicate it, handing on each owner's lease as it is: a repaired copy
//!    belongs to the original owners, until the same expiry. Only the owner
//!    makes a new lease.
//!
//! [`Repairer::health`] makes the same count on demand (`status`).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cid::Cid;
use futures::StreamExt;
use libp2p::{PeerId, identity::Keypair, kad::KBucketKey};

use crate::{
    lease::{self, Lease},
    net::{
        discover,
        event_loop::NetHandle,
        replicas::{self, Offer},
    },
    store::{AsyncStore, RootInfo},
};

/// How often a node checks the roots it holds, by default: a departed
/// holder is replaced within two to three intervals (see [`SHORT_ROUNDS`]).
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Each wait is the interval, give or take this fraction, so that holders
/// started together do not check together.
pub const REPAIR_JITTER: f64 = 0.1;
/// Rounds in a row a root must be short of copies before it is repaired.
pub const SHORT_ROUNDS: u32 = 2;
/// How long a holder has to answer `Holds`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Peers asked `Holds` at once, and at most per root and round.
pub const PROBES_AT_ONCE: usize = 16;
pub const MAX_PROBED: usize = 64;
/// Roots checked at once.
pub const ROOTS_AT_ONCE: usize = 4;
/// How long an owner's lease runs by default (`--lease`), and the longest
/// a node holds a copy for an owner that does not renew it.
pub const LEASE: Duration = Duration::from_secs(30 * 24 * 3600);
/// An owner renews its leases when this fraction of `--lease` has passed.
pub const RENEW_AFTER: f64 = 0.25;

/// How repair runs.
#[derive(Debug, Clone, Copy)]
pub struct RepairConfig {
    pub interval: Duration,
    /// The length of the leases this node grants as an owner, and the
    /// longest it holds a copy without a renewal.
    pub lease: Duration,
}

/// A root's health as a count of its holders sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub root: Cid,
    /// Copies wanted (0: no holder answered with a target).
    pub target: u8,
    /// The peers that answered that they hold it pinned, this node first
    /// if it does.
    pub holders: Vec<PeerId>,
    /// Unix seconds of the last repair of the root any holder that
    /// answered made; 0 if none.
    pub last_repair: u64,
    /// Unix seconds of this node's last round over the root; 0 if none.
    pub last_check: u64,
}

/// What a node remembers of a root between rounds.
#[derive(Debug, Default)]
struct Watch {
    holders: Vec<PeerId>,
    short_rounds: u32,
    renewed: Option<Instant>,
    deletes_checked: bool,
    checked: u64,
}

/// The repair loop and its memory; cheap to clone.
#[derive(Clone)]
pub struct Repairer {
    store: AsyncStore,
    net: NetHandle,
    identity: Keypair,
    config: RepairConfig,
    watches: Arc<Mutex<HashMap<Cid, Watch>>>,
}

impl Repairer {
    pub fn new(store: AsyncStore, net: NetHandle, config: RepairConfig) -> Self {
        let identity = store.blocking().identity().clone();
        Repairer { store, net, identity, config, watches: Arc::default() }
    }

    /// Runs rounds until the node stops: the first once the node has a
    /// peer, then one every interval, give or take [`REPAIR_JITTER`].
    pub async fn run(self) {
        tokio::select! {
            _ = self.net.wait_for_peers(1, self.config.interval) => {}
            _ = self.net.stopped() => return,
        }
        loop {
            self.round().await;
            let jitter = rand::random_range(-REPAIR_JITTER..=REPAIR_JITTER);
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval.mul_f64(1.0 + jitter)) => {}
                _ = self.net.stopped() => return,
            }
        }
    }

    /// One round over every root held pinned.
    pub async fn round(&self) {
        self.expire_leases().await;
        let roots = self.store.run(|store| Ok(store.roots())).await;
        let roots: Vec<RootInfo> = match roots {
            Ok(roots) => roots.into_iter().filter(|r| r.pinned() && r.target() >= 2).collect(),
            Err(e) => return tracing::warn!("cannot read the roots held: {e}"),
        };
        let held: HashSet<Cid> = roots.iter().map(|r| r.root).collect();
        self.watches.lock().expect("watches").retain(|root, _| held.contains(root));
        futures::stream::iter(roots)
            .for_each_concurrent(ROOTS_AT_ONCE, |info| self.check(info))
            .await;
    }

    async fn expire_leases(&self) {
        let longest = self.config.lease;
        let ended =
            self.store.run(move |store| store.expire_leases(lease::unix_secs(), longest)).await;
        let ended = match ended {
            Ok(ended) => ended,
            Err(e) => return tracing::warn!("cannot drop the leases that ran out: {e}"),
        };
        for (root, owners, released) in ended {
            for owner in owners {
                tracing::info!("the lease of {owner} on {root} ran out");
            }
            if released {
                tracing::info!("released {root}: no owner renewed its lease");
                self.net.unprovide(root).await;
            }
        }
    }

    /// The peers other than this node that answer now that they hold
    /// `root` pinned, and the most copies and the latest repair they
    /// report. Asks the root's DHT providers, `known` holders and the
    /// connected peers XOR-closest to the root (where copies are placed:
    /// asking every connected peer cost each holder some 60 requests per
    /// root and round at 1,000 nodes), [`MAX_PROBED`] at most.
    async fn live_holders(&self, root: Cid, known: &[PeerId]) -> (Vec<PeerId>, u8, u64) {
        let local = self.net.local_peer_id();
        let mut candidates: Vec<PeerId> = known.to_vec();
        discover::dht_providers(&self.net, root, &Default::default(), |peer| candidates.push(peer))
            .await;
        candidates.extend(discover::closest_connected(&self.net, root).await);
        let mut seen = HashSet::new();
        candidates.retain(|p| *p != local && seen.insert(*p));
        candidates.truncate(MAX_PROBED);
        let net = &self.net;
        let probes = candidates.into_iter().map(|peer| async move {
            (peer, replicas::rpc_holds(net, peer, root, PROBE_TIMEOUT).await)
        });
        let answers: Vec<_> =
            futures::stream::iter(probes).buffer_unordered(PROBES_AT_ONCE).collect().await;
        let mut holders = Vec::new();
        let (mut target, mut repaired) = (0, 0);
        for (peer, answer) in answers {
            if let Some(h) = answer.filter(|h| h.pinned) {
                holders.push(peer);
                target = target.max(h.replicas);
                repaired = repaired.max(h.repaired);
            }
        }
        (holders, target, repaired)
    }

    /// Counts the holders of `root` now (see [`live_holders`]).
    pub async fn health(&self, root: Cid) -> Health {
        let (known, last_check) = match self.watches.lock().expect("watches").get(&root) {
            Some(w) => (w.holders.clone(), w.checked),
            None => (Vec::new(), 0),
        };
        let (mut holders, mut target, mut last_repair) = self.live_holders(root, &known).await;
        let info = self.store.run(move |store| Ok(store.root_info(&root))).await;
        if let Some(info) = info.ok().flatten().filter(RootInfo::pinned) {
            holders.insert(0, self.net.local_peer_id());
            target = target.max(info.target());
            last_repair = last_repair.max(info.repaired);
        }
        Health { root, target, holders, last_repair, last_check }
    }

    /// One root's turn in a round (see the module docs).
    async fn check(&self, info: RootInfo) {
        let root = info.root;
        let local = self.net.local_peer_id();
        let (known, first_look) = {
            let watches = self.watches.lock().expect("watches");
            let watch = watches.get(&root);
            (
                watch.map(|w| w.holders.clone()).unwrap_or_default(),
                !watch.is_some_and(|w| w.deletes_checked),
            )
        };
        // A holder back from an absence looks for deletes made meanwhile.
        if first_look && !self.drop_deleted(&info).await {
            return;
        }
        let (holders, _, _) = self.live_holders(root, &known).await;
        if info.local {
            self.renew(&info, &holders).await;
        }
        let count = holders.len() + 1;
        let target = usize::from(info.target());
        let short_rounds = {
            let mut watches = self.watches.lock().expect("watches");
            let watch = watches.entry(root).or_default();
            watch.holders = holders.clone();
            watch.deletes_checked = true;
            watch.checked = lease::unix_secs();
            watch.short_rounds = if count < target { watch.short_rounds + 1 } else { 0 };
            watch.short_rounds
        };
        if short_rounds < SHORT_ROUNDS {
            return;
        }
        let key = KBucketKey::new(root.to_bytes());
        let closest = holders
            .iter()
            .chain([&local])
            .min_by_key(|p| key.distance(&KBucketKey::from(**p)))
            .copied();
        if closest != Some(local) {
            tracing::debug!("{root}: {count} of {target} copies; {closest:?} repairs");
            return;
        }
        if !self.drop_deleted(&info).await {
            return;
        }
        self.repair(&info, &holders, target - count).await;
    }

    /// Looks for each owner's delete record of a replica; drops the pins
    /// of the owners that deleted it. Whether the root is still held.
    async fn drop_deleted(&self, info: &RootInfo) -> bool {
        let root = info.root;
        for owner in &info.owners {
            let Some(record) = replicas::find_delete(&self.net, root, *owner).await else {
                continue;
            };
            tracing::info!("{owner} deleted {root} (at {}): dropping its copy", record.deleted);
            let owner = *owner;
            match self.store.run(move |store| store.release(&root, &owner)).await {
                Ok(Some(true)) => {
                    self.net.unprovide(root).await;
                    return false;
                }
                Err(e) => tracing::warn!("cannot drop {root}: {e}"),
                _ => {}
            }
        }
        true
    }

    /// The owner's turn: a fresh lease to every holder that answered, every
    /// [`RENEW_AFTER`] of the lease length.
    async fn renew(&self, info: &RootInfo, holders: &[PeerId]) {
        let root = info.root;
        let due = {
            let watches = self.watches.lock().expect("watches");
            let renewed = watches.get(&root).and_then(|w| w.renewed);
            renewed.is_none_or(|at| at.elapsed() >= self.config.lease.mul_f64(RENEW_AFTER))
        };
        if !due || holders.is_empty() {
            return;
        }
        let Some(offer) = self.own_offer(info).await else { return };
        let mut renewed = 0;
        for peer in holders {
            match replicas::rpc_replicate(&self.net, *peer, &offer).await {
                Ok(_) => renewed += 1,
                Err(e) => tracing::debug!("{peer} did not renew its copy of {root}: {e}"),
            }
        }
        tracing::debug!("renewed the lease on {root} with {renewed} holders");
        let mut watches = self.watches.lock().expect("watches");
        watches.entry(root).or_default().renewed = Some(Instant::now());
    }

    /// An offer of `info` under a new lease of this node's own.
    async fn own_offer(&self, info: &RootInfo) -> Option<Offer> {
        let root = info.root;
        let lease = Lease::issue(&self.identity, root, info.target(), self.config.lease).ok()?;
        self.offer(root, lease).await
    }

    async fn offer(&self, root: Cid, lease: Lease) -> Option<Offer> {
        match self.store.run(move |store| store.dag_stats(&root)).await {
            Ok((blocks, bytes)) => Some(Offer { root, blocks, bytes, lease }),
            Err(e) => {
                tracing::warn!("cannot offer {root}: {e}");
                None
            }
        }
    }

    /// Places `missing` new copies of the root on the closest peers that do
    /// not hold it, each under every owner's lease as it is (this node's
    /// own content under a new lease of its own).
    async fn repair(&self, info: &RootInfo, holders: &[PeerId], missing: usize) {
        let root = info.root;
        let now = lease::unix_secs();
        let mut leases: Vec<Lease> = info
            .leases
            .iter()
            .filter(|l| l.check(&root, now).is_ok() && l.ends(self.config.lease) > now)
            .cloned()
            .collect();
        if info.local {
            match Lease::issue(&self.identity, root, info.target(), self.config.lease) {
                Ok(own) => leases.insert(0, own),
                Err(e) => tracing::warn!("cannot sign a lease for {root}: {e}"),
            }
        }
        let Some(first) = leases.first().cloned() else {
            tracing::debug!("{root} is short of copies, but no lease can be handed on");
            return;
        };
        let Some(offer) = self.offer(root, first).await else { return };
        let report = |peer: &PeerId, result: &Result<u64, String>| {
            if let Err(e) = result {
                tracing::debug!("{peer} did not take a copy of {root}: {e}");
            }
        };
        let placed =
            replicas::replicate_avoiding(&self.net, offer.clone(), missing, holders, &report).await;
        // The other owners' leases go to the new holders too (the blocks are
        // there: each is answered at once).
        for lease in leases.iter().skip(1) {
            let offer = Offer { lease: lease.clone(), ..offer.clone() };
            for peer in &placed.confirmed {
                if let Err(e) = replicas::rpc_replicate(&self.net, *peer, &offer).await {
                    tracing::debug!("{peer} did not take {}'s lease on {root}: {e}", lease.owner());
                }
            }
        }
        let count = holders.len() + 1;
        let target = count + missing;
        let new: Vec<String> = placed.confirmed.iter().map(ToString::to_string).collect();
        tracing::info!(
            "repaired {root}: {count} of {target} copies answered, {} new ({}){}",
            placed.confirmed.len(),
            if new.is_empty() { "none".into() } else { new.join(", ") },
            if placed.failed.is_empty() {
                String::new()
            } else {
                format!(", {} peers declined", placed.failed.len())
            }
        );
        if let Err(e) = self.store.run(move |store| store.record_repair(&root)).await {
            tracing::warn!("cannot record the repair of {root}: {e}");
        }
        let mut watches = self.watches.lock().expect("watches");
        let watch = watches.entry(root).or_default();
        watch.short_rounds = 0;
        watch.holders.extend(placed.confirmed);
    }
}
