//! Helpers shared by the network tests.

#![allow(dead_code)] // each test file uses a different part

use std::{
    io::{self, Write},
    sync::{Arc, Mutex},
};

/// Deterministic, incompressible test bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    dfs_p2p::testdata::pseudo_random(len, seed)
}

/// An output that collects what it is given.
#[derive(Clone, Default)]
pub struct Sink(pub Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[path = "../ports/mod.rs"]
mod ports;
#[allow(unused_imports)] // each test file uses some
pub use ports::ReservedPort;

/// A node's store, looked at by a test: each call runs on a thread of its
/// own, since a store call is blocking and the store's seam check refuses
/// it on a runtime thread (where a test's body runs).
pub struct Look<'a>(pub &'a dfs_p2p::store::Store);

/// [`Look`] at the store of `node`.
pub fn store(node: &dfs_p2p::node::Node) -> Look<'_> {
    Look(node.store())
}

#[allow(dead_code)] // each test file uses some
impl Look<'_> {
    fn off_runtime<T: Send>(&self, f: impl FnOnce(&dfs_p2p::store::Store) -> T + Send) -> T {
        std::thread::scope(|s| s.spawn(|| f(self.0)).join().unwrap())
    }

    pub fn root_info(&self, root: &cid::Cid) -> Option<dfs_p2p::store::RootInfo> {
        self.off_runtime(|s| s.root_info(root))
    }

    pub fn dag_stats(&self, root: &cid::Cid) -> dfs_p2p::Result<(u64, u64)> {
        self.off_runtime(|s| s.dag_stats(root))
    }

    pub fn is_complete(&self, root: &cid::Cid) -> bool {
        self.off_runtime(|s| s.is_complete(root))
    }

    pub fn has(&self, cid: &cid::Cid) -> bool {
        self.off_runtime(|s| s.has(cid))
    }

    pub fn usage(&self) -> dfs_p2p::Result<dfs_p2p::store::Usage> {
        self.off_runtime(|s| s.usage())
    }

    pub fn walk(
        &self,
        root: &cid::Cid,
        visit: &mut (dyn FnMut(&cid::Cid) -> dfs_p2p::Result<()> + Send),
    ) -> dfs_p2p::Result<()> {
        self.off_runtime(|s| s.walk(root, visit))
    }

    pub fn get(&self, cid: &cid::Cid) -> dfs_p2p::Result<dfs_p2p::block::BlockBuf> {
        self.off_runtime(|s| s.get(cid))
    }
}
