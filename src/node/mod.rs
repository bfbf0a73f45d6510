//! A running node: the store, the swarm's event loop, and the responder,
//! behind one cheap cloneable [`Node`] handle — the API the command line
//! and the benchmarks use. Put, get and delete are composed here from the
//! storage core (`import`, `export`, `store`) and the network layer
//! (`net::*`). Async code here reaches the store only through its face
//! (`store::AsyncStore::run` for short calls, `store::run_blocking` for an
//! import, an export or a collection, which call it directly on their
//! blocking thread): never on the swarm task, never on a runtime worker.
//!
//! One file per concern: `put`, `get` (with finding a file and a root's
//! health), `host` (delete, collection, repair rounds, what this node
//! holds and who it talks to); here, the node's start and its accessors.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use cid::Cid;
use libp2p::{Multiaddr, PeerId};

use crate::{
    Ticket,
    error::Error,
    export, import,
    net::{
        behaviour,
        blocks::BlockService,
        event_loop::{EventLoop, NetHandle},
        inbound::Responder,
        repair::{self, RepairConfig, Repairer},
        replicas::{Accept, ReplicaPolicy},
    },
    store::{self, AsyncStore, Store, StoreOptions},
};

mod get;
mod host;
mod put;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Addresses to listen on; empty: no listening (a one-shot client).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, with or without `/p2p/<id>`.
    pub bootstrap: Vec<Multiaddr>,
    pub data_dir: PathBuf,
    /// Copies a put aims for, the local one included.
    pub replicas: usize,
    /// Bytes of cached (fetched) roots before LRU eviction.
    pub cache_size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: usize,
    /// Bytes of replicas this node holds for others at most; `None`: a
    /// quarter of the space free on the data directory's file system when
    /// the node starts.
    pub replica_quota: Option<u64>,
    /// Who may ask this node to hold replicas.
    pub accept_replicas: Accept,
    /// How often the node publishes its provider records again, give or
    /// take [`REPROVIDE_JITTER`].
    pub reprovide_interval: Duration,
    /// How long the node keeps other peers' provider records unless they
    /// publish them again.
    pub provider_ttl: Duration,
    /// How often the node checks that the roots it holds pinned have their
    /// copies, give or take [`repair::REPAIR_JITTER`].
    pub repair_interval: Duration,
    /// How long the leases this node grants as an owner run (it renews them
    /// while it runs), and the longest it holds a copy for an owner that
    /// does not renew.
    pub lease: Duration,
    /// How long a peer must have been connected before placement counts
    /// it among the settled peers, which take copies before newer ones
    /// (`replicas::SETTLED_AFTER` by default).
    pub settled_after: Duration,
    /// What carries the bytes: TCP, or for many nodes in one process
    /// (`bench dht`) the memory transport.
    pub wire: behaviour::Wire,
}

impl NodeConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        NodeConfig {
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr")],
            bootstrap: Vec::new(),
            data_dir,
            replicas: 3,
            cache_size: StoreOptions::default().cache_limit,
            chunk_size: import::DEFAULT_CHUNK_SIZE,
            replica_quota: None,
            accept_replicas: Accept::Any,
            reprovide_interval: REPROVIDE_INTERVAL,
            provider_ttl: behaviour::PROVIDER_TTL,
            repair_interval: repair::REPAIR_INTERVAL,
            settled_after: crate::net::ledger::SETTLED_AFTER,
            lease: repair::LEASE,
            wire: behaviour::Wire::Tcp,
        }
    }
}

/// Progress callback: (bytes done, bytes total if known). Called from any thread.
pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// Set to stop a running put or get: it fails with [`Error::Cancelled`]
/// and leaves nothing but blocks that garbage collection removes.
pub type Cancel = Arc<AtomicBool>;

/// How one replica of a put went, as it happens: the peer, and its
/// confirmation or why it did not hold a copy.
pub type CopyFn = Arc<dyn Fn(&PeerId, &Result<u64, String>) + Send + Sync>;

/// The end of a put's upload: (file size, copies about to be sought).
pub type StoredFn = Arc<dyn Fn(u64, usize) + Send + Sync>;

/// Options of a put.
#[derive(Clone, Default)]
pub struct PutOptions {
    /// The file name recorded in the root.
    pub name: Option<String>,
    /// The input's length, if known.
    pub total: Option<u64>,
    pub progress: Option<ProgressFn>,
    /// Called once the file is stored here, with its size and the number
    /// of copies about to be sought from peers (the second phase).
    pub on_stored: Option<StoredFn>,
    /// Called for each peer asked for a replica, once it answers.
    pub on_copy: Option<CopyFn>,
    pub cancel: Option<Cancel>,
}

/// Options of a get.
#[derive(Clone, Default)]
pub struct GetOptions {
    pub progress: Option<ProgressFn>,
    /// The directory the output goes to, if it is a file: the disk space a
    /// get needs is checked there too before anything is fetched.
    pub output_dir: Option<PathBuf>,
    pub cancel: Option<Cancel>,
    /// Only these bytes of the file. Only the blocks that cover them are
    /// fetched (and kept until the next collection, so a later get needs
    /// only the rest); the file is not recorded as cached. A range the file
    /// cannot satisfy fails with [`Error::Range`].
    pub range: Option<export::ByteRange>,
    /// Leaves fetched ahead of the one being written, at most (each up to a
    /// chunk in memory); [`GET_WINDOW`] if not given.
    pub read_ahead: Option<usize>,
}

/// What a put did.
#[derive(Debug, Clone)]
pub struct PutReport {
    pub ticket: Ticket,
    pub size: u64,
    /// Confirmed copies on nodes that serve the file: the replicas other
    /// nodes confirmed, and this node's own copy when it listens (a node
    /// that does not, a one-shot client, serves nobody, so its copy does
    /// not count).
    pub copies: usize,
    /// Copies wanted: the replicas setting.
    pub wanted: usize,
    /// Whether `copies` counts this node's own copy.
    pub counts_local: bool,
    /// Peers that were asked for a replica and did not hold one, and why.
    pub failed: Vec<(PeerId, String)>,
}

/// What a get did.
#[derive(Debug, Clone)]
pub struct GetReport {
    /// Plaintext bytes written.
    pub size: u64,
    /// Blocks fetched from the network (the rest were already local).
    pub from_network: u64,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub struct DeleteReport {
    /// Whether a local copy was removed (or, with `kept_for_others`, this
    /// node's own pin on it).
    pub local: bool,
    /// The copy here stays: other owners placed it here, and hold it.
    pub kept_for_others: bool,
    /// The file was stored here but put by another node: only the local
    /// copy went, and nothing else was asked.
    pub not_owner: bool,
    /// How many other peers answered a lookup of the delete record with
    /// it once it was published, within [`READ_BACK`]; or why it could not
    /// be published or looked up.
    pub record: Result<usize, String>,
    pub remote_deleted: Vec<PeerId>,
    pub remote_refused: Vec<(PeerId, String)>,
}

/// A connected peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub addrs: Vec<Multiaddr>,
}

/// A node's state at a glance.
#[derive(Debug, Clone)]
pub struct Stat {
    pub peer_id: PeerId,
    /// The data directory: identity, keys, blocks.
    pub data_dir: std::path::PathBuf,
    pub listen_addrs: Vec<Multiaddr>,
    pub peers: usize,
    pub blocks: u64,
    pub bytes: u64,
    pub pinned_roots: usize,
    pub cached_roots: usize,
    pub cache_used: u64,
    pub cache_limit: u64,
    /// Bytes held for other peers, and the most this node holds for them.
    pub held_for_others: u64,
    pub replica_quota: u64,
    /// Blocks sent to peers since the node started.
    pub blocks_served: u64,
    /// Blocks read for block-stream answers that their askers have not
    /// taken yet, and the most held at once (`net::shares`).
    pub stream_blocks_held: usize,
    /// Block streams open now, both ways.
    pub block_streams: usize,
    pub stream_blocks_limit: usize,
    /// Provider records of other peers this node keeps for the DHT.
    pub provider_records: usize,
    /// Delete records other peers stored on this node.
    pub delete_records: usize,
}

/// Errors of node operations; each displays as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Any failure of the storage core or of a fetch, as it is; a worker
    /// that panicked is [`Error::WorkerPanicked`], naming its work.
    #[error("{0}")]
    Store(Error),
    /// No peer was found that holds the content.
    #[error("no provider found for {root}")]
    NotFound { root: Cid },
    #[error("network: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    /// The node's event loop is gone: its runtime stopped under the
    /// operation.
    #[error("the node has stopped")]
    Stopped,
}

impl From<Error> for NodeError {
    /// The one place that decides what is "not found": a fetch that no
    /// provider could serve because discovery found none at all.
    fn from(e: Error) -> Self {
        match e {
            Error::NoProviders { root, found: 0, .. } => NodeError::NotFound { root },
            Error::NodeStopped => NodeError::Stopped,
            e => NodeError::Store(e),
        }
    }
}

/// A running node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    store: AsyncStore,
    net: NetHandle,
    /// The responder's block service (for its count of blocks served).
    blocks: BlockService,
    repairer: Repairer,
    config: NodeConfig,
    replica_quota: u64,
    event_loop: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Node {
    /// Opens the store, starts the swarm and listens (an address that
    /// cannot be bound is an error), then bootstraps in the background.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let (dir, cache_limit) = (config.data_dir.clone(), config.cache_size);
        let store = store::run_blocking("opening the store", move || {
            Store::open(dir, StoreOptions { cache_limit })
        })
        .await?;
        let store = AsyncStore::new(store);
        let mut swarm = behaviour::build_swarm(
            store.blocking().identity().clone(),
            config.wire,
            !config.listen.is_empty(),
            config.provider_ttl,
        )
        .map_err(NodeError::Transport)?;
        for addr in &config.listen {
            check_port_free(addr)?;
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::Listen { addr: addr.clone(), reason: listen_error(e) })?;
        }
        let (event_loop, net, inbound) = EventLoop::new(swarm, config.bootstrap.clone());
        let quota_dir = store.blocking().dir().to_path_buf();
        let event_loop = tokio::spawn(event_loop.run());
        let policy = ReplicaPolicy {
            quota: config.replica_quota.unwrap_or_else(|| default_replica_quota(&quota_dir)),
            accept: config.accept_replicas.clone(),
            longest_lease: config.lease,
        };
        let replica_quota = policy.quota;
        let responder = Responder::new(store.blocking().clone(), net.clone(), policy);
        let blocks = responder.blocks().clone();
        tokio::spawn(responder.run(inbound));
        if let Some(incoming) = net.lanes().incoming() {
            let active = net.lanes().active().clone();
            tokio::spawn(blocks.clone().serve_streams(incoming, active));
        }
        let event_loop = Mutex::new(Some(event_loop));
        net.set_settled_after(config.settled_after);
        let repair_config = RepairConfig { interval: config.repair_interval, lease: config.lease };
        let repairer = Repairer::new(store.clone(), net.clone(), repair_config);
        if !config.listen.is_empty() {
            // A one-shot client is gone before a round would end.
            tokio::spawn(repairer.clone().run());
        }
        let node = Node {
            inner: Arc::new(Inner {
                store,
                net,
                blocks,
                repairer,
                config,
                replica_quota,
                event_loop,
            }),
        };
        tokio::spawn(node.clone().reprovide());
        // Blocks left by whatever was interrupted before (a killed put, get
        // or replica) go now, and later ones as they appear.
        node.store().request_gc();
        let (store, net) = (node.store().clone(), node.inner.net.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(GC_INTERVAL);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => store.request_gc(),
                    _ = net.stopped() => return,
                }
            }
        });
        Ok(node)
    }

    /// After a start: provide every root still held whole.
    /// Publishes the provider records of every root held whole: at once
    /// (a node that restarts is findable again straight away), then every
    /// reprovide interval, give or take [`REPROVIDE_JITTER`] so that nodes
    /// started together do not publish together. Roots dropped meanwhile
    /// were withdrawn when they were dropped and are not published again.
    async fn reprovide(self) {
        let net = self.inner.net.clone();
        let interval = self.inner.config.reprovide_interval;
        loop {
            self.provide_held_roots().await;
            let jitter = rand::random_range(-REPROVIDE_JITTER..=REPROVIDE_JITTER);
            let wait = interval.mul_f64(1.0 + jitter);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = net.stopped() => return,
            }
        }
    }

    async fn provide_held_roots(&self) {
        let complete = self.inner.store.run(|store| {
            Ok(store
                .roots()
                .into_iter()
                .filter(|r| store.is_complete(&r.root))
                .map(|r| r.root)
                .collect::<Vec<_>>())
        });
        let complete = complete.await.unwrap_or_else(|e| {
            tracing::warn!("cannot list the roots to provide: {e}");
            Vec::new()
        });
        for root in complete {
            self.inner.net.provide(root).await;
            // Each starts a DHT query: a node holding many roots spreads them.
            tokio::time::sleep(REPROVIDE_PACE).await;
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.net.local_peer_id()
    }

    /// The store under this node, for tools and tests that call it from a
    /// blocking thread (async code uses [`async_store`](Self::async_store)).
    pub fn store(&self) -> &Store {
        self.inner.store.blocking()
    }

    /// The store's face for async code (see `store::AsyncStore`).
    pub fn async_store(&self) -> &AsyncStore {
        &self.inner.store
    }

    /// The handle to the swarm's event loop (for tools and tests).
    pub fn net(&self) -> &NetHandle {
        &self.inner.net
    }

    /// Listen addresses with the `/p2p/<id>` suffix; waits until one is
    /// known when the node listens.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        if self.inner.config.listen.is_empty() {
            return Vec::new();
        }
        self.inner.net.wait_listen_addrs().await
    }

    /// Waits up to `timeout` until connected to at least `n` peers; returns the count.
    pub async fn wait_for_peers(&self, n: usize, timeout: Duration) -> usize {
        self.inner.net.wait_for_peers(n, timeout).await
    }

    /// Stops the swarm task (closing every connection). Withdraws nothing:
    /// provider records expire on their own. The store is synced already.
    pub async fn shutdown(self) {
        self.inner.net.shutdown().await;
        let handle = self.inner.event_loop.lock().expect("event loop lock").take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

/// The most copies a put may ask for (a lease carries the count in a byte).
pub const MAX_REPLICAS: usize = 255;

/// How often a node publishes its provider records again by default: a
/// quarter of their time to live ([`behaviour::PROVIDER_TTL`], 48 h), so a
/// record survives three missed rounds (IPFS: every 22 h).
pub const REPROVIDE_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// The pause between two roots published: 50 a second.
pub const REPROVIDE_PACE: Duration = Duration::from_millis(20);

/// The reprovide interval varies by up to this fraction either way.
pub const REPROVIDE_JITTER: f64 = 0.1;

/// How often a node collects garbage besides at start and after a root is
/// dropped or an operation fails.
pub const GC_INTERVAL: Duration = Duration::from_secs(3600);

/// Disk space a get keeps free beside what it writes.
pub const SPACE_RESERVE: u64 = 64 * 1024 * 1024;

/// How long `delete` looks its delete record up again once published, to
/// count the peers that kept it (a peer answers a put whether it kept the
/// record or not).
pub const READ_BACK: Duration = Duration::from_secs(10);

/// The cache size a node uses unless told: 10 GiB, or a quarter of the
/// space free on the file system of `dir` (or of its nearest existing
/// ancestor) if that is less.
pub fn default_cache_size(dir: &std::path::Path) -> u64 {
    let limit = StoreOptions::default().cache_limit;
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
    free_space(existing).map_or(limit, |free| limit.min(free / 4))
}

/// A quarter of the space free on the file system of `dir` (0 if unknown).
pub fn default_replica_quota(dir: &std::path::Path) -> u64 {
    free_space(dir).map_or(0, |free| free / 4)
}

/// Bytes free for an unprivileged user on the file system of `path`.
pub fn free_space(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a valid C string; statvfs only writes `stat`.
    let stat = unsafe {
        let mut stat = std::mem::zeroed::<libc::statvfs>();
        (libc::statvfs(path.as_ptr(), &mut stat) == 0).then_some(stat)?
    };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Fails if another process listens on the TCP port of `addr`. libp2p
/// opens listening sockets with `SO_REUSEPORT`, so a second process could
/// bind a port a running node holds and share its connections; a plain
/// bind, without it, is refused while anyone listens there.
fn check_port_free(addr: &Multiaddr) -> Result<(), NodeError> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for part in addr.iter() {
        match part {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else { return Ok(()) };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(NodeError::Listen {
            addr: addr.clone(),
            reason: "the port is in use by another process".into(),
        }),
        // Other failures (an address this machine lacks) are libp2p's to
        // report.
        _ => Ok(()),
    }
}

fn listen_error<E: std::error::Error>(e: libp2p::TransportError<E>) -> String {
    match e {
        libp2p::TransportError::MultiaddrNotSupported(a) => format!("unsupported address {a}"),
        libp2p::TransportError::Other(e) => {
            // Each layer may repeat its source's message: keep each once.
            let mut parts = vec![e.to_string()];
            let mut source = e.source();
            while let Some(inner) = source {
                let text = inner.to_string();
                if !parts.iter().any(|p| p.contains(&text)) {
                    parts.push(text);
                }
                source = inner.source();
            }
            parts.join(": ")
        }
    }
}
