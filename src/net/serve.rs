//! The responder side of the file protocol: takes the inbound requests the
//! event loop queues, does the disk work on blocking threads (a block is
//! mapped from its file and verified, never copied), and sends each answer
//! back through the handle.
//! `GetBlock` and `Have` are answered here; `Replicate` and `Delete` are
//! handed to `net::replicate`.

use std::{collections::HashMap, sync::Arc};

use cid::Cid;
use libp2p::request_response::ResponseChannel;
use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::{
    error::Error,
    net::{
        codec::{ErrorCode, Request, Response},
        event_loop::{InboundRequest, NetHandle},
        replicate,
    },
    store::Store,
};

/// Block reads running at once. Each holds a block of up to 2 MiB (mapped)
/// until it is handed to the swarm, so this bounds the memory of serving.
pub const MAX_CONCURRENT_READS: usize = 32;
/// Replications this node runs at once; more wait their turn.
pub const MAX_CONCURRENT_REPLICATIONS: usize = 4;

/// What the responder's tasks share.
#[derive(Clone)]
pub struct Responder {
    pub store: Store,
    pub net: NetHandle,
    pub reads: Arc<Semaphore>,
    pub replications: Arc<Semaphore>,
    /// Replications in progress, and the requests waiting for each.
    pub in_progress: Arc<Mutex<HashMap<Cid, Vec<ResponseChannel<Response>>>>>,
}

impl Responder {
    pub fn new(store: Store, net: NetHandle) -> Self {
        Responder {
            store,
            net,
            reads: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)),
            replications: Arc::new(Semaphore::new(MAX_CONCURRENT_REPLICATIONS)),
            in_progress: Arc::default(),
        }
    }

    /// Serves requests until the event loop goes away.
    pub async fn run(self, mut inbound: mpsc::Receiver<InboundRequest>) {
        while let Some(InboundRequest { peer, request, channel }) = inbound.recv().await {
            let this = self.clone();
            match request {
                Request::GetBlock { cid } => {
                    tokio::spawn(async move { this.handle_get_block(cid, channel).await });
                }
                Request::Have { cids } => {
                    tokio::spawn(async move { this.handle_have(cids, channel).await });
                }
                Request::Replicate { root } => {
                    tokio::spawn(replicate::handle_replicate(this, peer, root, channel));
                }
                Request::Delete { root } => {
                    tokio::spawn(replicate::handle_delete(this, peer, root, channel));
                }
            }
        }
    }

    async fn handle_get_block(self, cid: Cid, channel: ResponseChannel<Response>) {
        let Ok(_permit) = self.reads.clone().acquire_owned().await else { return };
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || store.get_mapped(&cid)).await;
        let response = match read {
            Ok(Ok(data)) => Response::Block { data },
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

    async fn handle_have(self, cids: Vec<Cid>, channel: ResponseChannel<Response>) {
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
