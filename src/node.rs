//! A running node: the store, the swarm's event loop, and the responder,
//! behind one cheap cloneable [`Node`] handle — the API the command line
//! and the benchmarks use. Put, get and delete are composed here from the
//! storage core (`import`, `export`, `store`) and the network layer
//! (`net::*`); disk and crypto work run on blocking threads, never on the
//! swarm task.

use std::{
    io::{Read, Write},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use cid::Cid;
use libp2p::{Multiaddr, PeerId};

use crate::{
    Ticket,
    error::Error,
    export::{self, ExportOptions},
    import::{self, ImportOptions},
    net::{
        behaviour,
        blocks::BlockService,
        discover,
        event_loop::{EventLoop, NetHandle},
        get::{self, GET_WINDOW, GET_WORKERS, NetSource},
        inbound::Responder,
        providers::ProviderSet,
        replicas::{self, Accept, Offer, ReplicaPolicy},
    },
    store::{Durability, PinKind, RootInfo, Store, StoreOptions},
    ticket::TicketOrCid,
};

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
        }
    }
}

/// Progress callback: (bytes done, bytes total if known). Called from any thread.
pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

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
    /// Whether a local copy was removed.
    pub local: bool,
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
}

/// Errors of node operations; each displays as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("{0}")]
    Store(#[from] Error),
    #[error("no provider found for {root}")]
    NotFound { root: Cid },
    #[error("network: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("the node has stopped")]
    Stopped,
}

/// A running node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    net: NetHandle,
    /// The responder's block service (for its count of blocks served).
    blocks: BlockService,
    config: NodeConfig,
    replica_quota: u64,
    event_loop: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Node {
    /// Opens the store, starts the swarm and listens (an address that
    /// cannot be bound is an error), then bootstraps in the background.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let (dir, cache_limit) = (config.data_dir.clone(), config.cache_size);
        let store =
            tokio::task::spawn_blocking(move || Store::open(dir, StoreOptions { cache_limit }))
                .await
                .map_err(|_| NodeError::Stopped)??;
        let mut swarm = behaviour::build_swarm(store.identity().clone(), !config.listen.is_empty())
            .map_err(NodeError::Transport)?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::Listen { addr: addr.clone(), reason: listen_error(e) })?;
        }
        let (event_loop, net, inbound) = EventLoop::new(swarm, config.bootstrap.clone());
        let event_loop = tokio::spawn(event_loop.run());
        let policy = ReplicaPolicy {
            quota: config.replica_quota.unwrap_or_else(|| default_replica_quota(store.dir())),
            accept: config.accept_replicas.clone(),
        };
        let replica_quota = policy.quota;
        let responder = Responder::new(store.clone(), net.clone(), policy);
        let blocks = responder.blocks().clone();
        tokio::spawn(responder.run(inbound));
        let event_loop = Mutex::new(Some(event_loop));
        let node = Node {
            inner: Arc::new(Inner { store, net, blocks, config, replica_quota, event_loop }),
        };
        tokio::spawn(node.clone().provide_held_roots());
        Ok(node)
    }

    /// After a start: provide every root still held whole.
    async fn provide_held_roots(self) {
        let store = self.inner.store.clone();
        let complete = tokio::task::spawn_blocking(move || {
            store
                .roots()
                .into_iter()
                .filter(|r| store.is_complete(&r.root))
                .map(|r| r.root)
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for root in complete {
            self.inner.net.provide(root).await;
        }
    }

    /// A node that was given bootstrap addresses but is not connected yet
    /// (a one-shot client just started) waits a little for its first peer.
    async fn wait_for_first_peer(&self) {
        if !self.inner.config.bootstrap.is_empty() && self.inner.net.connected_now() == 0 {
            self.inner.net.wait_for_peers(1, get::FIRST_PEER_WAIT).await;
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.net.local_peer_id()
    }

    /// The store under this node (for tools and tests).
    pub fn store(&self) -> &Store {
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

    /// Imports from `reader` (on a blocking thread), provides the root, and
    /// asks the closest peers for replicas.
    pub async fn put(
        &self,
        reader: Box<dyn Read + Send>,
        name: Option<String>,
        total: Option<u64>,
        progress: Option<ProgressFn>,
    ) -> Result<PutReport, NodeError> {
        let store = self.inner.store.clone();
        let options = ImportOptions {
            chunk_size: self.inner.config.chunk_size,
            name,
            total,
            kind: PinKind::Pinned,
            ..Default::default()
        };
        let (imported, bytes) = tokio::task::spawn_blocking(move || {
            let progress = progress.as_deref().map(|p| p as &(dyn Fn(u64, Option<u64>) + Sync));
            let imported = import::import(&store, reader, &options, progress)?;
            let (_, bytes) = store.dag_stats(&imported.ticket.root)?;
            Ok::<_, Error>((imported, bytes))
        })
        .await
        .map_err(|_| NodeError::Stopped)??;
        let root = imported.ticket.root;
        self.inner.net.provide(root).await;
        // A node that does not listen (a one-shot client) serves nobody, so
        // its own copy does not count: it asks for all `replicas` elsewhere.
        let serving = !self.inner.config.listen.is_empty();
        let wanted = self.inner.config.replicas.max(1);
        let elsewhere = wanted - usize::from(serving);
        if elsewhere > 0 {
            self.wait_for_first_peer().await;
        }
        let offer = Offer { root, blocks: imported.blocks, bytes, replicas: wanted as u8 };
        let placed = replicas::replicate(&self.inner.net, offer, elsewhere).await;
        Ok(PutReport {
            ticket: imported.ticket,
            size: imported.size,
            copies: usize::from(serving) + placed.confirmed.len(),
            wanted,
            counts_local: serving,
            failed: placed.failed,
        })
    }

    /// Streams the plaintext to `out` in order (on blocking threads): local
    /// blocks first, the rest from providers, each verified and stored.
    pub async fn get(
        &self,
        ticket: Ticket,
        out: Box<dyn Write + Send>,
        progress: Option<ProgressFn>,
    ) -> Result<GetReport, NodeError> {
        let root = ticket.root;
        let store = self.inner.store.clone();
        let complete = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.is_complete(&root))
                .await
                .map_err(|_| NodeError::Stopped)?
        };
        if !complete {
            self.wait_for_first_peer().await;
        }
        // A complete local copy needs the network only to repair a block
        // that turns out corrupt: then discovery starts on demand.
        let providers = ProviderSet::new(root, !complete);
        let discovery =
            tokio::spawn(discover::discover(self.inner.net.clone(), providers.clone(), Vec::new()));
        let (net, rt) = (self.inner.net.clone(), tokio::runtime::Handle::current());
        let set = providers.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut out = out;
            let progress = progress.as_deref().map(|p| p as &(dyn Fn(u64, Option<u64>) + Sync));
            let options = ExportOptions { range: None, workers: GET_WORKERS, window: GET_WINDOW };
            // A complete copy is indexed: its blocks need no claim.
            let source = NetSource::new(store.clone(), net, rt, set, Durability::Cached, !complete);
            let exported = export::export(&source, &ticket, &mut out, &options, progress);
            // Keep what arrived even if the export failed: a rerun resumes.
            source.commit()?;
            let size = exported?;
            if source.fetched() == 0 && complete {
                source.finish()?;
                store.touch(&root);
                return Ok((size, 0, Vec::new()));
            }
            // The writer's guard still covers every block while we pin.
            store.pin(&root, PinKind::Cached, None)?;
            source.finish()?;
            let evicted = store.enforce_cache_limit()?;
            Ok::<_, Error>((size, source.fetched(), evicted))
        })
        .await
        .map_err(|_| NodeError::Stopped)?;
        discovery.abort();
        let (size, from_network, evicted) = match result {
            Ok(done) => done,
            Err(Error::Source(_)) if providers.ever_found() == 0 => {
                return Err(NodeError::NotFound { root });
            }
            Err(e) => return Err(e.into()),
        };
        if from_network > 0 {
            self.inner.net.provide(root).await;
        }
        for root in evicted {
            self.inner.net.unprovide(root).await;
        }
        Ok(GetReport { size, from_network })
    }

    /// Deletes the local copy and asks the holders (which obey only the
    /// owner) to delete theirs.
    pub async fn delete(&self, target: TicketOrCid) -> Result<DeleteReport, NodeError> {
        let root = target.root();
        let store = self.inner.store.clone();
        let local = tokio::task::spawn_blocking(move || store.remove_root(&root))
            .await
            .map_err(|_| NodeError::Stopped)??;
        self.inner.net.unprovide(root).await;
        let (remote_deleted, remote_refused) = replicas::delete_remote(&self.inner.net, root).await;
        Ok(DeleteReport { local, remote_deleted, remote_refused })
    }

    pub fn ls(&self) -> Vec<RootInfo> {
        self.inner.store.roots()
    }

    /// The peers connected right now.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.inner
            .net
            .peers()
            .await
            .into_iter()
            .map(|p| PeerInfo { peer_id: p.peer_id, addrs: p.addrs })
            .collect()
    }

    /// Peers that hold `root`: DHT providers and connected peers that have it.
    pub async fn providers(&self, root: Cid) -> Result<Vec<PeerId>, NodeError> {
        Ok(discover::find_holders(&self.inner.net, root).await)
    }

    /// Peers this node blocked (for sending wrong blocks).
    pub async fn blocked_peers(&self) -> Vec<PeerId> {
        self.inner.net.blocked_peers().await
    }

    pub async fn stat(&self) -> Result<Stat, NodeError> {
        let store = self.inner.store.clone();
        let usage = tokio::task::spawn_blocking(move || store.usage())
            .await
            .map_err(|_| NodeError::Stopped)??;
        let roots = self.inner.store.roots();
        let pinned_roots = roots.iter().filter(|r| r.kind == PinKind::Pinned).count();
        Ok(Stat {
            peer_id: self.peer_id(),
            listen_addrs: self.inner.net.listen_addrs_now(),
            peers: self.inner.net.connected_now(),
            blocks: usage.blocks,
            bytes: usage.bytes,
            pinned_roots,
            cached_roots: roots.len() - pinned_roots,
            cache_used: self.inner.store.cache_usage(),
            cache_limit: self.inner.store.options().cache_limit,
            held_for_others: self.inner.store.held_for_others(),
            replica_quota: self.inner.replica_quota,
            blocks_served: self.inner.blocks.blocks_served(),
        })
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

fn listen_error<E: std::error::Error>(e: libp2p::TransportError<E>) -> String {
    match e {
        libp2p::TransportError::MultiaddrNotSupported(a) => format!("unsupported address {a}"),
        libp2p::TransportError::Other(e) => {
            let mut s = e.to_string();
            let mut source = e.source();
            while let Some(inner) = source {
                s = format!("{s}: {inner}");
                source = inner.source();
            }
            s
        }
    }
}
