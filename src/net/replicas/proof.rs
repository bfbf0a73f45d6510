//! Possession proofs: a peer counts as a holder of a root only once it
//! shows it holds the blocks, not because it says so.
//!
//! The challenger picks [`PROOF_BLOCKS`] blocks of the root at random (each
//! at the end of a random path from the root down the DAG's clear links)
//! and, for each holder, a fresh random nonce; the holder answers
//! `Prove { root, nonce, cids }` with SHA-256 of the nonce then each
//! block's bytes. The challenger checks the answer against its own copy of
//! those blocks (from its store, or fetched from the network and checked
//! against their CIDs): no holder can answer without the blocks' bytes at
//! hand, nor reuse an earlier answer. A peer that fails is
//! distrusted for that root (`ledger::Distrust`): it is not counted, asked or chosen again
//! for it for [`DISTRUST_FOR`].
//!
//! Cost: a challenger reads [`PROOF_BLOCKS`] paths (a few blocks each) per
//! root and round, and hashes each sampled block once per holder it
//! challenges (at most [`MAX_PROVED`]); a holder reads and hashes at most
//! [`MAX_PROVE_CIDS`](crate::net::codec::MAX_PROVE_CIDS) blocks per `Prove`.

use std::{collections::HashMap, future::Future, time::Duration};

use cid::Cid;
use futures::StreamExt;
use libp2p::PeerId;
use sha2::{Digest, Sha256};

use crate::{
    block::{BlockBuf, DAG_CBOR},
    dag::{MAX_DEPTH, Node},
    net::{
        blocks::{Fetched, ask_block, judge_block},
        codec::{Request, Response},
        event_loop::NetHandle,
    },
    store::{self, AsyncStore},
};

/// Blocks sampled per root and round.
pub const PROOF_BLOCKS: usize = 4;
/// How long a holder has to answer a `Prove` (it reads and hashes up to
/// [`PROOF_BLOCKS`] blocks of at most 2 MiB).
pub const PROOF_TIMEOUT: Duration = Duration::from_secs(20);
/// Holders challenged per root and round, at most.
pub const MAX_PROVED: usize = 32;
/// Challenges in flight at once per root.
const PROOFS_AT_ONCE: usize = 8;

/// SHA-256 of `nonce` then `block`: what a holder answers for one block.
pub fn proof_digest(nonce: &[u8; 32], block: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(nonce);
    hash.update(block);
    hash.finalize().into()
}

/// One holder's challenge and the answer it expects.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub root: Cid,
    pub nonce: [u8; 32],
    pub cids: Vec<Cid>,
    expected: Vec<[u8; 32]>,
}

impl Challenge {
    pub fn request(&self) -> Request {
        Request::Prove { root: self.root, nonce: self.nonce, cids: self.cids.clone() }
    }

    /// Whether `answer` proves possession, or why not.
    pub fn check(&self, answer: &Response) -> Result<(), String> {
        match answer {
            Response::Proof { digests } if *digests == self.expected => Ok(()),
            Response::Proof { .. } => Err("answered a proof with wrong digests".into()),
            Response::NotFound => Err("does not hold the blocks asked".into()),
            Response::Error { code, message } => Err(format!("{code}: {message}")),
            other => Err(format!("answered Prove with {other:?}")),
        }
    }
}

/// Draws `count` challenges for `root` (one nonce each, the same sampled
/// blocks), reading blocks with `fetch` (which must return only blocks
/// checked against their CID). `None` if a sampled block cannot be had.
pub async fn draw<F, Fut>(root: Cid, count: usize, mut fetch: F) -> Option<Vec<Challenge>>
where
    F: FnMut(Cid) -> Fut,
    Fut: Future<Output = Option<BlockBuf>>,
{
    let mut structure: HashMap<Cid, Vec<Cid>> = HashMap::new();
    let mut samples: Vec<(Cid, BlockBuf)> = Vec::new();
    for _ in 0..PROOF_BLOCKS {
        let mut cid = root;
        for _ in 0..=MAX_DEPTH {
            if cid.codec() != DAG_CBOR {
                break;
            }
            let links = match structure.get(&cid) {
                Some(links) => links.clone(),
                None => {
                    let bytes = fetch(cid).await?;
                    let links = Node::decode(&cid, &bytes).ok()?.links;
                    structure.insert(cid, links.clone());
                    links
                }
            };
            if links.is_empty() {
                break;
            }
            cid = links[rand::random_range(0..links.len())];
        }
        if samples.iter().all(|(c, _)| *c != cid) {
            let block = fetch(cid).await?;
            samples.push((cid, block));
        }
    }
    let work = move || {
        let challenges = (0..count)
            .map(|_| {
                let nonce: [u8; 32] = rand::random();
                let expected = samples.iter().map(|(_, b)| proof_digest(&nonce, b)).collect();
                let cids = samples.iter().map(|(c, _)| *c).collect();
                Challenge { root, nonce, cids, expected }
            })
            .collect();
        Ok(challenges)
    };
    store::run_blocking("drawing a proof", work).await.ok()
}

/// A block of `root` for a challenge: from the store, else from the
/// first of `from` (peers that claim to hold `root` pinned) that sends it,
/// checked against its CID off the async threads. A claimant that answers
/// that it lacks the block, or sends a wrong one, is distrusted for `root`
/// (a peer that is busy or does not answer is not).
pub async fn fetch_checked(
    store: &AsyncStore,
    net: &NetHandle,
    root: Cid,
    cid: Cid,
    from: &[PeerId],
) -> Option<BlockBuf> {
    if let Ok(block) = store.run(move |store| store.get(&cid)).await {
        return Some(block);
    }
    for peer in from {
        if net.distrust().distrusts(&root, peer) {
            continue;
        }
        let answer = ask_block(net, *peer, cid, PROOF_TIMEOUT).await;
        let judged = store::run_blocking("checking a block", move || Ok(judge_block(&cid, answer)));
        match judged.await {
            Ok(Fetched::Block(block)) => return Some(block),
            Ok(Fetched::Lacks(why) | Fetched::Wrong(why)) => {
                tracing::info!("{peer} claims to hold {root} but {why} for {cid}");
                net.distrust().note(root, *peer);
            }
            _ => {}
        }
    }
    None
}

/// Challenges each of `peers` (at most [`MAX_PROVED`]) to prove it holds
/// `root`; blocks are read with `fetch` (see [`draw`]). Returns the peers
/// that proved it, and those that did not with the reason; the latter are
/// distrusted for the root (`ledger::Distrust`), unless no challenge could
/// be drawn at all (then every peer is unproven, and none is blamed).
pub async fn prove<F, Fut>(
    net: &NetHandle,
    root: Cid,
    peers: &[PeerId],
    fetch: F,
) -> (Vec<PeerId>, Vec<(PeerId, String)>)
where
    F: FnMut(Cid) -> Fut,
    Fut: Future<Output = Option<BlockBuf>>,
{
    let peers: Vec<PeerId> = peers.iter().take(MAX_PROVED).copied().collect();
    if peers.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let Some(challenges) = draw(root, peers.len(), fetch).await else {
        let why = "no challenge could be drawn: the sampled blocks are not at hand";
        return (Vec::new(), peers.into_iter().map(|p| (p, why.to_string())).collect());
    };
    // A claimant that could not send a sampled block it claims to hold
    // was distrusted while the challenges were drawn.
    let distrust = net.distrust();
    let (lied, peers): (Vec<PeerId>, Vec<PeerId>) =
        peers.into_iter().partition(|p| distrust.distrusts(&root, p));
    let asks = peers.into_iter().zip(challenges).map(|(peer, challenge)| async move {
        let answer = net.request(peer, challenge.request(), PROOF_TIMEOUT).await;
        let verdict = match answer {
            Ok(answer) => challenge.check(&answer),
            Err(e) => Err(e.to_string()),
        };
        (peer, verdict)
    });
    let verdicts: Vec<_> =
        futures::stream::iter(asks).buffer_unordered(PROOFS_AT_ONCE).collect().await;
    let (mut proven, mut failed) = (Vec::new(), Vec::new());
    let why = "claims to hold it but did not send one of its blocks";
    failed.extend(lied.into_iter().map(|p| (p, why.to_string())));
    for (peer, verdict) in verdicts {
        match verdict {
            Ok(()) => proven.push(peer),
            Err(why) => {
                tracing::info!("{peer} did not prove it holds {root}: {why}");
                net.distrust().note(root, peer);
                failed.push((peer, why));
            }
        }
    }
    (proven, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_needs_the_nonce_and_the_bytes() {
        let nonce = [7; 32];
        let block = b"some block bytes";
        let digest = proof_digest(&nonce, block);
        assert_ne!(digest, proof_digest(&[8; 32], block));
        assert_ne!(digest, proof_digest(&nonce, b"other bytes"));
        let root = crate::block::cid_of(DAG_CBOR, b"root");
        let challenge = Challenge { root, nonce, cids: vec![root], expected: vec![digest] };
        assert!(challenge.check(&Response::Proof { digests: vec![digest] }).is_ok());
        assert!(challenge.check(&Response::Proof { digests: vec![[0; 32]] }).is_err());
        assert!(challenge.check(&Response::NotFound).is_err());
    }
}
