//! Getting blocks from the network: the provider set of one download, its
//! discovery (connected peers asked `Have`, and the DHT), and
//! [`NetSource`], the [`BlockSource`] that fetches a block from the least
//! busy provider, verifies it against its CID, writes it to the store and
//! hands it on. The export pipeline (`crate::export`) runs on top of it on
//! blocking threads; it reaches the swarm only through the [`NetHandle`].
//!
//! Failure policy: a peer that sends bytes that do not match the CID is
//! dropped from the download and blocked; a peer that fails (connection
//! closed, timeout) is dropped from the download; a peer that lacks a block
//! is not asked for it again. When no provider is left, discovery runs
//! again, a bounded number of times, then the fetch fails with a clear error.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::PeerId;
use tokio::{runtime::Handle, sync::Notify};

use crate::{
    block::{self, BlockBuf},
    error::{Error, Result},
    export::BlockSource,
    net::{
        codec::{ErrorCode, Request, Response},
        event_loop::NetHandle,
    },
    store::{BlockWriter, Durability, Store},
};

/// Block requests in flight to one provider at a time (enough to hide the
/// round trip on loopback: 16 left half the CPU idle in the benchmark).
pub const PER_PEER_IN_FLIGHT: usize = 32;
/// Deadline of one `GetBlock` (the spec's request timeout).
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before asking a provider that answered `Busy` again.
pub const BUSY_BACKOFF: Duration = Duration::from_millis(50);
/// `Busy` answers one block fetch accepts before it gives up on the peer.
pub const MAX_BUSY_RETRIES: u32 = 200;
/// Deadline of a `Have` probe sent to a connected peer during discovery.
pub const HAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one DHT provider lookup.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Shortest time between the starts of two discovery rounds.
pub const ROUND_INTERVAL: Duration = Duration::from_secs(1);
/// How long a get or put waits for a first peer when the node has
/// bootstrap addresses but no connection yet (a one-shot client).
pub const FIRST_PEER_WAIT: Duration = Duration::from_secs(10);
/// Discovery rounds a download may run (the first one included).
pub const MAX_DISCOVERY_ROUNDS: u64 = 3;
/// Export workers for a network get (each has one block in flight).
pub const GET_WORKERS: usize = 32;
/// Leaves in flight or waiting to be written during a network get.
pub const GET_WINDOW: usize = 48;

#[derive(Default)]
struct PeerState {
    in_flight: usize,
    lacks: HashSet<Cid>,
}

#[derive(Default)]
struct SetState {
    peers: HashMap<PeerId, PeerState>,
    /// Dropped from this download (failed or misbehaved).
    dropped: HashSet<PeerId>,
    /// Peers that sent a wrong block.
    bad: HashSet<PeerId>,
    /// Discovery rounds started and finished.
    rounds_started: u64,
    rounds_done: u64,
    /// Providers ever found.
    ever_found: usize,
    closed: bool,
}

/// The providers of one download, shared by its worker threads and its
/// discovery task.
pub struct ProviderSet {
    root: Cid,
    state: Mutex<SetState>,
    changed: Condvar,
    wake_discovery: Notify,
}

/// The outcome of asking for a provider.
enum Pick {
    Peer(PeerId),
    Wait,
    Rediscover,
    None,
}

impl ProviderSet {
    /// A set whose first discovery round starts at once (`eager`), or only
    /// when a block turns out to be missing locally.
    pub fn new(root: Cid, eager: bool) -> Arc<Self> {
        Arc::new(ProviderSet {
            root,
            state: Mutex::new(SetState { rounds_started: u64::from(eager), ..Default::default() }),
            changed: Condvar::new(),
            wake_discovery: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SetState> {
        self.state.lock().expect("provider set lock")
    }

    /// Adds a provider (ignored if it was dropped from this download).
    pub fn add(&self, peer: PeerId) {
        let mut s = self.lock();
        if s.dropped.contains(&peer) || s.peers.contains_key(&peer) {
            return;
        }
        tracing::debug!("provider {peer} for {}", self.root);
        s.peers.insert(peer, PeerState::default());
        s.ever_found += 1;
        self.changed.notify_all();
    }

    /// Providers found so far (including dropped ones).
    pub fn ever_found(&self) -> usize {
        self.lock().ever_found
    }

    /// Peers that sent wrong blocks.
    pub fn bad_peers(&self) -> Vec<PeerId> {
        self.lock().bad.iter().copied().collect()
    }

    fn round_done(&self) {
        self.lock().rounds_done += 1;
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
        self.wake_discovery.notify_one();
    }

    fn pick(&self, s: &mut SetState, cid: &Cid) -> Pick {
        let mut best: Option<(PeerId, usize)> = None;
        let mut any_candidate = false;
        for (peer, st) in &s.peers {
            if st.lacks.contains(cid) {
                continue;
            }
            any_candidate = true;
            if st.in_flight < PER_PEER_IN_FLIGHT && best.is_none_or(|(_, n)| st.in_flight < n) {
                best = Some((*peer, st.in_flight));
            }
        }
        if let Some((peer, _)) = best {
            s.peers.get_mut(&peer).expect("picked from the map").in_flight += 1;
            return Pick::Peer(peer);
        }
        if any_candidate || s.rounds_done < s.rounds_started {
            return Pick::Wait;
        }
        if s.rounds_started < MAX_DISCOVERY_ROUNDS && !s.closed {
            return Pick::Rediscover;
        }
        Pick::None
    }

    /// Blocks until a provider that may hold `cid` has room, or fails when
    /// none is left and discovery gave up.
    fn acquire(&self, cid: &Cid) -> Result<PeerId> {
        let mut s = self.lock();
        loop {
            match self.pick(&mut s, cid) {
                Pick::Peer(p) => return Ok(p),
                Pick::Wait => {
                    s = self
                        .changed
                        .wait_timeout(s, Duration::from_millis(500))
                        .expect("provider set lock")
                        .0;
                }
                Pick::Rediscover => {
                    // Counted now so that only one worker asks.
                    s.rounds_started += 1;
                    self.wake_discovery.notify_one();
                }
                Pick::None => {
                    let reason = if s.ever_found == 0 {
                        format!("no provider found for {}", self.root)
                    } else {
                        format!(
                            "block {cid} of {}: none of the {} providers found could send it",
                            self.root, s.ever_found
                        )
                    };
                    return Err(Error::Source(reason));
                }
            }
        }
    }

    fn release(&self, peer: &PeerId) {
        if let Some(st) = self.lock().peers.get_mut(peer) {
            st.in_flight = st.in_flight.saturating_sub(1);
        }
        self.changed.notify_all();
    }

    fn lacks(&self, peer: &PeerId, cid: &Cid) {
        if let Some(st) = self.lock().peers.get_mut(peer) {
            st.in_flight = st.in_flight.saturating_sub(1);
            st.lacks.insert(*cid);
        }
        self.changed.notify_all();
    }

    fn drop_peer(&self, peer: &PeerId, bad: bool) {
        let mut s = self.lock();
        s.peers.remove(peer);
        s.dropped.insert(*peer);
        if bad {
            s.bad.insert(*peer);
        }
        self.changed.notify_all();
    }
}

/// Runs discovery rounds for `set` until it is closed: the first at once
/// (for an eager set), later ones when a worker runs out of providers.
pub async fn discover(net: NetHandle, set: Arc<ProviderSet>, seed: Vec<PeerId>) {
    for peer in seed {
        set.add(peer);
    }
    if set.lock().rounds_started == 0 {
        set.wake_discovery.notified().await;
        if set.lock().closed {
            return;
        }
    }
    loop {
        let started = Instant::now();
        discovery_round(&net, &set).await;
        set.round_done();
        set.wake_discovery.notified().await;
        if set.lock().closed {
            return;
        }
        // Give the DHT time to learn (identify, bootstrap) between rounds.
        tokio::time::sleep(ROUND_INTERVAL.saturating_sub(started.elapsed())).await;
    }
}

async fn discovery_round(net: &NetHandle, set: &Arc<ProviderSet>) {
    let root = set.root;
    let ask_connected = async {
        let peers = net.peers().await;
        let probes = peers.into_iter().map(|p| {
            let net = net.clone();
            async move {
                let request = Request::Have { cids: vec![root] };
                match net.request(p.peer_id, request, HAVE_TIMEOUT).await {
                    Ok(Response::Have { present }) if present == [true] => Some(p.peer_id),
                    _ => None,
                }
            }
        });
        for peer in futures::future::join_all(probes).await.into_iter().flatten() {
            set.add(peer);
        }
    };
    let ask_dht = async {
        let mut found = net.find_providers(root).await;
        let deadline = tokio::time::sleep(LOOKUP_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                peer = found.recv() => match peer {
                    Some(peer) => set.add(peer),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
    };
    futures::join!(ask_connected, ask_dht);
}

/// One discovery round for `root`, collected: the peers that hold it.
pub async fn find_holders(net: &NetHandle, root: Cid) -> Vec<PeerId> {
    let set = ProviderSet::new(root, true);
    discovery_round(net, &set).await;
    let s = set.lock();
    s.peers.keys().copied().collect()
}

/// A [`BlockSource`] backed by the local store and the network: local
/// blocks first; missing ones are fetched, verified, and written to the
/// store (so an interrupted download resumes where it stopped).
pub struct NetSource {
    store: Store,
    net: NetHandle,
    rt: Handle,
    providers: Arc<ProviderSet>,
    writer: Mutex<Option<BlockWriter>>,
    durability: Durability,
    fetched: AtomicU64,
}

impl NetSource {
    /// Must be called on a blocking thread (it takes the store's GC guard).
    /// `durability` says whether what it fetches must survive a crash (a
    /// replica) or not (a copy fetched to be read).
    pub fn new(
        store: Store,
        net: NetHandle,
        rt: Handle,
        providers: Arc<ProviderSet>,
        durability: Durability,
    ) -> Self {
        let writer = match durability {
            Durability::Synced => store.writer(),
            Durability::Cached => store.cache_writer(),
        };
        NetSource {
            store,
            net,
            rt,
            providers,
            writer: Mutex::new(Some(writer)),
            durability,
            fetched: AtomicU64::new(0),
        }
    }

    /// Blocks fetched from the network so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Commits what was fetched, keeping the GC guard (so the caller can pin).
    pub fn commit(&self) -> Result<()> {
        match self.writer.lock().expect("writer lock").as_mut() {
            Some(w) => w.finish(),
            None => Ok(()),
        }
    }

    /// Commits and releases the GC guard; ends discovery.
    pub fn finish(&self) -> Result<()> {
        let result = self.commit();
        self.writer.lock().expect("writer lock").take();
        self.providers.close();
        result
    }

    /// Fetches one block from the providers, retrying others on failure.
    fn fetch(&self, cid: &Cid) -> Result<BlockBuf> {
        let started = Instant::now();
        let mut busy = 0;
        loop {
            let peer = self.providers.acquire(cid)?;
            let request = Request::GetBlock { cid: *cid };
            let result = self.rt.block_on(self.net.request(peer, request, BLOCK_TIMEOUT));
            match result {
                Ok(Response::Block { data }) if block::verify(cid, &data) => {
                    self.providers.release(&peer);
                    return Ok(data.into_buf());
                }
                Ok(Response::Block { .. }) => {
                    tracing::warn!("peer {peer} sent a wrong block for {cid}; blocking it");
                    self.providers.drop_peer(&peer, true);
                    self.rt.block_on(self.net.block_peer(peer));
                }
                Ok(Response::NotFound) => self.providers.lacks(&peer, cid),
                Ok(Response::Error { code: ErrorCode::Busy, .. }) if busy < MAX_BUSY_RETRIES => {
                    // Overloaded, not lacking: try again shortly.
                    busy += 1;
                    self.providers.release(&peer);
                    std::thread::sleep(BUSY_BACKOFF);
                }
                Ok(Response::Error { code, message }) => {
                    tracing::debug!("peer {peer} cannot send {cid}: {code}: {message}");
                    self.providers.lacks(&peer, cid);
                }
                Ok(other) => {
                    tracing::warn!("peer {peer} answered GetBlock with {other:?}; blocking it");
                    self.providers.drop_peer(&peer, true);
                    self.rt.block_on(self.net.block_peer(peer));
                }
                Err(e) => {
                    tracing::debug!("dropping provider {peer}: {e}");
                    self.providers.drop_peer(&peer, false);
                }
            }
            tracing::trace!("retrying {cid} after {:?}", started.elapsed());
        }
    }
}

impl BlockSource for NetSource {
    fn block(&self, cid: &Cid) -> Result<BlockBuf> {
        match self.store.get(cid) {
            Ok(bytes) => return Ok(bytes),
            Err(Error::Missing { .. } | Error::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        let bytes = self.fetch(cid)?;
        let prepared = BlockWriter::prepare(&self.store, self.durability, cid, &bytes)?;
        if let Some(w) = self.writer.lock().expect("writer lock").as_mut() {
            w.add_prepared(prepared)?;
        }
        self.fetched.fetch_add(1, Ordering::Relaxed);
        Ok(bytes)
    }
}

impl Drop for NetSource {
    fn drop(&mut self) {
        self.providers.close();
    }
}
