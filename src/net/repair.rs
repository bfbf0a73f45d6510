//! Repair: keeping every pinned root at the replica count its owner asked
//! for, as holders come and go.
//!
//! Every repair interval (± [`REPAIR_JITTER`]), a node that listens looks
//! at each root it holds pinned whose target is two copies or more:
//!
//! 1. leases that ran out are dropped, with the copies no owner holds any
//!    longer ([`Store::expire_leases`]; this also runs every
//!    [`LEASE_CHECK`], so a copy goes within that of its lease's end);
//! 2. it counts the peers that hold the root pinned *now*: the root's DHT
//!    providers, the holders it saw last time and the connected peers
//!    closest to the root are asked `Holds` (provider records outlive their
//!    nodes, so a record alone counts for nothing), and those that say yes
//!    are challenged to prove it (`replicas::prove`): only proven holders
//!    count, and one that fails is left out for that root for an hour;
//! 3. the owner (the node whose own content it is) renews its lease on
//!    each proven holder, every quarter of `--lease`;
//! 4. a holder short of copies looks for the delete records of the owners
//!    that placed its copy (a deleted root is dropped, never repaired);
//! 5. when fewer than the target are proven for [`SHORT_ROUNDS`] rounds in
//!    a row (a node that blinks causes no repair), the proven holder
//!    XOR-closest to the root repairs, or, a round later each, the next
//!    ones (a holder that keeps the blocks but does not do its part delays
//!    a repair by a round, no more): it asks new peers, placed as at a put
//!    (`replicas::candidates`), to replicate it, handing on the leases of
//!    the owners that placed the copy as they are: a repaired copy belongs
//!    to the original owners, until the same expiry. Only the owner makes
//!    a new lease.
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
/// How often leases that ended are dropped (a copy held under a lease that
/// ended goes within this long).
pub const LEASE_CHECK: Duration = Duration::from_secs(30);
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

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A root's health as a count of its holders sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub root: Cid,
    /// Copies wanted (0: no holder answered with a target).
    pub target: u8,
    /// The peers that proved they hold it pinned, this node first if it
    /// does.
    pub holders: Vec<PeerId>,
    /// The peers that said they hold it and did not prove it, with why.
    pub unproven: Vec<(PeerId, String)>,
    /// Unix seconds of the last repair of the root any holder that
    /// answered made; 0 if none.
    pub last_repair: u64,
    /// Unix seconds of this node's last round over the root; 0 if none.
    pub last_check: u64,
}

/// The holders of a root other than this node, as a round counts them.
#[derive(Debug, Default)]
struct Holders {
    /// Those that proved they hold it.
    proven: Vec<PeerId>,
    /// Those that said so and did not prove it, with why.
    unproven: Vec<(PeerId, String)>,
    /// The most copies, and the latest repair, the proven ones report.
    target: u8,
    repaired: u64,
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
        // Leases end within [`LEASE_CHECK`] of their end, not at a round.
        let expiry = {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(LEASE_CHECK) => me.expire_leases().await,
                        _ = me.net.stopped() => return,
                    }
                }
            })
        };
        let _expiry = AbortOnDrop(expiry);
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

    /// The peers other than this node that hold `root` pinned now, as
    /// they proved (see [`Holders`]). Asks the root's DHT providers,
    /// `known` holders and the connected peers XOR-closest to the root,
    /// [`MAX_PROBED`] at most, `Holds`; then challenges those that say yes
    /// to prove it (`replicas::prove`), with blocks of this node's copy or,
    /// on a node without one, fetched from them and checked. A peer that
    /// failed a proof for the root lately is not asked.
    async fn live_holders(&self, root: Cid, known: &[PeerId]) -> Holders {
        let local = self.net.local_peer_id();
        let mut candidates: Vec<PeerId> = known.to_vec();
        discover::dht_providers(&self.net, root, &Default::default(), |peer| candidates.push(peer))
            .await;
        candidates.extend(discover::closest_connected(&self.net, root).await);
        let mut seen = HashSet::new();
        candidates.retain(|p| *p != local && seen.insert(*p));
        // A peer that failed a proof for the root lately is not asked again.
        let distrust = self.net.distrust();
        let (distrusted, mut candidates): (Vec<PeerId>, Vec<PeerId>) =
            candidates.into_iter().partition(|p| distrust.distrusts(&root, p));
        candidates.truncate(MAX_PROBED);
        let net = &self.net;
        let probes = candidates.into_iter().map(|peer| async move {
            (peer, replicas::rpc_holds(net, peer, root, PROBE_TIMEOUT).await)
        });
        let answers: Vec<_> =
            futures::stream::iter(probes).buffer_unordered(PROBES_AT_ONCE).collect().await;
        let claims: Vec<(PeerId, replicas::Holding)> = answers
            .into_iter()
            .filter_map(|(peer, answer)| answer.filter(|h| h.pinned).map(|h| (peer, h)))
            .collect();
        let claimed: Vec<PeerId> = claims.iter().map(|(p, _)| *p).collect();
        let fetch = |cid| {
            let (store, net, from) = (self.store.clone(), self.net.clone(), claimed.clone());
            async move { replicas::fetch_checked(&store, &net, root, cid, &from).await }
        };
        let (proven, mut unproven) = replicas::prove(&self.net, root, &claimed, fetch).await;
        let minutes = crate::net::ledger::DISTRUST_FOR.as_secs() / 60;
        let lately = format!("failed a proof of it within the last {minutes} min");
        unproven.extend(distrusted.into_iter().map(|p| (p, lately.clone())));
        let (mut target, mut repaired) = (0, 0);
        for (_, h) in claims.iter().filter(|(p, _)| proven.contains(p)) {
            target = target.max(h.replicas);
            repaired = repaired.max(h.repaired);
        }
        Holders { proven, unproven, target, repaired }
    }

    /// Counts the holders of `root` now (see [`live_holders`]).
    pub async fn health(&self, root: Cid) -> Health {
        let (known, last_check) = match self.watches.lock().expect("watches").get(&root) {
            Some(w) => (w.holders.clone(), w.checked),
            None => (Vec::new(), 0),
        };
        let live = self.live_holders(root, &known).await;
        let (mut holders, mut target, mut last_repair) = (live.proven, live.target, live.repaired);
        let info = self.store.run(move |store| Ok(store.root_info(&root))).await;
        if let Some(info) = info.ok().flatten().filter(RootInfo::pinned) {
            holders.insert(0, self.net.local_peer_id());
            target = target.max(info.target());
            last_repair = last_repair.max(info.repaired);
        }
        Health { root, target, holders, unproven: live.unproven, last_repair, last_check }
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
        let holders = self.live_holders(root, &known).await.proven;
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
        // Copies that went may have gone on their owner's delete: each
        // holder short of copies looks (a holder the owner's `Delete` did
        // not reach drops its copy within a round or two).
        if count < target && !self.drop_deleted(&info).await {
            return;
        }
        if short_rounds < SHORT_ROUNDS {
            return;
        }
        // The proven holder closest to the root repairs; should it not (it
        // left, or it holds the blocks but does not do its part), the next
        // one does a round later, and so on.
        let key = KBucketKey::new(root.to_bytes());
        let mut ranked: Vec<PeerId> = holders.iter().chain([&local]).copied().collect();
        ranked.sort_by_key(|p| key.distance(&KBucketKey::from(*p)));
        let rank = ranked.iter().position(|p| *p == local).unwrap_or(0) as u32;
        if short_rounds < SHORT_ROUNDS + rank {
            tracing::debug!("{root}: {count} of {target} copies; {} repairs", ranked[0]);
            return;
        }
        self.repair(&info, &holders, target - count).await;
    }

    /// Looks for each owner's delete record of a replica; drops the pins
    /// of the owners that deleted it. Whether the root is still held.
    async fn drop_deleted(&self, info: &RootInfo) -> bool {
        let root = info.root;
        // The owners that placed the copy: a joined owner's pin goes with
        // theirs (its own `Delete` drops it at once).
        let placers = info.owners.iter().filter(|o| !info.joined.contains(o));
        for owner in placers {
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
        // The leases of the owners that placed the copy: a joined owner's
        // asks for no copies and is not handed on.
        let mut leases: Vec<Lease> = info
            .placing_leases()
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
        let placed = replicas::replicate_avoiding(
            &self.net,
            &self.store,
            offer.clone(),
            missing,
            holders,
            &report,
        )
        .await;
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
