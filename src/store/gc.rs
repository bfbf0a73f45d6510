//! Garbage collection: removes the block files no root in the index
//! reaches, without ever making a put, get, replication or delete wait for
//! it — and without ever removing a block one of them still needs.
//!
//! The design is a generation per operation, kept in the file system's
//! own clock. Every operation that writes blocks, or relies on blocks it
//! did not write, holds a [`Guard`] (a [`BlockWriter`](super::BlockWriter)
//! holds one for its whole life), which records when it started: the time
//! the file system gives a stamp file it touches. A block file the
//! operation writes is created and renamed after that moment; a block it
//! finds already stored, it *claims* ([`Store::claim`]): touches the file.
//! Either way the file's change time (`ctime`) is at or after the guard's
//! start, on the same clock. A collection:
//!
//! 1. stamps its own start `S` (and waits for the file system's clock to
//!    move past it, a tick at most, so that every guard that starts later
//!    starts after `S`);
//! 2. marks every block reachable from the roots in the index, each
//!    distinct block once ([`Frontier`]), holding no lock;
//! 3. sweeps `blocks/` in batches: a file is removed only if it is
//!    unmarked, its `ctime` is at or before `S`, and before the start of
//!    every guard that was live at step 1.
//!
//! So a block that a live operation wrote or claimed is never removed, and
//! neither is anything a root pinned during the collection needs (its
//! blocks were written or claimed under the pinning operation's guard). The
//! one lock both sides take is the *sweep lock*: a claim holds it for one
//! `utimensat`, a sweep for one batch of [`SWEEP_BATCH`] files (a `stat`
//! and an `unlink` each), so that a claim and the removal of the same file
//! cannot interleave. That batch, and a collection's start stamp (a tick
//! of the file system's clock), are the longest any operation waits on a
//! collection: a few milliseconds on a local disk. Collections run one at a
//! time, in the background after a root is dropped
//! ([`Store::request_gc`]) or when asked ([`Store::gc`]). If the clock goes
//! back while an operation runs, collections wait until no operation that
//! started before it is left.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use super::Store;
use crate::{
    block::{self, DAG_CBOR},
    dag::{Frontier, Node},
    error::{Error, Result},
};

/// Block files a sweep examines (and removes) per hold of the sweep lock.
pub const SWEEP_BATCH: usize = 64;

/// Result of a garbage collection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub removed_blocks: u64,
    pub removed_bytes: u64,
    /// Unreachable blocks kept because a live operation may still need them.
    pub kept_recent: u64,
    /// Blocks that failed verification, set aside in `corrupt/` longer than
    /// [`CORRUPT_KEPT_FOR`] or beyond the newest [`CORRUPT_KEPT`], removed.
    pub removed_corrupt: u64,
    /// Files of writes a stopped process left in `tmp/`, removed when the
    /// directory was opened and reported by the first collection after.
    pub removed_tmp_files: u64,
    pub removed_tmp_bytes: u64,
}

/// Blocks that failed verification are kept in `corrupt/` for inspection,
/// the newest this many at most...
pub const CORRUPT_KEPT: usize = 64;
/// ...for this long at most: after that, only space they take.
pub const CORRUPT_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 86400);

/// A moment on the file system's clock: a `ctime` (seconds, nanoseconds).
type FsTime = (i64, i64);

fn ctime(meta: &fs::Metadata) -> FsTime {
    (meta.ctime(), meta.ctime_nsec())
}

/// The collector's state, shared by a store's clones and its guards.
pub(super) struct Collector {
    /// A file in the data directory whose `ctime` reads the file system's clock.
    stamp: File,
    /// Live guards (id and start), and the latest stamp read.
    guards: Mutex<Guards>,
    /// Orders claims against the removal of the same file.
    sweep: Mutex<()>,
    /// Held by a collection for its whole run: one at a time.
    run: Mutex<()>,
    /// Whether a background collection runs, and whether another was asked
    /// for meanwhile.
    background: Mutex<(bool, bool)>,
}

#[derive(Default)]
struct Guards {
    next: u64,
    live: BTreeMap<u64, FsTime>,
    latest: FsTime,
}

impl Collector {
    /// A collector whose stamp file is `stamp` (created).
    pub(super) fn new(stamp: &Path) -> io::Result<Collector> {
        Ok(Collector {
            stamp: File::create(stamp)?,
            guards: Mutex::default(),
            sweep: Mutex::default(),
            run: Mutex::default(),
            background: Mutex::default(),
        })
    }

    /// Now, on the file system's clock: touches the stamp file and reads
    /// its `ctime`. Called with the guards lock held, so stamps are read
    /// in the order they are taken.
    fn now(&self, guards: &mut Guards) -> FsTime {
        let times = [
            libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
            libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        ];
        // SAFETY: the descriptor is the stamp file's, which `self` owns;
        // futimens only sets its times from `times`.
        unsafe { libc::futimens(self.stamp.as_raw_fd(), times.as_ptr()) };
        let now = self.stamp.metadata().map(|m| ctime(&m)).unwrap_or(guards.latest);
        guards.latest = guards.latest.max(now);
        now
    }

    pub(super) fn sweep_lock(&self) -> MutexGuard<'_, ()> {
        self.sweep.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn guards(&self) -> MutexGuard<'_, Guards> {
        self.guards.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A collection's start: its stamp `S`, and the latest moment a block
    /// may have changed to be removed — `S`, or just before the oldest
    /// live guard's start. `None` if the clock went back while a guard
    /// that started before lives on.
    fn start(&self) -> Option<FsTime> {
        let mut guards = self.guards();
        let latest = guards.latest;
        let started = self.now(&mut guards);
        if started < latest && !guards.live.is_empty() {
            return None;
        }
        // Wait for the clock to tick past `S`: guards that start from now
        // on start after it (a tick is a few milliseconds at most).
        for _ in 0..1000 {
            if self.now(&mut guards) > started {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let limit = match guards.live.values().min() {
            Some(&(s, ns)) if (s, ns) <= started => {
                if ns > 0 {
                    (s, ns - 1)
                } else {
                    (s - 1, 999_999_999)
                }
            }
            _ => started,
        };
        Some(limit)
    }
}

/// Keeps the blocks an operation writes or claims from being collected,
/// from its creation until it is dropped. Never waits for a collection.
pub struct Guard {
    collector: Arc<Collector>,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.collector.guards().live.remove(&self.id);
    }
}

impl Store {
    /// A guard for an operation that will write blocks or rely on blocks
    /// already stored (claiming each with [`claim`](Self::claim)).
    pub fn guard(&self) -> Guard {
        super::assert_blocking_context();
        let collector = self.inner.collector.clone();
        let id = {
            let mut guards = collector.guards();
            let start = collector.now(&mut guards);
            let id = guards.next;
            guards.next += 1;
            guards.live.insert(id, start);
            id
        };
        Guard { collector, id }
    }

    /// Asks for a collection in the background (at most one runs, and one
    /// more is queued however often this is called); returns at once.
    pub fn request_gc(&self) {
        {
            let mut state = self.inner.collector.background.lock().expect("gc state lock");
            if state.0 {
                state.1 = true;
                return;
            }
            *state = (true, false);
        }
        let inner = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new().name("dfs-gc".into()).spawn(move || {
            loop {
                // A store dropped meanwhile needs no collection.
                let Some(inner) = inner.upgrade() else { return };
                let store = Store { inner };
                match store.gc() {
                    Ok(stats) if stats.removed_blocks > 0 => tracing::debug!(
                        "collected {} blocks ({} bytes)",
                        stats.removed_blocks,
                        stats.removed_bytes
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("garbage collection failed: {e}"),
                }
                let mut state = store.inner.collector.background.lock().expect("gc state lock");
                if !state.1 {
                    state.0 = false;
                    return;
                }
                state.1 = false;
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a garbage collection: {e}");
            *self.inner.collector.background.lock().expect("gc state lock") = (false, false);
        }
    }

    /// Removes every block that no root in the index reaches and no live
    /// operation wrote or claimed (see the module docs). Waits for a
    /// collection already running, never for a writer.
    pub fn gc(&self) -> Result<GcStats> {
        super::assert_blocking_context();
        let collector = &self.inner.collector;
        let _run = collector.run.lock().unwrap_or_else(|e| e.into_inner());
        let Some(limit) = collector.start() else {
            tracing::warn!("the system clock went back; garbage collection waits");
            return Ok(GcStats::default());
        };
        let live = self.mark();
        let mut stats = GcStats::default();
        let blocks = &self.inner.dir.blocks;
        let read = |d: &Path| fs::read_dir(d).map_err(|e| Error::io("cannot list", d, e));
        for shard in read(blocks)? {
            let shard = shard.map_err(|e| Error::io("cannot list", blocks, e))?;
            let mut candidates: Vec<PathBuf> = Vec::new();
            for entry in read(&shard.path())? {
                let Ok(entry) = entry else { continue };
                let name = entry.file_name();
                let Some(cid) = name.to_str().and_then(|n| block::parse_cid(n).ok()) else {
                    continue;
                };
                if !live.contains(&cid) {
                    candidates.push(entry.path());
                }
            }
            for batch in candidates.chunks(SWEEP_BATCH) {
                let _sweep = collector.sweep_lock();
                for path in batch {
                    let Ok(meta) = fs::symlink_metadata(path) else { continue };
                    if ctime(&meta) > limit {
                        stats.kept_recent += 1;
                    } else if fs::remove_file(path).is_ok() {
                        stats.removed_blocks += 1;
                        stats.removed_bytes += meta.len();
                    }
                }
            }
        }
        self.prune_corrupt(&mut stats);
        let [files, bytes] = &self.inner.dir.leftover_tmp;
        stats.removed_tmp_files = files.swap(0, std::sync::atomic::Ordering::Relaxed);
        stats.removed_tmp_bytes = bytes.swap(0, std::sync::atomic::Ordering::Relaxed);
        Ok(stats)
    }

    /// Keeps the newest [`CORRUPT_KEPT`] files of `corrupt/`, none older
    /// than [`CORRUPT_KEPT_FOR`]: set-aside blocks are evidence for a
    /// while, not a leak.
    fn prune_corrupt(&self, stats: &mut GcStats) {
        let Ok(entries) = fs::read_dir(&self.inner.dir.corrupt) else { return };
        let mut files: Vec<(std::time::SystemTime, PathBuf, u64)> = entries
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok().filter(fs::Metadata::is_file)?;
                Some((meta.modified().ok()?, e.path(), meta.len()))
            })
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.0)); // newest first
        let now = std::time::SystemTime::now();
        for (i, (modified, path, len)) in files.into_iter().enumerate() {
            let old = now.duration_since(modified).is_ok_and(|age| age > CORRUPT_KEPT_FOR);
            if (i >= CORRUPT_KEPT || old) && fs::remove_file(&path).is_ok() {
                stats.removed_corrupt += 1;
                stats.removed_bytes += len;
            }
        }
    }

    /// Every block reachable from the index's roots. A root whose DAG
    /// cannot be read whole keeps what can be reached of it.
    fn mark(&self) -> Frontier {
        let partial: std::collections::HashSet<cid::Cid> =
            self.roots().into_iter().filter(|r| r.partial).map(|r| r.root).collect();
        let roots = self.root_cids();
        let mut frontier = Frontier::new_empty(u64::MAX);
        for root in roots {
            frontier.add_root(root);
            while let Some((cid, depth)) = frontier.pop() {
                if cid.codec() != DAG_CBOR {
                    continue;
                }
                let links = self.get(&cid).and_then(|bytes| Node::decode(&cid, &bytes));
                match links.and_then(|node| frontier.push_links(depth, &node.links)) {
                    Ok(()) => {}
                    // A range read keeps the part it fetched.
                    Err(_) if partial.contains(&root) => {}
                    Err(e) => tracing::warn!("root {root} is incomplete: {e}"),
                }
            }
        }
        frontier
    }
}
