//! Walking a DAG that is on disk: the blocks under a root, their total
//! size, whether they are all here. Reads structure nodes (verified) for
//! their clear links; never decrypts. Every walk is a [`Frontier`]: an
//! explicit stack, each distinct CID once, depth-limited.

use cid::Cid;

use super::Store;
use crate::{
    block::DAG_CBOR,
    dag::{Frontier, Node},
    error::{Error, Result},
};

impl Store {
    /// Visits every distinct block CID of the DAG under `root` once,
    /// parents before children (structure nodes are read and verified;
    /// leaves are only named). Stops at the first error, and at a DAG
    /// deeper than the format allows.
    pub fn walk(&self, root: &Cid, visit: &mut dyn FnMut(&Cid) -> Result<()>) -> Result<()> {
        super::assert_blocking_context();
        let mut frontier = Frontier::new(*root, u64::MAX);
        while let Some((cid, depth)) = frontier.pop() {
            visit(&cid)?;
            if cid.codec() == DAG_CBOR {
                let node = Node::decode(&cid, &self.get(&cid)?)?;
                frontier.push_links(depth, &node.links)?;
            }
        }
        Ok(())
    }

    /// Total bytes of the DAG under `root` (each distinct block once);
    /// fails if any block is missing.
    pub fn dag_size(&self, root: &Cid) -> Result<u64> {
        super::assert_blocking_context();
        Ok(self.dag_stats(root)?.1)
    }

    /// Distinct blocks of the DAG under `root`, and their bytes; fails if
    /// any block is missing.
    pub fn dag_stats(&self, root: &Cid) -> Result<(u64, u64)> {
        super::assert_blocking_context();
        let (mut blocks, mut bytes) = (0, 0);
        self.walk(root, &mut |cid| {
            let path = self.block_path(cid);
            bytes += std::fs::metadata(&path).map_err(|_| Error::Missing { cid: *cid })?.len();
            blocks += 1;
            Ok(())
        })?;
        Ok((blocks, bytes))
    }

    /// Bytes of the blocks of the DAG under `root` that are on disk (the
    /// part a range read fetched); what is missing is skipped.
    pub fn present_size(&self, root: &Cid) -> u64 {
        super::assert_blocking_context();
        let mut frontier = Frontier::new(*root, u64::MAX);
        let mut bytes = 0;
        while let Some((cid, depth)) = frontier.pop() {
            let Ok(meta) = std::fs::metadata(self.block_path(&cid)) else { continue };
            bytes += meta.len();
            if cid.codec() == DAG_CBOR
                && let Ok(node) = self.get(&cid).and_then(|b| Node::decode(&cid, &b))
                && frontier.push_links(depth, &node.links).is_err()
            {
                break;
            }
        }
        bytes
    }

    /// Whether every block of the DAG under `root` is on disk (structure
    /// nodes are read and verified; leaves are only checked to exist).
    pub fn is_complete(&self, root: &Cid) -> bool {
        super::assert_blocking_context();
        self.dag_size(root).is_ok()
    }
}
