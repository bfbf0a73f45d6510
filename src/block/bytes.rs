//! A block's bytes as the network moves them: owned (a block just read from
//! a peer, or built in memory), or a read-only map of a block file in the
//! store. A serving node maps the files it sends, so a block goes from the
//! page cache straight into the transport's frames instead of first being
//! copied into a buffer of its own.

use std::{fmt, ops::Deref, sync::Arc};

use super::buffers::BlockBuf;

/// The bytes of one block. Compares, prints and derefs as a byte slice.
#[derive(Clone)]
pub enum BlockBytes {
    Owned(BlockBuf),
    /// A whole block file, mapped read-only. Block files are written once
    /// and renamed into place; the store never changes or truncates one, it
    /// only unlinks or renames it, which leaves a mapping intact.
    Mapped(Arc<memmap2::Mmap>),
}

impl BlockBytes {
    /// The bytes as a buffer of their own: the owned one itself, or a copy
    /// of a map.
    pub fn into_buf(self) -> BlockBuf {
        match self {
            BlockBytes::Owned(bytes) => bytes,
            BlockBytes::Mapped(map) => BlockBuf::copy_from(&map),
        }
    }
}

impl Deref for BlockBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            BlockBytes::Owned(bytes) => bytes,
            BlockBytes::Mapped(map) => map,
        }
    }
}

impl AsRef<[u8]> for BlockBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<BlockBuf> for BlockBytes {
    fn from(bytes: BlockBuf) -> Self {
        BlockBytes::Owned(bytes)
    }
}

/// A copy of `bytes`, for blocks built in memory (tests, examples).
impl From<Vec<u8>> for BlockBytes {
    fn from(bytes: Vec<u8>) -> Self {
        BlockBytes::Owned(BlockBuf::copy_from(&bytes))
    }
}

impl PartialEq for BlockBytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for BlockBytes {}

impl fmt::Debug for BlockBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockBytes").field("len", &self.len()).finish()
    }
}
