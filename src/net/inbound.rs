//! Inbound requests: takes what the event loop queues, and hands each
//! request to the handler of its message on a task of its own — the block
//! messages to [`BlockService`], the replica messages to
//! [`ReplicaService`]. Each service bounds its own concurrent work.

use tokio::sync::mpsc;

use crate::{
    net::{
        blocks::BlockService,
        codec::Request,
        event_loop::{InboundRequest, NetHandle},
        replicas::{ReplicaPolicy, ReplicaService},
    },
    store::Store,
};

/// The responder: one per node.
#[derive(Clone)]
pub struct Responder {
    blocks: BlockService,
    replicas: ReplicaService,
}

impl Responder {
    pub fn new(store: Store, net: NetHandle, policy: ReplicaPolicy) -> Self {
        Responder {
            blocks: BlockService::new(store.clone(), net.clone()),
            replicas: ReplicaService::new(store, net, policy),
        }
    }

    /// The responder of the block messages (sharing its count of blocks
    /// served).
    pub fn blocks(&self) -> &BlockService {
        &self.blocks
    }

    /// Serves requests until the event loop goes away.
    pub async fn run(self, mut inbound: mpsc::Receiver<InboundRequest>) {
        while let Some(InboundRequest { peer, request, channel }) = inbound.recv().await {
            match request {
                Request::GetBlock { cid } => {
                    tokio::spawn(self.blocks.clone().handle_get_block(cid, channel));
                }
                Request::Have { cids } => {
                    tokio::spawn(self.blocks.clone().handle_have(cids, channel));
                }
                Request::Replicate { root, blocks, bytes, lease } => {
                    let request = (root, blocks, bytes, lease);
                    let replicas = self.replicas.clone();
                    tokio::spawn(replicas.handle_replicate_request(peer, request, channel));
                }
                Request::Holds { root } => {
                    tokio::spawn(self.replicas.clone().handle_holds(peer, root, channel));
                }
                Request::Prove { root, nonce, cids } => {
                    tokio::spawn(self.replicas.clone().handle_prove(root, nonce, cids, channel));
                }
                Request::Delete { root } => {
                    tokio::spawn(self.replicas.clone().handle_delete(peer, root, channel));
                }
            }
        }
    }
}
