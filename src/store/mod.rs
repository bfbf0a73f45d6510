//! The on-disk store: one data directory, opened by one process at a time.
//! It never decrypts anything: it walks structure nodes through their
//! clear links only. Its parts, each in a room of its own:
//!
//! - [`dir`]: the directory's layout, its lock, the identity key and the
//!   convergence secret;
//! - [`blocks`]: block files — reading them back verified (through check
//!   tags, [`check`]), moving bad ones aside, writing new ones to `tmp/`
//!   (copies fetched to be read around the page cache, [`direct`]);
//! - [`writer`]: [`BlockWriter`], which makes batches of new blocks durable
//!   with one sync and renames them into place;
//! - [`index`]: the roots kept (pinned or cached), their owners, and their
//!   persistence in `pins.cbor` and `cache.cbor`;
//! - [`walk`]: walking a DAG on disk;
//! - [`gc`]: garbage collection, which never makes an operation wait for it.
//!
//! **The seam between async and blocking.** The store is blocking code:
//! its methods may touch the disk, and its locks are plain mutexes held
//! for short spans of memory work (the root index is written and synced
//! after its lock is released, from a snapshot: see `index`). Async code
//! never calls it and never takes its locks: it reaches the store through
//! one face, [`face`]'s [`AsyncStore::run`] for short calls (bounded to
//! [`STORE_CALLS`] at once), or [`spawn_blocking`] / [`run_blocking`] for
//! long work — an import, an export, a replica pull — which runs wholly on
//! a blocking thread and calls the store directly there. The store's
//! public entry points call [`assert_blocking_context`], which (in debug
//! builds and with the `seam-check` feature) panics on a runtime worker.
//! The one bridge the other way is the network handle: blocking code that
//! needs the swarm runs a task on the runtime and waits for its result,
//! only ever from such a blocking thread (see `net::get`).

mod blocks;
mod check;
mod dir;
mod direct;
mod face;
mod gc;
mod index;
mod walk;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64},
    },
};

use libp2p::{PeerId, identity::Keypair};

pub use self::{
    blocks::Usage,
    face::{
        AsyncStore, STORE_CALLS, assert_blocking_context, joined, run_blocking, spawn_blocking,
    },
    gc::{CORRUPT_KEPT, CORRUPT_KEPT_FOR, GcStats, Guard, SWEEP_BATCH},
    index::{
        BLOCK_OVERHEAD, FileInfo, MAX_LEASE_REPLICAS, PinKind, Rebuilt, RootInfo, replica_cost,
    },
    writer::{BlockWriter, Durability, Prepared},
};
use crate::{crypto::ConvergenceSecret, error::Result};

/// Options of a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Bytes that cached (fetched, not pinned) roots may take before the
    /// least recently used are evicted.
    pub cache_limit: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { cache_limit: 10 * 1024 * 1024 * 1024 }
    }
}

/// A handle to an open data directory; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: dir::DataDir,
    options: StoreOptions,
    /// The root index (`index`): memory only, never held across IO.
    roots: Mutex<index::Roots>,
    /// Writes of the index files, in order (`index`).
    index_files: Mutex<index::Written>,
    /// Numbers the snapshots of the index, taken under `roots`.
    index_seq: AtomicU64,
    /// The turns of async callers (`face`): shared by every face.
    calls: Arc<tokio::sync::Semaphore>,
    /// Guards, claims and collections (`gc`).
    collector: Arc<gc::Collector>,
    /// Names of temporary files (`blocks`).
    tmp_seq: AtomicU64,
    /// Fault injection: writes fail with ENOSPC once this many more bytes
    /// have been written (u64::MAX: never).
    write_budget: AtomicU64,
    /// Whether the file system takes direct writes (cleared at the first
    /// refusal).
    direct_io: AtomicBool,
    /// Check tags of verified blocks.
    checker: check::Checker,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.inner.dir.dir).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the data directory `dir`, taking its lock.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        assert_blocking_context();
        let store = Store::open_unindexed(dir, options)?;
        store.load_index()?;
        Ok(store)
    }

    /// Opens the data directory and rebuilds its root index from the blocks
    /// on disk (see [`rebuild_index`](Self::rebuild_index)).
    pub fn open_rebuilding(
        dir: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<(Store, Rebuilt)> {
        assert_blocking_context();
        let store = Store::open_unindexed(dir, options)?;
        let rebuilt = store.rebuild_index()?;
        Ok((store, rebuilt))
    }

    /// Opens the data directory without reading its root index: enough for
    /// its identity, and for nothing that touches roots.
    pub fn open_unindexed(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        assert_blocking_context();
        let dir = dir::DataDir::open(PathBuf::from(dir.as_ref()))?;
        let checker = check::Checker::new(&dir.identity_bytes);
        let stamp = dir.dir.join(dir::CLOCK_FILE);
        let collector = gc::Collector::new(&stamp)
            .map_err(|e| crate::error::Error::io("cannot create", &stamp, e))?;
        let store = Store {
            inner: Arc::new(Inner {
                dir,
                options,
                roots: Mutex::default(),
                index_files: Mutex::default(),
                index_seq: AtomicU64::new(0),
                calls: Arc::new(tokio::sync::Semaphore::new(STORE_CALLS)),
                collector: Arc::new(collector),
                tmp_seq: AtomicU64::new(0),
                write_budget: AtomicU64::new(u64::MAX),
                direct_io: AtomicBool::new(true),
                checker,
            }),
        };
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir.dir
    }

    /// Gives the store that will be opened at `dir` the identity `key`
    /// unless it has one already: for tools that want the same peer ids on
    /// every run (`bench dht`).
    pub fn preset_identity(dir: impl AsRef<Path>, key: &Keypair) -> Result<()> {
        dir::preset_identity(dir.as_ref(), key)
    }

    /// The node's libp2p identity.
    pub fn identity(&self) -> &Keypair {
        &self.inner.dir.identity
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.dir.identity.public().to_peer_id()
    }

    /// The secret convergent keys are derived under.
    pub fn secret(&self) -> &ConvergenceSecret {
        &self.inner.dir.secret
    }

    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }
}
