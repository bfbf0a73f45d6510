//! Recycled block buffers. A block read from the network must land in
//! initialized memory (`AsyncRead` reads into `&mut [u8]`), so a fresh
//! buffer is zeroed before the read: about 0.13 CPU-seconds per GB got. A
//! buffer that has carried a block is initialized already. The protocol
//! codec and the store read blocks into buffers taken here; an export hands
//! each leaf's buffer back once its plaintext is written, and the serving
//! side once the block is sent. The pool is small and bounded: a buffer
//! nobody hands back is simply freed.

use std::sync::Mutex;

use super::MAX_BLOCK_SIZE;

/// Buffers kept at most; a get cycles through a few at a time.
const KEEP: usize = 16;
/// Buffers smaller than this are not worth keeping.
const MIN_KEPT: usize = 64 * 1024;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A kept buffer with room for `capacity` bytes, if there is one.
fn recycled(capacity: usize) -> Option<Vec<u8>> {
    if capacity < MIN_KEPT {
        return None;
    }
    POOL.lock().ok()?.pop().filter(|buf| buf.capacity() >= capacity)
}

/// A buffer of `len` bytes whose contents are unspecified (zeroes, or what
/// an earlier block left); the caller overwrites them all.
pub fn take(len: usize) -> Vec<u8> {
    match recycled(len) {
        Some(mut buf) => {
            // Zeroes only what lies beyond the buffer's last length: a few
            // bytes, when blocks have one size.
            buf.resize(len, 0);
            buf
        }
        None => vec![0; len],
    }
}

/// An empty buffer with room for `capacity` bytes, for a reader that fills
/// spare capacity itself (`std::io::Read::read_to_end`).
pub fn take_empty(capacity: usize) -> Vec<u8> {
    match recycled(capacity) {
        Some(mut buf) => {
            buf.clear();
            buf
        }
        None => Vec::with_capacity(capacity),
    }
}

/// Hands a buffer back for a later [`take`] or [`take_empty`].
pub fn give(buf: Vec<u8>) {
    if !(MIN_KEPT..=MAX_BLOCK_SIZE + 4096).contains(&buf.capacity()) {
        return;
    }
    if let Ok(mut pool) = POOL.lock()
        && pool.len() < KEEP
    {
        pool.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_has_the_asked_length_whatever_it_carried() {
        give(vec![7; 1 << 20]);
        for len in [0, 10, (1 << 20) + 16, MAX_BLOCK_SIZE] {
            let buf = take(len);
            assert_eq!(buf.len(), len);
            give(buf);
            let buf = take_empty(len);
            assert!(buf.is_empty() && buf.capacity() >= len);
            give(buf);
        }
        give(vec![1; 16]);
        give(vec![1; MAX_BLOCK_SIZE * 4]);
        assert!(POOL.lock().unwrap().iter().all(|b| b.capacity() >= MIN_KEPT));
    }
}
