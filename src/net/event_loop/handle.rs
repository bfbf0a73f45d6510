//! [`NetHandle`], the cheap cloneable handle the rest of the program talks
//! to the event loop with, and the [`Command`]s it sends. Every command
//! carries its own reply channel; the loop's side of each is in the file
//! of its concern (see the module docs of `event_loop`).

use std::{sync::Arc, time::Duration};

use cid::Cid;
use libp2p::{Multiaddr, PeerId, request_response::ResponseChannel};
use tokio::sync::{mpsc, oneshot, watch};

use super::{BOOTSTRAP_ATTEMPTS, BootstrapState, Counters, LookupCost, RecordSink};
use crate::net::{
    behaviour::KAD_REPLICATION,
    codec::{Request, Response},
    lanes::Lanes,
    ledger::{DeleteLookups, Distrust},
    records::RecordCounts,
};

/// Commands queued for the event loop.
pub const COMMAND_QUEUE: usize = 1024;
/// Providers buffered per provider lookup (more are dropped: they are hints).
pub const PROVIDER_QUEUE: usize = 256;

pub(super) type Reply = oneshot::Sender<Result<Response, RequestError>>;

/// Why a request to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("no answer from {peer} within {secs} s")]
    Timeout { peer: PeerId, secs: u64 },
    #[error("request to {peer} failed: {reason}")]
    Failed { peer: PeerId, reason: String },
    #[error("the node is shutting down")]
    Stopped,
}

/// A connected peer and the addresses we know for it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub addrs: Vec<Multiaddr>,
    /// The IP address its connection comes from (not what it says it
    /// listens on), if it is an IP connection.
    pub ip: Option<std::net::IpAddr>,
    /// Since when it has been connected without a break.
    pub since: std::time::Instant,
}

/// A file-protocol request from a peer, for the responder.
pub struct InboundRequest {
    /// The sender, as authenticated by Noise.
    pub peer: PeerId,
    pub request: Request,
    pub channel: ResponseChannel<Response>,
}

/// What the rest of the program asks of the swarm.
pub enum Command {
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, RequestError>>,
    },
    Respond {
        channel: ResponseChannel<Response>,
        response: Response,
    },
    Provide {
        root: Cid,
    },
    Unprovide {
        root: Cid,
    },
    /// Streams the providers of `root` into `found`; closes it when done.
    /// Dropping the receiver ends the lookup; `cost` counts its requests.
    FindProviders {
        root: Cid,
        found: mpsc::Sender<PeerId>,
        cost: Arc<LookupCost>,
    },
    /// The peers in Kademlia's routing table.
    RoutingTable {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ClosestPeers {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// Stores a value record here and on the peers closest to its key;
    /// answers with how many peers answered the put (a peer answers
    /// whether it kept the record or not), or why none did.
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        keep: Duration,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Streams what the lookup of `key` finds (unchecked) into `found`;
    /// closes it when done. Dropping the receiver ends the lookup.
    GetRecord {
        key: Vec<u8>,
        found: RecordSink,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    /// The other peers whose live provider records for `root` (if given)
    /// this node holds, and how many records of others it holds in all.
    KnownProviders {
        root: Option<Cid>,
        reply: oneshot::Sender<(Vec<PeerId>, RecordCounts)>,
    },
    BlockPeer {
        peer: PeerId,
    },
    BlockedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Dial {
        addr: Multiaddr,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The handle to the event loop; cheap to clone.
#[derive(Clone)]
pub struct NetHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) local_peer_id: PeerId,
    pub(super) listen_addrs: watch::Receiver<Vec<Multiaddr>>,
    pub(super) connected: watch::Receiver<usize>,
    pub(super) bootstrap: watch::Receiver<Vec<BootstrapState>>,
    pub(super) counters: Arc<Counters>,
    pub(super) lanes: Arc<Lanes>,
    pub(super) distrust: Distrust,
    pub(super) delete_lookups: DeleteLookups,
    /// How long a peer must have been connected to count as settled, in
    /// milliseconds (`replicas::candidates`).
    pub(super) settled_after: Arc<std::sync::atomic::AtomicU64>,
}

impl NetHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The peers that failed a possession proof, per root
    /// (`replicas::proof`).
    pub fn distrust(&self) -> &Distrust {
        &self.distrust
    }

    /// How long a peer must have been connected to count as settled for
    /// placement.
    pub fn settled_after(&self) -> Duration {
        Duration::from_millis(self.settled_after.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sets [`settled_after`](Self::settled_after), for every clone.
    pub fn set_settled_after(&self, after: Duration) {
        let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.settled_after.store(millis, std::sync::atomic::Ordering::Relaxed);
    }

    /// The node's recent delete-record lookups (`replicas::find_delete`).
    pub fn delete_lookups(&self) -> &DeleteLookups {
        &self.delete_lookups
    }

    /// The node's block streams (`net::lanes`).
    pub fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    async fn send(&self, command: Command) -> Result<(), RequestError> {
        self.commands.send(command).await.map_err(|_| RequestError::Stopped)
    }

    /// Sends `request` to `peer` (dialing it if needed) and waits at most
    /// `timeout` for the answer.
    pub async fn request(
        &self,
        peer: PeerId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request { peer, request, reply }).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RequestError::Stopped),
            Err(_) => Err(RequestError::Timeout { peer, secs: timeout.as_secs() }),
        }
    }

    /// Answers an inbound request.
    pub async fn respond(&self, channel: ResponseChannel<Response>, response: Response) {
        let _ = self.send(Command::Respond { channel, response }).await;
    }

    /// Announces in the DHT that this node holds the whole DAG of `root`.
    pub async fn provide(&self, root: Cid) {
        let _ = self.send(Command::Provide { root }).await;
    }

    /// What this node's own record store knows of the providers of `root`
    /// (no lookup): the other peers with a live record for it.
    pub async fn known_providers(&self, root: Cid) -> Vec<PeerId> {
        self.record_store(Some(root)).await.0
    }

    /// The provider records of other peers this node keeps for the DHT.
    pub async fn provider_records(&self) -> usize {
        self.record_store(None).await.1.providers
    }

    /// The records of other peers this node keeps for the DHT, by kind.
    pub async fn record_counts(&self) -> RecordCounts {
        self.record_store(None).await.1
    }

    async fn record_store(&self, root: Option<Cid>) -> (Vec<PeerId>, RecordCounts) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::KnownProviders { root, reply }).await.is_err() {
            return (Vec::new(), RecordCounts::default());
        }
        rx.await.unwrap_or_default()
    }

    /// Withdraws this node's provider record for `root`.
    pub async fn unprovide(&self, root: Cid) {
        let _ = self.send(Command::Unprovide { root }).await;
    }

    /// Starts a DHT lookup of the providers of `root`; they arrive on the
    /// returned channel, which closes when the lookup ends (once
    /// [`PROVIDER_ANSWERS`](super::PROVIDER_ANSWERS) peers have answered with providers, or every
    /// closest peer has answered). Dropping the receiver ends it too. Its
    /// requests are counted in `cost`.
    pub async fn find_providers(&self, root: Cid, cost: Arc<LookupCost>) -> mpsc::Receiver<PeerId> {
        let (found, rx) = mpsc::channel(PROVIDER_QUEUE);
        let _ = self.send(Command::FindProviders { root, found, cost }).await;
        rx
    }

    /// The peers in this node's Kademlia routing table.
    pub async fn routing_table(&self) -> Vec<PeerId> {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::RoutingTable { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Publishes a value record in the DHT (this node's store first): how
    /// many other peers answered (not how many kept it: look it up again
    /// for that, see [`get_record_from_peers`](Self::get_record_from_peers)),
    /// or why none did.
    pub async fn put_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        keep: Duration,
    ) -> Result<usize, String> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::PutRecord { key, value, keep, reply })
            .await
            .map_err(|e| e.to_string())?;
        rx.await.map_err(|_| "the node stopped".to_string())?
    }

    /// The values the DHT holds under `key`, as they are found (unchecked:
    /// any peer may answer anything).
    pub async fn get_record(&self, key: Vec<u8>) -> mpsc::Receiver<Vec<u8>> {
        let (found, rx) = mpsc::channel(8);
        let _ = self.send(Command::GetRecord { key, found: RecordSink::Values(found) }).await;
        rx
    }

    /// What other peers answer a lookup of `key`, each answer with the
    /// peer that gave it, as they come (unchecked); closes when the lookup
    /// ends, after an error if it could not start. Dropping the receiver
    /// ends the lookup.
    pub async fn get_record_from_peers(
        &self,
        key: Vec<u8>,
    ) -> mpsc::Receiver<Result<(PeerId, Vec<u8>), String>> {
        // Room for every answer of the closest peers, and more.
        let (found, rx) = mpsc::channel(2 * KAD_REPLICATION);
        let found = RecordSink::FromPeers(found);
        if self.send(Command::GetRecord { key, found }).await.is_err() {
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.try_send(Err("the node stopped".into()));
            return rx;
        }
        rx
    }

    /// The peers the DHT knows closest to `key` (may be empty).
    pub async fn closest_peers(&self, key: Vec<u8>) -> Vec<PeerId> {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::ClosestPeers { key, reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The peers connected right now.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Peers { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Disconnects `peer` and refuses it from now on.
    pub async fn block_peer(&self, peer: PeerId) {
        let _ = self.send(Command::BlockPeer { peer }).await;
    }

    pub async fn blocked_peers(&self) -> Vec<PeerId> {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::BlockedPeers { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    pub async fn dial(&self, addr: Multiaddr) {
        let _ = self.send(Command::Dial { addr }).await;
    }

    /// Stops the event loop (and so every connection).
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits until the event loop has stopped.
    pub async fn stopped(&self) {
        self.commands.closed().await;
    }

    /// The listen addresses, each with the `/p2p/<id>` suffix.
    pub fn listen_addrs_now(&self) -> Vec<Multiaddr> {
        self.listen_addrs.borrow().clone()
    }

    /// Waits until at least one listen address is known.
    pub async fn wait_listen_addrs(&self) -> Vec<Multiaddr> {
        let mut rx = self.listen_addrs.clone();
        match rx.wait_for(|a| !a.is_empty()).await {
            Ok(addrs) => addrs.clone(),
            Err(_) => self.listen_addrs_now(),
        }
    }

    /// The listen addresses as they change (an address per interface, each
    /// as the listener learns it).
    pub fn listen_addrs_watch(&self) -> tokio::sync::watch::Receiver<Vec<Multiaddr>> {
        self.listen_addrs.clone()
    }

    /// Running totals of the node's network work since it started.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Connected peers right now.
    pub fn connected_now(&self) -> usize {
        *self.connected.borrow()
    }

    /// Waits up to `timeout` until at least `n` peers are connected.
    pub async fn wait_for_peers(&self, n: usize, timeout: Duration) -> usize {
        let mut rx = self.connected.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|&c| c >= n)).await;
        self.connected_now()
    }

    /// How each bootstrap address fares right now.
    pub fn bootstrap_now(&self) -> Vec<BootstrapState> {
        self.bootstrap.borrow().clone()
    }

    /// Waits up to `timeout` until at least `n` peers are connected, or
    /// every bootstrap address has failed [`BOOTSTRAP_ATTEMPTS`] times in a
    /// row (and nothing is connected); returns how the bootstrap addresses
    /// fare.
    pub async fn wait_for_bootstrap(&self, n: usize, timeout: Duration) -> Vec<BootstrapState> {
        let (mut peers, mut states) = (self.connected.clone(), self.bootstrap.clone());
        let _ = tokio::time::timeout(timeout, async {
            loop {
                let connected = *peers.borrow_and_update();
                let all_failed = {
                    let states = states.borrow_and_update();
                    !states.is_empty() && states.iter().all(|b| b.failures >= BOOTSTRAP_ATTEMPTS)
                };
                if connected >= n || (connected == 0 && all_failed) {
                    return;
                }
                tokio::select! {
                    r = peers.changed() => if r.is_err() { return },
                    r = states.changed() => if r.is_err() { return },
                }
            }
        })
        .await;
        self.bootstrap_now()
    }
}
