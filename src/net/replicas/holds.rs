//! Both sides of `Holds` and `Delete`, and the owners' delete records in
//! the DHT.

use std::time::Duration;

use cid::Cid;
use libp2p::{PeerId, request_response::ResponseChannel};

use super::{DELETE_TIMEOUT, ReplicaService, told_to_peers};
use crate::{
    lease::{self, DeleteRecord},
    net::{
        codec::{ErrorCode, Request, Response},
        discover,
        event_loop::NetHandle,
    },
    store::PinKind,
};

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
/// [`DELETE_LOOKUP`]. Answers are cached (`ledger::DELETE_CACHE_FOR` for none
/// found), and at most `ledger::DELETE_LOOKUPS_AT_ONCE` lookups run at once: one
/// lookup costs at most a Kademlia `GET_VALUE` walk of [`DELETE_LOOKUP`].
pub async fn find_delete(net: &NetHandle, root: Cid, owner: PeerId) -> Option<DeleteRecord> {
    let lookups = net.delete_lookups();
    if let Some(answer) = lookups.cached(root, owner) {
        return answer;
    }
    let _turn = lookups.turn().await?;
    // Another lookup of the same record may have ended while this waited.
    if let Some(answer) = lookups.cached(root, owner) {
        return answer;
    }
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
    let answer = tokio::time::timeout(DELETE_LOOKUP, lookup).await.ok().flatten();
    lookups.remember(root, owner, answer.clone());
    answer
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

impl ReplicaService {
    /// Answers a `Delete` from `peer`: drops `peer`'s pin on a replica, and
    /// the replica with it once no other owner holds it; stops a pull that
    /// runs for `peer` (a put cancelled while its copies were made). This
    /// node's own content and its cache are never deleted.
    pub async fn handle_delete(self, peer: PeerId, root: Cid, channel: ResponseChannel<Response>) {
        // A copy being made for `peer` is withdrawn before it is pinned.
        let withdrawn = self.withdraw_pull(root, peer).await;
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
            Ok(Err(_)) if withdrawn => {
                tracing::info!("stopped the pull of {root} at its owner's request");
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
    /// Answers a `Holds` from `peer`: whether this node holds `root`
    /// pinned (a pinned root is whole: nothing is pinned before all its
    /// blocks are here). The copies wanted and the last repair are told
    /// to an owner of the copy only; any other peer learns 0 for both.
    pub async fn handle_holds(self, peer: PeerId, root: Cid, channel: ResponseChannel<Response>) {
        let response = match self.store.run(move |store| Ok(store.root_info(&root))).await {
            Ok(Some(info)) if info.pinned() && info.owners.contains(&peer) => {
                Response::Holding { pinned: true, replicas: info.target(), repaired: info.repaired }
            }
            Ok(Some(info)) if info.pinned() => {
                Response::Holding { pinned: true, replicas: 0, repaired: 0 }
            }
            Ok(_) => Response::Holding { pinned: false, replicas: 0, repaired: 0 },
            Err(e) => Response::error(ErrorCode::Internal, told_to_peers(&e)),
        };
        self.net.respond(channel, response).await;
    }
}

impl ReplicaService {
    /// Answers a `Prove`: SHA-256 of `nonce` then each block asked, read
    /// from the store (each read checks the block against its CID), if
    /// this node holds `root` pinned and every block asked; `NotFound`
    /// otherwise.
    pub async fn handle_prove(
        self,
        root: Cid,
        nonce: [u8; 32],
        cids: Vec<Cid>,
        channel: ResponseChannel<Response>,
    ) {
        let answered = self.store.run(move |store| {
            if !store.root_info(&root).is_some_and(|info| info.pinned()) {
                return Ok(Response::NotFound);
            }
            let mut digests = Vec::with_capacity(cids.len());
            for cid in &cids {
                match store.get(cid) {
                    Ok(block) => digests.push(super::proof_digest(&nonce, &block)),
                    Err(_) => return Ok(Response::NotFound),
                }
            }
            Ok(Response::Proof { digests })
        });
        let response = match answered.await {
            Ok(response) => response,
            Err(e) => Response::error(ErrorCode::Internal, told_to_peers(&e)),
        };
        self.net.respond(channel, response).await;
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
