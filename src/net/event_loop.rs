//! The event loop: the one task that owns the `Swarm`, and [`NetHandle`],
//! the cheap cloneable handle the rest of the program talks to it with.
//!
//! Every [`Command`] travels over one bounded channel and carries its own
//! reply channel; pending replies wait in maps keyed by request or query id.
//! Inbound file-protocol requests leave the loop over another bounded
//! channel (to `net::serve`), and their answers come back as
//! [`Command::Respond`]. The loop never touches the disk, never hashes and
//! never waits on anything but the swarm and its channels: a full inbound
//! queue is answered `Busy` instead of waiting.
//!
//! It also runs discovery: it dials the bootstrap addresses at start and
//! again while it is connected to no peer, refreshes the routing table
//! every `behaviour::PERIODIC_BOOTSTRAP` (and lets no other bootstrap run),
//! feeds Kademlia with the addresses identify reports, and republishes its
//! provider records when it (re)joins a network.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cid::Cid;
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    kad::{
        self, GetClosestPeersOk, GetProvidersOk, K_VALUE, QueryId, QueryResult, RecordKey,
        store::RecordStore,
    },
    multiaddr::Protocol,
    request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel},
    swarm::{ConnectionId, DialError, SwarmEvent, dial_opts::DialOpts, dial_opts::PeerCondition},
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::net::{
    behaviour::{Behaviour, BehaviourEvent, PERIODIC_BOOTSTRAP, provider_key},
    codec::{ErrorCode, Request, RequestFrame, Response},
    lanes::{ActiveStreams, Lanes},
};

/// Commands queued for the event loop.
pub const COMMAND_QUEUE: usize = 1024;
/// Inbound requests queued for the responder before the loop answers `Busy`.
pub const INBOUND_QUEUE: usize = 1024;
/// Providers buffered per provider lookup (more are dropped: they are hints).
pub const PROVIDER_QUEUE: usize = 256;
/// Peers that must have answered a provider lookup with providers before
/// it stops. Every provider publishes its record to the same closest
/// peers, so one answer lists nearly all of them; a second guards against
/// one stale or lying record holder. Without this, the lookup goes on until
/// the [`KAD_REPLICATION`](crate::net::behaviour::KAD_REPLICATION) closest
/// peers have all answered (`bench dht`, 100 nodes: a median of 26
/// requests per lookup instead of 4).
pub const PROVIDER_ANSWERS: usize = 2;
/// Dials of every bootstrap address that fail in a row before a one-shot
/// command or a get gives up waiting for a peer (a node keeps trying).
pub const BOOTSTRAP_ATTEMPTS: u32 = 2;
/// How often unreachable bootstrap addresses are dialed again, while the
/// node is connected to no peer.
pub const BOOTSTRAP_RETRY: Duration = Duration::from_secs(3);
/// A join (the lookup of the node's own id) that no peer answered, or that
/// left the routing table with fewer than `K_VALUE` peers, is made again
/// after this, doubled each time, up to `behaviour::PERIODIC_BOOTSTRAP`,
/// and at once when a bootstrap peer connects. A join whose bootstrap peer
/// could not be reached at the first dial (refused, or timed out) otherwise
/// left the node out of every other node's table until its next refresh,
/// 10 minutes on: in `bench dht` at 1,000 nodes, some runs lost 56–75 nodes
/// of every wave past 500 with just those signs.
pub const JOIN_RETRY: Duration = Duration::from_secs(3);
/// Peers whose addresses the loop remembers (beyond Kademlia's table).
pub const ADDRESS_BOOK_SIZE: usize = 4096;

/// `GetBlock` requests from peers being answered at once. Each holds a
/// block (up to 2 MiB) until it is sent, so this bounds the memory of
/// serving. More wait their turn: peers take turns, one request each, so
/// a peer that asks for much gets no more than one that asks for little.
pub const MAX_INBOUND_BLOCKS: usize = 48;
/// `GetBlock` requests one peer may have waiting or being answered; more
/// are answered `Busy`.
pub const MAX_INBOUND_BLOCKS_PER_PEER: usize = 32;
/// `GetBlock` requests waiting or being answered in all; more are
/// answered `Busy`.
pub const MAX_WAITING_BLOCKS: usize = 1024;
/// Other requests from peers (`Have`, `Replicate`, `Delete`) being
/// answered at once, in all and per peer; more are answered `Busy`.
pub const MAX_INBOUND_OTHER: usize = 128;
pub const MAX_INBOUND_OTHER_PER_PEER: usize = 16;
/// Requests to one peer waiting for room (beyond those in flight); more
/// fail at once.
pub const MAX_QUEUED_PER_PEER: usize = 1024;
/// DHT lookups running for the rest of the program at once; more get an
/// empty answer.
pub const MAX_QUERIES: usize = 256;
/// Peers blocked at once (for sending wrong blocks), and for how long.
pub const MAX_BLOCKED: usize = 4096;
pub const BLOCK_DURATION: Duration = Duration::from_secs(3600);
/// Established connections kept free for newcomers: when fewer are left,
/// the connection of the peer idle longest that the node does not need
/// (not a bootstrap peer, nothing in flight either way) is closed.
pub const FREE_CONNECTIONS: usize = 32;
/// Connections kept open without need: above [`CONNECTIONS_HIGH`], those
/// idle for [`CONNECTION_GRACE`] are closed, idlest first, down to
/// [`CONNECTIONS_LOW`]. A DHT node talks to hundreds of peers (a join alone
/// asks 300–500 at 200–300 nodes) and each connection costs some 60 KiB;
/// kept until their idle timeout they made a full mesh (about 15 MiB per node at
/// 1,000 nodes in `bench dht`). Kademlia keeps a peer in its table when its
/// connection closes and dials it again when it needs it. (IPFS: 32 and 96,
/// 20 s grace.)
pub const CONNECTIONS_HIGH: usize = 96;
pub const CONNECTIONS_LOW: usize = 64;
pub const CONNECTION_GRACE: Duration = Duration::from_secs(20);
/// How often the loop cleans up (expired blocks and provider records).
pub const HOUSEKEEPING: Duration = Duration::from_secs(30);

/// File-protocol requests in flight to one peer; more wait in a queue. Below
/// the peer's stream limit ([`crate::net::behaviour::MAX_CONCURRENT_STREAMS`]),
/// so many concurrent downloads never have streams refused.
pub const MAX_OUTBOUND_PER_PEER: usize = 128;

type Reply = oneshot::Sender<Result<Response, RequestError>>;

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
    /// answers with the peers that stored it, or why none did.
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        keep: Duration,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Streams the values found under `key` (unchecked) into `found`;
    /// closes it when done. Dropping the receiver ends the lookup.
    GetRecord {
        key: Vec<u8>,
        found: mpsc::Sender<Vec<u8>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    /// The other peers whose live provider records for `root` (if given)
    /// this node holds, and how many such records it holds in all.
    KnownProviders {
        root: Option<Cid>,
        reply: oneshot::Sender<(Vec<PeerId>, usize)>,
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
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    listen_addrs: watch::Receiver<Vec<Multiaddr>>,
    connected: watch::Receiver<usize>,
    bootstrap: watch::Receiver<Vec<BootstrapState>>,
    counters: Arc<Counters>,
    lanes: Arc<Lanes>,
}

/// Running totals of a node's network work, for benchmarks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections established, both ways.
    pub connections_opened: AtomicU64,
    /// DHT requests this node answered.
    pub dht_requests_answered: AtomicU64,
}

impl NetHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
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
        self.record_store(None).await.1
    }

    async fn record_store(&self, root: Option<Cid>) -> (Vec<PeerId>, usize) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::KnownProviders { root, reply }).await.is_err() {
            return (Vec::new(), 0);
        }
        rx.await.unwrap_or_default()
    }

    /// Withdraws this node's provider record for `root`.
    pub async fn unprovide(&self, root: Cid) {
        let _ = self.send(Command::Unprovide { root }).await;
    }

    /// Starts a DHT lookup of the providers of `root`; they arrive on the
    /// returned channel, which closes when the lookup ends (once
    /// [`PROVIDER_ANSWERS`] peers have answered with providers, or every
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

    /// Publishes a value record in the DHT (this node's store first):
    /// how many other peers stored it, or why none did.
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
        let _ = self.send(Command::GetRecord { key, found }).await;
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

/// The kinds of inbound work, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Work {
    Block,
    Other,
}

impl Work {
    fn of(request: &Request) -> Work {
        match request {
            Request::GetBlock { .. } => Work::Block,
            _ => Work::Other,
        }
    }

    /// At most in all, and per peer.
    fn limits(self) -> (usize, usize) {
        match self {
            Work::Block => (MAX_WAITING_BLOCKS, MAX_INBOUND_BLOCKS_PER_PEER),
            Work::Other => (MAX_INBOUND_OTHER, MAX_INBOUND_OTHER_PER_PEER),
        }
    }
}

/// What one DHT provider lookup cost, counted by the event loop as it
/// runs; shared with whoever started it.
#[derive(Debug, Default)]
pub struct LookupCost {
    /// Kademlia requests sent by the lookups.
    dht_requests: AtomicU32,
    /// Lookups started and not yet over.
    running: AtomicU32,
    /// `Have` probes sent (counted by discovery, see `net::discover`).
    probes: AtomicU32,
}

/// A snapshot of a [`LookupCost`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub dht_requests: u32,
    pub probes: u32,
    /// Lookups still running when it was taken.
    pub running: u32,
}

impl LookupCost {
    pub fn snapshot(&self) -> Cost {
        Cost {
            dht_requests: self.dht_requests.load(Ordering::Relaxed),
            probes: self.probes.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
        }
    }

    pub fn add_probes(&self, n: u32) {
        self.probes.fetch_add(n, Ordering::Relaxed);
    }
}

/// A provider lookup under way.
struct ProviderQuery {
    found: mpsc::Sender<PeerId>,
    cost: Arc<LookupCost>,
    /// Requests already added to `cost`.
    counted: u32,
    /// Peers that answered with providers.
    answers: usize,
}

/// A bootstrap address and the peer it led to, once known.
struct Bootstrap {
    /// The address as given, and without its `/p2p` part.
    given: Multiaddr,
    addr: Multiaddr,
    peer: Option<PeerId>,
    dialing: Option<ConnectionId>,
    /// Why the last dial failed, until one succeeds.
    error: Option<String>,
    /// Dials failed since the last success.
    failures: u32,
}

/// How a bootstrap address fares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapState {
    /// The address as given.
    pub addr: Multiaddr,
    pub connected: bool,
    /// Why the last dial failed, if it did and none succeeded since.
    pub error: Option<String>,
    /// Dials failed since the last success.
    pub failures: u32,
}

/// The loop itself; see the module docs.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<InboundRequest>,
    pending_requests: HashMap<OutboundRequestId, (PeerId, Reply)>,
    /// Requests in flight per peer, and those waiting for room.
    outstanding: HashMap<PeerId, usize>,
    queued: HashMap<PeerId, VecDeque<(Request, Reply)>>,
    provider_queries: HashMap<QueryId, ProviderQuery>,
    closest_queries: HashMap<QueryId, oneshot::Sender<Vec<PeerId>>>,
    put_queries: HashMap<QueryId, oneshot::Sender<Result<usize, String>>>,
    get_queries: HashMap<QueryId, mpsc::Sender<Vec<u8>>>,
    /// Inbound requests being answered, by kind, per peer and in all.
    inbound_work: HashMap<InboundRequestId, (PeerId, Work)>,
    inbound_per_peer: HashMap<(PeerId, Work), usize>,
    inbound_total: HashMap<Work, usize>,
    /// Block requests waiting their turn, per peer, the peers in turn, and
    /// those being answered.
    blocks_waiting: HashMap<PeerId, VecDeque<(InboundRequestId, InboundRequest)>>,
    block_turns: VecDeque<PeerId>,
    blocks_serving: HashSet<InboundRequestId>,
    /// Peers blocked, and when each was.
    blocked_at: HashMap<PeerId, Instant>,
    /// When each connected peer last did something for or with us.
    last_active: HashMap<PeerId, Instant>,
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    bootstrap: Vec<Bootstrap>,
    listen_addrs: watch::Sender<Vec<Multiaddr>>,
    connected: watch::Sender<usize>,
    bootstrap_state: watch::Sender<Vec<BootstrapState>>,
    counters: Arc<Counters>,
    /// Peers with a block stream open, either way (they are busy with us).
    block_streams: ActiveStreams,
    /// Whether this is a node that listens (not a one-shot client).
    listens: bool,
    /// Whether the node has joined the DHT: a join lookup has been answered
    /// since it was last alone.
    joined: bool,
    /// The routing-table refresh running now, if any (the only Kademlia
    /// bootstrap let run: see [`EventLoop::end_automatic_bootstraps`]).
    refresh: Option<QueryId>,
    /// The join's lookup running now; when it is made again, and the wait
    /// after that (see [`JOIN_RETRY`]).
    join: Option<QueryId>,
    next_join: Option<tokio::time::Instant>,
    join_backoff: Duration,
}

impl EventLoop {
    /// Wraps a swarm that already listens. Returns the loop, its handle and
    /// the receiver of inbound requests.
    pub fn new(
        swarm: Swarm<Behaviour>,
        bootstrap: Vec<Multiaddr>,
    ) -> (EventLoop, NetHandle, mpsc::Receiver<InboundRequest>) {
        let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (listen_tx, listen_rx) = watch::channel(Vec::new());
        let (connected_tx, connected_rx) = watch::channel(0);
        let local_peer_id = *swarm.local_peer_id();
        // Its listeners report their addresses only once the swarm runs;
        // a node that listens is the one whose DHT mode is server.
        let swarm_listens = swarm.behaviour().kad.mode() == libp2p::kad::Mode::Server;
        let bootstrap = bootstrap
            .into_iter()
            .map(|given: Multiaddr| {
                let (addr, peer) = split_peer_id(given.clone());
                Bootstrap { given, addr, peer, dialing: None, error: None, failures: 0 }
            })
            .collect::<Vec<_>>();
        let (bootstrap_tx, bootstrap_rx) = watch::channel(Vec::new());
        let block_streams = ActiveStreams::default();
        let control = swarm.behaviour().blocks.new_control();
        let handle = NetHandle {
            lanes: Arc::new(Lanes::new(control, block_streams.clone())),
            commands: command_tx,
            local_peer_id,
            listen_addrs: listen_rx,
            connected: connected_rx,
            bootstrap: bootstrap_rx,
            counters: Arc::default(),
        };
        let event_loop = EventLoop {
            swarm,
            commands: command_rx,
            inbound: inbound_tx,
            pending_requests: HashMap::new(),
            outstanding: HashMap::new(),
            queued: HashMap::new(),
            provider_queries: HashMap::new(),
            closest_queries: HashMap::new(),
            put_queries: HashMap::new(),
            get_queries: HashMap::new(),
            inbound_work: HashMap::new(),
            inbound_per_peer: HashMap::new(),
            inbound_total: HashMap::new(),
            blocks_waiting: HashMap::new(),
            block_turns: VecDeque::new(),
            blocks_serving: HashSet::new(),
            blocked_at: HashMap::new(),
            last_active: HashMap::new(),
            addresses: HashMap::new(),
            bootstrap,
            listen_addrs: listen_tx,
            connected: connected_tx,
            bootstrap_state: bootstrap_tx,
            counters: handle.counters.clone(),
            block_streams,
            listens: swarm_listens,
            joined: false,
            refresh: None,
            join: None,
            next_join: None,
            join_backoff: JOIN_RETRY,
        };
        (event_loop, handle, inbound_rx)
    }

    /// Runs until shut down or until every handle is dropped.
    pub async fn run(mut self) {
        for b in &self.bootstrap {
            if let Some(peer) = b.peer {
                self.swarm.behaviour_mut().kad.add_address(&peer, b.addr.clone());
            }
        }
        self.dial_bootstrap();
        self.publish_bootstrap();
        let mut retry = tokio::time::interval(BOOTSTRAP_RETRY);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        let mut refresh = tokio::time::interval_at(
            tokio::time::Instant::now() + PERIODIC_BOOTSTRAP,
            PERIODIC_BOOTSTRAP,
        );
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => {
                    self.handle_event(event);
                    self.end_automatic_bootstraps();
                }
                // Only while alone: a node that has joined finds its peers
                // through the DHT. (Redialing a bootstrap node that closed
                // an idle connection made every node of a large network
                // dial it every few seconds: at 600 nodes of `bench dht`
                // its 512 connections were full and new nodes could not
                // join.)
                _ = retry.tick() => if self.swarm.connected_peers().next().is_none() {
                    self.dial_bootstrap();
                } else {
                    self.join_again();
                },
                _ = housekeeping.tick() => self.housekeeping(),
                _ = refresh.tick() => if self.refresh.is_none() {
                    self.refresh = self.swarm.behaviour_mut().kad.bootstrap().ok();
                },
            }
        }
        tracing::debug!("event loop stopped");
    }

    /// Ends every Kademlia bootstrap but our periodic refresh, before it
    /// sends more than its first few requests. libp2p starts one whenever a
    /// peer enters a routing table of fewer than 20 (it cannot be turned
    /// off), that is on every join, and again once it ends if more peers
    /// joined meanwhile: a lookup of our id, then one in each farther
    /// bucket, ~500 requests, 1.6 times per join at 300 nodes of `bench
    /// dht`. A join is our lookup of our own id (`handle_kad_event`), ~50
    /// requests; the farther buckets fill as the node looks things up and
    /// others look it up, and the periodic refresh completes them.
    fn end_automatic_bootstraps(&mut self) {
        let ours = self.refresh;
        for mut query in self.swarm.behaviour_mut().kad.iter_queries_mut() {
            if matches!(query.info(), kad::QueryInfo::Bootstrap { .. }) && Some(query.id()) != ours
            {
                query.finish();
            }
        }
    }

    /// Makes the join's lookup again once it is due (see [`JOIN_RETRY`]),
    /// with the bootstrap peers back in the table if it lost them all.
    fn join_again(&mut self) {
        let due = self.next_join.is_some_and(|at| at <= tokio::time::Instant::now());
        if !due || self.join.is_some() {
            return;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        if kad.kbuckets().all(|b| b.num_entries() == 0) {
            for b in &self.bootstrap {
                if let Some(peer) = b.peer {
                    kad.add_address(&peer, b.addr.clone());
                }
            }
        }
        tracing::debug!("joining the DHT again");
        self.start_join();
    }

    /// Starts the join: a lookup of the node's own id.
    fn start_join(&mut self) {
        self.next_join = None;
        let local = *self.swarm.local_peer_id();
        self.join = Some(self.swarm.behaviour_mut().kad.get_closest_peers(local));
    }

    /// The join's lookup ended. Answered by some peer, the node has joined:
    /// it announces what it holds to the peers now reachable. Unanswered,
    /// or with fewer than `K_VALUE` peers in the table, it is made again
    /// (see [`JOIN_RETRY`]).
    fn join_ended(&mut self, answered: bool) {
        self.join = None;
        let kad = &mut self.swarm.behaviour_mut().kad;
        if answered && !self.joined {
            self.joined = true;
            tracing::debug!("joined the DHT");
            let provided: Vec<RecordKey> =
                kad.store_mut().provided().map(|r| r.key.clone()).collect();
            for key in provided {
                let _ = kad.start_providing(key);
            }
        }
        let known: usize = kad.kbuckets().map(|b| b.num_entries()).sum();
        if !answered || known < libp2p::kad::K_VALUE.get() {
            self.next_join = Some(tokio::time::Instant::now() + self.join_backoff);
            self.join_backoff = (self.join_backoff * 2).min(PERIODIC_BOOTSTRAP);
        } else {
            self.join_backoff = JOIN_RETRY;
        }
    }

    /// Whether `peer` is the peer of one of the bootstrap addresses.
    fn is_bootstrap_peer(&self, peer: &PeerId) -> bool {
        self.bootstrap.iter().any(|b| b.peer.as_ref() == Some(peer))
    }

    /// Tells the handles how the bootstrap addresses fare.
    fn publish_bootstrap(&self) {
        let states = self
            .bootstrap
            .iter()
            .map(|b| BootstrapState {
                addr: b.given.clone(),
                connected: b.peer.is_some_and(|p| self.swarm.is_connected(&p)),
                error: b.error.clone(),
                failures: b.failures,
            })
            .collect();
        self.bootstrap_state.send_replace(states);
    }

    /// Dials every bootstrap address that is neither connected nor dialing.
    fn dial_bootstrap(&mut self) {
        for b in &mut self.bootstrap {
            if b.dialing.is_some() || b.peer.is_some_and(|p| self.swarm.is_connected(&p)) {
                continue;
            }
            let mut addr = b.addr.clone();
            let opts = match b.peer {
                Some(peer) => {
                    addr.push(Protocol::P2p(peer));
                    DialOpts::peer_id(peer)
                        .addresses(vec![b.addr.clone()])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build()
                }
                None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
            };
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => b.dialing = Some(id),
                Err(e) => tracing::debug!("cannot dial bootstrap {addr}: {e}"),
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        let queries = self.queries();
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Command::Request { peer, request, reply } => {
                if peer == self.local_peer_id() {
                    let _ = reply.send(Err(RequestError::Failed {
                        peer,
                        reason: "cannot ask ourselves".into(),
                    }));
                    return;
                }
                if self.outstanding.get(&peer).copied().unwrap_or(0) >= MAX_OUTBOUND_PER_PEER {
                    let queue = self.queued.entry(peer).or_default();
                    if queue.len() >= MAX_QUEUED_PER_PEER {
                        let reason = "too many requests queued for it".into();
                        let _ = reply.send(Err(RequestError::Failed { peer, reason }));
                    } else {
                        queue.push_back((request, reply));
                    }
                } else {
                    self.send_request(peer, request, reply);
                }
            }
            Command::Respond { channel, response } => {
                let _ = behaviour.file.send_response(channel, response);
            }
            Command::Provide { root } => {
                if let Err(e) = behaviour.kad.start_providing(provider_key(&root)) {
                    tracing::warn!("cannot provide {root}: {e}");
                }
            }
            Command::Unprovide { root } => {
                behaviour.kad.stop_providing(&provider_key(&root));
            }
            Command::KnownProviders { root, reply } => {
                let store = behaviour.kad.store_mut();
                let live = root.map_or_else(Vec::new, |root| {
                    store.foreign_providers(&provider_key(&root), Instant::now())
                });
                let _ = reply.send((live, store.foreign_count()));
            }
            Command::FindProviders { root, found, cost } => {
                if queries < MAX_QUERIES {
                    let id = behaviour.kad.get_providers(provider_key(&root));
                    cost.running.fetch_add(1, Ordering::Relaxed);
                    let query = ProviderQuery { found, cost, counted: 0, answers: 0 };
                    self.provider_queries.insert(id, query);
                }
            }
            Command::RoutingTable { reply } => {
                let peers = behaviour
                    .kad
                    .kbuckets()
                    .flat_map(|bucket| {
                        bucket.iter().map(|entry| *entry.node.key.preimage()).collect::<Vec<_>>()
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::PutRecord { key, value, keep, reply } => {
                if queries >= MAX_QUERIES {
                    let _ = reply.send(Err("too many DHT queries under way".into()));
                    return;
                }
                let record = kad::Record {
                    key: RecordKey::new(&key),
                    value,
                    publisher: None,
                    expires: Some(Instant::now() + keep),
                };
                match behaviour.kad.put_record(record, kad::Quorum::One) {
                    Ok(id) => {
                        self.put_queries.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(format!("refused by this node's store: {e:?}")));
                    }
                }
            }
            Command::GetRecord { key, found } => {
                if queries < MAX_QUERIES {
                    let id = behaviour.kad.get_record(RecordKey::new(&key));
                    self.get_queries.insert(id, found);
                }
            }
            Command::ClosestPeers { key, reply } => {
                if queries < MAX_QUERIES {
                    let id = behaviour.kad.get_closest_peers(key);
                    self.closest_queries.insert(id, reply);
                } else {
                    let _ = reply.send(Vec::new());
                }
            }
            Command::Peers { reply } => {
                let peers = self
                    .swarm
                    .connected_peers()
                    .map(|p| PeerInfo {
                        peer_id: *p,
                        addrs: self.addresses.get(p).cloned().unwrap_or_default(),
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::BlockPeer { peer } => {
                tracing::warn!("blocking peer {peer}");
                behaviour.blocked.block_peer(peer);
                behaviour.kad.remove_peer(&peer);
                self.blocked_at.insert(peer, Instant::now());
                if self.blocked_at.len() > MAX_BLOCKED {
                    // The list is full: the block placed first ends first.
                    let oldest = self.blocked_at.iter().min_by_key(|(_, at)| **at).map(|(p, _)| *p);
                    if let Some(oldest) = oldest {
                        self.unblock(oldest);
                    }
                }
            }
            Command::BlockedPeers { reply } => {
                let _ = reply.send(behaviour.blocked.blocked_peers().iter().copied().collect());
            }
            Command::Dial { addr } => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!("cannot dial {addr}: {e}");
                }
            }
            Command::Shutdown { .. } => unreachable!("handled by run"),
        }
    }

    /// DHT queries this node's users have under way.
    fn queries(&self) -> usize {
        self.provider_queries.len()
            + self.closest_queries.len()
            + self.put_queries.len()
            + self.get_queries.len()
    }

    fn send_request(&mut self, peer: PeerId, request: Request, reply: Reply) {
        if !self.swarm.is_connected(&peer)
            && let Some(addrs) = self.addresses.get(&peer)
        {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs.clone())
                .extend_addresses_through_behaviour()
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let _ = self.swarm.dial(opts);
        }
        let id = self.swarm.behaviour_mut().file.send_request(&peer, RequestFrame::Valid(request));
        self.pending_requests.insert(id, (peer, reply));
        *self.outstanding.entry(peer).or_default() += 1;
    }

    fn unblock(&mut self, peer: PeerId) {
        self.blocked_at.remove(&peer);
        self.swarm.behaviour_mut().blocked.unblock_peer(peer);
    }

    /// Ends blocks that are over, and forgets expired provider records.
    fn housekeeping(&mut self) {
        self.trim_connections();
        let over: Vec<PeerId> = self
            .blocked_at
            .iter()
            .filter(|(_, at)| at.elapsed() >= BLOCK_DURATION)
            .map(|(p, _)| *p)
            .collect();
        for peer in over {
            self.unblock(peer);
        }
        self.swarm.behaviour_mut().kad.store_mut().remove_expired(Instant::now());
        // Lookups nobody listens to any more (each also stops at its next
        // answer).
        let abandoned: Vec<QueryId> = self
            .provider_queries
            .iter()
            .filter(|(_, q)| q.found.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in abandoned {
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
        }
    }

    /// Whether an inbound request of `work` from `peer` fits the budgets;
    /// counts it if so.
    fn admit(&mut self, id: InboundRequestId, peer: PeerId, work: Work) -> bool {
        let (total_limit, peer_limit) = work.limits();
        let total = self.inbound_total.entry(work).or_default();
        let mine = self.inbound_per_peer.entry((peer, work)).or_default();
        if *total >= total_limit || *mine >= peer_limit {
            if *mine == 0 {
                self.inbound_per_peer.remove(&(peer, work));
            }
            return false;
        }
        *total += 1;
        *mine += 1;
        self.inbound_work.insert(id, (peer, work));
        true
    }

    /// Hands block requests to the responder, peers taking turns, while
    /// fewer than [`MAX_INBOUND_BLOCKS`] are being answered.
    fn serve_blocks(&mut self) {
        while self.blocks_serving.len() < MAX_INBOUND_BLOCKS {
            let Some(peer) = self.block_turns.pop_front() else { return };
            let Some(queue) = self.blocks_waiting.get_mut(&peer) else { continue };
            let next = queue.pop_front();
            if queue.is_empty() {
                self.blocks_waiting.remove(&peer);
            } else {
                self.block_turns.push_back(peer);
            }
            let Some((id, inbound)) = next else { continue };
            if !self.inbound_work.contains_key(&id) {
                continue; // it failed while it waited
            }
            self.blocks_serving.insert(id);
            self.forward(inbound);
        }
    }

    /// Hands an inbound request to the responder, or answers `Busy` if its
    /// queue is full.
    fn forward(&mut self, inbound: InboundRequest) {
        if let Err(e) = self.inbound.try_send(inbound) {
            let inbound = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
            };
            let busy = Response::error(ErrorCode::Busy, "too many requests queued");
            let _ = self.swarm.behaviour_mut().file.send_response(inbound.channel, busy);
        }
    }

    /// An inbound request was answered (or failed): its budget is free.
    fn inbound_done(&mut self, id: InboundRequestId) {
        if self.blocks_serving.remove(&id) {
            self.serve_blocks();
        }
        let Some((peer, work)) = self.inbound_work.remove(&id) else { return };
        if let Some(total) = self.inbound_total.get_mut(&work) {
            *total -= 1;
        }
        if let Some(mine) = self.inbound_per_peer.get_mut(&(peer, work)) {
            *mine -= 1;
            if *mine == 0 {
                self.inbound_per_peer.remove(&(peer, work));
            }
        }
    }

    /// Keeps the connections within bounds: when fewer than
    /// [`FREE_CONNECTIONS`] are left, closes that of the peer idle longest
    /// among those the node does not need (not a bootstrap peer, nothing in
    /// flight either way, no block stream open); above [`CONNECTIONS_HIGH`], closes such
    /// connections idle for [`CONNECTION_GRACE`] at least, idlest first,
    /// down to [`CONNECTIONS_LOW`].
    fn trim_connections(&mut self) {
        let established = self.swarm.network_info().connection_counters().num_established();
        let established = established as usize;
        let (keep, grace) =
            if established + FREE_CONNECTIONS >= crate::net::behaviour::MAX_ESTABLISHED as usize {
                (established - 1, Duration::ZERO)
            } else if established > CONNECTIONS_HIGH {
                (CONNECTIONS_LOW, CONNECTION_GRACE)
            } else {
                return;
            };
        let needed: HashSet<PeerId> = self
            .bootstrap
            .iter()
            .filter_map(|b| b.peer)
            .chain(self.outstanding.keys().copied())
            .chain(self.inbound_work.values().map(|(p, _)| *p))
            .chain(self.block_streams.peers())
            .collect();
        let mut idle: Vec<(Instant, PeerId)> = self
            .swarm
            .connected_peers()
            .filter(|p| !needed.contains(p))
            .map(|p| (self.last_active.get(p).copied().unwrap_or_else(Instant::now), *p))
            .filter(|(at, _)| at.elapsed() >= grace)
            .collect();
        idle.sort_unstable();
        for (_, peer) in idle.into_iter().take(established.saturating_sub(keep)) {
            tracing::trace!("closing the idle connection of {peer}: enough connections");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Forgets a finished request, sends the next one queued for its peer,
    /// and returns the finished request's reply channel.
    fn request_done(&mut self, id: OutboundRequestId) -> Option<Reply> {
        let (peer, reply) = self.pending_requests.remove(&id)?;
        if let Some(n) = self.outstanding.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.outstanding.remove(&peer);
            }
        }
        while let Some(queue) = self.queued.get_mut(&peer) {
            let Some((request, next)) = queue.pop_front() else {
                self.queued.remove(&peer);
                break;
            };
            if queue.is_empty() {
                self.queued.remove(&peer);
            }
            // Skip requests whose caller stopped waiting.
            if !next.is_closed() {
                self.send_request(peer, request, next);
                break;
            }
        }
        Some(reply)
    }

    fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    fn handle_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::File(event)) => self.handle_file_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.handle_kad_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(
                libp2p::identify::Event::Received { peer_id, info, .. },
            )) => {
                let kad_ok = info.protocols.contains(&crate::net::behaviour::KAD_PROTOCOL);
                let addrs: Vec<Multiaddr> =
                    info.listen_addrs.into_iter().filter(is_dialable).take(16).collect();
                if kad_ok {
                    self.add_to_routing(peer_id, &addrs);
                }
                self.remember(peer_id, addrs);
            }
            SwarmEvent::Behaviour(_) => {}
            SwarmEvent::NewListenAddr { address, .. } => {
                let mut address = address;
                address.push(Protocol::P2p(self.local_peer_id()));
                tracing::debug!("listening on {address}");
                self.listen_addrs.send_modify(|a| {
                    if !a.contains(&address) {
                        a.push(address)
                    }
                });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let mut address = address;
                address.push(Protocol::P2p(self.local_peer_id()));
                self.listen_addrs.send_modify(|a| a.retain(|x| *x != address));
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                tracing::debug!("connected to {peer_id} at {}", endpoint.get_remote_address());
                self.counters.connections_opened.fetch_add(1, Ordering::Relaxed);
                self.last_active.entry(peer_id).or_insert_with(Instant::now);
                self.trim_connections();
                let mut to_bootstrap = false;
                for b in &mut self.bootstrap {
                    if b.dialing == Some(connection_id) || b.peer == Some(peer_id) {
                        to_bootstrap = true;
                        b.dialing = None;
                        b.error = None;
                        b.failures = 0;
                        // Back in the table if a failed dial took it out.
                        b.peer = Some(peer_id);
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, b.addr.clone());
                    }
                }
                self.publish_bootstrap();
                self.connected.send_replace(self.swarm.connected_peers().count());
                // Not joined, and connected to a bootstrap peer at last, or
                // again after being alone to peers the table still holds (no
                // new entry to start the join).
                if !self.joined && self.join.is_none() && (to_bootstrap || self.next_join.is_none())
                {
                    self.start_join();
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                if num_established == 0 {
                    tracing::debug!("disconnected from {peer_id}");
                    self.last_active.remove(&peer_id);
                    if self.is_bootstrap_peer(&peer_id) {
                        self.publish_bootstrap();
                    }
                }
                let connected = self.swarm.connected_peers().count();
                if connected == 0 {
                    // Alone again: republish once we rejoin.
                    self.joined = false;
                    self.next_join = None;
                    self.join_backoff = JOIN_RETRY;
                }
                self.connected.send_replace(connected);
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                tracing::debug!("dial {peer_id:?} failed: {error}");
                let mut changed = false;
                for b in &mut self.bootstrap {
                    if b.dialing == Some(connection_id) {
                        b.dialing = None;
                        let reason = dial_error_reason(&error, b.peer);
                        if b.error.is_none() && self.listens {
                            // A one-shot client reports it itself.
                            tracing::warn!(
                                "cannot reach bootstrap {}: {reason}; trying again every {} s",
                                b.given,
                                BOOTSTRAP_RETRY.as_secs()
                            );
                        }
                        b.error = Some(reason);
                        b.failures += 1;
                        changed = true;
                    }
                }
                if changed {
                    self.publish_bootstrap();
                }
                // A peer that cannot be reached leaves the routing table,
                // which makes room in its bucket (see `add_to_routing`);
                // libp2p would keep it until a newcomer replaced it.
                if let Some(peer) = peer_id
                    && !self.is_bootstrap_peer(&peer)
                    && matches!(
                        error,
                        DialError::Transport(_)
                            | DialError::WrongPeerId { .. }
                            | DialError::NoAddresses
                    )
                    && !self.swarm.is_connected(&peer)
                {
                    self.swarm.behaviour_mut().kad.remove_peer(&peer);
                }
            }
            _ => {}
        }
    }

    /// Puts a peer that speaks the DHT into the routing table, or updates
    /// its addresses there, if its bucket has room or holds it already.
    /// A full bucket keeps the peers it has (Kademlia prefers peers that
    /// have stayed); one that cannot be dialed any more is dropped when a
    /// query or a request tries it, which makes room. libp2p's own rule
    /// instead dials the oldest disconnected entry of the full bucket, to
    /// test it, for every new peer that connects: with idle connections
    /// trimmed most entries are disconnected, and each test is a new
    /// connection and a new peer for the other side. In `bench dht` at 700 nodes that made
    /// 1.2–1.35 new connections per DHT request, and the wave settled at
    /// 94.7% of the closest peers known with 17 nodes in no table; with
    /// this rule, 0.85–0.9 and 99.4% with 1.
    fn add_to_routing(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let room = kad.kbucket(peer).is_some_and(|bucket| {
            bucket.num_entries() < K_VALUE.get()
                || bucket.iter().any(|e| e.node.key.preimage() == &peer)
        });
        if room {
            for addr in addrs {
                kad.add_address(&peer, addr.clone());
            }
        }
    }

    fn remember(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if addrs.is_empty() {
            return;
        }
        if self.addresses.len() >= ADDRESS_BOOK_SIZE && !self.addresses.contains_key(&peer) {
            // Forget a peer we are not connected to.
            let victim = self.addresses.keys().find(|p| !self.swarm.is_connected(p)).copied();
            match victim {
                Some(v) => {
                    self.addresses.remove(&v);
                }
                None => return,
            }
        }
        self.addresses.insert(peer, addrs);
    }

    fn handle_file_event(&mut self, event: request_response::Event<RequestFrame, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message: Message::Request { request: RequestFrame::Malformed(reason), channel, .. },
                ..
            } => {
                // Answered here, at once: the requester learns what was
                // wrong instead of seeing the stream dropped (spec §7).
                tracing::debug!("malformed request from {peer}: {reason}");
                let answer = Response::error(ErrorCode::BadRequest, reason);
                let _ = self.swarm.behaviour_mut().file.send_response(channel, answer);
            }
            Event::Message {
                peer,
                message:
                    Message::Request { request: RequestFrame::Valid(request), channel, request_id },
                ..
            } => {
                self.last_active.insert(peer, Instant::now());
                let work = Work::of(&request);
                if !self.admit(request_id, peer, work) {
                    let busy = Response::error(ErrorCode::Busy, "too many requests in progress");
                    let _ = self.swarm.behaviour_mut().file.send_response(channel, busy);
                    return;
                }
                let inbound = InboundRequest { peer, request, channel };
                match work {
                    Work::Block => {
                        let queue = self.blocks_waiting.entry(peer).or_default();
                        if queue.is_empty() {
                            self.block_turns.push_back(peer);
                        }
                        queue.push_back((request_id, inbound));
                        self.serve_blocks();
                    }
                    Work::Other => self.forward(inbound),
                }
            }
            Event::Message {
                peer, message: Message::Response { request_id, response }, ..
            } => {
                self.last_active.insert(peer, Instant::now());
                if let Some(reply) = self.request_done(request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(reply) = self.request_done(request_id) {
                    let error = match error {
                        request_response::OutboundFailure::Timeout => RequestError::Timeout {
                            peer,
                            secs: crate::net::behaviour::FILE_REQUEST_TIMEOUT.as_secs(),
                        },
                        other => RequestError::Failed { peer, reason: other.to_string() },
                    };
                    let _ = reply.send(Err(error));
                }
            }
            Event::InboundFailure { peer, error, request_id, .. } => {
                tracing::debug!("inbound request from {peer} failed: {error}");
                self.inbound_done(request_id);
            }
            Event::ResponseSent { request_id, .. } => self.inbound_done(request_id),
        }
    }

    /// A provider lookup progressed: hands on the providers found (dialing
    /// them while the lookup still knows their addresses), counts its
    /// requests, and ends it once it has [`PROVIDER_ANSWERS`] answers with
    /// providers or nobody waits for it.
    fn provider_progress(
        &mut self,
        id: QueryId,
        providers: HashSet<PeerId>,
        last: bool,
        requests: u32,
    ) {
        let local = self.local_peer_id();
        let Some(query) = self.provider_queries.get_mut(&id) else { return };
        query
            .cost
            .dht_requests
            .fetch_add(requests.saturating_sub(query.counted), Ordering::Relaxed);
        query.counted = query.counted.max(requests);
        if providers.iter().any(|p| *p != local) {
            query.answers += 1;
        }
        for p in providers.into_iter().filter(|p| *p != local) {
            if !self.swarm.is_connected(&p) {
                let opts = DialOpts::peer_id(p)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                let _ = self.swarm.dial(opts);
            }
            let _ = query.found.try_send(p);
        }
        if last {
            if let Some(query) = self.provider_queries.remove(&id) {
                query.cost.running.fetch_sub(1, Ordering::Relaxed);
            }
        } else if (query.answers >= PROVIDER_ANSWERS || query.found.is_closed())
            && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id)
        {
            query.finish();
        }
    }

    fn query_progressed(
        &mut self,
        id: QueryId,
        result: QueryResult,
        step: kad::ProgressStep,
        stats: kad::QueryStats,
    ) {
        match result {
            QueryResult::GetProviders(result) => {
                let providers = match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => providers,
                    _ => Default::default(),
                };
                self.provider_progress(id, providers, step.last, stats.num_requests());
            }
            QueryResult::GetClosestPeers(result) => {
                let answered = stats.num_successes() > 0;
                let peers = match result {
                    Ok(GetClosestPeersOk { peers, .. }) => peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                for p in &peers {
                    if !p.addrs.is_empty() {
                        self.remember(p.peer_id, p.addrs.clone());
                    }
                }
                if let Some(reply) = self.closest_queries.remove(&id) {
                    let _ = reply.send(peers.into_iter().map(|p| p.peer_id).collect());
                }
                if step.last && self.join == Some(id) {
                    self.join_ended(answered);
                }
            }
            QueryResult::PutRecord(result) => {
                if let Some(reply) = self.put_queries.remove(&id) {
                    let _ = reply.send(match result {
                        Ok(_) => Ok(1),
                        Err(kad::PutRecordError::QuorumFailed { success, .. })
                        | Err(kad::PutRecordError::Timeout { success, .. })
                            if !success.is_empty() =>
                        {
                            Ok(success.len())
                        }
                        Err(e) => Err(e.to_string()),
                    });
                }
            }
            QueryResult::GetRecord(result) => {
                let gone = match (self.get_queries.get(&id), result) {
                    (Some(found), Ok(kad::GetRecordOk::FoundRecord(r))) => matches!(
                        found.try_send(r.record.value),
                        Err(mpsc::error::TrySendError::Closed(_))
                    ),
                    _ => false,
                };
                if gone {
                    // Nobody is listening any more.
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                }
                if step.last || gone {
                    self.get_queries.remove(&id);
                }
            }
            QueryResult::Bootstrap(result) => {
                if step.last && self.refresh == Some(id) {
                    self.refresh = None;
                }
                if let Err(e) = result {
                    tracing::debug!("bootstrap failed: {e}");
                }
            }
            QueryResult::StartProviding(Err(e)) => tracing::debug!("provide failed: {e}"),
            _ => {}
        }
    }

    fn handle_kad_event(&mut self, event: kad::Event) {
        if matches!(event, kad::Event::InboundRequest { .. }) {
            self.counters.dht_requests_answered.fetch_add(1, Ordering::Relaxed);
        }
        match event {
            kad::Event::OutboundQueryProgressed { id, result, step, stats } => {
                if step.last {
                    tracing::debug!(
                        "DHT query {} ended after {} requests",
                        query_kind(&result),
                        stats.num_requests()
                    );
                }
                self.query_progressed(id, result, step, stats)
            }
            kad::Event::InboundRequest {
                request: kad::InboundRequest::AddProvider { record: Some(record) },
            } => {
                // Filtered because value records are (see `behaviour`);
                // the store caps provider records itself.
                if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().add_provider(record) {
                    tracing::debug!("provider record not stored: {e:?}");
                }
            }
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, record: Some(record), .. },
            } => {
                let key = record.key.clone();
                if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put_from(source, record)
                {
                    tracing::debug!("refused a DHT record from {source} ({key:?}): {e:?}");
                }
            }
            // A peer whose DHT protocol was just confirmed on a connection
            // we dialed (libp2p's moment for inserting it): as early as
            // that, so that a joining node's table passes 20 before
            // libp2p's bootstrap starts (later inserts into a smaller
            // table start another bootstrap once that one ends).
            kad::Event::RoutablePeer { peer, address } => self.add_to_routing(peer, &[address]),
            kad::Event::RoutingUpdated { peer, is_new_peer: true, .. }
                if !self.joined && self.join.is_none() =>
            {
                // A first peer in the table of a node that has not joined
                // (or that was alone): look our own id up (see
                // `join_ended`). Kademlia bootstraps by itself (a lookup of
                // our id, then one in every farther bucket) when a peer
                // joins a table of fewer than 20; it bootstraps again once
                // that ends if more joined meanwhile, so a join cost two.
                // Our own lookup fills the table past 20 before the first
                // starts: about one bootstrap per join (`bench dht`, 200
                // nodes: 200 bootstraps, not 370 and counting; 100 nodes:
                // 106).
                tracing::debug!("joining the DHT through {peer}");
                self.start_join();
            }
            _ => {}
        }
    }
}

/// Why a dial failed, in a few words a user can act on.
fn dial_error_reason(error: &libp2p::swarm::DialError, expected: Option<PeerId>) -> String {
    match error {
        DialError::WrongPeerId { obtained, .. } => match expected {
            Some(expected) => format!("it is peer {obtained}, not {expected}"),
            None => format!("it is peer {obtained}"),
        },
        DialError::Transport(errors) => {
            let reasons: Vec<String> = errors
                .iter()
                .map(|(_, e)| {
                    // The innermost cause says it best ("connection refused").
                    let mut cause: &dyn std::error::Error = e;
                    while let Some(inner) = cause.source() {
                        cause = inner;
                    }
                    let text = cause.to_string();
                    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
                    if text.is_empty() { e.to_string() } else { text.to_lowercase() }
                })
                .collect();
            if reasons.iter().any(|r| r.contains("timeout") || r.contains("timed out")) {
                "no answer (timed out)".into()
            } else {
                reasons.join("; ")
            }
        }
        DialError::Denied { cause } => format!("refused by this node's limits: {cause}"),
        DialError::LocalPeerId { .. } => "that is this node itself".into(),
        DialError::NoAddresses => "no address to dial".into(),
        DialError::Aborted => "the dial was aborted".into(),
        DialError::DialPeerConditionFalse(_) => "already connected or dialing".into(),
    }
}

/// Splits a trailing `/p2p/<id>` off an address.
pub fn split_peer_id(mut addr: Multiaddr) -> (Multiaddr, Option<PeerId>) {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => {
            addr.pop();
            (addr, Some(peer))
        }
        _ => (addr, None),
    }
}

/// Whether another node could dial this address (not unspecified).
fn is_dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        Protocol::P2pCircuit => true,
        _ => false,
    })
}

/// The kind of a DHT query, for logs.
fn query_kind(result: &QueryResult) -> &'static str {
    match result {
        QueryResult::Bootstrap(_) => "bootstrap",
        QueryResult::GetClosestPeers(_) => "closest-peers",
        QueryResult::GetProviders(_) => "get-providers",
        QueryResult::StartProviding(_) | QueryResult::RepublishProvider(_) => "start-providing",
        QueryResult::GetRecord(_) => "get-record",
        QueryResult::PutRecord(_) | QueryResult::RepublishRecord(_) => "put-record",
    }
}
