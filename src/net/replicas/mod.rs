//! Replicas and their deletion: both sides of `Replicate` and `Delete`.
//!
//! Outbound: after a put, [`replicate`] asks the best candidates (see
//! `placement`) to hold a replica ([`rpc_replicate`]) and counts the
//! confirmations that they prove (`proof`); [`delete_remote`] asks every holder of a root to drop the
//! replica it holds for us ([`rpc_delete`]).
//! Inbound: [`ReplicaService::handle_replicate`] pulls the whole DAG (from
//! the requester only, [`pull_dag`]), verifies every
//! block, pins the root with the requester — as authenticated by Noise — as
//! owner, provides it, then answers; [`ReplicaService::handle_delete`]
//! drops a replica only for its owner.
//!
//! One file per concern: `replicate` (the outbound side of `Replicate`),
//! `placement` (where copies go), `pull` (its inbound side), `proof`
//! (possession proofs), `holds` (`Holds`, `Prove`, `Delete` and delete
//! records); here, the service and its policy.

use std::{collections::HashSet, sync::Arc, time::Duration};

use libp2p::PeerId;
use tokio::sync::Semaphore;

use crate::{error::Error, net::event_loop::NetHandle, store::AsyncStore};

mod holds;
mod placement;
mod proof;
mod pull;
mod replicate;

pub use holds::{DELETE_LOOKUP, Holding, delete_remote, find_delete, rpc_delete, rpc_holds};
pub use placement::{SETTLED_AFTER, address_group, placement_key, rank};
pub use proof::{
    Challenge, MAX_PROVED, PROOF_BLOCKS, PROOF_TIMEOUT, draw, fetch_checked, proof_digest, prove,
};
use pull::Replications;
pub use pull::{
    ASKER_GONE, MAX_JOINED_PER_PEER, MAX_JOINED_PER_PULL, MAX_LOOKUPS_PER_PEER,
    MAX_REPLICATIONS_PER_PEER, PULL_GRACE, PULL_MIN_RATE, pull_dag,
};
pub use replicate::{
    Offer, Placed, candidates, replicate, replicate_avoiding, replicate_tracked, rpc_replicate,
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

/// The responder of the replica messages; cheap to clone.
#[derive(Clone)]
pub struct ReplicaService {
    store: AsyncStore,
    net: NetHandle,
    policy: Arc<ReplicaPolicy>,
    replications: Arc<Semaphore>,
    state: Arc<tokio::sync::Mutex<Replications>>,
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
