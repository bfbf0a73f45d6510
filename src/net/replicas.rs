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
    collections::HashMap,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::{PeerId, kad::KBucketKey, request_response::ResponseChannel};
use tokio::sync::Semaphore;

use crate::{
    block::DAG_CBOR,
    dag::{Frontier, Node},
    error::{Error, Result},
    export::BlockSource,
    net::{
        codec::{ErrorCode, Request, Response},
        discover,
        event_loop::{NetHandle, RequestError},
        get::NetSource,
        providers::ProviderSet,
    },
    store::{Durability, PinKind},
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
async fn candidates(net: &NetHandle, root: &Cid) -> Vec<PeerId> {
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

/// Asks peers closest to `root` to replicate it until `want` confirm or the
/// candidates run out; returns the peers that confirmed.
pub async fn replicate(net: &NetHandle, root: Cid, want: usize) -> Vec<PeerId> {
    if want == 0 {
        return Vec::new();
    }
    let mut candidates = candidates(net, &root).await.into_iter();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut confirmed = Vec::new();
    let ask = |peer: PeerId| {
        let net = net.clone();
        async move { (peer, rpc_replicate(&net, peer, root).await) }
    };
    for peer in candidates.by_ref().take(want) {
        running.push(ask(peer));
    }
    use futures::StreamExt;
    while let Some((peer, result)) = running.next().await {
        match result {
            Ok(blocks) => {
                tracing::info!("{peer} holds a replica of {root} ({blocks} blocks)");
                confirmed.push(peer);
            }
            Err(reason) => {
                tracing::warn!("{peer} did not replicate {root}: {reason}");
                if confirmed.len() + running.len() < want
                    && let Some(next) = candidates.next()
                {
                    running.push(ask(next));
                }
            }
        }
    }
    confirmed
}

/// One peer's replica: `Replicate`, re-sent after each stream timeout until
/// [`REPLICATE_DEADLINE`].
async fn rpc_replicate(net: &NetHandle, peer: PeerId, root: Cid) -> Result<u64, String> {
    let started = Instant::now();
    loop {
        let left = REPLICATE_DEADLINE.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err("no confirmation before the deadline".into());
        }
        match net.request(peer, Request::Replicate { root }, left).await {
            Ok(Response::Replicated { blocks }) => return Ok(blocks),
            Ok(Response::Error { code, message }) => return Err(format!("{code}: {message}")),
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(RequestError::Timeout { .. }) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
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

/// The responder of the replica messages; cheap to clone.
#[derive(Clone)]
pub struct ReplicaService {
    store: crate::store::Store,
    net: NetHandle,
    replications: Arc<Semaphore>,
    /// Replications in progress, and the requests waiting for each.
    in_progress: Arc<tokio::sync::Mutex<HashMap<Cid, Vec<ResponseChannel<Response>>>>>,
}

impl ReplicaService {
    pub fn new(store: crate::store::Store, net: NetHandle) -> Self {
        ReplicaService {
            store,
            net,
            replications: Arc::new(Semaphore::new(MAX_CONCURRENT_REPLICATIONS)),
            in_progress: Arc::default(),
        }
    }

    /// Answers a `Replicate` from `peer`: at once if the replica is
    /// complete, else after pulling the DAG (joining a replication already
    /// running).
    pub async fn handle_replicate(
        self,
        peer: PeerId,
        root: Cid,
        channel: ResponseChannel<Response>,
    ) {
        if root.codec() != DAG_CBOR {
            let bad = Response::error(ErrorCode::BadRequest, "a root must be a dag-cbor block");
            return self.net.respond(channel, bad).await;
        }
        {
            let mut in_progress = self.in_progress.lock().await;
            if let Some(waiting) = in_progress.get_mut(&root) {
                waiting.push(channel);
                return;
            }
            if in_progress.len() >= MAX_PENDING_REPLICATIONS {
                drop(in_progress);
                let busy = Response::error(ErrorCode::Busy, "too many replications pending");
                return self.net.respond(channel, busy).await;
            }
            in_progress.insert(root, vec![channel]);
        }
        let response = match self.replications.clone().acquire_owned().await {
            Ok(_permit) => self.pull_and_pin(peer, root).await,
            Err(_) => Response::error(ErrorCode::Busy, "shutting down"),
        };
        let waiting = self.in_progress.lock().await.remove(&root).unwrap_or_default();
        for channel in waiting {
            self.net.respond(channel, response.clone()).await;
        }
    }

    async fn pull_and_pin(&self, peer: PeerId, root: Cid) -> Response {
        let providers = ProviderSet::new(root, true);
        let discovery =
            tokio::spawn(discover::discover(self.net.clone(), providers.clone(), vec![peer]));
        let (store, net, rt) =
            (self.store.clone(), self.net.clone(), tokio::runtime::Handle::current());
        let pulled = tokio::task::spawn_blocking(move || -> Result<u64> {
            let source =
                NetSource::new(store.clone(), net, rt, providers, Durability::Synced, true);
            let blocks = pull_dag(&source, &root);
            source.commit()?;
            let blocks = blocks?;
            // The writer's guard still covers every block while we pin.
            store.pin(&root, PinKind::Pinned, Some(peer))?;
            source.finish()?;
            Ok(blocks)
        })
        .await;
        discovery.abort();
        match pulled {
            Ok(Ok(blocks)) => {
                self.net.provide(root).await;
                tracing::info!("replicated {root} for {peer} ({blocks} blocks)");
                Response::Replicated { blocks }
            }
            Ok(Err(e)) => {
                tracing::warn!("cannot replicate {root} for {peer}: {e}");
                let code = match e {
                    Error::Source(_) | Error::Missing { .. } => ErrorCode::NotFound,
                    _ => ErrorCode::Internal,
                };
                Response::error(code, e.to_string())
            }
            Err(_) => Response::error(ErrorCode::Internal, "replication task failed"),
        }
    }

    /// Answers a `Delete` from `peer`: drops `peer`'s pin on a replica, and
    /// the replica with it once no other owner holds it. This node's own
    /// content and its cache are never deleted.
    pub async fn handle_delete(self, peer: PeerId, root: Cid, channel: ResponseChannel<Response>) {
        let store = self.store.clone();
        let decided = tokio::task::spawn_blocking(move || {
            let refused = |message: String| Err(Response::error(ErrorCode::Refused, message));
            match store.root_info(&root) {
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
                    Err(e) => Err(Response::error(ErrorCode::Internal, e.to_string())),
                },
            }
        })
        .await;
        let response = match decided {
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
            Err(_) => Response::error(ErrorCode::Internal, "delete task failed"),
        };
        self.net.respond(channel, response).await;
    }
}

/// Fetches every block of the DAG under `root` that the store lacks
/// (structure nodes are read for their clear links; nothing is decrypted),
/// with [`PULL_WORKERS`] threads sharing one [`Frontier`]: each distinct
/// block once, depth-limited. Blocks already stored are claimed, not
/// fetched. Returns the distinct blocks of the DAG.
pub fn pull_dag(source: &NetSource, root: &Cid) -> Result<u64> {
    struct Work {
        frontier: Frontier,
        /// Blocks taken from the frontier and not yet done.
        busy: usize,
        failed: Option<Error>,
    }
    let work = Mutex::new(Work { frontier: Frontier::new(*root, u64::MAX), busy: 0, failed: None });
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
                    let links = if cid.codec() == DAG_CBOR {
                        source
                            .block(&cid)
                            .and_then(|bytes| Node::decode(&cid, &bytes))
                            .map(|node| node.links)
                    } else if source.has_local(&cid) {
                        Ok(Vec::new())
                    } else {
                        source.block(&cid).map(|_| Vec::new())
                    };
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

/// Owners for an error message: the first few, and how many more.
fn owners_list(owners: &[PeerId]) -> String {
    const SHOWN: usize = 3;
    let mut list: Vec<String> = owners.iter().take(SHOWN).map(ToString::to_string).collect();
    if owners.len() > SHOWN {
        list.push(format!("and {} more", owners.len() - SHOWN));
    }
    list.join(", ")
}
