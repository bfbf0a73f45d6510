//! Both sides of the block messages: `GetBlock` ([`rpc_get_block`],
//! [`BlockService::handle_get_block`]) and `Have` ([`rpc_have`],
//! [`BlockService::handle_have`]).
//!
//! The requester checks every block against the CID it asked for before it
//! uses it; the responder reads blocks from its store, which verifies them
//! (a block that fails is moved aside and answered `NotFound`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use cid::Cid;
use libp2p::{PeerId, request_response::ResponseChannel};
use tokio::sync::Semaphore;

use crate::{
    block::{self, BlockBuf},
    error::Error,
    net::{
        codec::{ErrorCode, Request, Response},
        event_loop::{NetHandle, RequestError},
    },
    store::Store,
};

/// Block reads from disk running at once for requesters (each on a
/// blocking thread, holding a block of up to 2 MiB until it is handed to
/// the swarm).
pub const MAX_CONCURRENT_READS: usize = 32;
/// `Have` requests answered at once (each looks up to 1,024 files up).
pub const MAX_CONCURRENT_HAVES: usize = 4;

/// What a `GetBlock` brought back, judged.
#[derive(Debug)]
pub enum Fetched {
    /// The block, checked against its CID.
    Block(BlockBuf),
    /// The peer does not hold it (or cannot send it now for a reason that
    /// is not overload).
    Lacks(String),
    /// The peer is overloaded: ask again later.
    Busy,
    /// The peer broke the protocol: a block that does not match its CID,
    /// or an answer that does not answer `GetBlock`. Blame it.
    Wrong(String),
    /// The request failed (timeout, closed connection).
    Failed(RequestError),
}

/// Asks `peer` for the block `cid` and checks what comes back.
pub async fn rpc_get_block(net: &NetHandle, peer: PeerId, cid: Cid, timeout: Duration) -> Fetched {
    match net.request(peer, Request::GetBlock { cid }, timeout).await {
        Ok(Response::Block { data }) if block::verify(&cid, &data) => Fetched::Block(data),
        Ok(Response::Block { .. }) => Fetched::Wrong(format!("sent a wrong block for {cid}")),
        Ok(Response::NotFound) => Fetched::Lacks("not found".into()),
        Ok(Response::Error { code: ErrorCode::Busy, .. }) => Fetched::Busy,
        Ok(Response::Error { code, message }) => Fetched::Lacks(format!("{code}: {message}")),
        Ok(other) => Fetched::Wrong(format!("answered GetBlock with {other:?}")),
        Err(e) => Fetched::Failed(e),
    }
}

/// Asks `peer` which of `cids` it holds; `None` if it gives no valid
/// answer.
pub async fn rpc_have(
    net: &NetHandle,
    peer: PeerId,
    cids: Vec<Cid>,
    timeout: Duration,
) -> Option<Vec<bool>> {
    let count = cids.len();
    match net.request(peer, Request::Have { cids }, timeout).await {
        Ok(Response::Have { present }) if present.len() == count => Some(present),
        _ => None,
    }
}

/// The responder of the block messages; its clones share one count of
/// the blocks served.
#[derive(Clone)]
pub struct BlockService {
    store: Store,
    net: NetHandle,
    reads: Arc<Semaphore>,
    haves: Arc<Semaphore>,
    served: Arc<AtomicU64>,
}

impl BlockService {
    pub fn new(store: Store, net: NetHandle) -> Self {
        BlockService {
            store,
            net,
            reads: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)),
            haves: Arc::new(Semaphore::new(MAX_CONCURRENT_HAVES)),
            served: Arc::default(),
        }
    }

    /// Blocks sent to peers so far (`GetBlock` answered with the block).
    pub fn blocks_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Answers `GetBlock`: the block as stored (verified), or `NotFound`.
    pub async fn handle_get_block(self, cid: Cid, channel: ResponseChannel<Response>) {
        let Ok(_permit) = self.reads.clone().acquire_owned().await else { return };
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || store.get(&cid)).await;
        let response = match read {
            Ok(Ok(data)) => {
                self.served.fetch_add(1, Ordering::Relaxed);
                Response::Block { data }
            }
            // A corrupt block was moved aside by the store: we do not have it.
            Ok(Err(Error::Missing { .. } | Error::Corrupt { .. })) => Response::NotFound,
            Ok(Err(e)) => {
                tracing::warn!("cannot serve {cid}: {e}");
                Response::error(ErrorCode::Internal, "cannot read the block")
            }
            Err(_) => Response::error(ErrorCode::Internal, "block read task failed"),
        };
        self.net.respond(channel, response).await;
    }

    /// Answers `Have`: which of the blocks are on disk right now.
    pub async fn handle_have(self, cids: Vec<Cid>, channel: ResponseChannel<Response>) {
        let Ok(_permit) = self.haves.clone().acquire_owned().await else { return };
        let store = self.store.clone();
        let present =
            tokio::task::spawn_blocking(move || cids.iter().map(|c| store.has(c)).collect()).await;
        let response = match present {
            Ok(present) => Response::Have { present },
            Err(_) => Response::error(ErrorCode::Internal, "have task failed"),
        };
        self.net.respond(channel, response).await;
    }
}
