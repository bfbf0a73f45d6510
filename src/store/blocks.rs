//! Block files: where a block lives, reading it back verified (through its
//! check tag, see `check`), moving a bad one aside, writing a new one to
//! `tmp/`, and listing what is on disk. Owns `blocks/`, `tmp/` and
//! `corrupt/`; knows nothing of roots, pins or DAGs.
//!
//! A block file is written once, under a temporary name, and renamed into
//! place complete (`writer` decides when); after that the store only ever
//! renames it aside or unlinks it. A block that fails its check is moved to
//! `corrupt/` and reported missing, so that it is fetched again.

use std::{
    ffi::CString,
    fs::{self, File},
    io::{self, Write},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{SystemTime, UNIX_EPOCH},
};

use cid::Cid;

use super::{Store, direct, writer::Durability};
use crate::{
    block::{self, BlockBuf, MAX_BLOCK_SIZE},
    error::{Error, Result},
};

/// Blocks and bytes on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub blocks: u64,
    pub bytes: u64,
}

/// A block written to `tmp/`, waiting to be renamed into place. A pending
/// block that is dropped before it is placed is removed.
pub(super) struct Pending {
    pub tmp: PathBuf,
    pub path: PathBuf,
    pub placed: bool,
}

impl Pending {
    pub fn place(&mut self) -> io::Result<()> {
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

impl Store {
    /// Where the block `cid` lives. The name comes from the parsed CID's
    /// canonical base32 form only, so no input can name another path.
    pub(super) fn block_path(&self, cid: &Cid) -> PathBuf {
        let name = cid.to_string();
        let shard = &name[name.len() - 2..];
        self.inner.dir.blocks.join(shard).join(name)
    }

    /// Whether the block is on disk (not verified).
    pub fn has(&self, cid: &Cid) -> bool {
        super::assert_blocking_context();
        self.block_path(cid).is_file()
    }

    /// Reads a block and verifies it against its CID (through its check
    /// tag, when it has a valid one; see `check`). A block that fails is
    /// moved to `corrupt/` and reported; its bytes are never returned.
    pub fn get(&self, cid: &Cid) -> Result<BlockBuf> {
        super::assert_blocking_context();
        self.get_with(cid, read_bounded)
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
        let target = self.inner.dir.corrupt.join(format!("{cid}.{stamp}"));
        if let Err(e) = fs::rename(path, &target) {
            tracing::warn!("cannot move corrupt block {} aside: {e}", path.display());
        } else {
            tracing::warn!("block {cid} failed verification; moved to {}", target.display());
        }
        Error::Corrupt { cid: *cid }
    }

    /// Marks the block `cid` as needed by a running operation (see `gc`),
    /// if it is on disk; returns whether it is. An operation that will
    /// rely on a block it did not write itself claims it first: a
    /// collection that runs meanwhile keeps every claimed block.
    pub fn claim(&self, cid: &Cid) -> bool {
        super::assert_blocking_context();
        let path = self.block_path(cid);
        let _sweep = self.inner.collector.sweep_lock();
        touch(&path)
    }

    /// Writes `bytes` to a new temporary file (not synced). Returns `None`
    /// when the block is already stored (and then claims it).
    pub(super) fn write_tmp(
        &self,
        cid: &Cid,
        bytes: &[u8],
        durability: Durability,
    ) -> Result<Option<Pending>> {
        if self.claim(cid) {
            return Ok(None);
        }
        let path = self.block_path(cid);
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.inner.dir.tmp.join(format!("{seq}.{cid}"));
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
    pub(super) fn sync(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs only reads the descriptor, which the store owns.
        if unsafe { libc::syncfs(self.inner.dir.handle.as_raw_fd()) } != 0 {
            return Err(Error::io("cannot sync", &self.inner.dir.dir, io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Test hook: make writes fail with "no space left on device" once
    /// `bytes` more bytes have been written.
    #[doc(hidden)]
    pub fn inject_disk_full_after(&self, bytes: u64) {
        self.inner.write_budget.store(bytes, Ordering::Relaxed);
    }

    /// Blocks and bytes on disk.
    pub fn usage(&self) -> Result<Usage> {
        super::assert_blocking_context();
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
        super::assert_blocking_context();
        let blocks = &self.inner.dir.blocks;
        let read = |d: &Path| fs::read_dir(d).map_err(|e| Error::io("cannot list", d, e));
        for shard in read(blocks)? {
            let shard = shard.map_err(|e| Error::io("cannot list", blocks, e))?;
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
}

/// Sets a file's modification time to now; whether the file exists. A file
/// that exists but cannot be touched (a read-only file system) counts as
/// existing: nothing can be collected there either.
fn touch(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else { return false };
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
    ];
    // SAFETY: `c_path` is a valid C string and `times` two timespecs, as
    // utimensat requires; it only changes the file's timestamps.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
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
