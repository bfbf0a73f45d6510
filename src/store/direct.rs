//! Block files written around the page cache. Owns the `O_DIRECT` write of
//! a new block file.
//!
//! Copies fetched to be read (a get) are written once and rarely read back
//! soon, so sending them through the page cache costs a page allocation and
//! a copy per 4 KiB for nothing — and on a virtual machine whose free memory
//! is handed back to the host, every fresh page also costs a trip to the
//! host: on the benchmark VM a get that wrote its blocks through the page
//! cache spent more CPU on that than on the transfer. A direct write hands
//! the disk the block's own memory instead: blocks arrive in page-aligned
//! buffers (`block::BlockBuf`), so nothing is copied. The part of a block
//! past the last full 4 KiB goes through the page cache as usual, and so
//! does a block in memory that is not aligned.
//!
//! A direct write waits for the disk; the callers bound how many run at
//! once (a get's workers).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::block::buffers::ALIGN;

/// Smaller blocks are written through the page cache: too little to gain.
const MIN_DIRECT_LEN: usize = 64 * 1024;

/// Writes `bytes` to a new file at `path`, the aligned part with `O_DIRECT`
/// when `bytes` lies in page-aligned memory. A small block, an unaligned
/// one, or one on a file system that refuses direct IO goes all through the
/// page cache; a refusal clears `supported`, so later writes do not try
/// again.
pub fn write_new(path: &Path, bytes: &[u8], supported: &AtomicBool) -> io::Result<()> {
    let direct = bytes.len() >= MIN_DIRECT_LEN
        && bytes.as_ptr().addr().is_multiple_of(ALIGN)
        && supported.load(Ordering::Relaxed);
    if !direct {
        return File::create(path)?.write_all(bytes);
    }
    let direct_len = bytes.len() / ALIGN * ALIGN;
    let opened = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            supported.store(false, Ordering::Relaxed);
            return File::create(path)?.write_all(bytes);
        }
        Err(e) => return Err(e),
    };
    let written = match file.write(&bytes[..direct_len]) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            supported.store(false, Ordering::Relaxed);
            0
        }
        Err(e) => return Err(e),
    };
    // The rest (the unaligned tail, or everything after a refusal) goes
    // through the page cache, from where the direct write stopped.
    clear_direct(&file)?;
    file.write_all(&bytes[written..])
}

fn clear_direct(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` owns; F_GETFL/F_SETFL only read
    // and change its status flags.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) == 0
    };
    if ok { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockBuf;

    #[test]
    fn writes_every_length_exactly_from_aligned_and_unaligned_memory() {
        let dir = tempfile::tempdir().unwrap();
        let supported = AtomicBool::new(true);
        for len in [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, MIN_DIRECT_LEN + 17, (1 << 20) + 16] {
            let bytes = crate::testdata::pseudo_random(len, len as u64);
            let aligned = BlockBuf::copy_from(&bytes);
            let mut shifted = vec![0; len + 1];
            shifted[1..].copy_from_slice(&bytes);
            for (name, source) in [("aligned", &aligned[..]), ("shifted", &shifted[1..])] {
                let path = dir.path().join(format!("{name}{len}"));
                write_new(&path, source, &supported).unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}, length {len}");
            }
        }
    }

    /// Whether the first page of the file at `path` is in the page cache.
    fn first_page_cached(path: &Path) -> bool {
        let file = File::open(path).unwrap();
        // SAFETY: the file is not changed while mapped; mincore only reads
        // the mapping's residency into `vec`.
        unsafe {
            let map = memmap2::Mmap::map(&file).unwrap();
            let mut vec = [0u8; 1];
            assert_eq!(libc::mincore(map.as_ptr() as *mut _, ALIGN, vec.as_mut_ptr()), 0);
            vec[0] & 1 == 1
        }
    }

    #[test]
    fn an_aligned_block_goes_around_the_page_cache_and_an_unaligned_one_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let supported = AtomicBool::new(true);
        let bytes = crate::testdata::pseudo_random((1 << 20) + 16, 5);
        let aligned = dir.path().join("aligned");
        write_new(&aligned, &BlockBuf::copy_from(&bytes), &supported).unwrap();
        let mut shifted = vec![0; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let unaligned = dir.path().join("unaligned");
        write_new(&unaligned, &shifted[1..], &supported).unwrap();

        assert!(first_page_cached(&unaligned));
        // A file system without direct IO (a refusal clears `supported`),
        // or tmpfs, whose files live in the page cache, cannot show it.
        // SAFETY: statfs writes into the zeroed struct it is given.
        let fs_type = unsafe {
            let mut stat: libc::statfs = std::mem::zeroed();
            let c_path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(libc::statfs(c_path.as_ptr(), &mut stat), 0);
            stat.f_type
        };
        if supported.load(Ordering::Relaxed) && fs_type != libc::TMPFS_MAGIC {
            assert!(!first_page_cached(&aligned), "the aligned block went through the page cache");
        }
        assert_eq!(std::fs::read(&aligned).unwrap(), bytes);
        assert_eq!(std::fs::read(&unaligned).unwrap(), bytes);
    }
}
