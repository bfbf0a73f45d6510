//! Block files written around the page cache. Owns the `O_DIRECT` write of
//! a new block file and the few aligned buffers it copies blocks into.
//!
//! Copies fetched to be read (a get) are written once and rarely read back
//! soon, so sending them through the page cache costs a page allocation and
//! a copy per 4 KiB for nothing — and on a virtual machine whose free memory
//! is handed back to the host, every fresh page also costs a trip to the
//! host. A direct write hands the disk an aligned copy instead. The part of
//! a block past the last full 4 KiB goes through the page cache as usual.
//!
//! A direct write waits for the disk, and disks stall: a journal commit, a
//! cache flush or a latency spike holds every write in flight for 0.1–1 s.
//! So when every aligned buffer is in use, a block goes through the page
//! cache instead of waiting for one, and a slow disk never stops a download.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::Path,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::block::MAX_BLOCK_SIZE;

/// Alignment of direct writes: a page, which every block device's logical
/// block size divides.
const ALIGN: usize = 4096;
/// Smaller blocks are written through the page cache: too little to gain.
const MIN_DIRECT_LEN: usize = 64 * 1024;
/// Aligned buffers, so at most this many direct writes run at once.
const BUFFERS: usize = 4;

/// A transparent huge page: the window of a buffer is aligned to one, so
/// that the kernel pins one page per direct write instead of one per 4 KiB.
const HUGE_PAGE: usize = 2 * 1024 * 1024;

/// A zeroed `Vec` with a window of `MAX_BLOCK_SIZE` bytes aligned to a huge
/// page (and so to `ALIGN`). Only the window is ever touched, so only it
/// takes memory.
struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        const { assert!(MAX_BLOCK_SIZE <= HUGE_PAGE && HUGE_PAGE.is_multiple_of(ALIGN)) };
        let mut bytes = vec![0u8; HUGE_PAGE * 2];
        let start = bytes.as_ptr().align_offset(HUGE_PAGE);
        // SAFETY: the range lies inside `bytes`, which outlives nothing it
        // is given to; the advice only changes how the kernel backs it.
        unsafe {
            libc::madvise(bytes[start..].as_mut_ptr().cast(), HUGE_PAGE, libc::MADV_HUGEPAGE);
        }
        AlignedBuf { bytes, start }
    }

    fn window(&mut self, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + len]
    }
}

/// The buffers not in use, and how many exist.
struct Pool {
    free: (Sender<AlignedBuf>, Receiver<AlignedBuf>),
    created: Mutex<usize>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool { free: bounded(BUFFERS), created: Mutex::new(0) })
}

/// A buffer taken from the pool; goes back when dropped.
struct Lease(Option<AlignedBuf>);

impl Lease {
    /// A free buffer, or a new one while fewer than [`BUFFERS`] exist;
    /// `None` when every buffer is lent (the disk is behind).
    fn try_take() -> Option<Lease> {
        let pool = pool();
        if let Ok(buf) = pool.free.1.try_recv() {
            return Some(Lease(Some(buf)));
        }
        let mut created = pool.created.lock().expect("pool lock");
        if *created < BUFFERS {
            *created += 1;
            return Some(Lease(Some(AlignedBuf::new())));
        }
        None
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            let _ = pool().free.0.try_send(buf);
        }
    }
}

/// Writes `bytes` to a new file at `path`, the aligned part with `O_DIRECT`.
/// A small block, one written while every aligned buffer is in use, or one
/// on a file system that refuses direct IO, goes all through the page
/// cache; a refusal clears `supported`, so later writes do not try again.
pub fn write_new(path: &Path, bytes: &[u8], supported: &AtomicBool) -> io::Result<()> {
    let lease = if bytes.len() < MIN_DIRECT_LEN || !supported.load(Ordering::Relaxed) {
        None
    } else {
        Lease::try_take()
    };
    let Some(mut lease) = lease else {
        return File::create(path)?.write_all(bytes);
    };
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
    let mut written = 0;
    if direct_len > 0 {
        let buf = lease.0.as_mut().expect("a leased buffer").window(direct_len);
        buf.copy_from_slice(&bytes[..direct_len]);
        match file.write(buf) {
            Ok(n) => written = n,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                supported.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
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

    #[test]
    fn writes_every_length_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let supported = AtomicBool::new(true);
        for len in [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, MIN_DIRECT_LEN + 17, (1 << 20) + 16] {
            let bytes = crate::bench::pseudo_random(len, len as u64);
            let path = dir.path().join(format!("f{len}"));
            write_new(&path, &bytes, &supported).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "length {len}");
        }
    }

    #[test]
    fn a_write_while_every_buffer_is_lent_goes_through_the_page_cache() {
        let held: Vec<Lease> = std::iter::from_fn(Lease::try_take).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes = crate::bench::pseudo_random((1 << 20) + 16, 9);
        let (done, finished) = std::sync::mpsc::channel();
        let (p, b) = (path.clone(), bytes.clone());
        // Detached: a write that waited for a buffer would fail the test
        // instead of hanging it.
        std::thread::spawn(move || done.send(write_new(&p, &b, &AtomicBool::new(true))));
        let written = finished.recv_timeout(std::time::Duration::from_secs(20));
        assert!(written.expect("the write does not wait for a buffer").is_ok());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        drop(held);
    }

    #[test]
    fn many_writers_share_the_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let supported = AtomicBool::new(true);
        std::thread::scope(|s| {
            for t in 0..3 * BUFFERS {
                let (dir, supported) = (dir.path(), &supported);
                s.spawn(move || {
                    let bytes = crate::bench::pseudo_random(3 * ALIGN + t, t as u64);
                    let path = dir.join(format!("t{t}"));
                    write_new(&path, &bytes, supported).unwrap();
                    assert_eq!(std::fs::read(&path).unwrap(), bytes);
                });
            }
        });
        assert!(*pool().created.lock().unwrap() <= BUFFERS);
    }
}
