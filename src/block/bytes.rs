//! A block's bytes as the network moves them: owned (a block just read from
//! a peer, or built in memory), or a read-only map of a block file in the
//! store. A serving node maps the files it sends, so a block goes from the
//! page cache straight into the transport's frames instead of first being
//! copied into a buffer of its own.

use std::{fmt, ops::Deref, sync::Arc};

/// The bytes of one block. Compares, prints and derefs as a byte slice.
#[derive(Clone)]
pub enum BlockBytes {
    Owned(Vec<u8>),
    /// A whole block file, mapped read-only. Block files are written once
    /// and renamed into place; the store never changes or truncates one, it
    /// only unlinks or renames it, which leaves a mapping intact.
    Mapped(Arc<memmap2::Mmap>),
}

impl BlockBytes {
    /// The bytes as a vector: the owned one itself, or a copy of a map.
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            BlockBytes::Owned(bytes) => bytes,
            BlockBytes::Mapped(map) => map.to_vec(),
        }
    }

    /// Hands an owned buffer back to the pool (see `block::buffers`).
    pub fn recycle(self) {
        if let BlockBytes::Owned(bytes) = self {
            super::buffers::give(bytes);
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

impl From<Vec<u8>> for BlockBytes {
    fn from(bytes: Vec<u8>) -> Self {
        BlockBytes::Owned(bytes)
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
