//! Block buffers: [`BlockBuf`], a block's bytes in page-aligned memory,
//! recycled through a small bounded pool.
//!
//! Page-aligned, so that the store can write a block fetched from a peer to
//! its file with `O_DIRECT` straight from the memory the block was received
//! into (`store::direct`): direct IO needs an aligned source, and the
//! alternatives cost more than the transfer itself on a virtual machine
//! whose fresh pages each cost a trip to the host (a copy through the page
//! cache), or hold extra memory and copy anyway (an aligned bounce buffer).
//!
//! Recycled, because a fresh buffer's pages are zeroed by the kernel at
//! first touch (and on a virtual machine may first come from the host),
//! while a buffer that has carried a block is ready at once. A buffer goes
//! back to the pool when it is dropped; the pool keeps a few dozen and
//! frees the rest, so its memory is bounded whatever the traffic.

use std::{
    alloc::{self, Layout},
    fmt,
    ops::{Deref, DerefMut},
    ptr::NonNull,
    sync::Mutex,
};

use super::MAX_BLOCK_SIZE;

/// Alignment (and granularity of the capacity) of every buffer: a page,
/// which every block device's logical block size divides.
pub const ALIGN: usize = 4096;
/// Buffers kept at most: about as many as a get has in flight and waiting
/// to be written (its window is 48 leaves). With 16, a get unmapped and
/// mapped again 178 buffers per GB; with 64, 58.
const KEEP: usize = 64;
/// Buffers smaller than this are not worth keeping.
const MIN_KEPT: usize = 64 * 1024;

/// `cap` bytes (a non-zero multiple of [`ALIGN`]) aligned to [`ALIGN`],
/// every byte initialized. Below [`MIN_KEPT`] they come from the heap;
/// from there on, each is a mapping of its own, so that a buffer never
/// splits the heap around it (aligned heap allocations of a MiB left
/// fragments that grew a getter's heap by 30 MiB), and its memory goes back
/// to the system when it is freed.
struct Allocation {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: an `Allocation` is plain owned memory with no thread affinity,
// like the buffer of a `Vec<u8>`.
unsafe impl Send for Allocation {}

impl Allocation {
    fn small_layout(cap: usize) -> Option<Layout> {
        (cap < MIN_KEPT).then(|| Layout::from_size_align(cap, ALIGN).expect("a small layout"))
    }

    /// Room for at least `len` bytes, zeroed.
    fn new(len: usize) -> Allocation {
        let cap = len.max(1).next_multiple_of(ALIGN);
        if let Some(layout) = Self::small_layout(cap) {
            // SAFETY: the layout's size is non-zero.
            let ptr = unsafe { alloc::alloc_zeroed(layout) };
            let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
            return Allocation { ptr, cap };
        }
        // SAFETY: an anonymous private mapping of `cap` bytes at an address
        // of the kernel's choosing; it touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            alloc::handle_alloc_error(Layout::from_size_align(cap, ALIGN).expect("a layout"));
        }
        let ptr = NonNull::new(ptr.cast()).expect("mmap never maps address 0 here");
        Allocation { ptr, cap }
    }

    fn free(self) {
        match Self::small_layout(self.cap) {
            // SAFETY: `ptr` was allocated in `new` with this very layout (the
            // capacity decides it), and `self` is consumed, so it is released
            // once.
            Some(layout) => unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) },
            // SAFETY: `ptr` and `cap` are exactly the mapping made in `new`,
            // and `self` is consumed, so it is unmapped once.
            None => unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.cap);
            },
        }
    }
}

static POOL: Mutex<Vec<Allocation>> = Mutex::new(Vec::new());

/// A kept allocation with room for `len` bytes, if there is one.
fn recycled(len: usize) -> Option<Allocation> {
    if len < MIN_KEPT {
        return None;
    }
    let kept = POOL.lock().ok()?.pop()?;
    if kept.cap >= len {
        return Some(kept);
    }
    kept.free();
    None
}

/// The bytes of one block (at most a few MiB), owned, in memory aligned to
/// [`ALIGN`]. Derefs to a byte slice; goes back to the pool when dropped.
pub struct BlockBuf {
    memory: Option<Allocation>,
    len: usize,
}

impl BlockBuf {
    /// A buffer of `len` bytes whose contents are unspecified (zeroes, or
    /// what an earlier block left); the caller overwrites them all.
    pub fn with_len(len: usize) -> BlockBuf {
        let memory = recycled(len).unwrap_or_else(|| Allocation::new(len));
        BlockBuf { memory: Some(memory), len }
    }

    /// A buffer holding a copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> BlockBuf {
        let mut buf = BlockBuf::with_len(bytes.len());
        buf.copy_from_slice(bytes);
        buf
    }

    /// Shortens the buffer to `len` bytes (no effect if it is shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Keeps only the `len` bytes that start at `start`, moved to the front.
    ///
    /// # Panics
    /// If that range is not inside the buffer.
    pub fn keep(&mut self, start: usize, len: usize) {
        let end = start.checked_add(len).expect("a range inside the buffer");
        self.copy_within(start..end, 0);
        self.len = len;
    }

    fn memory(&self) -> &Allocation {
        self.memory.as_ref().expect("a live buffer has its memory")
    }
}

impl Deref for BlockBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let memory = self.memory();
        // SAFETY: `len <= cap` always holds, and all `cap` bytes of the
        // allocation are initialized (zeroed when made, written since).
        unsafe { std::slice::from_raw_parts(memory.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for BlockBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let memory = self.memory();
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(memory.ptr.as_ptr(), self.len) }
    }
}

impl Drop for BlockBuf {
    fn drop(&mut self) {
        let Some(memory) = self.memory.take() else { return };
        if (MIN_KEPT..=MAX_BLOCK_SIZE + ALIGN).contains(&memory.cap)
            && let Ok(mut pool) = POOL.lock()
            && pool.len() < KEEP
        {
            pool.push(memory);
            return;
        }
        memory.free();
    }
}

impl Clone for BlockBuf {
    fn clone(&self) -> Self {
        BlockBuf::copy_from(self)
    }
}

impl fmt::Debug for BlockBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockBuf").field("len", &self.len).finish()
    }
}

impl PartialEq for BlockBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for BlockBuf {}

impl AsRef<[u8]> for BlockBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// A copy of `bytes`, for blocks built in memory (tests, examples).
impl From<Vec<u8>> for BlockBuf {
    fn from(bytes: Vec<u8>) -> Self {
        BlockBuf::copy_from(&bytes)
    }
}

impl From<&[u8]> for BlockBuf {
    fn from(bytes: &[u8]) -> Self {
        BlockBuf::copy_from(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_aligned_and_has_the_asked_length_whatever_it_carried() {
        drop(BlockBuf::copy_from(&vec![7; 1 << 20]));
        for len in [0, 10, ALIGN, (1 << 20) + 16, MAX_BLOCK_SIZE] {
            let buf = BlockBuf::with_len(len);
            assert_eq!(buf.len(), len);
            assert!(buf.as_ptr().addr().is_multiple_of(ALIGN), "{len}");
        }
        drop(BlockBuf::with_len(16));
        drop(BlockBuf::with_len(MAX_BLOCK_SIZE * 4));
        let pool = POOL.lock().unwrap();
        assert!(pool.len() <= KEEP);
        assert!(pool.iter().all(|m| (MIN_KEPT..=MAX_BLOCK_SIZE + ALIGN).contains(&m.cap)));
    }

    #[test]
    fn keep_and_truncate_shorten_a_buffer() {
        let mut buf = BlockBuf::copy_from(&[1, 2, 3, 4, 5, 6]);
        buf.keep(2, 3);
        assert_eq!(&*buf, &[3, 4, 5]);
        buf.truncate(1);
        assert_eq!(&*buf, &[3]);
        buf.truncate(10);
        assert_eq!(&*buf, &[3]);
        let big = BlockBuf::copy_from(&vec![9; MIN_KEPT + 1]);
        drop(big);
        let again = BlockBuf::with_len(MIN_KEPT);
        assert_eq!(again.len(), MIN_KEPT);
        assert_eq!(again.clone(), again);
    }
}
