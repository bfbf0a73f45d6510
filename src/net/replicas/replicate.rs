//! The outbound side of `Replicate`: choosing the peers closest to a root,
//! asking them for replicas and counting their confirmations.

use std::{sync::Mutex, time::Instant};

use cid::Cid;
use libp2p::PeerId;

use super::{REPLICATE_DEADLINE, fetch_checked, placement, prove};
use crate::{
    lease::Lease,
    net::{
        codec::{Request, Response},
        event_loop::{NetHandle, RequestError},
    },
    store::AsyncStore,
};

/// Candidates for `root`'s replicas, best first (see `placement`): the
/// peers closest to a fresh salted key in the DHT and the connected peers,
/// settled ones first, at most one per address group (the groups of
/// `holders` taken already), never this node, a blocked peer or one that
/// failed a proof for `root` lately.
pub async fn candidates(net: &NetHandle, root: &Cid, holders: &[PeerId]) -> Vec<PeerId> {
    let key = placement::placement_key(root);
    let mut peers = net.closest_peers(key.clone()).await;
    let connected = net.peers().await;
    // Small networks: connected peers the DHT did not report.
    peers.extend(connected.iter().map(|p| p.peer_id));
    let blocked = net.blocked_peers().await;
    let local = net.local_peer_id();
    peers.retain(|p| {
        *p != local
            && !blocked.contains(p)
            && !holders.contains(p)
            && !net.distrust().distrusts(root, p)
    });
    placement::rank(&key, peers, &connected, holders, net.settled_after(), Instant::now())
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

/// Asks the best candidates (see [`candidates`]) to replicate the root
/// until `want` confirm and prove they hold it, or the candidates run out;
/// a peer that refuses, is busy, fails or does not prove its copy is
/// replaced by the next. `store` holds the whole DAG (the proofs are
/// checked against it).
pub async fn replicate(
    net: &NetHandle,
    store: &AsyncStore,
    offer: Offer,
    want: usize,
    on_copy: &(dyn Fn(&PeerId, &Result<u64, String>) + Sync),
) -> Placed {
    replicate_avoiding(net, store, offer, want, &[], on_copy).await
}

/// [`replicate`], never asking the peers in `holders` (a repair: they hold
/// a copy already).
pub async fn replicate_avoiding(
    net: &NetHandle,
    store: &AsyncStore,
    offer: Offer,
    want: usize,
    holders: &[PeerId],
    on_copy: &(dyn Fn(&PeerId, &Result<u64, String>) + Sync),
) -> Placed {
    replicate_tracked(net, store, offer, want, holders, on_copy, &Mutex::default()).await
}

/// [`replicate_avoiding`], adding each peer to `asked` as it is asked (a
/// put that is cancelled asks them all to drop what they took).
pub async fn replicate_tracked(
    net: &NetHandle,
    store: &AsyncStore,
    offer: Offer,
    want: usize,
    holders: &[PeerId],
    on_copy: &(dyn Fn(&PeerId, &Result<u64, String>) + Sync),
    asked: &Mutex<Vec<PeerId>>,
) -> Placed {
    let mut placed = Placed::default();
    if want == 0 {
        return placed;
    }
    let root = offer.root;
    let mut candidates = candidates(net, &root, holders).await.into_iter();
    let mut running = futures::stream::FuturesUnordered::new();
    let ask = |peer: PeerId| {
        asked.lock().unwrap_or_else(|e| e.into_inner()).push(peer);
        let (net, store, offer) = (net.clone(), store.clone(), offer.clone());
        async move {
            let result = match rpc_replicate(&net, peer, &offer).await {
                // A copy counts once it is proven, not because it is said.
                Ok(blocks) => {
                    let fetch = |cid| {
                        let (store, net) = (store.clone(), net.clone());
                        async move { fetch_checked(&store, &net, root, cid, &[]).await }
                    };
                    match prove(&net, root, &[peer], fetch).await {
                        (proven, _) if !proven.is_empty() => Ok(blocks),
                        (_, failed) => Err(failed.into_iter().next().map_or_else(
                            || "did not prove it holds the copy".to_string(),
                            |(_, why)| format!("did not prove it holds the copy: {why}"),
                        )),
                    }
                }
                Err(e) => Err(e),
            };
            (peer, result)
        }
    };
    for peer in candidates.by_ref().take(want) {
        running.push(ask(peer));
    }
    use futures::StreamExt;
    while let Some((peer, result)) = running.next().await {
        on_copy(&peer, &result);
        match result {
            Ok(blocks) => {
                tracing::debug!("{peer} holds a replica of {root} ({blocks} blocks)");
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
