//! Getting blocks from the network: [`NetSource`], the [`BlockSource`]
//! that reads a block from the local store or else fetches it from the
//! least busy provider of a [`ProviderSet`], checks it against its CID,
//! writes it to the store and hands it on. The export pipeline
//! (`crate::export`) and replication pulls run on top of it on blocking
//! threads: each fetch runs as a task on the node's runtime and its
//! blocking thread waits for the result (`NetSource::on_runtime`), the one
//! bridge from blocking code to the swarm (see the store's module docs for
//! the rule).

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::PeerId;
use tokio::runtime::Handle;

use crate::{
    block::BlockBuf,
    error::{DagLimit, Error, Result},
    export::BlockSource,
    net::{
        blocks::{Fetched, ask_block, judge_block},
        discover::closest_connected,
        event_loop::NetHandle,
        providers::ProviderSet,
    },
    store::{BlockWriter, Durability, Store},
};

/// Deadline of one `GetBlock` (the spec's request timeout).
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before asking a provider that answered `Busy` again.
pub const BUSY_BACKOFF: Duration = Duration::from_millis(50);
/// `Busy` answers one block fetch accepts before it gives up on the peer.
pub const MAX_BUSY_RETRIES: u32 = 200;
/// How long a get or put waits for a first peer when the node has
/// bootstrap addresses but no connection yet (a one-shot client).
pub const FIRST_PEER_WAIT: Duration = Duration::from_secs(10);
/// How long a get waits for the root from the connected peer closest to
/// it before it asks the providers discovery found (see
/// `NetSource::probe_root`): what a silent peer there can delay a get by.
pub const ROOT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Export workers for a network get (each has one block in flight).
pub const GET_WORKERS: usize = 32;
/// Leaves in flight or waiting to be written during a network get.
pub const GET_WINDOW: usize = 48;

/// A [`BlockSource`] backed by the local store and the network: local
/// blocks first; missing ones are fetched, verified, and written to the
/// store (so a download that stops keeps what arrived, until a garbage
/// collection removes what no root holds).
pub struct NetSource {
    store: Store,
    net: NetHandle,
    rt: Handle,
    providers: Arc<ProviderSet>,
    writer: Mutex<Option<BlockWriter>>,
    durability: Durability,
    /// Whether local blocks are claimed before they are used: they may be
    /// left from an earlier download that no root holds yet (see
    /// `store::gc`).
    claim_local: bool,
    fetched: AtomicU64,
    /// Bytes fetched so far, and the most that may be.
    fetched_bytes: AtomicU64,
    max_bytes: u64,
    /// Set to stop every fetch (a deadline passed, the asker went away).
    cancel: Arc<AtomicBool>,
}

impl NetSource {
    /// Call it on a blocking thread. `durability` says whether what it
    /// fetches must survive a crash (a replica) or not (a copy fetched to
    /// be read); `claim_local` whether the local blocks it uses may belong
    /// to no root yet (anything but a complete, indexed copy).
    pub fn new(
        store: Store,
        net: NetHandle,
        rt: Handle,
        providers: Arc<ProviderSet>,
        durability: Durability,
        claim_local: bool,
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
            claim_local,
            fetched: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            max_bytes: u64::MAX,
            cancel: Arc::default(),
        }
    }

    /// Fails a fetch that would bring the bytes fetched over `max_bytes`,
    /// and every fetch once `cancel` is set.
    pub fn with_limits(mut self, max_bytes: u64, cancel: Arc<AtomicBool>) -> Self {
        self.max_bytes = max_bytes;
        self.cancel = cancel;
        self
    }

    /// Blocks fetched from the network so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Commits what was fetched, keeping the writer's guard (so the caller
    /// can pin).
    pub fn commit(&self) -> Result<()> {
        match self.writer()?.as_mut() {
            Some(w) => w.finish(),
            None => Ok(()),
        }
    }

    /// Commits and releases the writer's guard; ends discovery. The guard
    /// goes even if a panic poisoned the writer (what it had not committed
    /// is then left to garbage collection).
    pub fn finish(&self) -> Result<()> {
        let result = self.commit();
        self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.providers.close();
        result
    }

    /// The writer, unless a thread panicked while it held it: its batch may
    /// then be half-updated, so this download fails, with the panic named,
    /// instead of every later block panicking on the poisoned lock in turn.
    fn writer(&self) -> Result<MutexGuard<'_, Option<BlockWriter>>> {
        self.writer.lock().map_err(|_| Error::WorkerPanicked("writing a fetched block".into()))
    }

    /// Whether the block is on disk, claimed for this download when it
    /// must be (see `claim_local`).
    pub fn has_local(&self, cid: &Cid) -> bool {
        if self.claim_local { self.store.claim(cid) } else { self.store.has(cid) }
    }

    /// Runs `future` on the node's runtime and waits for it on this
    /// blocking thread; `None` if the runtime stops first (a node stopping,
    /// a program ending), which drops the task and with it the sender of
    /// its result. Not `Handle::block_on`: that polls the future here, and
    /// a timer polled on a runtime that is shutting down panics. The panic
    /// took down one thread, and the threads sharing the download
    /// (`export`, `pull_dag`) waited for its block forever, and the
    /// runtime's shutdown, which waits for its blocking threads, with them.
    fn on_runtime<F>(&self, future: F) -> Option<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (sender, result) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = sender.send(future.await);
        });
        result.recv().ok()
    }

    /// Fetches one block from the providers, retrying others on failure.
    fn fetch(&self, cid: &Cid) -> Result<BlockBuf> {
        if *cid == self.providers.root()
            && self.providers.peers().is_empty()
            && let Some(bytes) = self.probe_root(cid)
        {
            return Ok(bytes);
        }
        let started = Instant::now();
        let mut busy = 0;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let peer = self.providers.acquire(cid)?;
            let (net, asked) = (self.net.clone(), *cid);
            let answer =
                self.on_runtime(async move { ask_block(&net, peer, asked, BLOCK_TIMEOUT).await });
            let Some(answer) = answer else {
                self.providers.release(&peer, false);
                return Err(Error::NodeStopped);
            };
            // The SHA-256 pass runs here, on this blocking thread.
            match judge_block(cid, answer) {
                Fetched::Block(bytes) => {
                    self.providers.release(&peer, true);
                    return Ok(bytes);
                }
                Fetched::Busy if busy < MAX_BUSY_RETRIES => {
                    // Overloaded, not lacking: try again shortly.
                    busy += 1;
                    self.providers.release(&peer, false);
                    std::thread::sleep(BUSY_BACKOFF);
                }
                Fetched::Busy => self.providers.lacks(&peer, cid),
                Fetched::Lacks(reason) => {
                    tracing::debug!("peer {peer} cannot send {cid}: {reason}");
                    self.providers.lacks(&peer, cid);
                }
                Fetched::Wrong(reason) => self.blame(peer, &reason),
                Fetched::Failed(e) => {
                    if self.providers.failed(&peer) {
                        tracing::debug!("dropping provider {peer}: {e}");
                    } else {
                        tracing::debug!("provider {peer} rests: {e}");
                    }
                }
            }
            tracing::trace!("retrying {cid} after {:?}", started.elapsed());
        }
    }

    /// Drops a peer that broke the protocol from the download, and blocks it.
    fn blame(&self, peer: PeerId, reason: &str) {
        tracing::warn!("peer {peer} {reason}; blocking it");
        self.providers.drop_bad(&peer);
        let net = self.net.clone();
        let _ = self.on_runtime(async move { net.block_peer(peer).await });
    }

    /// Asks the connected peer closest to the root for the root block
    /// itself, while discovery has found no provider yet: copies are placed
    /// on the peers closest to the root, so it most likely holds one, and a
    /// peer that answers with the block holds it (what its `Have` answer
    /// would have said), a round trip sooner than asking it `Have` first.
    /// It is then a provider of the download. Any other answer, or none
    /// within [`ROOT_PROBE_TIMEOUT`], leaves the root to the providers
    /// discovery finds meanwhile.
    fn probe_root(&self, root: &Cid) -> Option<BlockBuf> {
        if self.cancel.load(Ordering::Relaxed) {
            return None;
        }
        let (net, asked, cost) = (self.net.clone(), *root, self.providers.cost_counter().clone());
        let (peer, answer) = self.on_runtime(async move {
            let peer = *closest_connected(&net, asked).await.first()?;
            cost.add_probes(1);
            Some((peer, ask_block(&net, peer, asked, ROOT_PROBE_TIMEOUT).await))
        })??;
        match judge_block(root, answer) {
            Fetched::Block(bytes) => {
                self.providers.add(peer);
                Some(bytes)
            }
            Fetched::Wrong(reason) => {
                self.blame(peer, &reason);
                None
            }
            Fetched::Lacks(_) | Fetched::Busy | Fetched::Failed(_) => None,
        }
    }
}

impl BlockSource for NetSource {
    fn block(&self, cid: &Cid) -> Result<BlockBuf> {
        if !self.claim_local || self.store.claim(cid) {
            match self.store.get(cid) {
                Ok(bytes) => return Ok(bytes),
                Err(Error::Missing { .. } | Error::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let bytes = self.fetch(cid)?;
        let total = self.fetched_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if total + bytes.len() as u64 > self.max_bytes {
            let root = self.providers.root();
            return Err(Error::Limit { root, limit: DagLimit::Bytes(self.max_bytes) });
        }
        let prepared = BlockWriter::prepare(&self.store, self.durability, cid, &bytes)?;
        if let Some(w) = self.writer()?.as_mut() {
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
