//! The event loop: the one task that owns the `Swarm`, and [`NetHandle`],
//! the cheap cloneable handle the rest of the program talks to it with.
//!
//! Every [`Command`] travels over one bounded channel and carries its own
//! reply channel; pending replies wait in maps keyed by request or query id.
//! Inbound file-protocol requests leave the loop over another bounded
//! channel (to `net::inbound`), and their answers come back as
//! [`Command::Respond`]. The loop never touches the disk, never hashes and
//! never waits on anything but the swarm and its channels: a full inbound
//! queue is answered `Busy` instead of waiting.
//!
//! It also runs discovery: it dials the bootstrap addresses at start and
//! again while it is connected to no peer, refreshes the routing table
//! every `behaviour::PERIODIC_BOOTSTRAP` (and lets no other bootstrap run),
//! feeds Kademlia with the addresses identify reports, and republishes its
//! provider records when it (re)joins a network.
//!
//! Where each concern lives:
//!
//! - this file: [`EventLoop`], which owns the swarm and the state of every
//!   part below, runs the timers, and hands each swarm event and command
//!   to the part it concerns;
//! - `handle`: [`NetHandle`] and the [`Command`]s it sends;
//! - `outbound`: requests to peers, a bounded number in flight per peer
//!   and the rest queued;
//! - `admission`: inbound requests, their budgets per kind of work and per
//!   peer, and the fair queue of block requests;
//! - `bootstrap`: the bootstrap addresses, dialing them, how each fares;
//! - `join`: joining the DHT (the lookup of the node's own id), and when
//!   to join again;
//! - `connections`: which idle connections to close, and blocked peers;
//! - `routing`: who enters Kademlia's routing table, and the addresses
//!   the node remembers;
//! - `dht`: Kademlia's events and the lookups the rest of the program
//!   asks for;
//! - `costs`: the meters benchmarks read ([`Counters`], [`LookupCost`]).
//!
//! Each decision that needs no swarm (when to join again, which inbound
//! request to serve next, which connection to close, whom the routing
//! table admits) is a plain function or a small state machine handed
//! `now` and its inputs, tested beside it; the loop's methods gather those
//! inputs from the swarm and carry out the answer.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    multiaddr::Protocol,
    request_response::{self, InboundRequestId, OutboundRequestId},
    swarm::SwarmEvent,
};
use tokio::sync::{mpsc, watch};

use crate::net::{
    behaviour::{Behaviour, BehaviourEvent, PERIODIC_BOOTSTRAP, provider_key},
    codec::{ErrorCode, Request, RequestFrame, Response},
    lanes::{ActiveStreams, Lanes},
};

mod admission;
mod bootstrap;
mod connections;
mod costs;
mod dht;
mod handle;
mod join;
mod outbound;
mod routing;

pub use admission::{
    INBOUND_QUEUE, MAX_INBOUND_BLOCKS, MAX_INBOUND_BLOCKS_PER_PEER, MAX_INBOUND_OTHER,
    MAX_INBOUND_OTHER_PER_PEER, MAX_WAITING_BLOCKS,
};
pub use bootstrap::{BOOTSTRAP_ATTEMPTS, BOOTSTRAP_RETRY, BootstrapState, split_peer_id};
pub use connections::{
    BLOCK_DURATION, CONNECTION_GRACE, CONNECTIONS_HIGH, CONNECTIONS_LOW, FREE_CONNECTIONS,
    MAX_BLOCKED,
};
pub use costs::{Cost, Counters, LookupCost};
pub use dht::{MAX_QUERIES, PROVIDER_ANSWERS, RecordSink};
pub use handle::{
    COMMAND_QUEUE, Command, InboundRequest, NetHandle, PROVIDER_QUEUE, PeerInfo, RequestError,
};
pub use join::JOIN_RETRY;
pub use outbound::{MAX_OUTBOUND_PER_PEER, MAX_QUEUED_PER_PEER};
pub use routing::ADDRESS_BOOK_SIZE;

use self::{
    admission::Admission,
    bootstrap::Bootstrap,
    connections::Blocked,
    dht::Queries,
    handle::Reply,
    join::Join,
    outbound::Outbound,
    routing::{AddressBook, DialBackoff},
};

/// How often the loop cleans up (expired blocks and provider records).
pub const HOUSEKEEPING: Duration = Duration::from_secs(30);

/// The loop itself; see the module docs.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<InboundRequest>,
    /// Requests to peers in flight and waiting (`outbound`).
    outbound: Outbound<OutboundRequestId, Request, Reply>,
    /// Lookups the rest of the program asked for (`dht`).
    queries: Queries,
    /// Inbound requests' budgets and the block requests' queue
    /// (`admission`).
    admission: Admission<InboundRequestId, InboundRequest>,
    /// Peers blocked, and when each was (`connections`).
    blocked: Blocked,
    /// When each connected peer last did something for or with us.
    last_active: HashMap<PeerId, Instant>,
    /// Each connected peer's remote IP and since when it has been
    /// connected (placement weighs both: `replicas::candidates`).
    links: HashMap<PeerId, (Option<std::net::IpAddr>, Instant)>,
    addresses: AddressBook,
    /// Peers whose dials failed, not dialed again for a while.
    backoff: DialBackoff,
    bootstrap: Vec<Bootstrap>,
    listen_addrs: watch::Sender<Vec<Multiaddr>>,
    connected: watch::Sender<usize>,
    bootstrap_state: watch::Sender<Vec<BootstrapState>>,
    counters: Arc<Counters>,
    /// Peers with a block stream open, either way (they are busy with us).
    block_streams: ActiveStreams,
    /// Whether this is a node that listens (not a one-shot client).
    listens: bool,
    /// The routing-table refresh running now, if any (the only Kademlia
    /// bootstrap let run: see `dht`'s `end_automatic_bootstraps`).
    refresh: Option<libp2p::kad::QueryId>,
    /// Joining the DHT (`join`).
    join: Join<libp2p::kad::QueryId>,
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
        let bootstrap = bootstrap.into_iter().map(Bootstrap::new).collect::<Vec<_>>();
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
            distrust: Default::default(),
            delete_lookups: Default::default(),
            settled_after: Arc::new(std::sync::atomic::AtomicU64::new(
                crate::net::ledger::SETTLED_AFTER.as_millis() as u64,
            )),
        };
        let event_loop = EventLoop {
            swarm,
            commands: command_rx,
            inbound: inbound_tx,
            outbound: Outbound::default(),
            queries: Queries::default(),
            admission: Admission::default(),
            blocked: Blocked::default(),
            last_active: HashMap::new(),
            links: HashMap::new(),
            addresses: AddressBook::default(),
            backoff: DialBackoff::default(),
            bootstrap,
            listen_addrs: listen_tx,
            connected: connected_tx,
            bootstrap_state: bootstrap_tx,
            counters: handle.counters.clone(),
            block_streams,
            listens: swarm_listens,
            refresh: None,
            join: Join::default(),
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
                    self.join_on(join::Cue::Tick);
                },
                _ = housekeeping.tick() => self.housekeeping(),
                _ = refresh.tick() => self.refresh_routing(),
            }
        }
        tracing::debug!("event loop stopped");
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Request { peer, request, reply } => self.request(peer, request, reply),
            Command::Respond { channel, response } => {
                let _ = self.swarm.behaviour_mut().file.send_response(channel, response);
            }
            Command::Provide { root } => {
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(provider_key(&root))
                {
                    tracing::warn!("cannot provide {root}: {e}");
                }
            }
            Command::Unprovide { root } => {
                self.swarm.behaviour_mut().kad.stop_providing(&provider_key(&root));
            }
            Command::KnownProviders { root, reply } => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                let live = root.map_or_else(Vec::new, |root| {
                    store.foreign_providers(&provider_key(&root), Instant::now())
                });
                let _ = reply.send((live, store.counts()));
            }
            Command::FindProviders { root, found, cost } => self.find_providers(root, found, cost),
            Command::RoutingTable { reply } => {
                let _ = reply.send(self.routing_table());
            }
            Command::PutRecord { key, value, keep, reply } => {
                self.put_record(key, value, keep, reply)
            }
            Command::GetRecord { key, found } => self.get_record(key, found),
            Command::ClosestPeers { key, reply } => self.closest_peers(key, reply),
            Command::Peers { reply } => {
                let now = Instant::now();
                let peers = self
                    .swarm
                    .connected_peers()
                    .map(|p| {
                        let (ip, since) = self.links.get(p).copied().unwrap_or((None, now));
                        PeerInfo {
                            peer_id: *p,
                            addrs: self.addresses.get(p).cloned().unwrap_or_default(),
                            ip,
                            since,
                        }
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::BlockPeer { peer } => self.block_peer(peer),
            Command::BlockedPeers { reply } => {
                let blocked = self.swarm.behaviour().blocked.blocked_peers();
                let _ = reply.send(blocked.iter().copied().collect());
            }
            Command::Dial { addr } => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!("cannot dial {addr}: {e}");
                }
            }
            Command::Shutdown { .. } => unreachable!("handled by run"),
        }
    }

    /// Keeps the connections within bounds, ends blocks that are over,
    /// forgets expired provider records and ends abandoned lookups.
    fn housekeeping(&mut self) {
        self.trim_connections();
        self.end_blocks();
        self.swarm.behaviour_mut().kad.store_mut().remove_expired(Instant::now());
        self.end_abandoned_lookups();
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
            )) => self.identified(peer_id, info),
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
                self.backoff.connected(&peer_id);
                let ip = crate::net::ledger::ip_of(endpoint.get_remote_address());
                self.links.entry(peer_id).or_insert((ip, Instant::now()));
                self.trim_connections();
                let to_bootstrap = self.bootstrap_connected(peer_id, connection_id);
                self.connected.send_replace(self.swarm.connected_peers().count());
                self.join_on(join::Cue::Connected { to_bootstrap });
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                if num_established == 0 {
                    tracing::debug!("disconnected from {peer_id}");
                    self.last_active.remove(&peer_id);
                    self.links.remove(&peer_id);
                    if self.is_bootstrap_peer(&peer_id) {
                        self.publish_bootstrap();
                    }
                }
                let connected = self.swarm.connected_peers().count();
                if connected == 0 {
                    // Alone again: republish once we rejoin.
                    self.join.alone();
                }
                self.connected.send_replace(connected);
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                tracing::debug!("dial {peer_id:?} failed: {error}");
                self.bootstrap_dial_failed(connection_id, &error);
                self.dial_failed(peer_id, &error);
            }
            _ => {}
        }
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
                message: Message::Request { request: RequestFrame::Busy, channel, .. },
                ..
            } => {
                let answer = Response::error(ErrorCode::Busy, "too many large requests being read");
                let _ = self.swarm.behaviour_mut().file.send_response(channel, answer);
            }
            Event::Message {
                peer,
                message:
                    Message::Request { request: RequestFrame::Valid(request), channel, request_id },
                ..
            } => self.inbound_request(peer, request, channel, request_id),
            Event::Message {
                peer, message: Message::Response { request_id, response }, ..
            } => self.answered(peer, request_id, response),
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
}
