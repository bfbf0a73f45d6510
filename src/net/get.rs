//! Getting blocks from the network: [`NetSource`], which reads a block
//! from the local store or else fetches it from the least busy provider of
//! a [`ProviderSet`], checks it against its CID, writes it to the store and
//! hands it on.
//!
//! It is async: the export's stream (`export::stream`, the `LeafSource`
//! below) awaits it on the runtime, with no thread of its own per get. What
//! blocks (reading and writing the store, SHA-256 of a block that came,
//! decrypting it) runs on the store's seam (`store::AsyncStore::run`), one
//! job per block that needs the store and one per block that arrived.
//! Replication pulls, which walk a DAG on blocking threads of their own,
//! use it as a blocking [`BlockSource`]: each block is one task on the
//! node's runtime that their thread waits for (`NetSource::on_runtime`).

use std::{
    collections::HashMap,
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
    crypto::Key,
    dag::Opened,
    error::{DagLimit, Error, Result},
    export::{self, BlockSource, Leaf, LeafSource},
    net::{
        blocks::{Fetched, ask_block, judge_block},
        codec::Response,
        discover::closest_connected,
        event_loop::{NetHandle, RequestError},
        providers::ProviderSet,
    },
    store::{AsyncStore, BlockWriter, Durability, Store},
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
/// Leaves in flight or waiting to be written during a network get.
pub const GET_WINDOW: usize = 48;

/// A [`LeafSource`] (and a blocking [`BlockSource`]) backed by the local
/// store and the network: local blocks first; missing ones are fetched,
/// verified, and written to the store (so a download that stops keeps what
/// arrived, until a garbage collection removes what no root holds). Cheap
/// to clone: clones share one download.
#[derive(Clone)]
pub struct NetSource(Arc<Shared>);

struct Shared {
    store: AsyncStore,
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
    /// Bytes fetched so far (shared with whoever watches the download's
    /// progress), and the most that may be.
    fetched_bytes: Arc<AtomicU64>,
    max_bytes: u64,
    /// Set to stop every fetch (a deadline passed, the asker went away).
    cancel: Arc<AtomicBool>,
    /// Whether each leaf under the nodes opened so far was on disk (and
    /// then claimed) when its parent was opened: a leaf known to be missing
    /// goes to the network without a store call of its own. At most
    /// [`MAX_NOTED`]; a leaf not noted is looked for in the store first.
    noted: Mutex<HashMap<Cid, bool>>,
    /// Jobs of this download on the seam, started and not ended; they run
    /// on after their future is dropped (a get that failed), so
    /// [`NetSource::settle`] waits for them.
    jobs: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One job of a download on the seam, counted until dropped (see
/// [`Shared::jobs`]): it moves into the job's closure.
struct Job(Arc<Shared>);

impl Drop for Job {
    fn drop(&mut self) {
        if self.0.jobs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Returns once `flag` is set (looked at every [`CANCEL_POLL`]).
async fn set(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

/// How often a fetch waiting for its answer looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(250);

/// Leaves whose presence [`Shared::noted`] remembers at most.
const MAX_NOTED: usize = 4096;

/// What became of one answer to a `GetBlock`, judged on the seam: the
/// caller's work done on the block, or why there is no block, with the work
/// handed back for the next provider.
enum Verdict<T, F> {
    Done(Result<T>),
    Busy(F),
    Lacks(String, F),
    Wrong(String, F),
    Failed(RequestError, F),
}

impl NetSource {
    /// Fetches with `writer`, whose durability says whether what it
    /// fetches must survive a crash (a replica) or not (a copy fetched to
    /// be read); `claim_local` says whether the local blocks it uses may
    /// belong to no root yet (anything but a complete, indexed copy).
    /// Fetches run on `rt`, the node's runtime.
    pub fn new(
        store: AsyncStore,
        net: NetHandle,
        rt: Handle,
        providers: Arc<ProviderSet>,
        writer: BlockWriter,
        claim_local: bool,
    ) -> Self {
        NetSource(Arc::new(Shared {
            store,
            net,
            rt,
            providers,
            durability: writer.durability(),
            writer: Mutex::new(Some(writer)),
            claim_local,
            fetched: AtomicU64::new(0),
            fetched_bytes: Arc::default(),
            max_bytes: u64::MAX,
            cancel: Arc::default(),
            noted: Mutex::default(),
            jobs: Default::default(),
            idle: tokio::sync::Notify::new(),
        }))
    }

    /// Fails a fetch that would bring the bytes fetched over `max_bytes`,
    /// and every fetch once `cancel` is set. Only before the source is
    /// cloned.
    pub fn with_limits(mut self, max_bytes: u64, cancel: Arc<AtomicBool>) -> Self {
        let shared = Arc::get_mut(&mut self.0).expect("limits are set before the source is shared");
        shared.max_bytes = max_bytes;
        shared.cancel = cancel;
        self
    }

    /// Counts the bytes fetched in `progress` (a watcher reads how the
    /// download goes). Only before the source is cloned.
    pub fn with_progress(mut self, progress: Arc<AtomicU64>) -> Self {
        let shared = Arc::get_mut(&mut self.0).expect("set before the source is shared");
        shared.fetched_bytes = progress;
        self
    }

    /// Blocks fetched from the network so far.
    pub fn fetched(&self) -> u64 {
        self.0.fetched.load(Ordering::Relaxed)
    }

    /// The store, for code on a blocking thread.
    pub fn store(&self) -> &Store {
        self.0.store.blocking()
    }

    /// Commits what was fetched, keeping the writer's guard (so the caller
    /// can pin). Blocking.
    pub fn commit(&self) -> Result<()> {
        self.0.commit()
    }

    /// Commits and releases the writer's guard; ends discovery. The guard
    /// goes even if a panic poisoned the writer (what it had not committed
    /// is then left to garbage collection). Blocking.
    pub fn finish(&self) -> Result<()> {
        let result = self.0.commit();
        self.0.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.0.providers.close();
        result
    }

    /// Whether the block is on disk, claimed for this download when it
    /// must be (see `claim_local`). Blocking.
    pub fn has_local(&self, cid: &Cid) -> bool {
        let store = self.store();
        if self.0.claim_local { store.claim(cid) } else { store.has(cid) }
    }

    /// Counts a job on the seam until the returned guard drops.
    fn job(&self) -> Job {
        self.0.jobs.fetch_add(1, Ordering::AcqRel);
        Job(self.0.clone())
    }

    /// Waits until every job this download started on the seam has ended:
    /// after a get failed or was dropped half-way, the blocks that had
    /// arrived are then written, and a commit covers them.
    pub async fn settle(&self) {
        loop {
            let idle = self.0.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.0.jobs.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// The block `cid`, verified, with `then` applied to it on the seam:
    /// from the store if it is there (and claimed, see `claim_local`), else
    /// from the providers, stored first.
    pub async fn block_then<T, F>(&self, cid: Cid, then: F) -> Result<T>
    where
        F: FnOnce(BlockBuf) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let noted = self.0.noted.lock().unwrap_or_else(PoisonError::into_inner).remove(&cid);
        if noted == Some(false) {
            return self.fetch_then(cid, then).await;
        }
        let (shared, job) = (self.0.clone(), self.job());
        let local = self
            .0
            .store
            .run(move |store| {
                let _job = job;
                if shared.claim_local && !store.claim(&cid) {
                    return Ok(Err(then));
                }
                match store.get(&cid) {
                    Ok(bytes) => then(bytes).map(Ok),
                    Err(Error::Missing { .. } | Error::Corrupt { .. }) => Ok(Err(then)),
                    Err(e) => Err(e),
                }
            })
            .await?;
        match local {
            Ok(done) => Ok(done),
            Err(then) => self.fetch_then(cid, then).await,
        }
    }

    /// Fetches `cid` from the providers, retrying others on failure, and
    /// applies `then` to it once it is verified and stored.
    async fn fetch_then<T, F>(&self, cid: Cid, then: F) -> Result<T>
    where
        F: FnOnce(BlockBuf) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let providers = &self.0.providers;
        let mut then = then;
        if cid == providers.root() && providers.peers().is_empty() {
            then = match self.probe_root(then).await? {
                Ok(done) => return Ok(done),
                Err(then) => then,
            };
        }
        let started = Instant::now();
        let mut busy = 0;
        loop {
            if self.0.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let peer = providers.acquire(&cid).await?;
            // A cancel (a pull past its deadline or stalled, a reader gone)
            // does not wait for an answer that may never come.
            let answer = tokio::select! {
                answer = ask_block(&self.0.net, peer, cid, BLOCK_TIMEOUT) => answer,
                () = set(&self.0.cancel) => {
                    providers.release(&peer, false);
                    return Err(Error::Cancelled);
                }
            };
            let verdict = match self.judge(cid, answer, then).await {
                Ok(verdict) => verdict,
                Err(e) => {
                    providers.release(&peer, false);
                    return Err(e);
                }
            };
            then = match verdict {
                Verdict::Done(done) => {
                    providers.release(&peer, true);
                    return done;
                }
                Verdict::Busy(then) if busy < MAX_BUSY_RETRIES => {
                    // Overloaded, not lacking: try again shortly.
                    busy += 1;
                    providers.release(&peer, false);
                    tokio::time::sleep(BUSY_BACKOFF).await;
                    then
                }
                Verdict::Busy(then) => {
                    providers.lacks(&peer, &cid);
                    then
                }
                Verdict::Lacks(reason, then) => {
                    tracing::debug!("peer {peer} cannot send {cid}: {reason}");
                    providers.lacks(&peer, &cid);
                    then
                }
                Verdict::Wrong(reason, then) => {
                    self.blame(peer, &reason).await;
                    then
                }
                Verdict::Failed(e, then) => {
                    if providers.failed(&peer) {
                        tracing::debug!("dropping provider {peer}: {e}");
                    } else {
                        tracing::debug!("provider {peer} rests: {e}");
                    }
                    then
                }
            };
            tracing::trace!("retrying {cid} after {:?}", started.elapsed());
        }
    }

    /// Judges an answer on the seam: checks the block against its CID
    /// (SHA-256), stores it and applies `then`, in one job.
    async fn judge<T, F>(
        &self,
        cid: Cid,
        answer: std::result::Result<Response, RequestError>,
        then: F,
    ) -> Result<Verdict<T, F>>
    where
        F: FnOnce(BlockBuf) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (shared, job) = (self.0.clone(), self.job());
        self.0
            .store
            .run(move |store| {
                let _job = job;
                Ok(match judge_block(&cid, answer) {
                    Fetched::Block(bytes) => {
                        Verdict::Done(shared.keep(store, &cid, bytes).and_then(then))
                    }
                    Fetched::Busy => Verdict::Busy(then),
                    Fetched::Lacks(reason) => Verdict::Lacks(reason, then),
                    Fetched::Wrong(reason) => Verdict::Wrong(reason, then),
                    Fetched::Failed(e) => Verdict::Failed(e, then),
                })
            })
            .await
    }

    /// Drops a peer that broke the protocol from the download, and blocks it.
    async fn blame(&self, peer: PeerId, reason: &str) {
        tracing::warn!("peer {peer} {reason}; blocking it");
        self.0.providers.drop_bad(&peer);
        self.0.net.block_peer(peer).await;
    }

    /// Asks the connected peer closest to the root for the root block
    /// itself, while discovery has found no provider yet: copies are placed
    /// on the peers closest to the root, so it most likely holds one, and a
    /// peer that answers with the block holds it (what its `Have` answer
    /// would have said), a round trip sooner than asking it `Have` first.
    /// It is then a provider of the download. Any other answer, or none
    /// within [`ROOT_PROBE_TIMEOUT`], leaves the root to the providers
    /// discovery finds meanwhile (`then` comes back for them).
    async fn probe_root<T, F>(&self, then: F) -> Result<std::result::Result<T, F>>
    where
        F: FnOnce(BlockBuf) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (net, root) = (&self.0.net, self.0.providers.root());
        if self.0.cancel.load(Ordering::Relaxed) {
            return Ok(Err(then));
        }
        let Some(&peer) = closest_connected(net, root).await.first() else {
            return Ok(Err(then));
        };
        self.0.providers.cost_counter().add_probes(1);
        let answer = ask_block(net, peer, root, ROOT_PROBE_TIMEOUT).await;
        Ok(match self.judge(root, answer, then).await? {
            Verdict::Done(done) => {
                self.0.providers.add(peer);
                Ok(done?)
            }
            Verdict::Wrong(reason, then) => {
                self.blame(peer, &reason).await;
                Err(then)
            }
            Verdict::Lacks(_, then) | Verdict::Busy(then) | Verdict::Failed(_, then) => Err(then),
        })
    }

    /// Runs `future` on the node's runtime and waits for it on this
    /// blocking thread; `None` if the runtime stops first (a node stopping,
    /// a program ending), which drops the task and with it the sender of
    /// its result. Not `Handle::block_on`: that polls the future here, and
    /// a timer polled on a runtime that is shutting down panics. The panic
    /// took down one thread, and the threads sharing the download
    /// (`pull_dag`) waited for its block forever, and the runtime's
    /// shutdown, which waits for its blocking threads, with them.
    fn on_runtime<F>(&self, future: F) -> Option<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (sender, result) = std::sync::mpsc::sync_channel(1);
        self.0.rt.spawn(async move {
            let _ = sender.send(future.await);
        });
        result.recv().ok()
    }
}

impl Shared {
    /// The writer, unless a thread panicked while it held it: its batch may
    /// then be half-updated, so this download fails, with the panic named,
    /// instead of every later block panicking on the poisoned lock in turn.
    fn writer(&self) -> Result<MutexGuard<'_, Option<BlockWriter>>> {
        self.writer.lock().map_err(|_| Error::WorkerPanicked("writing a fetched block".into()))
    }

    fn commit(&self) -> Result<()> {
        match self.writer()?.as_mut() {
            Some(w) => w.finish(),
            None => Ok(()),
        }
    }

    /// Notes whether each leaf of `opened` is on disk, claiming those that
    /// are, while there is room. Only for a download that claims what it
    /// uses: a complete copy has every block.
    fn note_leaves(&self, opened: &Opened) {
        if !self.claim_local {
            return;
        }
        let store = self.store.blocking();
        let mut noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        let leaves = opened.children.iter().filter(|c| c.cid.codec() == crate::block::RAW);
        for child in leaves {
            if noted.len() >= MAX_NOTED {
                return;
            }
            noted.insert(child.cid, store.claim(&child.cid));
        }
    }

    /// Counts a verified block that arrived against the download's limit
    /// and writes it to the store (on the seam).
    fn keep(&self, store: &Store, cid: &Cid, bytes: BlockBuf) -> Result<BlockBuf> {
        let total = self.fetched_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if total + bytes.len() as u64 > self.max_bytes {
            let root = self.providers.root();
            return Err(Error::Limit { root, limit: DagLimit::Bytes(self.max_bytes) });
        }
        let prepared = BlockWriter::prepare(store, self.durability, cid, &bytes)?;
        if let Some(w) = self.writer()?.as_mut() {
            w.add_prepared(prepared)?;
        }
        self.fetched.fetch_add(1, Ordering::Relaxed);
        Ok(bytes)
    }
}

impl LeafSource for NetSource {
    /// Opens a structure node and, on the same blocking thread, notes which
    /// of its leaves are on disk (see [`Shared::noted`]).
    async fn open(&self, cid: Cid, key: Key) -> Result<Opened> {
        let shared = self.0.clone();
        self.block_then(cid, move |bytes| {
            let opened = export::open_node(&cid, &bytes, &key)?;
            shared.note_leaves(&opened);
            Ok(opened)
        })
        .await
    }

    async fn leaf(&self, leaf: Leaf) -> Result<BlockBuf> {
        self.block_then(leaf.cid, move |bytes| export::open_leaf(bytes, &leaf)).await
    }
}

/// For code on a blocking thread (replication pulls): each block is a task
/// on the node's runtime that the thread waits for.
impl BlockSource for NetSource {
    fn block(&self, cid: &Cid) -> Result<BlockBuf> {
        let (source, cid) = (self.clone(), *cid);
        self.on_runtime(async move { source.block_then(cid, Ok).await })
            .unwrap_or(Err(Error::NodeStopped))
    }
}

impl Drop for Shared {
    /// Ends discovery. A writer still held (a get dropped half-way) goes on
    /// a blocking thread: dropping it removes what it had not committed.
    fn drop(&mut self) {
        self.providers.close();
        let writer = self.writer.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(writer) = writer {
            if Handle::try_current().is_ok() {
                drop(crate::store::spawn_blocking(move || drop(writer)));
            } else {
                drop(writer);
            }
        }
    }
}
