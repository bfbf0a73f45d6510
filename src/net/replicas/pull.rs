//! The inbound side of `Replicate`: admission, the quota's reservations,
//! requests joining a pull already running, and pulling the DAG.

use std::{
    collections::HashMap,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::{PeerId, request_response::ResponseChannel};

use super::{
    Accept, MAX_PENDING_REPLICATIONS, Offer, PULL_WORKERS, ReplicaService, fetch_checked,
    find_delete, prove, told_to_peers,
};
use crate::{
    block::DAG_CBOR,
    dag::{Frontier, Node},
    error::{DagLimit, Error, Result},
    export::BlockSource,
    lease::{self, Lease, RecordError},
    net::{
        codec::{ErrorCode, Response},
        event_loop::NetHandle,
        get::NetSource,
        providers::ProviderSet,
    },
    store::{self, MAX_LEASE_REPLICAS, PinKind, replica_cost},
};

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
/// A pull that brings fewer than [`STALL_BYTES`] in any [`STALL_WINDOW`]
/// stops, and its reservation is returned: an asker that declares much
/// and sends little holds a slot and quota for a window at most.
pub const STALL_WINDOW: Duration = Duration::from_secs(20);
pub const STALL_BYTES: u64 = 512 * 1024;
/// Blocks one replica may declare, at most (a 2 TiB file of 1 MiB chunks,
/// with its structure).
pub const MAX_REPLICA_BLOCKS: u64 = 1 << 21;
/// The share of `--replica-quota` one owner's replicas (held and being
/// pulled) may take, at most: a quarter.
pub const OWNER_SHARE_DIVISOR: u64 = 4;
/// Delete-record lookups one peer's `Replicate`s may have running here at
/// once; more are answered `Busy` before any lookup starts.
pub const MAX_LOOKUPS_PER_PEER: usize = 2;
/// How long a pull goes on after its asker disconnected.
pub const ASKER_GONE: Duration = Duration::from_secs(20);
/// How often a running pull checks its deadline and its asker.
const PULL_WATCH: Duration = Duration::from_secs(1);

/// Replications running or waiting here.
#[derive(Default)]
pub(super) struct Replications {
    /// Per root: the request that started its pull, and those that joined.
    waiting: HashMap<Cid, Pull>,
    /// Per asker: its replications running or waiting.
    per_peer: HashMap<PeerId, usize>,
    /// Quota reserved for pulls under way, in all and per owner.
    reserved: u64,
    reserved_for: HashMap<PeerId, u64>,
    /// Per asker: its delete-record lookups running.
    looking_up: HashMap<PeerId, usize>,
    /// When each owner last sent `Delete` for a root (Unix seconds): a
    /// `Replicate` of that owner's arriving after it with a lease issued
    /// before it (a cancelled put's request, late) is refused. At most
    /// [`DELETES_KEPT_PER_PEER`] per owner, for [`DELETES_KEPT_FOR`].
    deleted: HashMap<PeerId, Vec<(Cid, u64)>>,
}

/// Deletes remembered per owner (see `Replications::deleted`), and for how
/// long (seconds).
const DELETES_KEPT_PER_PEER: usize = 64;
const DELETES_KEPT_FOR: u64 = 600;
/// Owners whose deletes are remembered at once: past it, the owner whose
/// last delete is oldest is forgotten first.
const DELETES_KEPT_OWNERS: usize = 1024;

impl Replications {
    fn note_delete(&mut self, owner: PeerId, root: Cid, now: u64) {
        self.deleted.retain(|_, roots| {
            roots.retain(|(_, at)| at + DELETES_KEPT_FOR > now);
            !roots.is_empty()
        });
        if self.deleted.len() >= DELETES_KEPT_OWNERS && !self.deleted.contains_key(&owner) {
            let last = |roots: &Vec<(Cid, u64)>| roots.iter().map(|(_, at)| *at).max();
            let oldest = self.deleted.iter().min_by_key(|(_, roots)| last(roots)).map(|(p, _)| *p);
            if let Some(oldest) = oldest {
                self.deleted.remove(&oldest);
            }
        }
        let roots = self.deleted.entry(owner).or_default();
        roots.retain(|(r, _)| *r != root);
        if roots.len() >= DELETES_KEPT_PER_PEER {
            roots.remove(0);
        }
        roots.push((root, now));
    }

    /// Whether `owner` deleted `root` after issuing a lease at `issued`.
    fn deleted_since(&self, owner: &PeerId, root: &Cid, issued: u64) -> bool {
        let roots = self.deleted.get(owner).map(Vec::as_slice).unwrap_or_default();
        roots.iter().any(|(r, at)| r == root && *at >= issued)
    }
}

/// The requests waiting for one pull.
struct Pull {
    /// The request that started it; its lease is pinned by the pull.
    first: ResponseChannel<Response>,
    /// The owner that request's lease names, and what stops the pull:
    /// that owner's `Delete` while it runs withdraws the copy.
    owner: PeerId,
    cancel: Arc<AtomicBool>,
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
        let cancel = Arc::new(AtomicBool::new(false));
        if let Err(refusal) = self.admit(peer, &offer) {
            tracing::info!("refused to replicate {root} for {peer}: {refusal:?}");
            return self.net.respond(channel, refusal).await;
        }
        let owner = offer.lease.owner();
        // A request its owner withdrew (a cancelled put's, arriving late).
        if self.state.lock().await.deleted_since(&owner, &root, offer.lease.issued) {
            tracing::info!("refused to replicate {root} for {peer}: {owner} deleted it since");
            let refusal = Response::error(ErrorCode::Refused, "its owner deleted it");
            return self.net.respond(channel, refusal).await;
        }
        if owner != peer {
            // A repair: the owner's delete record is looked up first, within
            // the asker's share of lookups (answers are cached: see
            // `find_delete`).
            {
                let mut state = self.state.lock().await;
                let running = state.looking_up.entry(peer).or_default();
                if *running >= MAX_LOOKUPS_PER_PEER {
                    drop(state);
                    let busy = "too many of your requests wait for a lookup here";
                    return self.net.respond(channel, Response::error(ErrorCode::Busy, busy)).await;
                }
                *running += 1;
            }
            let deleted = find_delete(&self.net, root, owner).await;
            {
                let mut state = self.state.lock().await;
                if let Some(n) = state.looking_up.get_mut(&peer) {
                    *n -= 1;
                    if *n == 0 {
                        state.looking_up.remove(&peer);
                    }
                }
            }
            if let Some(deleted) = deleted {
                tracing::info!(
                    "refused to repair {root} for {peer}: its owner {owner} deleted it at {}",
                    deleted.deleted
                );
                let refusal = Response::error(ErrorCode::Refused, "its owner deleted it");
                return self.net.respond(channel, refusal).await;
            }
        }
        let held = self
            .store
            .run(move |store| {
                let info = store.root_info(&root).filter(|i| i.kind == PinKind::Pinned);
                let held = info.filter(|_| store.is_complete(&root));
                Ok(held.map(|i| (i.owners.contains(&owner), i.cost())))
            })
            .await
            .unwrap_or(None);
        if let Some((owned, cost)) = held {
            // Already pinned here: a newer lease of an owner's costs no
            // space. A new owner that proves it holds the blocks (an owner
            // sharing a convergence secret, say) stands as one that placed
            // the copy; any other new owner joins it, at the cost of its
            // share.
            let placer = !owned && owner == peer && self.proves(peer, root).await;
            let lease = offer.lease.clone();
            let share = self.owner_share();
            let pinned = self
                .store
                .run(move |store| {
                    let _guard = store.guard();
                    if !owned && store.held_for(&owner).saturating_add(cost) > share {
                        return Ok(None);
                    }
                    let pinned = store.pin_leased_as(&root, lease, placer);
                    pinned.and_then(|_| store.dag_stats(&root)).map(Some)
                })
                .await;
            let response = match pinned {
                Ok(Some((blocks, _))) => Response::Replicated { blocks },
                Ok(None) => {
                    tracing::info!("refused {owner}'s lease on {root}: its share is full");
                    share_full()
                }
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
                let held = self
                    .store
                    .run(move |store| Ok((store.held_for_others(), store.held_for(&owner))))
                    .await;
                match held {
                    Ok((held, owners)) => {
                        self.reserve(&mut state, held, owner, owners, &offer).err()
                    }
                    Err(e) => Some(Response::error(ErrorCode::Internal, told_to_peers(&e))),
                }
            };
            if let Some(refusal) = refusal {
                drop(state);
                tracing::info!("refused to replicate {root} for {peer}: {refusal:?}");
                return self.net.respond(channel, refusal).await;
            }
            let owner = offer.lease.owner();
            let pull = Pull { first: channel, owner, cancel: cancel.clone(), joined: Vec::new() };
            state.waiting.insert(root, pull);
            *state.per_peer.entry(peer).or_default() += 1;
        }
        let reserved = replica_cost(offer.blocks, offer.bytes);
        let response = match self.replications.clone().acquire_owned().await {
            Ok(_) if cancel.load(Ordering::Relaxed) => {
                Response::error(ErrorCode::Refused, "its owner deleted it")
            }
            Ok(_permit) => self.pull_and_pin(peer, offer, cancel).await,
            Err(_) => Response::error(ErrorCode::Busy, "shutting down"),
        };
        let pull = {
            let mut state = self.state.lock().await;
            state.reserved -= reserved;
            if let Some(n) = state.reserved_for.get_mut(&owner) {
                *n = n.saturating_sub(reserved);
                if *n == 0 {
                    state.reserved_for.remove(&owner);
                }
            }
            if let Some(n) = state.per_peer.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    state.per_peer.remove(&peer);
                }
            }
            state.waiting.remove(&root)
        };
        let Some(Pull { first, joined, .. }) = pull else { return };
        self.net.respond(first, response.clone()).await;
        self.answer_joined(root, response, joined).await;
    }

    /// Withdraws what `owner` asked of a pull of `root` under way (its
    /// `Delete` came while the copy was being made): the pull stops if it
    /// runs for `owner`, and a request of `owner`'s that joined it is
    /// answered at once. Returns whether there was any.
    pub(super) async fn withdraw_pull(&self, root: Cid, owner: PeerId) -> bool {
        let mut state = self.state.lock().await;
        state.note_delete(owner, root, lease::unix_secs());
        let Some(pull) = state.waiting.get_mut(&root) else { return false };
        let mut found = pull.owner == owner;
        if found {
            pull.cancel.store(true, Ordering::Relaxed);
        }
        let (withdrawn, kept): (Vec<Joined>, Vec<Joined>) =
            pull.joined.drain(..).partition(|j| j.lease.owner() == owner);
        pull.joined = kept;
        drop(state);
        found |= !withdrawn.is_empty();
        for joined in withdrawn {
            let refusal = Response::error(ErrorCode::Refused, "its owner deleted it");
            self.net.respond(joined.channel, refusal).await;
        }
        found
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
            let share = self.owner_share();
            let pinned = self
                .store
                .run(move |store| {
                    let _guard = store.guard();
                    let pin = |lease: Lease| {
                        // An owner new to the root pays its share for it.
                        let owner = lease.owner();
                        let info = store.root_info(&root);
                        let new = info.as_ref().is_none_or(|i| !i.owners.contains(&owner));
                        let cost = info.map_or(0, |i| i.cost());
                        if new && store.held_for(&owner).saturating_add(cost) > share {
                            return share_full();
                        }
                        match store.pin_leased(&root, lease) {
                            Ok(_) => done.clone(),
                            Err(e) => Response::error(ErrorCode::Internal, told_to_peers(&e)),
                        }
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
        if offer.blocks > MAX_REPLICA_BLOCKS {
            return refused(format!(
                "a replica of {} blocks: this node holds replicas of {MAX_REPLICA_BLOCKS} blocks at \
                 most",
                offer.blocks
            ));
        }
        if offer.lease.replicas > MAX_LEASE_REPLICAS {
            return refused(format!(
                "the lease asks for {} copies: this node keeps leases for {MAX_LEASE_REPLICAS} at \
                 most",
                offer.lease.replicas
            ));
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

    /// Whether `peer` proves it holds `root` (which this node holds: the
    /// challenge is checked against its own copy).
    async fn proves(&self, peer: PeerId, root: Cid) -> bool {
        let fetch = |cid| {
            let (store, net) = (self.store.clone(), self.net.clone());
            async move { fetch_checked(&store, &net, root, cid, &[]).await }
        };
        !prove(&self.net, root, &[peer], fetch).await.0.is_empty()
    }

    /// The most one owner's replicas may cost here (see
    /// [`OWNER_SHARE_DIVISOR`]).
    fn owner_share(&self) -> u64 {
        self.policy.quota / OWNER_SHARE_DIVISOR
    }

    /// Reserves what `offer` declares (its [`replica_cost`]) against the
    /// quota, of which `held` is taken by replicas held already, and
    /// against the share of its lease's `owner`, whose replicas here cost
    /// `owners`; or says why not, without telling how much is free.
    fn reserve(
        &self,
        state: &mut Replications,
        held: u64,
        owner: PeerId,
        owners: u64,
        offer: &Offer,
    ) -> Result<(), Response> {
        let cost = replica_cost(offer.blocks, offer.bytes);
        let used = held.saturating_add(state.reserved);
        if used.saturating_add(cost) > self.policy.quota {
            return Err(Response::error(
                ErrorCode::Refused,
                "over quota: this node holds no more replicas for others now",
            ));
        }
        let mine = owners.saturating_add(state.reserved_for.get(&owner).copied().unwrap_or(0));
        if mine.saturating_add(cost) > self.owner_share() {
            return Err(share_full());
        }
        state.reserved += cost;
        *state.reserved_for.entry(owner).or_default() += cost;
        Ok(())
    }

    async fn pull_and_pin(&self, peer: PeerId, offer: Offer, cancel: Arc<AtomicBool>) -> Response {
        let Offer { root, blocks: max_blocks, bytes: max_bytes, lease } = offer;
        let owner = lease.owner();
        // The copy comes from the asker and nobody else: whoever places a
        // copy serves it (a stranger cannot have others' copies pulled
        // onto a node under a lease of its own).
        let providers = ProviderSet::only(root, peer);
        let progress: Arc<AtomicU64> = Arc::default();
        let watch = tokio::spawn(watch_pull(
            self.net.clone(),
            peer,
            max_bytes,
            Arc::clone(&progress),
            cancel.clone(),
        ));
        let (faced, net, rt) =
            (self.store.clone(), self.net.clone(), tokio::runtime::Handle::current());
        let pulled = store::run_blocking("a replica pull", move || -> Result<u64> {
            let store = faced.blocking().clone();
            let source = NetSource::new(faced, net, rt, providers, store.writer(), true)
                .with_limits(max_bytes, cancel.clone())
                .with_progress(progress);
            let blocks = pull_dag(&source, &root, max_blocks);
            source.commit()?;
            let blocks = blocks?;
            // The writer's guard still covers every block while we pin.
            let (_, bytes) = store.dag_stats(&root)?;
            if bytes > max_bytes {
                return Err(Error::Limit { root, limit: DagLimit::Bytes(max_bytes) });
            }
            // Withdrawn by its owner once every block was here: not pinned.
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            store.pin_leased(&root, lease)?;
            source.finish()?;
            Ok(blocks)
        })
        .await;
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
                    Error::Limit { limit: DagLimit::Bytes(_) | DagLimit::Blocks(_), .. } => {
                        format!("{e}: more than declared")
                    }
                    Error::Limit { .. } => e.to_string(),
                    Error::Cancelled => "the pull stopped: past its deadline, stalled (less than \
                                         512 KiB in 20 s) or its asker left"
                        .into(),
                    e => told_to_peers(&e),
                };
                Response::error(code, message)
            }
        }
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

/// Stops a pull (sets `cancel`) once it has run past its deadline, brought
/// less than [`STALL_BYTES`] in the last [`STALL_WINDOW`] (`progress`
/// counts its bytes), or its asker has been gone for [`ASKER_GONE`].
async fn watch_pull(
    net: NetHandle,
    asker: PeerId,
    bytes: u64,
    progress: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
) {
    let started = Instant::now();
    let deadline = started + PULL_GRACE + Duration::from_secs(bytes / PULL_MIN_RATE);
    let mut last_seen = started;
    // (when, bytes by then), one a second, the last window's worth.
    let mut marks: std::collections::VecDeque<(Instant, u64)> = [(started, 0)].into();
    loop {
        tokio::time::sleep(PULL_WATCH).await;
        let now = Instant::now();
        if net.peers().await.iter().any(|p| p.peer_id == asker) {
            last_seen = now;
        }
        let got = progress.load(Ordering::Relaxed);
        marks.push_back((now, got));
        while marks.len() > 1 && now.duration_since(marks[1].0) >= STALL_WINDOW {
            marks.pop_front();
        }
        let (since, before) = marks[0];
        let stalled = now.duration_since(since) >= STALL_WINDOW && got - before < STALL_BYTES;
        if now > deadline || stalled || last_seen.elapsed() > ASKER_GONE {
            if stalled {
                tracing::info!(
                    "a pull for {asker} stalled: {} bytes in {STALL_WINDOW:?}",
                    got - before
                );
            }
            cancel.store(true, Ordering::Relaxed);
            return;
        }
    }
}

/// The refusal of a lease whose owner's share of the quota is full.
fn share_full() -> Response {
    Response::error(
        ErrorCode::Refused,
        "your share of what this node holds for others is full (a quarter of it)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_deletes_are_capped_per_owner_in_all_and_in_time() {
        let mut state = Replications::default();
        let root = |i: u64| crate::block::cid_of(DAG_CBOR, &i.to_le_bytes());
        let owner = PeerId::random();
        for i in 0..100 {
            state.note_delete(owner, root(i), 999);
        }
        assert_eq!(state.deleted[&owner].len(), DELETES_KEPT_PER_PEER);
        assert!(state.deleted_since(&owner, &root(99), 999));
        assert!(!state.deleted_since(&owner, &root(0), 999), "the oldest went first");
        assert!(!state.deleted_since(&owner, &root(99), 1000), "a newer lease is not withdrawn");
        for i in 0..2 * DELETES_KEPT_OWNERS as u64 {
            state.note_delete(PeerId::random(), root(i), 1000 + i % 100);
        }
        assert_eq!(state.deleted.len(), DELETES_KEPT_OWNERS);
        assert!(!state.deleted.contains_key(&owner), "the oldest owner went first");
        state.note_delete(owner, root(1), 1100 + DELETES_KEPT_FOR);
        assert_eq!(state.deleted.len(), 1, "the expired ones went");
    }
}
