//! What a node has learnt of other peers and of the records it looked up,
//! kept for a while and bounded: the peers that failed a possession proof
//! for a root ([`Distrust`]), the answers of recent delete-record lookups
//! ([`DeleteLookups`]), and the address a connection comes from
//! ([`ip_of`]). Shared by the event loop's handle with the replica and
//! repair code, which decide with them; this module imports no other of
//! `net`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use tokio::sync::Semaphore;

use crate::lease::{self, DeleteRecord};

/// How long a peer must have been connected to rank among the settled
/// peers, which take copies before newer ones (`replicas::placement`).
pub const SETTLED_AFTER: Duration = Duration::from_secs(60);

/// How long a peer that failed a proof for a root is left out for it.
pub const DISTRUST_FOR: Duration = Duration::from_secs(3600);
/// (root, peer) pairs distrusted at once: past it, the oldest is forgotten.
pub const MAX_DISTRUSTED: usize = 4096;
/// Peers that failed a proof for a root, left out for [`DISTRUST_FOR`];
/// cheap to clone, shared by a node's puts and repairs.
#[derive(Clone, Default)]
pub struct Distrust(Arc<Mutex<HashMap<(Cid, PeerId), Instant>>>);

impl Distrust {
    /// Notes that `peer` failed a proof for `root`.
    pub fn note(&self, root: Cid, peer: PeerId) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, at| now.duration_since(*at) < DISTRUST_FOR);
        if map.len() >= MAX_DISTRUSTED
            && let Some(oldest) = map.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert((root, peer), now);
    }

    /// Whether `peer` failed a proof for `root` less than [`DISTRUST_FOR`]
    /// ago.
    pub fn distrusts(&self, root: &Cid, peer: &PeerId) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(*root, *peer)).is_some_and(|at| at.elapsed() < DISTRUST_FOR)
    }
}

/// The IP address of a remote multiaddr, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// How long a lookup that found no delete record is trusted (a found
/// record is kept until it ends).
pub const DELETE_CACHE_FOR: Duration = Duration::from_secs(60);
/// Lookups of delete records a node runs at once; more wait their turn.
pub const DELETE_LOOKUPS_AT_ONCE: usize = 4;
/// (root, owner) answers kept: past it, the oldest is forgotten.
pub const MAX_DELETE_ANSWERS: usize = 4096;

/// A lookup's answer (the record, if one was found) and when it came.
type Answer = (Option<DeleteRecord>, Instant);

/// The answers of recent delete-record lookups, and the turns of those
/// running; cheap to clone, one per node (see [`find_delete`]).
#[derive(Clone)]
pub struct DeleteLookups {
    answers: Arc<Mutex<HashMap<(Cid, PeerId), Answer>>>,
    turns: Arc<Semaphore>,
}

impl Default for DeleteLookups {
    fn default() -> Self {
        DeleteLookups {
            answers: Arc::default(),
            turns: Arc::new(Semaphore::new(DELETE_LOOKUPS_AT_ONCE)),
        }
    }
}

impl DeleteLookups {
    /// A recent answer for (`root`, `owner`), if one is still good.
    pub(crate) fn cached(&self, root: Cid, owner: PeerId) -> Option<Option<DeleteRecord>> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let (found, at) = answers.get(&(root, owner))?;
        match found {
            Some(record) if record.keep_until > lease::unix_secs() => Some(Some(record.clone())),
            None if at.elapsed() < DELETE_CACHE_FOR => Some(None),
            _ => None,
        }
    }

    /// A turn to look up, among [`DELETE_LOOKUPS_AT_ONCE`]; `None` once
    /// the node stops.
    pub(crate) async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.turns.acquire().await.ok()
    }

    pub(crate) fn remember(&self, root: Cid, owner: PeerId, found: Option<DeleteRecord>) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= MAX_DELETE_ANSWERS && !answers.contains_key(&(root, owner)) {
            answers.retain(|_, (found, at)| found.is_some() || at.elapsed() < DELETE_CACHE_FOR);
            if answers.len() >= MAX_DELETE_ANSWERS
                && let Some(oldest) = answers.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k)
            {
                answers.remove(&oldest);
            }
        }
        answers.insert((root, owner), (found, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::DAG_CBOR;

    #[test]
    fn distrust_is_per_root_and_capped() {
        let distrust = Distrust::default();
        let root = crate::block::cid_of(DAG_CBOR, b"root");
        let other = crate::block::cid_of(DAG_CBOR, b"other");
        let peer = PeerId::random();
        distrust.note(root, peer);
        assert!(distrust.distrusts(&root, &peer));
        assert!(!distrust.distrusts(&other, &peer));
        for i in 0..MAX_DISTRUSTED as u32 {
            distrust.note(crate::block::cid_of(DAG_CBOR, &i.to_be_bytes()), PeerId::random());
        }
        assert!(!distrust.distrusts(&root, &peer), "the oldest went first");
        assert_eq!(distrust.0.lock().unwrap().len(), MAX_DISTRUSTED);
    }
}
