//! A running node: the store, the swarm's event loop, and the responder,
//! behind one cheap cloneable [`Node`] handle — the API the command line
//! and the benchmarks use. Put, get and delete are composed here from the
//! storage core (`import`, `export`, `store`) and the network layer
//! (`net::*`). Async code here reaches the store only through its face
//! (`store::AsyncStore::run` for short calls, `store::run_blocking` for an
//! import, an export or a collection, which call it directly on their
//! blocking thread): never on the swarm task, never on a runtime worker.

use std::{
    io::{Read, Write},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use cid::Cid;
use libp2p::{Multiaddr, PeerId};

use crate::{
    Ticket,
    error::Error,
    export::{self, ExportOptions},
    import::{self, ImportOptions},
    lease::{DeleteRecord, Lease},
    net::{
        behaviour,
        blocks::BlockService,
        discover,
        event_loop::{EventLoop, NetHandle},
        get::{self, GET_WINDOW, GET_WORKERS, NetSource},
        inbound::Responder,
        providers::ProviderSet,
        repair::{self, Health, RepairConfig, Repairer},
        replicas::{self, Accept, Offer, ReplicaPolicy},
    },
    store::{self, AsyncStore, Durability, FileInfo, PinKind, RootInfo, Store, StoreOptions},
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
    /// Whether a local copy was removed.
    pub local: bool,
    /// On how many other peers the delete record was stored, or why on none.
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
    /// Provider records of other peers this node keeps for the DHT.
    pub provider_records: usize,
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

    /// A node that was given bootstrap addresses but is not connected yet
    /// (a one-shot client just started) waits a little for its first peer.
    async fn wait_for_first_peer(&self) {
        if !self.inner.config.bootstrap.is_empty() && self.inner.net.connected_now() == 0 {
            self.inner.net.wait_for_bootstrap(1, get::FIRST_PEER_WAIT).await;
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

    /// Imports from `reader` (on a blocking thread), provides the root, and
    /// asks the closest peers for replicas.
    pub async fn put(
        &self,
        reader: Box<dyn Read + Send>,
        name: Option<String>,
        total: Option<u64>,
        progress: Option<ProgressFn>,
    ) -> Result<PutReport, NodeError> {
        self.put_with(reader, PutOptions { name, total, progress, ..Default::default() }).await
    }

    /// [`put`](Self::put) with all its options.
    pub async fn put_with(
        &self,
        reader: Box<dyn Read + Send>,
        put: PutOptions,
    ) -> Result<PutReport, NodeError> {
        let store = self.store().clone();
        let wanted = u8::try_from(self.inner.config.replicas.clamp(1, MAX_REPLICAS))
            .expect("at most MAX_REPLICAS");
        let options = ImportOptions {
            chunk_size: self.inner.config.chunk_size,
            name: put.name,
            total: put.total,
            kind: PinKind::Pinned,
            ..Default::default()
        };
        let progress = put.progress;
        let reader: Box<dyn Read + Send> = match put.cancel.clone() {
            Some(cancel) => Box::new(Cancellable { inner: reader, cancel }),
            None => reader,
        };
        let (imported, bytes) = store::run_blocking("the import", move || {
            let progress = progress.as_deref().map(|p| p as &(dyn Fn(u64, Option<u64>) + Sync));
            let imported = import::import(&store, reader, &options, progress)?;
            let file = FileInfo { size: imported.size, name: options.name.clone() };
            store.describe(&imported.ticket.root, file);
            store.set_replicas(&imported.ticket.root, wanted)?;
            let (_, bytes) = store.dag_stats(&imported.ticket.root)?;
            Ok::<_, Error>((imported, bytes))
        })
        .await
        .map_err(|e| match e {
            Error::Io { source, .. } if source.get_ref().is_some_and(|e| e.is::<Cancelled>()) => {
                Error::Cancelled
            }
            e => e,
        })?;
        let root = imported.ticket.root;
        self.inner.net.provide(root).await;
        // A node that does not listen (a one-shot client) serves nobody, so
        // its own copy does not count: it asks for all `replicas` elsewhere.
        let serving = !self.inner.config.listen.is_empty();
        let elsewhere = usize::from(wanted) - usize::from(serving);
        if let Some(on_stored) = &put.on_stored {
            on_stored(imported.size, elsewhere);
        }
        if elsewhere > 0 {
            self.wait_for_first_peer().await;
        }
        let lease = Lease::issue(self.store().identity(), root, wanted, self.inner.config.lease)
            .map_err(|e| NodeError::Transport(format!("cannot sign a lease: {e}")))?;
        let offer = Offer { root, blocks: imported.blocks, bytes, lease };
        let on_copy = put.on_copy.clone();
        let report = move |peer: &PeerId, result: &Result<u64, String>| {
            if let Some(f) = &on_copy {
                f(peer, result);
            }
        };
        let placed = replicas::replicate(&self.inner.net, offer, elsewhere, &report).await;
        Ok(PutReport {
            ticket: imported.ticket,
            size: imported.size,
            copies: usize::from(serving) + placed.confirmed.len(),
            wanted: usize::from(wanted),
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
        self.get_with(ticket, out, GetOptions { progress, ..Default::default() }).await
    }

    /// [`get`](Self::get) with all its options.
    pub async fn get_with(
        &self,
        ticket: Ticket,
        out: Box<dyn Write + Send>,
        get: GetOptions,
    ) -> Result<GetReport, NodeError> {
        let GetOptions { progress, output_dir, cancel, range, read_ahead } = get;
        let root = ticket.root;
        let store = self.store().clone();
        let complete = self.inner.store.run(move |store| Ok(store.is_complete(&root))).await?;
        // A complete local copy needs the network only to repair a block
        // that turns out corrupt: then discovery starts on demand.
        let (providers, discovery) = self.discovery(root, complete).await;
        let (net, rt) = (self.inner.net.clone(), tokio::runtime::Handle::current());
        let set = providers.clone();
        let result = store::run_blocking("the get", move || {
            let mut out = out;
            let progress = progress.as_deref().map(|p| p as &(dyn Fn(u64, Option<u64>) + Sync));
            let window = read_ahead.unwrap_or(GET_WINDOW).max(1);
            let workers = GET_WORKERS.min(window);
            let mut options = ExportOptions { range: None, workers, window };
            // A complete copy is indexed: its blocks need no claim.
            let source = NetSource::new(store.clone(), net, rt, set, Durability::Cached, !complete)
                .with_limits(u64::MAX, cancel.unwrap_or_default());
            let meta = match range {
                Some(range) => {
                    let (meta, resolved) =
                        check_range_space(&source, &ticket, range, output_dir.as_deref())?;
                    options.range = Some(resolved);
                    meta
                }
                None => check_space(&source, &ticket, complete, output_dir.as_deref())?,
            };
            let exported = export::export(&source, &ticket, &mut out, &options, progress);
            // Keep what arrived even if the export failed: a rerun resumes.
            source.commit()?;
            let size = exported?;
            if range.is_some() && !(source.fetched() == 0 && complete) {
                // Part of the file: cached as such (evicted like any cached
                // root), so that a later get needs only the rest. The
                // writer's guard still covers the blocks.
                if !complete {
                    store.cache_partial(&root, store.present_size(&root))?;
                }
                source.finish()?;
                let evicted = store.enforce_cache_limit()?;
                return Ok((size, source.fetched(), evicted));
            }
            if source.fetched() == 0 && complete {
                source.finish()?;
                store.touch(&root);
                return Ok((size, 0, Vec::new()));
            }
            // The writer's guard still covers every block while we pin.
            store.pin(&root, PinKind::Cached, None)?;
            store.describe(&root, FileInfo { size: meta.size, name: meta.name });
            source.finish()?;
            let evicted = store.enforce_cache_limit()?;
            Ok::<_, Error>((size, source.fetched(), evicted))
        })
        .await;
        discovery.abort();
        let (size, from_network, evicted) = match result {
            Ok(done) => done,
            Err(e) => {
                // What arrived belongs to no root yet: a get that runs again
                // before the next collection (at the latest, the next start)
                // needs only the rest. A full disk wants its space now.
                if matches!(e, Error::DiskFull { .. } | Error::NoSpace { .. }) {
                    self.store().request_gc();
                }
                return Err(e.into());
            }
        };
        if from_network > 0 && range.is_none() {
            self.inner.net.provide(root).await;
        }
        for root in evicted {
            self.inner.net.unprovide(root).await;
        }
        Ok(GetReport { size, from_network })
    }

    /// The file's size and name, from its root (fetched, verified and kept
    /// if it is not here), within the time a get takes to give up.
    pub async fn file_meta(&self, ticket: &Ticket) -> Result<crate::dag::FileMeta, NodeError> {
        self.find_file(ticket).await.0
    }

    /// [`file_meta`](Self::file_meta), and the providers it found with what
    /// finding them cost (DHT requests, `Have` probes; a DHT lookup may
    /// still be ending, see [`Cost::running`](crate::net::event_loop::Cost)):
    /// the first step of every get, and the lookup `bench dht` measures.
    pub async fn find_file(
        &self,
        ticket: &Ticket,
    ) -> (Result<crate::dag::FileMeta, NodeError>, Arc<ProviderSet>) {
        let root = ticket.root;
        let store = self.store().clone();
        let here = match self.inner.store.run(move |store| Ok(store.has(&root))).await {
            Ok(here) => here,
            Err(e) => return (Err(e.into()), ProviderSet::new(root, false)),
        };
        let (providers, discovery) = self.discovery(root, here).await;
        let (net, rt, set) =
            (self.inner.net.clone(), tokio::runtime::Handle::current(), providers.clone());
        let ticket = ticket.clone();
        let opened = store::run_blocking("reading the root", move || {
            let source = NetSource::new(store, net, rt, set, Durability::Cached, !here);
            let opened = export::open_root(&source, &ticket);
            source.commit()?;
            source.finish()?;
            opened.map(|(meta, _)| meta)
        })
        .await;
        discovery.abort();
        let meta = opened.map_err(NodeError::from);
        (meta, providers)
    }

    /// The providers of `root` and the task that discovers them: at once
    /// unless the root is `here` (then on demand, to repair a corrupt
    /// block), after waiting a little for a first peer if it is not.
    async fn discovery(
        &self,
        root: Cid,
        here: bool,
    ) -> (Arc<ProviderSet>, tokio::task::JoinHandle<()>) {
        if !here {
            self.wait_for_first_peer().await;
        }
        let providers = ProviderSet::new(root, !here);
        let task =
            tokio::spawn(discover::discover(self.inner.net.clone(), providers.clone(), Vec::new()));
        (providers, task)
    }

    /// Deletes the local copy, publishes this node's signed delete record
    /// in the DHT (so that no repair brings a copy held for it back, even
    /// from a holder offline now) and asks the holders (which obey only
    /// the owner) to delete theirs.
    pub async fn delete(&self, target: TicketOrCid) -> Result<DeleteReport, NodeError> {
        let root = target.root();
        let local = self.inner.store.run(move |store| store.remove_root(&root)).await?;
        self.inner.net.unprovide(root).await;
        let keep = self.inner.config.lease;
        let record = match DeleteRecord::issue(self.store().identity(), root, keep) {
            Ok(record) if self.inner.net.connected_now() > 0 => {
                let key = DeleteRecord::dht_key(&root, &self.peer_id());
                self.inner.net.put_record(key, record.encode(), keep).await
            }
            Ok(_) => Err("no peer connected".into()),
            Err(e) => Err(e.to_string()),
        };
        let (remote_deleted, remote_refused) = replicas::delete_remote(&self.inner.net, root).await;
        Ok(DeleteReport { local, record, remote_deleted, remote_refused })
    }

    /// How many copies of `root` the network holds now: the holders that
    /// answer, the target, and the last repair.
    pub async fn status(&self, target: TicketOrCid) -> Health {
        let root = target.root();
        let info = self.inner.store.run(move |store| Ok(store.root_info(&root))).await;
        if !matches!(info, Ok(Some(_))) {
            self.wait_for_first_peer().await;
        }
        self.inner.repairer.health(root).await
    }

    /// Runs one repair round now (for tests and tools; a node that listens
    /// runs them on its own every repair interval).
    pub async fn repair_round(&self) {
        self.inner.repairer.round().await;
    }

    /// Collects garbage now (waiting for a collection already running);
    /// returns what it removed.
    pub async fn gc(&self) -> Result<crate::store::GcStats, NodeError> {
        let store = self.store().clone();
        Ok(store::run_blocking("a garbage collection", move || store.gc()).await?)
    }

    /// The roots this node keeps, pinned and cached.
    pub async fn ls(&self) -> Result<Vec<RootInfo>, NodeError> {
        Ok(self.inner.store.run(|store| Ok(store.roots())).await?)
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
        let (usage, roots, cache_used, held_for_others) = self
            .inner
            .store
            .run(|store| {
                let usage = store.usage()?;
                Ok((usage, store.roots(), store.cache_usage(), store.held_for_others()))
            })
            .await?;
        let pinned_roots = roots.iter().filter(|r| r.kind == PinKind::Pinned).count();
        Ok(Stat {
            peer_id: self.peer_id(),
            listen_addrs: self.inner.net.listen_addrs_now(),
            peers: self.inner.net.connected_now(),
            blocks: usage.blocks,
            bytes: usage.bytes,
            pinned_roots,
            cached_roots: roots.len() - pinned_roots,
            cache_used,
            cache_limit: self.store().options().cache_limit,
            held_for_others,
            replica_quota: self.inner.replica_quota,
            blocks_served: self.inner.blocks.blocks_served(),
            provider_records: self.inner.net.provider_records().await,
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

/// Fails, before anything but the root is fetched, a get whose file would
/// not fit: its blocks in the store (unless `complete` here already), and
/// the file itself in `output_dir` (on the same disk, both), each leaving
/// [`SPACE_RESERVE`] free.
fn check_space(
    source: &NetSource,
    ticket: &Ticket,
    complete: bool,
    output_dir: Option<&std::path::Path>,
) -> Result<crate::dag::FileMeta, Error> {
    use std::os::unix::fs::MetadataExt;
    let (meta, _) = export::open_root(source, ticket)?;
    let store_dir = source.store().dir();
    let device = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    // The blocks: the file plus a little for tags and structure nodes.
    let blocks = if complete { 0 } else { meta.size + meta.size / 64 };
    let mut needs = vec![(store_dir.to_path_buf(), blocks)];
    if let Some(dir) = output_dir {
        if device(dir).is_some() && device(dir) == device(store_dir) {
            needs[0].1 += meta.size;
        } else {
            needs.push((dir.to_path_buf(), meta.size));
        }
    }
    for (dir, need) in needs {
        if need == 0 {
            continue;
        }
        if let Some(free) = free_space(&dir)
            && free < need.saturating_add(SPACE_RESERVE)
        {
            return Err(Error::NoSpace { path: dir, need, free });
        }
    }
    Ok(meta)
}

/// A range read needs room for its own bytes only.
/// Resolves the range against the file's size.
fn check_range_space(
    source: &NetSource,
    ticket: &Ticket,
    range: export::ByteRange,
    output_dir: Option<&std::path::Path>,
) -> Result<(crate::dag::FileMeta, (u64, u64)), Error> {
    let (meta, _) = export::open_root(source, ticket)?;
    let (offset, len) = range.resolve(meta.size).ok_or(Error::Range {
        offset: match range {
            export::ByteRange::FromTo(a, _) | export::ByteRange::From(a) => a,
            export::ByteRange::Last(_) => meta.size,
        },
        len: 0,
        size: meta.size,
    })?;
    for dir in [Some(source.store().dir()), output_dir].into_iter().flatten() {
        if let Some(free) = free_space(dir)
            && free < len.saturating_add(SPACE_RESERVE)
        {
            return Err(Error::NoSpace { path: dir.to_path_buf(), need: len, free });
        }
    }
    Ok((meta, (offset, len)))
}

/// What a cancelled read fails with.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
struct Cancelled;

/// A reader that fails once `cancel` is set.
struct Cancellable {
    inner: Box<dyn Read + Send>,
    cancel: Cancel,
}

impl Read for Cancellable {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other(Cancelled));
        }
        self.inner.read(buf)
    }
}

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
