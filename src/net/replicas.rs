//! Replicas and their deletion: both sides of `Replicate` and `Delete`.
//!
//! Outbound: after a put, [`replicate`] asks the peers closest (XOR) to the
//! root CID to hold a replica ([`rpc_replicate`]) and counts the
//! confirmations; [`delete_remote`] asks every holder of a root to drop the
//! replica it holds for us ([`rpc_delete`]).
//! Inbound: [`ReplicaService::handle_replicate`] pulls the whole DAG (from
//! the requester and any other provider, [`pull_dag`]), verifies every
//! block, pins the root with the requester — as authenticated by Noise — as
//! owner, provides it, then answers; [`ReplicaService::handle_delete`]
//! drops a replica only for its owner.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::{PeerId, kad::KBucketKey, request_response::ResponseChannel};
use tokio::sync::Semaphore;

use crate::{
    block::DAG_CBOR,
    dag::{Frontier, Node},
    error::{DagLimit, Error, Result},
    export::BlockSource,
    lease::{self, DeleteRecord, Lease, RecordError},
    net::{
        codec::{ErrorCode, Request, Response},
        discover,
        event_loop::{NetHandle, RequestError},
        get::NetSource,
        providers::ProviderSet,
    },
    store::{self, AsyncStore, Durability, PinKind},
};

/// How long a put keeps asking a peer to finish a replica. A `Replicate`
/// whose stream times out (30 s) is sent again; the responder joins the
/// replication already running (the request is idempotent).
pub const REPLICATE_DEADLINE: Duration = Duration::from_secs(600);
/// Deadline of one `Delete`.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
/// Replications running or waiting for a slot; beyond this a new
/// `Replicate` is answered `Busy`.
pub const MAX_PENDING_REPLICATIONS: usize = 64;
/// Threads that pull a DAG during a replication.
pub const PULL_WORKERS: usize = 16;
/// Replications this node runs at once; more wait their turn.
pub const MAX_CONCURRENT_REPLICATIONS: usize = 4;

/// Candidates for `root`'s replicas, closest (XOR) first.
pub async fn candidates(net: &NetHandle, root: &Cid) -> Vec<PeerId> {
    let key = root.to_bytes();
    let mut peers = net.closest_peers(key.clone()).await;
    // Small networks: connected peers the DHT did not report.
    peers.extend(net.peers().await.into_iter().map(|p| p.peer_id));
    let blocked = net.blocked_peers().await;
    let local = net.local_peer_id();
    peers.retain(|p| *p != local && !blocked.contains(p));
    let target = KBucketKey::new(key);
    peers.sort_by_key(|p| target.distance(&KBucketKey::from(*p)));
    peers.dedup();
    peers
}

/// What a put or a repair asks other nodes to hold: a root, what it
/// takes, and the owner's lease (who owns it, how many copies it wants on
/// the network, until when).
#[derive(Debug, Clone)]
pub struct Offer {
    pub root: Cid,
    /// Distinct blocks of the DAG, the root included.
    pub blocks: u64,
    /// Bytes of those blocks.
    pub bytes: u64,
    pub lease: Lease,
}

/// How the replicas of a put went.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    /// Peers that confirmed a replica.
    pub confirmed: Vec<PeerId>,
    /// Peers that did not, and why.
    pub failed: Vec<(PeerId, String)>,
}

/// Asks peers closest to the root to replicate it until `want` confirm or
/// the candidates run out; a peer that refuses, is busy or fails is
/// replaced by the next closest.
pub async fn replicate(
    net: &NetHandle,
    offer: Offer,
    want: usize,
    on_copy: &(dyn Fn(&PeerId, &Result<u64, String>) + Sync),
) -> Placed {
    replicate_avoiding(net, offer, want, &[], on_copy).await
}

/// [`replicate`], never asking the peers in `holders` (a repair: they hold
/// a copy already).
pub async fn replicate_avoiding(
    net: &NetHandle,
    offer: Offer,
    want: usize,
    holders: &[PeerId],
    on_copy: &(dyn Fn(&PeerId, &Result<u64, String>) + Sync),
) -> Placed {
    let mut placed = Placed::default();
    if want == 0 {
        return placed;
    }
    let root = offer.root;
    let mut candidates = candidates(net, &root).await;
    candidates.retain(|p| !holders.contains(p));
    let mut candidates = candidates.into_iter();
    let mut running = futures::stream::FuturesUnordered::new();
    let ask = |peer: PeerId| {
        let (net, offer) = (net.clone(), offer.clone());
        async move { (peer, rpc_replicate(&net, peer, &offer).await) }
    };
    for peer in candidates.by_ref().take(want) {
        running.push(ask(peer));
    }
    use futures::StreamExt;
    while let Some((peer, result)) = running.next().await {
        on_copy(&peer, &result);
        match result {
            Ok(blocks) => {
                tracing::info!("{peer} holds a replica of {root} ({blocks} blocks)");
                placed.confirmed.push(peer);
            }
            Err(reason) => {
                tracing::warn!("{peer} did not replicate {root}: {reason}");
                placed.failed.push((peer, reason));
                if placed.confirmed.len() + running.len() < want
                    && let Some(next) = candidates.next()
                {
                    running.push(ask(next));
                }
            }
        }
    }
    placed
}

/// One peer's replica: `Replicate`, re-sent after each stream timeout until
/// [`REPLICATE_DEADLINE`].
pub async fn rpc_replicate(net: &NetHandle, peer: PeerId, offer: &Offer) -> Result<u64, String> {
    let Offer { root, blocks, bytes, .. } = *offer;
    let lease = offer.lease.encode();
    let started = Instant::now();
    loop {
        let left = REPLICATE_DEADLINE.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err("no confirmation before the deadline".into());
        }
        let request = Request::Replicate { root, blocks, bytes, lease: lease.clone() };
        match net.request(peer, request, left).await {
            Ok(Response::Replicated { blocks }) => return Ok(blocks),
            Ok(Response::Error { code, message }) => return Err(format!("{code}: {message}")),
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(RequestError::Timeout { .. }) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// What a peer says of a root it is asked `Holds` about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    pub pinned: bool,
    pub replicas: u8,
    pub repaired: u64,
}

/// Asks `peer` whether it holds `root` pinned; `None` if it does not answer
/// within `timeout` (or answers something else).
pub async fn rpc_holds(
    net: &NetHandle,
    peer: PeerId,
    root: Cid,
    timeout: Duration,
) -> Option<Holding> {
    match net.request(peer, Request::Holds { root }, timeout).await {
        Ok(Response::Holding { pinned, replicas, repaired }) => {
            Some(Holding { pinned, replicas, repaired })
        }
        _ => None,
    }
}

/// How long a lookup of a delete record may take.
pub const DELETE_LOOKUP: Duration = Duration::from_secs(10);

/// `owner`'s delete record for `root`, if the DHT holds a valid one (any
/// other answer is ignored). Nothing if none is found within
/// [`DELETE_LOOKUP`].
pub async fn find_delete(net: &NetHandle, root: Cid, owner: PeerId) -> Option<DeleteRecord> {
    let key = DeleteRecord::dht_key(&root, &owner);
    let mut found = net.get_record(key.clone()).await;
    let lookup = async {
        while let Some(value) = found.recv().await {
            match DeleteRecord::from_dht(&key, &value, lease::unix_secs()) {
                Ok(record) => return Some(record),
                Err(e) => tracing::debug!("ignored a delete record for {root}: {e}"),
            }
        }
        None
    };
    tokio::time::timeout(DELETE_LOOKUP, lookup).await.ok().flatten()
}

/// Asks every holder of `root` but us to drop the replica it holds for us.
/// Returns the peers that did, and those that refused with their reasons.
pub async fn delete_remote(net: &NetHandle, root: Cid) -> (Vec<PeerId>, Vec<(PeerId, String)>) {
    let holders = discover::find_holders(net, root).await;
    let requests = holders.into_iter().map(|peer| {
        let net = net.clone();
        async move { (peer, rpc_delete(&net, peer, root).await) }
    });
    let (mut deleted, mut refused) = (Vec::new(), Vec::new());
    for (peer, result) in futures::future::join_all(requests).await {
        match result {
            Ok(()) => deleted.push(peer),
            Err(reason) => refused.push((peer, reason)),
        }
    }
    (deleted, refused)
}

/// Asks `peer` to drop the replica of `root` it holds for us.
pub async fn rpc_delete(net: &NetHandle, peer: PeerId, root: Cid) -> Result<(), String> {
    match net.request(peer, Request::Delete { root }, DELETE_TIMEOUT).await {
        Ok(Response::Deleted) => Ok(()),
        Ok(Response::Error { code, message }) => Err(format!("{code}: {message}")),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Who may ask this node to hold replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// Any peer.
    Any,
    /// No peer: this node holds nothing for others.
    Nobody,
    /// Only these peers.
    Peers(HashSet<PeerId>),
}

impl std::str::FromStr for Accept {
    type Err = String;

    /// `any`, `none`, or a comma-separated list of peer ids.
    fn from_str(s: &str) -> Result<Accept, String> {
        match s.trim() {
            "any" => Ok(Accept::Any),
            "none" => Ok(Accept::Nobody),
            list => list
                .split(',')
                .map(|p| p.trim().parse::<PeerId>().map_err(|e| format!("`{p}`: {e}")))
                .collect::<Result<HashSet<_>, _>>()
                .map(Accept::Peers)
                .map_err(|e| format!("not `any`, `none` or a list of peer ids: {e}")),
        }
    }
}

/// What this node holds for others, and for whom.
#[derive(Debug, Clone)]
pub struct ReplicaPolicy {
    /// Bytes of replicas held for others (and reserved for pulls under way)
    /// at most.
    pub quota: u64,
    pub accept: Accept,
    /// The longest this node holds a replica without its owner renewing
    /// the lease (a lease asking for longer ends this long after it was
    /// issued).
    pub longest_lease: Duration,
}

/// Replications one peer may have running or waiting here at once.
pub const MAX_REPLICATIONS_PER_PEER: usize = 2;
/// Requests that may wait for one pull besides the one that started it
/// (`Replicate`s of the same root, from its asker sent again after a
/// stream timeout, or from other owners); more are answered `Busy`. Each
/// holds an open stream and, once the pull ends, costs a pin of its lease.
pub const MAX_JOINED_PER_PULL: usize = 8;
/// Requests one peer may have waiting for pulls it did not start, over
/// all of them; more are answered `Busy`. A requester that sends its
/// `Replicate` again after a stream timeout keeps one: the request whose
/// stream closed is dropped first.
pub const MAX_JOINED_PER_PEER: usize = 2;
/// A pull may take this long, plus the time its declared bytes take at
/// [`PULL_MIN_RATE`]; then it stops.
pub const PULL_GRACE: Duration = Duration::from_secs(120);
/// Bytes per second a pull is allowed at least.
pub const PULL_MIN_RATE: u64 = 1024 * 1024;
/// How long a pull goes on after its asker disconnected.
pub const ASKER_GONE: Duration = Duration::from_secs(20);
/// How often a running pull checks its deadline and its asker.
const PULL_WATCH: Duration = Duration::from_secs(1);

/// The responder of the replica messages; cheap to clone.
#[derive(Clone)]
pub struct ReplicaService {
    store: AsyncStore,
    net: NetHandle,
    policy: Arc<ReplicaPolicy>,
    replications: Arc<Semaphore>,
    state: Arc<tokio::sync::Mutex<Replications>>,
}

/// Replications running or waiting here.
#[derive(Default)]
struct Replications {
    /// Per root: the request that started its pull, and those that joined.
    waiting: HashMap<Cid, Pull>,
    /// Per asker: its replications running or waiting.
    per_peer: HashMap<PeerId, usize>,
    /// Bytes reserved for pulls under way.
    reserved: u64,
}

/// The requests waiting for one pull.
struct Pull {
    /// The request that started it; its lease is pinned by the pull.
    first: ResponseChannel<Response>,
    /// Requests that came while it ran (at most [`MAX_JOINED_PER_PULL`]);
    /// each lease is pinned when the pull succeeds.
    joined: Vec<Joined>,
}

/// A `Replicate` that joined a pull already running.
struct Joined {
    peer: PeerId,
    lease: Lease,
    channel: ResponseChannel<Response>,
}

/// What became of a request for a root that may be pulled already.
enum Join {
    /// No pull of the root runs: the request is handed back.
    NoPull(ResponseChannel<Response>),
    /// It waits for the pull running.
    Joined,
    /// The pull or the peer has as many requests waiting as it may.
    Refused(ResponseChannel<Response>, Response),
}

impl Replications {
    /// Joins the pull of `root` running, if there is one (see [`Join`]). Requests whose streams closed
    /// (timed out at the requester, which may send again) are dropped
    /// first: they hold nothing at the event loop any longer, and must not
    /// hold a place here.
    fn join(
        &mut self,
        root: Cid,
        peer: PeerId,
        lease: Lease,
        channel: ResponseChannel<Response>,
    ) -> Join {
        if !self.waiting.contains_key(&root) {
            return Join::NoPull(channel);
        }
        for pull in self.waiting.values_mut() {
            pull.joined.retain(|j| j.channel.is_open());
        }
        let mine = self.waiting.values().flat_map(|p| &p.joined).filter(|j| j.peer == peer);
        if mine.count() >= MAX_JOINED_PER_PEER {
            let busy = format!(
                "too many of your requests wait for replications here (at most \
                 {MAX_JOINED_PER_PEER})"
            );
            return Join::Refused(channel, Response::error(ErrorCode::Busy, busy));
        }
        let pull = self.waiting.get_mut(&root).expect("checked above");
        if pull.joined.len() >= MAX_JOINED_PER_PULL {
            let busy = format!(
                "too many requests wait for the replication of {root} (at most \
                 {MAX_JOINED_PER_PULL})"
            );
            return Join::Refused(channel, Response::error(ErrorCode::Busy, busy));
        }
        pull.joined.push(Joined { peer, lease, channel });
        Join::Joined
    }
}

impl ReplicaService {
    pub fn new(store: crate::store::Store, net: NetHandle, policy: ReplicaPolicy) -> Self {
        ReplicaService {
            store: AsyncStore::new(store),
            net,
            policy: Arc::new(policy),
            replications: Arc::new(Semaphore::new(MAX_CONCURRENT_REPLICATIONS)),
            state: Arc::default(),
        }
    }

    /// Answers a `Replicate` from `peer` whose lease is still encoded.
    pub async fn handle_replicate_request(
        self,
        peer: PeerId,
        (root, blocks, bytes, lease): (Cid, u64, u64, Vec<u8>),
        channel: ResponseChannel<Response>,
    ) {
        match Lease::decode(&lease) {
            Ok(lease) => {
                self.handle_replicate(peer, Offer { root, blocks, bytes, lease }, channel).await
            }
            Err(e) => {
                tracing::info!("refused to replicate {root} for {peer}: its lease: {e}");
                let refusal = Response::error(ErrorCode::Refused, format!("the lease: {e}"));
                self.net.respond(channel, refusal).await
            }
        }
    }

    /// Answers a `Replicate` from `peer`: refused unless the policy accepts
    /// the peer, the lease is valid and the declared size fits the quota;
    /// refused too when it comes from another peer than the owner (a
    /// repair) and the owner's delete record is in the DHT. At once if the
    /// replica is already here (the lease is kept if newer: a renewal);
    /// else after pulling the DAG (joining a replication of the same root
    /// already running).
    pub async fn handle_replicate(
        self,
        peer: PeerId,
        offer: Offer,
        channel: ResponseChannel<Response>,
    ) {
        let root = offer.root;
        if let Err(refusal) = self.admit(peer, &offer) {
            tracing::info!("refused to replicate {root} for {peer}: {refusal:?}");
            return self.net.respond(channel, refusal).await;
        }
        let owner = offer.lease.owner();
        if owner != peer
            && let Some(deleted) = find_delete(&self.net, root, owner).await
        {
            tracing::info!(
                "refused to repair {root} for {peer}: its owner {owner} deleted it at {}",
                deleted.deleted
            );
            let refusal = Response::error(ErrorCode::Refused, "its owner deleted it");
            return self.net.respond(channel, refusal).await;
        }
        let held = self
            .store
            .run(move |store| {
                let info = store.root_info(&root);
                Ok(info.is_some_and(|i| i.kind == PinKind::Pinned && store.is_complete(&root)))
            })
            .await
            .unwrap_or(false);
        if held {
            // Already pinned here: one more owner, or a newer lease, costs
            // no space.
            let lease = offer.lease.clone();
            let pinned = self
                .store
                .run(move |store| {
                    let _guard = store.guard();
                    store.pin_leased(&root, lease).and_then(|_| store.dag_stats(&root))
                })
                .await;
            let response = match pinned {
                Ok((blocks, _)) => Response::Replicated { blocks },
                Err(e) => Response::error(ErrorCode::Internal, told_to_peers(&e)),
            };
            return self.net.respond(channel, response).await;
        }
        {
            let mut state = self.state.lock().await;
            let channel = match state.join(root, peer, offer.lease.clone(), channel) {
                Join::Joined => return,
                Join::Refused(channel, refusal) => {
                    drop(state);
                    tracing::info!("refused to join the pull of {root} for {peer}: {refusal:?}");
                    return self.net.respond(channel, refusal).await;
                }
                Join::NoPull(channel) => channel,
            };
            let mine = state.per_peer.get(&peer).copied().unwrap_or(0);
            let refusal = if state.waiting.len() >= MAX_PENDING_REPLICATIONS {
                Some(Response::error(ErrorCode::Busy, "too many replications pending"))
            } else if mine >= MAX_REPLICATIONS_PER_PEER {
                Some(Response::error(ErrorCode::Busy, "too many replications pending for you"))
            } else {
                // Read with the state locked (an async lock: no runtime
                // worker waits), so that a pull that ends meanwhile is
                // counted as held or as reserved, never as neither.
                match self.store.run(|store| Ok(store.held_for_others())).await {
                    Ok(held) => self.reserve(&mut state, held, offer.bytes).err(),
                    Err(e) => Some(Response::error(ErrorCode::Internal, told_to_peers(&e))),
                }
            };
            if let Some(refusal) = refusal {
                drop(state);
                tracing::info!("refused to replicate {root} for {peer}: {refusal:?}");
                return self.net.respond(channel, refusal).await;
            }
            state.waiting.insert(root, Pull { first: channel, joined: Vec::new() });
            *state.per_peer.entry(peer).or_default() += 1;
        }
        let reserved = offer.bytes;
        let response = match self.replications.clone().acquire_owned().await {
            Ok(_permit) => self.pull_and_pin(peer, offer).await,
            Err(_) => Response::error(ErrorCode::Busy, "shutting down"),
        };
        let pull = {
            let mut state = self.state.lock().await;
            state.reserved -= reserved;
            if let Some(n) = state.per_peer.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    state.per_peer.remove(&peer);
                }
            }
            state.waiting.remove(&root)
        };
        let Some(Pull { first, joined }) = pull else { return };
        self.net.respond(first, response.clone()).await;
        self.answer_joined(root, response, joined).await;
    }

    /// Answers the requests that joined a pull. When it succeeded, each
    /// one's lease is pinned first: an owner that joined holds the replica
    /// as the first asker's owner does (a lease that cannot be pinned is
    /// answered with the reason); when it failed, each gets its answer.
    async fn answer_joined(&self, root: Cid, response: Response, joined: Vec<Joined>) {
        if joined.is_empty() {
            return;
        }
        let answers: Vec<Response> = if matches!(response, Response::Replicated { .. }) {
            let leases: Vec<Lease> = joined.iter().map(|j| j.lease.clone()).collect();
            let done = response.clone();
            let pinned = self
                .store
                .run(move |store| {
                    let _guard = store.guard();
                    let pin = |lease| match store.pin_leased(&root, lease) {
                        Ok(_) => done.clone(),
                        Err(e) => Response::error(ErrorCode::Internal, told_to_peers(&e)),
                    };
                    Ok(leases.into_iter().map(pin).collect())
                })
                .await;
            pinned.unwrap_or_else(|e| {
                vec![Response::error(ErrorCode::Internal, told_to_peers(&e)); joined.len()]
            })
        } else {
            vec![response.clone(); joined.len()]
        };
        for (joined, answer) in joined.into_iter().zip(answers) {
            if let Response::Error { message, .. } = &answer {
                tracing::info!("a pull of {root} that {} joined: {message}", joined.peer);
            }
            self.net.respond(joined.channel, answer).await;
        }
    }

    /// The checks that need no disk: who asks, and whether the request
    /// makes sense.
    fn admit(&self, peer: PeerId, offer: &Offer) -> Result<(), Response> {
        let refused = |message: String| Err(Response::error(ErrorCode::Refused, message));
        match &self.policy.accept {
            Accept::Any => {}
            Accept::Nobody => return refused("this node holds no replicas for others".into()),
            Accept::Peers(peers) if !peers.contains(&peer) => {
                return refused(format!("replicas are not accepted from {peer}"));
            }
            Accept::Peers(_) => {}
        }
        if offer.root.codec() != DAG_CBOR {
            return Err(Response::error(ErrorCode::BadRequest, "a root must be a dag-cbor block"));
        }
        if offer.blocks == 0 {
            return Err(Response::error(ErrorCode::BadRequest, "a replica has at least one block"));
        }
        let now = lease::unix_secs();
        match offer.lease.check(&offer.root, now) {
            Err(RecordError::OtherRoot) => {
                Err(Response::error(ErrorCode::BadRequest, "the lease is for another root"))
            }
            Err(e) => refused(format!("the lease: {e}")),
            Ok(()) if offer.lease.ends(self.policy.longest_lease) <= now => {
                refused("the lease ran out: it is older than this node holds copies".into())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Reserves `bytes` against the quota, of which `held` is taken by
    /// replicas held already, or says why not.
    fn reserve(&self, state: &mut Replications, held: u64, bytes: u64) -> Result<(), Response> {
        let used = held.saturating_add(state.reserved);
        if used.saturating_add(bytes) > self.policy.quota {
            return Err(Response::error(
                ErrorCode::Refused,
                format!(
                    "over quota: asked to hold {bytes} bytes, {} free of the {} this node \
                     holds for others",
                    self.policy.quota.saturating_sub(used),
                    self.policy.quota
                ),
            ));
        }
        state.reserved += bytes;
        Ok(())
    }

    async fn pull_and_pin(&self, peer: PeerId, offer: Offer) -> Response {
        let Offer { root, blocks: max_blocks, bytes: max_bytes, lease } = offer;
        let owner = lease.owner();
        let providers = ProviderSet::new(root, true);
        // The asker is a provider before the pull starts (the discovery task
        // adds it too, later): the root is not probed for elsewhere.
        providers.add(peer);
        let discovery =
            tokio::spawn(discover::discover(self.net.clone(), providers.clone(), vec![peer]));
        let cancel = Arc::new(AtomicBool::new(false));
        let watch = tokio::spawn(watch_pull(self.net.clone(), peer, max_bytes, cancel.clone()));
        let (store, net, rt) =
            (self.store.blocking().clone(), self.net.clone(), tokio::runtime::Handle::current());
        let pulled = store::run_blocking("a replica pull", move || -> Result<u64> {
            let source =
                NetSource::new(store.clone(), net, rt, providers, Durability::Synced, true)
                    .with_limits(max_bytes, cancel);
            let blocks = pull_dag(&source, &root, max_blocks);
            source.commit()?;
            let blocks = blocks?;
            // The writer's guard still covers every block while we pin.
            let (_, bytes) = store.dag_stats(&root)?;
            if bytes > max_bytes {
                return Err(Error::Limit { root, limit: DagLimit::Bytes(max_bytes) });
            }
            store.pin_leased(&root, lease)?;
            source.finish()?;
            Ok(blocks)
        })
        .await;
        discovery.abort();
        watch.abort();
        match pulled {
            Ok(blocks) => {
                self.net.provide(root).await;
                if owner == peer {
                    tracing::info!("replicated {root} for {peer} ({blocks} blocks)");
                } else {
                    tracing::info!(
                        "replicated {root} for {owner}, asked by {peer} ({blocks} blocks)"
                    );
                }
                Response::Replicated { blocks }
            }
            Err(e) => {
                tracing::warn!("cannot replicate {root} for {peer}: {e}");
                // What the pull stored belongs to no root: collect it.
                self.store.blocking().request_gc();
                let code = match e {
                    Error::NoProviders { .. } | Error::Missing { .. } => ErrorCode::NotFound,
                    Error::NodeStopped => ErrorCode::Busy,
                    Error::Limit { .. } => ErrorCode::Refused,
                    Error::Cancelled => ErrorCode::Busy,
                    Error::DiskFull { .. } => ErrorCode::Refused,
                    _ => ErrorCode::Internal,
                };
                let message = match e {
                    Error::Limit { .. } => format!("{e}: more than declared"),
                    Error::Cancelled => {
                        "the pull stopped: past its deadline or its asker left".into()
                    }
                    e => told_to_peers(&e),
                };
                Response::error(code, message)
            }
        }
    }

    /// Answers a `Delete` from `peer`: drops `peer`'s pin on a replica, and
    /// the replica with it once no other owner holds it. This node's own
    /// content and its cache are never deleted.
    pub async fn handle_delete(self, peer: PeerId, root: Cid, channel: ResponseChannel<Response>) {
        let decided = self.store.run(move |store| {
            let refused = |message: String| Err(Response::error(ErrorCode::Refused, message));
            Ok(match store.root_info(&root) {
                None => {
                    Err(Response::error(ErrorCode::NotPinned, format!("{root} is not pinned here")))
                }
                Some(info) if info.kind == PinKind::Cached => Err(Response::error(
                    ErrorCode::NotPinned,
                    format!("{root} is only cached here, not pinned for anyone"),
                )),
                Some(info) if info.owners.is_empty() => {
                    refused(format!("{root} is this node's own content"))
                }
                Some(info) => match store.release(&root, &peer) {
                    Ok(Some(removed)) => Ok(removed),
                    Ok(None) => refused(format!(
                        "only its owners may delete {root} ({})",
                        owners_list(&info.owners)
                    )),
                    Err(e) => Err(Response::error(ErrorCode::Internal, told_to_peers(&e))),
                },
            })
        });
        let response = match decided.await {
            Ok(Ok(removed)) => {
                if removed {
                    self.net.unprovide(root).await;
                    tracing::info!("deleted the replica of {root} at its owner's request");
                } else {
                    tracing::info!("dropped {peer}'s pin on {root}; others still hold it");
                }
                Response::Deleted
            }
            Ok(Err(refusal)) => {
                tracing::info!("refused a delete of {root} from {peer}: {refusal:?}");
                refusal
            }
            Err(e) => Response::error(ErrorCode::Internal, told_to_peers(&e)),
        };
        self.net.respond(channel, response).await;
    }
}

impl ReplicaService {
    /// Answers a `Holds`: whether this node holds `root` pinned (a pinned
    /// root is whole: nothing is pinned before all its blocks are here).
    pub async fn handle_holds(self, root: Cid, channel: ResponseChannel<Response>) {
        let response = match self.store.run(move |store| Ok(store.root_info(&root))).await {
            Ok(Some(info)) if info.pinned() => {
                Response::Holding { pinned: true, replicas: info.target(), repaired: info.repaired }
            }
            Ok(_) => Response::Holding { pinned: false, replicas: 0, repaired: 0 },
            Err(e) => Response::error(ErrorCode::Internal, told_to_peers(&e)),
        };
        self.net.respond(channel, response).await;
    }
}

/// Fetches every block of the DAG under `root` that the store lacks
/// (structure nodes are read for their clear links; nothing is decrypted),
/// with [`PULL_WORKERS`] threads sharing one [`Frontier`]: each distinct
/// block once, depth-limited, at most `max_blocks` of them. Blocks already
/// stored are claimed, not fetched. Returns the distinct blocks of the DAG.
pub fn pull_dag(source: &NetSource, root: &Cid, max_blocks: u64) -> Result<u64> {
    struct Work {
        frontier: Frontier,
        /// Blocks taken from the frontier and not yet done.
        busy: usize,
        failed: Option<Error>,
    }
    let work =
        Mutex::new(Work { frontier: Frontier::new(*root, max_blocks), busy: 0, failed: None });
    let cond = Condvar::new();
    std::thread::scope(|scope| {
        for _ in 0..PULL_WORKERS {
            scope.spawn(|| {
                loop {
                    let (cid, depth) = {
                        let mut w = work.lock().expect("work lock");
                        loop {
                            if w.failed.is_some() {
                                return;
                            }
                            if let Some(next) = w.frontier.pop() {
                                w.busy += 1;
                                break next;
                            }
                            if w.busy == 0 {
                                return;
                            }
                            w = cond.wait(w).expect("work lock");
                        }
                    };
                    // A panic must still mark the block done: the other
                    // workers wait for it, and the scope for them.
                    let links = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if cid.codec() == DAG_CBOR {
                            source
                                .block(&cid)
                                .and_then(|bytes| Node::decode(&cid, &bytes))
                                .map(|node| node.links)
                        } else if source.has_local(&cid) {
                            Ok(Vec::new())
                        } else {
                            source.block(&cid).map(|_| Vec::new())
                        }
                    }))
                    .unwrap_or_else(|_| Err(Error::WorkerPanicked(format!("fetching {cid}"))));
                    let mut w = work.lock().expect("work lock");
                    w.busy -= 1;
                    if let Err(e) = links.and_then(|links| w.frontier.push_links(depth, &links)) {
                        w.failed.get_or_insert(e);
                    }
                    cond.notify_all();
                }
            });
        }
    });
    let w = work.into_inner().expect("work lock");
    match w.failed {
        Some(e) => Err(e),
        None => Ok(w.frontier.seen()),
    }
}

/// Stops a pull (sets `cancel`) once it has run past its deadline, or its
/// asker has been gone for [`ASKER_GONE`].
async fn watch_pull(net: NetHandle, asker: PeerId, bytes: u64, cancel: Arc<AtomicBool>) {
    let deadline = Instant::now() + PULL_GRACE + Duration::from_secs(bytes / PULL_MIN_RATE);
    let mut last_seen = Instant::now();
    loop {
        tokio::time::sleep(PULL_WATCH).await;
        if net.peers().await.iter().any(|p| p.peer_id == asker) {
            last_seen = Instant::now();
        }
        if Instant::now() > deadline || last_seen.elapsed() > ASKER_GONE {
            cancel.store(true, Ordering::Relaxed);
            return;
        }
    }
}

/// Owners for an error message: the first few, and how many more.
fn owners_list(owners: &[PeerId]) -> String {
    const SHOWN: usize = 3;
    let mut list: Vec<String> = owners.iter().take(SHOWN).map(ToString::to_string).collect();
    if owners.len() > SHOWN {
        list.push(format!("and {} more", owners.len() - SHOWN));
    }
    list.join(", ")
}

/// What a peer is told of a local failure: the cause, without this node's
/// paths (which are nobody else's business).
fn told_to_peers(e: &Error) -> String {
    match e {
        Error::DiskFull { .. } | Error::NoSpace { .. } => "this node's disk is full".into(),
        Error::Io { .. } | Error::DamagedIndex { .. } | Error::InUse { .. } => {
            "this node cannot write to its store".into()
        }
        Error::InsecureKey { .. } | Error::Config(_) => "this node is misconfigured".into(),
        e => e.to_string(),
    }
}
