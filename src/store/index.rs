//! The root index: which roots the node keeps and why — pinned (put here,
//! or held for owners that asked for a replica) or cached (fetched for
//! reading, evicted least recently used) — with their owners, sizes and
//! last use. Owns `pins.cbor` and `cache.cbor`, their persistence and the
//! migration of older indexes. It never deletes a block itself: dropping a
//! root asks the collector (`gc`) to run.
//!
//! `pins.cbor` is synced on every change; `cache.cbor` never is, like the
//! cached blocks themselves: a sync there would make every get wait for the
//! disk to flush all it just wrote. A crash can lose cached roots, never
//! pinned ones.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write},
    sync::{
        MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use cid::Cid;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::{
    Store,
    dir::{CACHE_FILE, PINS_FILE},
};
use crate::{
    block,
    error::{Error, Result},
    lease::Lease,
};

/// Why a root is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinKind {
    /// Put here, or replicated here on request: never evicted.
    Pinned,
    /// Fetched for reading: evicted least recently used first.
    Cached,
}

/// A root in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    pub root: Cid,
    pub kind: PinKind,
    /// The peers whose `Replicate` made this node pin the root, in the
    /// order they asked; each may drop only its own pin.
    pub owners: Vec<PeerId>,
    /// The owners among `owners` that added their lease to a root already
    /// held here (they did not bring the copy): their leases ask for no
    /// copies ([`target`](Self::target)), are not handed on by a repair,
    /// and hold the root only while an owner that placed it does (or it
    /// is this node's own).
    pub joined: Vec<PeerId>,
    /// Whether this node pinned the root for itself (a put here): its own
    /// content, which no network request deletes.
    pub local: bool,
    /// Bytes of all blocks of the root.
    pub size: u64,
    /// Distinct blocks of the root (0: not recorded, an older index).
    pub blocks: u64,
    /// Unix milliseconds of the last put, pin or read.
    pub last_access: u64,
    /// The file's plaintext length and name, when this node has read its
    /// root (a put or a get here; a replica's holder has no key).
    pub file: Option<FileInfo>,
    /// Copies this node's own put asked for (0: none recorded). For a
    /// replica, the owners' leases say.
    pub replicas: u8,
    /// The newest lease of each owner that sent one (an owner without a
    /// lease pinned it before leases existed, and holds it until it
    /// deletes it).
    pub leases: Vec<Lease>,
    /// Unix seconds of the last repair this node made of the root; 0 if
    /// none.
    pub repaired: u64,
    /// A cached root of which only some blocks are here (a range read, or
    /// a get that has not finished):
    /// `size` counts those. Never provided; a get fetches the rest.
    pub partial: bool,
}

impl RootInfo {
    /// A root just entered in the index: no owner, not this node's own yet.
    fn new(root: Cid, kind: PinKind, size: u64, now: u64) -> RootInfo {
        RootInfo {
            root,
            kind,
            owners: Vec::new(),
            joined: Vec::new(),
            local: false,
            size,
            blocks: 0,
            last_access: now,
            file: None,
            replicas: 0,
            leases: Vec::new(),
            repaired: 0,
            partial: false,
        }
    }

    /// Copies wanted on the network: the most this node's own put or an
    /// owner that placed the copy asks for (a joined owner's lease asks
    /// for none; see `joined`), at most [`MAX_LEASE_REPLICAS`].
    pub fn target(&self) -> u8 {
        self.placing_leases()
            .map(|l| l.replicas)
            .fold(self.replicas, u8::max)
            .min(MAX_LEASE_REPLICAS)
    }

    /// The leases of the owners that placed the copy (not `joined`).
    pub fn placing_leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.iter().filter(|l| !self.joined.contains(&l.owner()))
    }

    /// Whether an owner that placed the copy, or this node itself, holds
    /// it (else no pin holds it: a joined owner's does not on its own).
    fn held(&self) -> bool {
        self.local || self.owners.iter().any(|o| !self.joined.contains(o))
    }

    /// What holding the root costs against a replica quota: its bytes,
    /// plus [`BLOCK_OVERHEAD`] per block (each block is a file: at least a
    /// filesystem block, and its metadata).
    pub fn cost(&self) -> u64 {
        replica_cost(self.blocks, self.size)
    }

    /// Whether the root is pinned (a replica or this node's own), not only
    /// cached.
    pub fn pinned(&self) -> bool {
        self.kind == PinKind::Pinned
    }
}

/// The most copies a lease may ask for; a lease asking for more is
/// refused.
pub const MAX_LEASE_REPLICAS: u8 = 16;

/// What a block costs a replica quota besides its bytes: one 4 KiB
/// filesystem block (a small block takes a whole one) and some 256 bytes
/// of inode and directory entry.
pub const BLOCK_OVERHEAD: u64 = 4096 + 256;

/// What `blocks` distinct blocks of `bytes` bytes in all cost a replica
/// quota (see [`BLOCK_OVERHEAD`]).
pub fn replica_cost(blocks: u64, bytes: u64) -> u64 {
    bytes.saturating_add(blocks.saturating_mul(BLOCK_OVERHEAD))
}

/// What a node that has the key knows of a stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub size: u64,
    pub name: Option<String>,
    /// The root's key, so that this node can give the file's ticket again
    /// (`ls --tickets`, `get <cid>`). In hex in the index, which is as
    /// private as the convergence secret beside it.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_key")]
    pub key: Option<[u8; 32]>,
}

/// A root's key in hex.
mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(key: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match key {
            Some(key) => s.serialize_str(&data_encoding::HEXLOWER.encode(key)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
        let bytes = data_encoding::HEXLOWER.decode(text.as_bytes()).map_err(D::Error::custom)?;
        bytes.try_into().map(Some).map_err(|_| D::Error::custom("a key is 32 bytes"))
    }
}

/// A root as the index files store it.
#[derive(Serialize, Deserialize)]
struct PinRecord {
    root: String,
    kind: PinKind,
    #[serde(default)]
    owners: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    joined: Vec<String>,
    #[serde(default)]
    local: bool,
    /// The single owner an index written before roots had several; read,
    /// never written.
    #[serde(default, skip_serializing)]
    owner: Option<String>,
    size: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    blocks: u64,
    last_access: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<FileInfo>,
    #[serde(default, skip_serializing_if = "is_zero")]
    replicas: u8,
    /// Leases, each in hex.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    leases: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    repaired: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    partial: bool,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// The roots in memory, keyed by root CID.
pub(super) type Roots = BTreeMap<Cid, RootInfo>;

impl Store {
    /// The index in memory. Every public method of the index takes it, so
    /// each checks first that it runs where it may block (see `face`).
    fn roots_lock(&self) -> MutexGuard<'_, Roots> {
        super::assert_blocking_context();
        self.inner.roots.lock().expect("root index lock")
    }

    /// Records `root` as pinned or cached. Every block of the DAG must be
    /// present, and covered by a writer or guard the caller holds. A
    /// pinned root stays pinned when it is cached again; a cached root
    /// becomes pinned. A pin for a peer adds that peer to the root's
    /// owners; a pin without one makes the root this node's own.
    pub fn pin(&self, root: &Cid, kind: PinKind, owner: Option<PeerId>) -> Result<RootInfo> {
        self.pin_with(root, kind, owner, |_| {})
    }

    /// [`pin`](Self::pin), then `also` on the entry, under one hold of the
    /// index lock and with one save: no reader sees the pin without what
    /// `also` adds (a lease).
    fn pin_with(
        &self,
        root: &Cid,
        kind: PinKind,
        owner: Option<PeerId>,
        also: impl FnOnce(&mut RootInfo),
    ) -> Result<RootInfo> {
        let (blocks, size) = self.dag_stats(root)?;
        let info = {
            let mut roots = self.roots_lock();
            let now = unix_now();
            // A new owner of a root pinned here already joins it.
            let held = roots.get(root).is_some_and(|e| e.kind == PinKind::Pinned);
            let entry = roots.entry(*root).or_insert_with(|| RootInfo::new(*root, kind, size, now));
            if kind == PinKind::Pinned {
                entry.kind = PinKind::Pinned;
                match owner {
                    None => entry.local = true,
                    Some(peer) if !entry.owners.contains(&peer) => {
                        entry.owners.push(peer);
                        if held {
                            entry.joined.push(peer);
                        }
                    }
                    Some(_) => {}
                }
            }
            entry.size = size;
            entry.blocks = blocks;
            entry.partial = false;
            entry.last_access = now;
            also(entry);
            entry.clone()
        };
        self.save_index(kind == PinKind::Pinned)?;
        Ok(info)
    }

    /// Drops `peer`'s pin on `root`. `None` if `peer` holds no pin on it;
    /// otherwise whether the root went with it: it stays while an owner
    /// that placed it holds it or it is this node's own, and is otherwise
    /// removed like [`remove_root`](Self::remove_root), with the pins of
    /// the owners that only joined it.
    pub fn release(&self, root: &Cid, peer: &PeerId) -> Result<Option<bool>> {
        let removed = {
            let mut roots = self.roots_lock();
            let Some(entry) = roots.get_mut(root) else { return Ok(None) };
            let Some(at) = entry.owners.iter().position(|o| o == peer) else { return Ok(None) };
            entry.owners.remove(at);
            entry.joined.retain(|o| o != peer);
            entry.leases.retain(|l| l.owner() != *peer);
            let unheld = !entry.held();
            if unheld {
                roots.remove(root);
            }
            unheld
        };
        self.save_index(true)?;
        if removed {
            self.request_gc();
        }
        Ok(Some(removed))
    }

    /// Records what a node that read the root knows of its file.
    pub fn describe(&self, root: &Cid, file: FileInfo) {
        let changed = match self.roots_lock().get_mut(root) {
            Some(e) if e.file.as_ref() != Some(&file) => {
                e.file = Some(file);
                Some(e.kind == PinKind::Pinned)
            }
            _ => None,
        };
        if let Some(pinned) = changed
            && let Err(e) = self.save_index(pinned)
        {
            tracing::warn!("cannot record the file of {root}: {e}");
        }
    }

    /// Pins `root` (whose blocks are all present and covered, as for
    /// [`pin`](Self::pin)) for the owner `lease` names, and keeps the
    /// lease: an owner's newer lease replaces its older one. A new owner
    /// of a root pinned here already joins it (see [`RootInfo::joined`]).
    pub fn pin_leased(&self, root: &Cid, lease: Lease) -> Result<RootInfo> {
        self.pin_leased_as(root, lease, false)
    }

    /// [`pin_leased`](Self::pin_leased); with `placer`, the lease's owner
    /// counts as one that placed the copy even if the root was pinned
    /// here already (it proved it holds the blocks: it could have).
    pub fn pin_leased_as(&self, root: &Cid, lease: Lease, placer: bool) -> Result<RootInfo> {
        let owner = lease.owner();
        self.pin_with(root, PinKind::Pinned, Some(owner), |entry| {
            if placer {
                entry.joined.retain(|o| *o != owner);
            }
            match entry.leases.iter_mut().find(|l| l.owner() == owner) {
                Some(old) if old.expires >= lease.expires => {}
                Some(old) => *old = lease,
                None => entry.leases.push(lease),
            }
        })
    }

    /// Records `root` as cached in part (a range read), unless the index
    /// holds it already; `size` is the bytes of its blocks here. The blocks
    /// must be covered by a writer or guard the caller holds.
    pub fn cache_partial(&self, root: &Cid, size: u64) -> Result<()> {
        {
            let mut roots = self.roots_lock();
            let now = unix_now();
            match roots.get_mut(root) {
                Some(entry) if entry.partial => {
                    entry.size = size;
                    entry.last_access = now;
                }
                Some(entry) => entry.last_access = now,
                None => {
                    let entry = RootInfo {
                        partial: true,
                        ..RootInfo::new(*root, PinKind::Cached, size, now)
                    };
                    roots.insert(*root, entry);
                }
            }
        }
        self.save_index(false)
    }

    /// Records the copies this node's own put of `root` asked for.
    pub fn set_replicas(&self, root: &Cid, replicas: u8) -> Result<()> {
        let changed = match self.roots_lock().get_mut(root) {
            Some(e) if e.replicas != replicas => {
                e.replicas = replicas;
                true
            }
            _ => false,
        };
        if changed { self.save_index(true) } else { Ok(()) }
    }

    /// Records a repair of `root` made now.
    pub fn record_repair(&self, root: &Cid) -> Result<()> {
        let found = match self.roots_lock().get_mut(root) {
            Some(e) => {
                e.repaired = unix_now() / 1000;
                true
            }
            None => false,
        };
        if found { self.save_index(true) } else { Ok(()) }
    }

    /// Drops every lease that ended by `now` (Unix seconds; a lease ends at
    /// its expiry, or `longest` after it was issued if that is sooner) with
    /// its owner's pin, and the roots no pin holds any longer. Returns, for
    /// each root that lost a lease, the owners whose leases ended and
    /// whether the root went with them (the caller withdraws its provider
    /// record).
    pub fn expire_leases(
        &self,
        now: u64,
        longest: std::time::Duration,
    ) -> Result<Vec<(Cid, Vec<PeerId>, bool)>> {
        let ended = {
            let mut roots = self.roots_lock();
            let mut ended = Vec::new();
            for entry in roots.values_mut() {
                let gone: Vec<PeerId> = entry
                    .leases
                    .iter()
                    .filter(|l| l.ends(longest) <= now)
                    .map(Lease::owner)
                    .collect();
                if gone.is_empty() {
                    continue;
                }
                entry.leases.retain(|l| !gone.contains(&l.owner()));
                entry.owners.retain(|o| !gone.contains(o));
                entry.joined.retain(|o| !gone.contains(o));
                let unheld = !entry.held();
                ended.push((entry.root, gone, unheld));
            }
            for (root, _, unheld) in &ended {
                if *unheld {
                    roots.remove(root);
                }
            }
            ended
        };
        if !ended.is_empty() {
            self.save_index(true)?;
            self.request_gc();
        }
        Ok(ended)
    }

    /// Marks a root as just used (for LRU eviction).
    pub fn touch(&self, root: &Cid) {
        if let Some(e) = self.roots_lock().get_mut(root) {
            e.last_access = unix_now();
        }
    }

    /// The index entry of a root.
    pub fn root_info(&self, root: &Cid) -> Option<RootInfo> {
        self.roots_lock().get(root).cloned()
    }

    /// All pinned and cached roots.
    pub fn roots(&self) -> Vec<RootInfo> {
        self.roots_lock().values().cloned().collect()
    }

    /// The root CIDs in the index (what a collection keeps).
    pub(super) fn root_cids(&self) -> Vec<Cid> {
        self.roots_lock().keys().copied().collect()
    }

    /// Forgets a root; its blocks that no other root needs are collected in
    /// the background. Returns whether the root was in the index.
    pub fn remove_root(&self, root: &Cid) -> Result<bool> {
        let removed = self.roots_lock().remove(root);
        if let Some(info) = &removed {
            self.save_index(info.kind == PinKind::Pinned)?;
            self.request_gc();
        }
        Ok(removed.is_some())
    }

    /// Evicts least recently used cached roots until they fit the cache
    /// limit; their blocks are collected in the background. Returns the
    /// evicted roots (whose provider records the caller withdraws).
    pub fn enforce_cache_limit(&self) -> Result<Vec<Cid>> {
        let evicted = {
            let mut roots = self.roots_lock();
            let mut cached: Vec<_> =
                roots.values().filter(|r| r.kind == PinKind::Cached).cloned().collect();
            cached.sort_by_key(|r| r.last_access);
            let mut total: u64 = cached.iter().map(|r| r.size).sum();
            let mut evicted = Vec::new();
            for r in cached {
                if total <= self.inner.options.cache_limit {
                    break;
                }
                total -= r.size;
                roots.remove(&r.root);
                evicted.push(r.root);
            }
            evicted
        };
        if !evicted.is_empty() {
            self.save_index(false)?;
            self.request_gc();
        }
        Ok(evicted)
    }

    /// Bytes of the replicas this node holds only for other peers (pinned
    /// at their request, not its own content): what counts against its
    /// replica quota.
    /// Each root costs [`RootInfo::cost`].
    pub fn held_for_others(&self) -> u64 {
        self.roots_lock()
            .values()
            .filter(|r| r.kind == PinKind::Pinned && !r.local && !r.owners.is_empty())
            .map(RootInfo::cost)
            .sum()
    }

    /// What the replicas held for `owner` cost against the quota (each
    /// root it owns, placed or joined, at its whole [`RootInfo::cost`]):
    /// what counts against its share.
    pub fn held_for(&self, owner: &PeerId) -> u64 {
        self.roots_lock()
            .values()
            .filter(|r| r.kind == PinKind::Pinned && !r.local && r.owners.contains(owner))
            .map(RootInfo::cost)
            .sum()
    }

    /// Drops this node's own pin on `root` (its owner's delete): the root
    /// stays while an owner that placed a copy here holds it, and is
    /// otherwise removed like [`remove_root`](Self::remove_root). Returns
    /// whether the root was in the index, and whether it stays.
    pub fn release_own(&self, root: &Cid) -> Result<(bool, bool)> {
        let stays = {
            let mut roots = self.roots_lock();
            match roots.get_mut(root) {
                Some(entry) if entry.kind == PinKind::Pinned && entry.local => {
                    entry.local = false;
                    entry.replicas = 0;
                    entry.held()
                }
                _ => false,
            }
        };
        if stays {
            self.save_index(true)?;
            return Ok((true, true));
        }
        Ok((self.remove_root(root)?, false))
    }

    /// Bytes taken by cached roots.
    pub fn cache_usage(&self) -> u64 {
        self.roots_lock().values().filter(|r| r.kind == PinKind::Cached).map(|r| r.size).sum()
    }

    /// Reads the index: the pinned roots, then the cached ones. A cached
    /// root that `pins.cbor` also lists (a crash between the two writes)
    /// stays pinned; one whose root block is gone is dropped. A damaged
    /// `cache.cbor` (a crash while it was written: it is never synced) only
    /// forgets the cached roots, whose blocks garbage collection then
    /// removes. Rewrites `pins.cbor` when it still lists cached roots, as
    /// an index written before the split does.
    pub(super) fn load_index(&self) -> Result<()> {
        let mut roots = self.read_index(PINS_FILE)?;
        let legacy = roots.values().any(|r| r.kind == PinKind::Cached);
        match self.read_index(CACHE_FILE) {
            Ok(cached) => {
                for (root, info) in cached {
                    if info.kind == PinKind::Cached && self.block_path(&root).is_file() {
                        roots.entry(root).or_insert(info);
                    }
                }
            }
            Err(e) => tracing::warn!("forgetting the cached roots: {e}"),
        }
        *self.roots_lock() = roots;
        if legacy {
            // Move the cached roots out of `pins.cbor`, so that it never
            // again lists a root `cache.cbor` has dropped.
            self.save_index(true)?;
        }
        Ok(())
    }

    /// Reads one index file (empty if it does not exist).
    fn read_index(&self, name: &str) -> Result<Roots> {
        let path = self.inner.dir.dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Roots::new()),
            Err(e) => return Err(Error::io("cannot read pin index", &path, e)),
        };
        let bad = |reason: String| Error::DamagedIndex { path: path.clone(), reason };
        let records: Vec<PinRecord> =
            ciborium::from_reader(bytes.as_slice()).map_err(|e| bad(e.to_string()))?;
        records
            .into_iter()
            .map(|r| {
                let root = block::parse_cid(&r.root).map_err(|e| bad(e.to_string()))?;
                let parse = |o: &String| o.parse::<PeerId>().map_err(|e| bad(e.to_string()));
                let mut owners = r.owners.iter().map(parse).collect::<Result<Vec<_>>>()?;
                let joined = r.joined.iter().map(parse).collect::<Result<Vec<_>>>()?;
                let mut local = r.local;
                if r.owners.is_empty() && !r.local && r.kind == PinKind::Pinned {
                    // The older index: one owner, or none for own content.
                    match &r.owner {
                        Some(owner) => owners.push(parse(owner)?),
                        None => local = true,
                    }
                }
                let leases = r
                    .leases
                    .iter()
                    .map(|hex| {
                        let bytes = data_encoding::HEXLOWER
                            .decode(hex.as_bytes())
                            .map_err(|e| bad(format!("lease: {e}")))?;
                        Lease::decode(&bytes).map_err(|e| bad(format!("lease: {e}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((
                    root,
                    RootInfo {
                        root,
                        kind: r.kind,
                        owners,
                        joined,
                        local,
                        size: r.size,
                        blocks: r.blocks,
                        last_access: r.last_access,
                        file: r.file,
                        replicas: r.replicas,
                        leases,
                        repaired: r.repaired,
                        partial: r.partial && r.kind == PinKind::Cached,
                    },
                ))
            })
            .collect()
    }

    /// Rewrites the index: `cache.cbor` always, `pins.cbor` only when
    /// `pinned_changed`. A snapshot is taken under the index lock; the
    /// files are written after it is released, so no caller of the index
    /// (a `Holds` answered, a root looked up) waits behind a sync. Each
    /// file is replaced atomically (tmp file, rename); `pins.cbor` is
    /// synced first (file and directory), so a pinned root survives a
    /// crash, while `cache.cbor` is not (see the module docs). Writes are
    /// serialized by their own lock, and a snapshot older than the one a
    /// file already holds is not written: an older index never replaces a
    /// newer one. Returns once the files hold this snapshot or a newer one.
    fn save_index(&self, pinned_changed: bool) -> Result<()> {
        let (seq, pinned, cached) = {
            let roots = self.roots_lock();
            let seq = self.inner.index_seq.fetch_add(1, Ordering::Relaxed) + 1;
            let of = |kind: PinKind| -> Vec<RootInfo> {
                roots.values().filter(|r| r.kind == kind).cloned().collect()
            };
            (seq, pinned_changed.then(|| of(PinKind::Pinned)), of(PinKind::Cached))
        };
        let mut written = self.inner.index_files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pinned) = pinned
            && seq > written.pins
        {
            self.write_index(PINS_FILE, &records(&pinned), true)?;
            written.pins = seq;
        }
        if seq > written.cache {
            self.write_index(CACHE_FILE, &records(&cached), false)?;
            written.cache = seq;
        }
        Ok(())
    }

    fn write_index(&self, name: &str, records: &[PinRecord], synced: bool) -> Result<()> {
        let mut bytes = Vec::new();
        ciborium::into_writer(records, &mut bytes).expect("writing to a Vec cannot fail");
        let path = self.inner.dir.dir.join(name);
        let tmp = self.inner.dir.dir.join(format!("{name}.tmp"));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            if synced {
                f.sync_all()?;
            }
            fs::rename(&tmp, &path)?;
            if synced {
                self.inner.dir.handle.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| Error::io("cannot write pin index", &path, e))
    }
}

/// The snapshots the index files hold (see `Store::save_index`): 0 for
/// none written by this process.
#[derive(Debug, Default)]
pub(super) struct Written {
    pins: u64,
    cache: u64,
}

/// Roots as the index files store them.
fn records(roots: &[RootInfo]) -> Vec<PinRecord> {
    roots
        .iter()
        .map(|r| PinRecord {
            root: r.root.to_string(),
            kind: r.kind,
            owners: r.owners.iter().map(ToString::to_string).collect(),
            joined: r.joined.iter().map(ToString::to_string).collect(),
            local: r.local,
            owner: None,
            size: r.size,
            blocks: r.blocks,
            last_access: r.last_access,
            file: r.file.clone(),
            replicas: r.replicas,
            leases: r.leases.iter().map(|l| data_encoding::HEXLOWER.encode(&l.encode())).collect(),
            repaired: r.repaired,
            partial: r.partial,
        })
        .collect()
}

/// What [`Store::rebuild_index`] found.
#[derive(Debug, Clone, Default)]
pub struct Rebuilt {
    /// Roots whose whole DAG is on disk, now pinned as this node's own.
    pub roots: Vec<Cid>,
    /// Structure blocks that no other block links, whose DAG is not whole
    /// (left to garbage collection).
    pub incomplete: usize,
    /// Where the damaged index files were moved.
    pub moved_aside: Vec<std::path::PathBuf>,
}

impl Store {
    /// Rebuilds the root index from the blocks on disk: every structure
    /// block that no other block links is a root; those whose DAG is whole
    /// are pinned as this node's own (who asked for a replica cannot be
    /// known from the blocks, so replicas become the node's own content).
    /// The old index files are moved aside, not deleted.
    pub fn rebuild_index(&self) -> Result<Rebuilt> {
        let mut rebuilt = Rebuilt::default();
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        for name in [PINS_FILE, CACHE_FILE] {
            let path = self.inner.dir.dir.join(name);
            if path.exists() {
                let aside = self.inner.dir.dir.join(format!("{name}.damaged-{stamp}"));
                fs::rename(&path, &aside).map_err(|e| Error::io("cannot move aside", &path, e))?;
                rebuilt.moved_aside.push(aside);
            }
        }
        self.roots_lock().clear();
        let mut structure = Vec::new();
        self.for_each_block(|cid, _, _| {
            if cid.codec() == crate::block::DAG_CBOR {
                structure.push(cid);
            }
        })?;
        let mut linked = std::collections::HashSet::new();
        for cid in &structure {
            // A block that fails its check is moved aside by `get`.
            if let Ok(node) = self.get(cid).and_then(|b| crate::dag::Node::decode(cid, &b)) {
                linked.extend(node.links);
            }
        }
        let _guard = self.guard();
        for cid in structure.into_iter().filter(|c| !linked.contains(c)) {
            if self.is_complete(&cid) {
                self.pin(&cid, PinKind::Pinned, None)?;
                rebuilt.roots.push(cid);
            } else {
                rebuilt.incomplete += 1;
            }
        }
        self.save_index(true)?;
        Ok(rebuilt)
    }
}

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
