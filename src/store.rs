//! The on-disk store. Owns the data directory: the node's identity key and
//! convergence secret, the blocks (sharded by a CID suffix, named by their
//! CID), the pin index, the directory lock, eviction and garbage collection.
//! It never decrypts anything: it walks structure nodes through their clear
//! links only.
//!
//! Layout of a data directory:
//! ```text
//! lock                  exclusive lock held while a process uses the dir
//! identity.key          libp2p ed25519 keypair (protobuf), mode 0600
//! convergence.secret    32 random bytes, mode 0600
//! pins.cbor             the pinned roots (atomically rewritten, synced)
//! cache.cbor            the cached roots (atomically rewritten, not synced)
//! blocks/<xy>/<cid>     a block; <xy> = the CID string's last two characters
//! tmp/                  blocks being written (cleared when the dir is opened)
//! corrupt/              blocks that failed verification, moved aside
//! ```
//!
//! Writes go to `tmp/`, are synced (one `syncfs` per batch, not one fsync
//! per block), then renamed into place, so a block file under a CID name is
//! always complete. Every block read is checked against its CID; a block
//! that passed carries a check tag (`check`), so that later reads cost a
//! keyed BLAKE3 pass instead of SHA-256. Copies fetched to be read are
//! never synced, and the bulk of each is written around the page cache
//! (`direct`). Garbage collection takes an exclusive lock that every writer
//! holds shared for its whole life, so it never deletes a block that a
//! concurrent put, get or pin still needs.

use std::{
    collections::{BTreeMap, HashSet},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use cid::Cid;
use libp2p::{PeerId, identity::Keypair};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::{
    block::{self, BlockBuf, BlockBytes, DAG_CBOR, MAX_BLOCK_SIZE},
    crypto::{ConvergenceSecret, KEY_LEN},
    dag::Node,
    error::{Error, Result},
};

mod check;
mod direct;

const IDENTITY_FILE: &str = "identity.key";
const SECRET_FILE: &str = "convergence.secret";
const PINS_FILE: &str = "pins.cbor";
const CACHE_FILE: &str = "cache.cbor";
const LOCK_FILE: &str = "lock";

/// Blocks written between two syncs of a [`BlockWriter`].
const BATCH_BLOCKS: usize = 256;
/// Block files smaller than this are read rather than mapped when served.
const MIN_MAPPED: u64 = 64 * 1024;

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

/// Why a root is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinKind {
    /// Put here, or replicated here on request: never evicted.
    Pinned,
    /// Fetched for reading: evicted least recently used first.
    Cached,
}

/// A root in the pin index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    pub root: Cid,
    pub kind: PinKind,
    /// The peers whose `Replicate` made this node pin the root, in the
    /// order they asked; each may drop only its own pin.
    pub owners: Vec<PeerId>,
    /// Whether this node pinned the root for itself (a put here): its own
    /// content, which no network request deletes.
    pub local: bool,
    /// Bytes of all blocks of the root.
    pub size: u64,
    /// Unix milliseconds of the last put, pin or read.
    pub last_access: u64,
}

#[derive(Serialize, Deserialize)]
struct PinRecord {
    root: String,
    kind: PinKind,
    #[serde(default)]
    owners: Vec<String>,
    #[serde(default)]
    local: bool,
    /// The single owner an index written before roots had several; read,
    /// never written.
    #[serde(default, skip_serializing)]
    owner: Option<String>,
    size: u64,
    last_access: u64,
}

/// Result of a garbage collection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub removed_blocks: u64,
    pub removed_bytes: u64,
}

/// Blocks and bytes on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub blocks: u64,
    pub bytes: u64,
}

/// A handle to an open data directory; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    blocks: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
    dir_handle: File,
    _lock: File,
    identity: Keypair,
    secret: ConvergenceSecret,
    options: StoreOptions,
    pins: Mutex<BTreeMap<Cid, RootInfo>>,
    gc_lock: Arc<RwLock<()>>,
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
        f.debug_struct("Store").field("dir", &self.inner.dir).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the data directory `dir`, taking its lock.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        create_private_dir(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io("cannot open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::InUse { dir }),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("cannot lock", &lock_path, e)),
        }
        let (blocks, tmp, corrupt) = (dir.join("blocks"), dir.join("tmp"), dir.join("corrupt"));
        for d in [&blocks, &tmp, &corrupt] {
            create_private_dir(d)?;
        }
        // We hold the lock: anything in tmp/ is left over from a crash.
        clear_dir(&tmp)?;

        let identity = load_or_create_secret_file(&dir.join(IDENTITY_FILE), || {
            Keypair::generate_ed25519().to_protobuf_encoding().expect("ed25519 encodes")
        })?;
        let checker = check::Checker::new(&identity);
        let identity = Keypair::from_protobuf_encoding(&identity).map_err(|e| Error::Io {
            context: format!("identity key {} is unreadable", dir.join(IDENTITY_FILE).display()),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        let secret_path = dir.join(SECRET_FILE);
        let secret = load_or_create_secret_file(&secret_path, || {
            ConvergenceSecret::generate().as_bytes().to_vec()
        })?;
        let secret: [u8; KEY_LEN] = secret.try_into().map_err(|_| Error::Io {
            context: format!("convergence secret {} is not {KEY_LEN} bytes", secret_path.display()),
            source: io::ErrorKind::InvalidData.into(),
        })?;

        let dir_handle =
            File::open(&dir).map_err(|e| Error::io("cannot open data directory", &dir, e))?;
        let store = Store {
            inner: Arc::new(Inner {
                pins: Mutex::new(BTreeMap::new()),
                dir,
                blocks,
                tmp,
                corrupt,
                dir_handle,
                _lock: lock,
                identity,
                secret: ConvergenceSecret::from_bytes(secret),
                options,
                gc_lock: Arc::new(RwLock::new(())),
                tmp_seq: AtomicU64::new(0),
                write_budget: AtomicU64::new(u64::MAX),
                direct_io: AtomicBool::new(true),
                checker,
            }),
        };
        let (pins, legacy) = store.load_pins()?;
        *store.inner.pins.lock().expect("pins lock") = pins;
        if legacy {
            // Move the cached roots out of `pins.cbor`, so that it never
            // again lists a root `cache.cbor` has dropped.
            store.save_pins(true)?;
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The node's libp2p identity.
    pub fn identity(&self) -> &Keypair {
        &self.inner.identity
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.identity.public().to_peer_id()
    }

    /// The secret convergent keys are derived under.
    pub fn secret(&self) -> &ConvergenceSecret {
        &self.inner.secret
    }

    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Where the block `cid` lives. The name comes from the parsed CID's
    /// canonical base32 form only, so no input can name another path.
    fn block_path(&self, cid: &Cid) -> PathBuf {
        let name = cid.to_string();
        let shard = &name[name.len() - 2..];
        self.inner.blocks.join(shard).join(name)
    }

    /// Whether the block is on disk (not verified).
    pub fn has(&self, cid: &Cid) -> bool {
        self.block_path(cid).is_file()
    }

    /// Reads a block and verifies it against its CID (through its check
    /// tag, when it has a valid one; see `check`). A block that fails is
    /// moved to `corrupt/` and reported; its bytes are never returned.
    pub fn get(&self, cid: &Cid) -> Result<BlockBuf> {
        self.get_with(cid, read_bounded)
    }

    /// Like [`get`](Self::get), but maps the block file instead of reading
    /// it (small blocks are read): for a block that is only passed on, as a
    /// serving node does, this saves copying it out of the page cache.
    pub fn get_mapped(&self, cid: &Cid) -> Result<BlockBytes> {
        self.get_with(cid, map_bounded)
    }

    fn get_with<B: std::ops::Deref<Target = [u8]>>(
        &self,
        cid: &Cid,
        load: impl FnOnce(&Path, usize) -> io::Result<Option<(File, B)>>,
    ) -> Result<B> {
        let path = self.block_path(cid);
        let (file, bytes) = match load(&path, MAX_BLOCK_SIZE) {
            Ok(Some(read)) => read,
            Ok(None) => return Err(self.quarantine(cid, &path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Missing { cid: *cid });
            }
            Err(e) => return Err(Error::io("cannot read block", &path, e)),
        };
        if self.inner.checker.matches(&file, cid, &bytes) {
            return Ok(bytes);
        }
        if !block::verify(cid, &bytes) {
            return Err(self.quarantine(cid, &path));
        }
        self.inner.checker.record(&file, cid, &bytes);
        Ok(bytes)
    }

    fn quarantine(&self, cid: &Cid, path: &Path) -> Error {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let target = self.inner.corrupt.join(format!("{cid}.{stamp}"));
        if let Err(e) = fs::rename(path, &target) {
            tracing::warn!("cannot move corrupt block {} aside: {e}", path.display());
        } else {
            tracing::warn!("block {cid} failed verification; moved to {}", target.display());
        }
        Error::Corrupt { cid: *cid }
    }

    /// Stores one block, verifying it first, and syncs it. For many blocks
    /// use a [`BlockWriter`].
    pub fn put(&self, cid: &Cid, bytes: &[u8]) -> Result<()> {
        if !block::verify(cid, bytes) {
            return Err(Error::Corrupt { cid: *cid });
        }
        let mut writer = self.writer();
        writer.put_verified(cid, bytes)?;
        writer.finish()
    }

    /// A writer that batches syncs. It holds off garbage collection until it
    /// is dropped. Blocking: call it outside an async context.
    pub fn writer(&self) -> BlockWriter {
        BlockWriter::new(self.clone(), self.gc_guard(), Durability::Synced)
    }

    /// A writer for copies fetched to be read (a get): blocks go into place
    /// at once and are never synced. A crash may lose or damage some of
    /// them; every read verifies, so a damaged one is moved aside and
    /// fetched again. Blocking, like [`writer`](Self::writer).
    pub fn cache_writer(&self) -> BlockWriter {
        BlockWriter::new(self.clone(), self.gc_guard(), Durability::Cached)
    }

    /// Like [`writer`](Self::writer), for async callers.
    pub async fn writer_async(&self) -> BlockWriter {
        let guard = self.inner.gc_lock.clone().read_owned().await;
        BlockWriter::new(self.clone(), guard, Durability::Synced)
    }

    /// A guard that keeps garbage collection from running (blocking).
    pub fn gc_guard(&self) -> OwnedRwLockReadGuard<()> {
        futures::executor::block_on(self.inner.gc_lock.clone().read_owned())
    }

    /// Writes `bytes` to a new temporary file (not synced). Returns `None`
    /// when the block is already stored.
    fn write_tmp(
        &self,
        cid: &Cid,
        bytes: &[u8],
        durability: Durability,
    ) -> Result<Option<Pending>> {
        let path = self.block_path(cid);
        if path.is_file() {
            return Ok(None);
        }
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.inner.tmp.join(format!("{seq}.{cid}"));
        let budget = self.inner.write_budget.load(Ordering::Relaxed);
        let result = if budget < bytes.len() as u64 {
            self.inner.write_budget.store(0, Ordering::Relaxed);
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            if budget != u64::MAX {
                self.inner.write_budget.fetch_sub(bytes.len() as u64, Ordering::Relaxed);
            }
            match durability {
                Durability::Cached => direct::write_new(&tmp, bytes, &self.inner.direct_io),
                // Pinned blocks are the ones this node will serve: they get
                // their check tag now, while the bytes are at hand.
                Durability::Synced => File::create(&tmp).and_then(|mut f| {
                    f.write_all(bytes)?;
                    self.inner.checker.record(&f, cid, bytes);
                    start_writeback(&f);
                    Ok(())
                }),
            }
        };
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("cannot write block", &tmp, e));
        }
        Ok(Some(Pending { tmp, path, placed: false }))
    }

    /// Flushes everything written to the data directory's file system.
    fn sync(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs only reads the descriptor, which `dir_handle` owns.
        if unsafe { libc::syncfs(self.inner.dir_handle.as_raw_fd()) } != 0 {
            return Err(Error::io("cannot sync", &self.inner.dir, io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Test hook: make writes fail with "no space left on device" once
    /// `bytes` more bytes have been written.
    #[doc(hidden)]
    pub fn inject_disk_full_after(&self, bytes: u64) {
        self.inner.write_budget.store(bytes, Ordering::Relaxed);
    }

    // ---- roots, pins and the index ----

    /// Records `root` as pinned or cached. Every block of the DAG must be
    /// present (the caller holds a writer or a gc guard). A pinned root
    /// stays pinned when it is cached again; a cached root becomes pinned.
    /// A pin for a peer adds that peer to the root's owners; a pin without
    /// one makes the root this node's own.
    pub fn pin(&self, root: &Cid, kind: PinKind, owner: Option<PeerId>) -> Result<RootInfo> {
        let size = self.dag_size(root)?;
        let info = {
            let mut pins = self.inner.pins.lock().expect("pins lock");
            let now = unix_now();
            let entry = pins.entry(*root).or_insert(RootInfo {
                root: *root,
                kind,
                owners: Vec::new(),
                local: false,
                size,
                last_access: now,
            });
            if kind == PinKind::Pinned {
                entry.kind = PinKind::Pinned;
                match owner {
                    None => entry.local = true,
                    Some(peer) if !entry.owners.contains(&peer) => entry.owners.push(peer),
                    Some(_) => {}
                }
            }
            entry.size = size;
            entry.last_access = now;
            entry.clone()
        };
        self.save_pins(kind == PinKind::Pinned)?;
        Ok(info)
    }

    /// Drops `peer`'s pin on `root`. `None` if `peer` holds no pin on it;
    /// otherwise whether the root went with it: it stays while other owners
    /// hold it or it is this node's own, and is otherwise removed like
    /// [`remove_root`](Self::remove_root).
    pub fn release(&self, root: &Cid, peer: &PeerId) -> Result<Option<bool>> {
        let removed = {
            let mut pins = self.inner.pins.lock().expect("pins lock");
            let Some(entry) = pins.get_mut(root) else { return Ok(None) };
            let Some(at) = entry.owners.iter().position(|o| o == peer) else { return Ok(None) };
            entry.owners.remove(at);
            let unheld = entry.owners.is_empty() && !entry.local;
            if unheld {
                pins.remove(root);
            }
            unheld
        };
        self.save_pins(true)?;
        if removed {
            self.gc()?;
        }
        Ok(Some(removed))
    }

    /// Marks a root as just used (for LRU eviction).
    pub fn touch(&self, root: &Cid) {
        if let Some(e) = self.inner.pins.lock().expect("pins lock").get_mut(root) {
            e.last_access = unix_now();
        }
    }

    /// The index entry of a root.
    pub fn root_info(&self, root: &Cid) -> Option<RootInfo> {
        self.inner.pins.lock().expect("pins lock").get(root).cloned()
    }

    /// All pinned and cached roots.
    pub fn roots(&self) -> Vec<RootInfo> {
        self.inner.pins.lock().expect("pins lock").values().cloned().collect()
    }

    /// Forgets a root and removes the blocks no other root needs. Returns
    /// whether the root was in the index.
    pub fn remove_root(&self, root: &Cid) -> Result<bool> {
        let removed = self.inner.pins.lock().expect("pins lock").remove(root);
        if let Some(info) = &removed {
            self.save_pins(info.kind == PinKind::Pinned)?;
            self.gc()?;
        }
        Ok(removed.is_some())
    }

    /// Evicts least recently used cached roots until they fit the cache
    /// limit, then collects garbage. Returns the evicted roots (whose
    /// provider records the caller withdraws).
    pub fn enforce_cache_limit(&self) -> Result<Vec<Cid>> {
        let evicted = {
            let mut pins = self.inner.pins.lock().expect("pins lock");
            let mut cached: Vec<_> =
                pins.values().filter(|r| r.kind == PinKind::Cached).cloned().collect();
            cached.sort_by_key(|r| r.last_access);
            let mut total: u64 = cached.iter().map(|r| r.size).sum();
            let mut evicted = Vec::new();
            for r in cached {
                if total <= self.inner.options.cache_limit {
                    break;
                }
                total -= r.size;
                pins.remove(&r.root);
                evicted.push(r.root);
            }
            evicted
        };
        if !evicted.is_empty() {
            self.save_pins(false)?;
            self.gc()?;
        }
        Ok(evicted)
    }

    /// Bytes taken by cached roots.
    pub fn cache_usage(&self) -> u64 {
        let pins = self.inner.pins.lock().expect("pins lock");
        pins.values().filter(|r| r.kind == PinKind::Cached).map(|r| r.size).sum()
    }

    /// Visits every block CID of the DAG under `root` (structure nodes are
    /// read and verified; leaves are only named). Stops at the first error.
    pub fn walk(&self, root: &Cid, visit: &mut dyn FnMut(&Cid) -> Result<()>) -> Result<()> {
        visit(root)?;
        if root.codec() != DAG_CBOR {
            return Ok(());
        }
        let node = Node::decode(root, &self.get(root)?)?;
        for link in &node.links {
            self.walk(link, visit)?;
        }
        Ok(())
    }

    /// Total bytes of the DAG under `root`; fails if any block is missing.
    pub fn dag_size(&self, root: &Cid) -> Result<u64> {
        let mut size = 0;
        let mut seen = HashSet::new();
        self.walk(root, &mut |cid| {
            if seen.insert(*cid) {
                let path = self.block_path(cid);
                size += fs::metadata(&path).map_err(|_| Error::Missing { cid: *cid })?.len();
            }
            Ok(())
        })?;
        Ok(size)
    }

    /// Whether every block of the DAG under `root` is on disk (structure
    /// nodes are read and verified; leaves are only checked to exist).
    pub fn is_complete(&self, root: &Cid) -> bool {
        self.dag_size(root).is_ok()
    }

    /// Removes every block that no root in the index reaches. Waits for
    /// every writer to finish first, and holds new ones off meanwhile.
    pub fn gc(&self) -> Result<GcStats> {
        let _exclusive = futures::executor::block_on(self.inner.gc_lock.write());
        let roots: Vec<Cid> = self.inner.pins.lock().expect("pins lock").keys().copied().collect();
        let mut live = HashSet::new();
        for root in roots {
            let r = self.walk(&root, &mut |cid| {
                live.insert(*cid);
                Ok(())
            });
            if let Err(e) = r {
                tracing::warn!("root {root} is incomplete: {e}");
            }
        }
        let mut stats = GcStats::default();
        self.for_each_block(|cid, path, len| {
            if !live.contains(&cid) && fs::remove_file(path).is_ok() {
                stats.removed_blocks += 1;
                stats.removed_bytes += len;
            }
        })?;
        clear_dir(&self.inner.tmp)?;
        Ok(stats)
    }

    /// Blocks and bytes on disk.
    pub fn usage(&self) -> Result<Usage> {
        let mut usage = Usage::default();
        self.for_each_block(|_, _, len| {
            usage.blocks += 1;
            usage.bytes += len;
        })?;
        Ok(usage)
    }

    /// Calls `f(cid, path, len)` for every block file; files whose names are
    /// not CIDs are skipped.
    pub fn for_each_block(&self, mut f: impl FnMut(Cid, &Path, u64)) -> Result<()> {
        let read = |d: &Path| fs::read_dir(d).map_err(|e| Error::io("cannot list", d, e));
        for shard in read(&self.inner.blocks)? {
            let shard = shard.map_err(|e| Error::io("cannot list", &self.inner.blocks, e))?;
            for entry in read(&shard.path())? {
                let Ok(entry) = entry else { continue };
                let Some(cid) = entry.file_name().to_str().and_then(|n| block::parse_cid(n).ok())
                else {
                    continue;
                };
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                f(cid, &entry.path(), len);
            }
        }
        Ok(())
    }

    /// Reads the index: the pinned roots, then the cached ones. A cached
    /// root that `pins.cbor` also lists (a crash between the two writes)
    /// stays pinned; one whose root block is gone is dropped. A damaged
    /// `cache.cbor` (a crash while it was written: it is never synced) only
    /// forgets the cached roots, whose blocks garbage collection then
    /// removes. Returns whether `pins.cbor` still lists cached roots, as an
    /// index written before the split does.
    fn load_pins(&self) -> Result<(BTreeMap<Cid, RootInfo>, bool)> {
        let mut pins = self.read_index(PINS_FILE)?;
        let legacy = pins.values().any(|r| r.kind == PinKind::Cached);
        match self.read_index(CACHE_FILE) {
            Ok(cached) => {
                for (root, info) in cached {
                    if info.kind == PinKind::Cached && self.block_path(&root).is_file() {
                        pins.entry(root).or_insert(info);
                    }
                }
            }
            Err(e) => tracing::warn!("forgetting the cached roots: {e}"),
        }
        Ok((pins, legacy))
    }

    /// Reads one index file (empty if it does not exist).
    fn read_index(&self, name: &str) -> Result<BTreeMap<Cid, RootInfo>> {
        let path = self.inner.dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(Error::io("cannot read pin index", &path, e)),
        };
        let bad = |reason: String| Error::Io {
            context: format!("pin index {} is damaged: {reason}", path.display()),
            source: io::ErrorKind::InvalidData.into(),
        };
        let records: Vec<PinRecord> =
            ciborium::from_reader(bytes.as_slice()).map_err(|e| bad(e.to_string()))?;
        records
            .into_iter()
            .map(|r| {
                let root = block::parse_cid(&r.root).map_err(|e| bad(e.to_string()))?;
                let parse = |o: &String| o.parse::<PeerId>().map_err(|e| bad(e.to_string()));
                let mut owners = r.owners.iter().map(parse).collect::<Result<Vec<_>>>()?;
                let mut local = r.local;
                if r.owners.is_empty() && !r.local && r.kind == PinKind::Pinned {
                    // The older index: one owner, or none for own content.
                    match &r.owner {
                        Some(owner) => owners.push(parse(owner)?),
                        None => local = true,
                    }
                }
                Ok((
                    root,
                    RootInfo {
                        root,
                        kind: r.kind,
                        owners,
                        local,
                        size: r.size,
                        last_access: r.last_access,
                    },
                ))
            })
            .collect()
    }

    /// Rewrites the index: `cache.cbor` always, `pins.cbor` only when
    /// `pinned_changed`. Each file is replaced atomically (tmp file,
    /// rename); `pins.cbor` is synced first (file and directory), so a
    /// pinned root survives a crash, while `cache.cbor` is not: cached
    /// copies are never synced either, and a sync here would wait for the
    /// disk to flush every block just fetched (a second or more per GB).
    /// The index lock is held throughout, so concurrent saves neither share
    /// a tmp file nor write an older snapshot over a newer one.
    fn save_pins(&self, pinned_changed: bool) -> Result<()> {
        let pins = self.inner.pins.lock().expect("pins lock");
        let records = |kind: PinKind| -> Vec<PinRecord> {
            pins.values()
                .filter(|r| r.kind == kind)
                .map(|r| PinRecord {
                    root: r.root.to_string(),
                    kind: r.kind,
                    owners: r.owners.iter().map(ToString::to_string).collect(),
                    local: r.local,
                    owner: None,
                    size: r.size,
                    last_access: r.last_access,
                })
                .collect()
        };
        if pinned_changed {
            self.write_index(PINS_FILE, &records(PinKind::Pinned), true)?;
        }
        self.write_index(CACHE_FILE, &records(PinKind::Cached), false)
    }

    fn write_index(&self, name: &str, records: &[PinRecord], synced: bool) -> Result<()> {
        let mut bytes = Vec::new();
        ciborium::into_writer(records, &mut bytes).expect("writing to a Vec cannot fail");
        let path = self.inner.dir.join(name);
        let tmp = self.inner.dir.join(format!("{name}.tmp"));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            if synced {
                f.sync_all()?;
            }
            fs::rename(&tmp, &path)?;
            if synced {
                self.inner.dir_handle.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| Error::io("cannot write pin index", &path, e))
    }
}

/// A block written to `tmp/`, waiting for its batch's sync and rename. A
/// pending block that is dropped before it is moved into place is removed.
struct Pending {
    tmp: PathBuf,
    path: PathBuf,
    placed: bool,
}

impl Pending {
    fn place(&mut self) -> io::Result<()> {
        let renamed = fs::rename(&self.tmp, &self.path).or_else(|e| {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            fs::create_dir_all(self.path.parent().expect("block paths have a shard"))?;
            fs::rename(&self.tmp, &self.path)
        });
        self.placed = renamed.is_ok();
        renamed
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Syncs a batch of written blocks, then moves them into place, so that a
/// block file under a CID name is complete even after a crash.
fn place_batch(store: &Store, batch: Vec<Pending>) -> Result<()> {
    store.sync()?;
    for mut p in batch {
        p.place().map_err(|e| Error::io("cannot move block into place", &p.path, e))?;
    }
    Ok(())
}

/// Writes many blocks with one sync per batch; batches are synced on a
/// background thread while the next one is written. Holds off garbage
/// collection while alive. Nothing it wrote is guaranteed durable before
/// [`finish`](Self::finish) returns; whatever is still pending when it is
/// dropped is discarded.
pub struct BlockWriter {
    store: Store,
    durability: Durability,
    pending: Vec<Pending>,
    written: u64,
    committer: Option<Committer>,
    _guard: OwnedRwLockReadGuard<()>,
}

/// Whether a writer's blocks must survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced before `finish` returns (puts, replicas).
    Synced,
    /// Placed at once, never synced, written around the page cache where
    /// the file system allows (copies fetched for reading).
    Cached,
}

/// The background thread that syncs and places full batches.
struct Committer {
    batches: crossbeam_channel::Sender<Vec<Pending>>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl BlockWriter {
    fn new(store: Store, guard: OwnedRwLockReadGuard<()>, durability: Durability) -> Self {
        Self { store, durability, pending: Vec::new(), written: 0, committer: None, _guard: guard }
    }

    /// Stores a block whose CID the caller computed or verified from these
    /// very bytes. Returns whether it was new.
    pub fn put_verified(&mut self, cid: &Cid, bytes: &[u8]) -> Result<bool> {
        let pending = self.store.write_tmp(cid, bytes, self.durability)?;
        self.add(pending)
    }

    /// Prepares a block from any thread; hand the result to [`add_prepared`](Self::add_prepared).
    /// Use the durability of the writer the block is then added to.
    pub fn prepare(
        store: &Store,
        durability: Durability,
        cid: &Cid,
        bytes: &[u8],
    ) -> Result<Prepared> {
        let mut pending = store.write_tmp(cid, bytes, durability)?;
        // A copy fetched for reading goes into place at once, on the thread
        // that wrote it: threads sharing a writer never wait for each
        // other's renames.
        if durability == Durability::Cached
            && let Some(p) = pending.as_mut()
        {
            p.place().map_err(|e| Error::io("cannot move block into place", &p.path, e))?;
        }
        Ok(Prepared(pending))
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Adds a block prepared by [`prepare`](Self::prepare).
    pub fn add_prepared(&mut self, prepared: Prepared) -> Result<bool> {
        self.add(prepared.0)
    }

    fn add(&mut self, pending: Option<Pending>) -> Result<bool> {
        let Some(mut pending) = pending else { return Ok(false) };
        self.written += 1;
        if self.durability == Durability::Cached {
            if !pending.placed {
                pending
                    .place()
                    .map_err(|e| Error::io("cannot move block into place", &pending.path, e))?;
            }
            return Ok(true);
        }
        self.pending.push(pending);
        if self.pending.len() >= BATCH_BLOCKS {
            self.commit_in_background()?;
        }
        Ok(true)
    }

    fn commit_in_background(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.pending);
        let committer = self.committer.get_or_insert_with(|| {
            // One batch syncing and one waiting at most.
            let (batches, rx) = crossbeam_channel::bounded::<Vec<Pending>>(1);
            let store = self.store.clone();
            let thread = std::thread::spawn(move || {
                rx.into_iter().try_for_each(|batch| place_batch(&store, batch))
            });
            Committer { batches, thread }
        });
        if committer.batches.send(batch).is_err() {
            // The committer stopped on an error; report it.
            return self.join_committer();
        }
        Ok(())
    }

    fn join_committer(&mut self) -> Result<()> {
        match self.committer.take() {
            Some(Committer { batches, thread }) => {
                drop(batches);
                thread.join().expect("the block committer panicked")
            }
            None => Ok(()),
        }
    }

    /// Syncs everything written so far and moves it into place.
    pub fn commit(&mut self) -> Result<()> {
        self.join_committer()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        place_batch(&self.store, std::mem::take(&mut self.pending))
    }

    /// Commits the last batch and syncs the renames. The writer keeps
    /// holding off garbage collection until dropped, so the caller can pin.
    pub fn finish(&mut self) -> Result<()> {
        self.commit()?;
        match self.durability {
            Durability::Synced => self.store.sync(),
            Durability::Cached => Ok(()),
        }
    }

    /// New blocks written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        // Batches already handed over are synced and placed; the rest is
        // removed as `pending` drops.
        let _ = self.join_committer();
    }
}

/// A block written to a temporary file by [`BlockWriter::prepare`]; removed
/// if it is dropped without being added to a writer.
pub struct Prepared(Option<Pending>);

/// Unix milliseconds, strictly increasing within the process so that LRU
/// order is total.
fn unix_now() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let prev = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |prev| Some(now.max(prev + 1)))
        .expect("the update always succeeds");
    now.max(prev + 1)
}

/// Asks the kernel to start writing the file out now, without waiting, so
/// that the batch's sync finds little left to do and disk writes overlap
/// with hashing and encryption.
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is owned by `file`; the call only schedules IO.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("cannot create directory", dir, e))
}

fn clear_dir(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io("cannot list", dir, e))? {
        let path = entry.map_err(|e| Error::io("cannot list", dir, e))?.path();
        fs::remove_file(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
    }
    Ok(())
}

/// Reads a file of at most `limit` bytes; `None` if it is larger.
fn read_bounded(path: &Path, limit: usize) -> io::Result<Option<(File, BlockBuf)>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    read_open(file, len, limit)
}

/// Reads the open `file` of `len` bytes (as its metadata said), if that is
/// at most `limit`; `None` also if the file turns out longer than `len`.
fn read_open(mut file: File, len: u64, limit: usize) -> io::Result<Option<(File, BlockBuf)>> {
    use std::io::Read;
    let Some(len) = usize::try_from(len).ok().filter(|&len| len <= limit) else {
        return Ok(None);
    };
    // A recycled buffer (see `block::buffers`), filled without zeroing it
    // first. A file shorter than its metadata said (changed under us)
    // gives fewer bytes, which then fail their check.
    let mut bytes = BlockBuf::with_len(len);
    let mut filled = 0;
    while filled < len {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(filled);
    if filled == len && file.read(&mut [0u8; 1])? != 0 {
        return Ok(None);
    }
    Ok(Some((file, bytes)))
}

/// Maps a file of at most `limit` bytes read-only (`None` if it is
/// larger). Files under [`MIN_MAPPED`] are read instead: mapping costs a
/// system call and a page table update either way, which only pays off for
/// a large file.
fn map_bounded(path: &Path, limit: usize) -> io::Result<Option<(File, BlockBytes)>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < MIN_MAPPED {
        return Ok(read_open(file, len, limit)?.map(|(file, bytes)| (file, bytes.into())));
    }
    if len > limit as u64 {
        return Ok(None);
    }
    // SAFETY: a mapping is only unsound if the file changes under it. Block
    // files are written once and renamed into place; the store only ever
    // renames or unlinks them afterwards, which leaves the mapping intact.
    // (A file truncated behind the store's back would fault on access.)
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
    if map.len() as u64 != len {
        return Err(io::Error::other("block file changed while it was mapped"));
    }
    Ok(Some((file, BlockBytes::Mapped(std::sync::Arc::new(map)))))
}

/// Reads a secret file, refusing one other users can read; creates it
/// (mode 0600, synced) with `create()` when it does not exist.
fn load_or_create_secret_file(path: &Path, create: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::InsecureKey { path: path.to_path_buf(), mode });
            }
            fs::read(path).map_err(|e| Error::io("cannot read", path, e))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let bytes = create();
            let write = || -> io::Result<()> {
                let mut f =
                    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
                f.write_all(&bytes)?;
                f.sync_all()
            };
            write().map_err(|e| Error::io("cannot create", path, e))?;
            Ok(bytes)
        }
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}
