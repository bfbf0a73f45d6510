//! Writing many blocks: a [`BlockWriter`] writes each block to `tmp/`,
//! and makes a batch durable with one `syncfs` before renaming it into
//! place (on a background thread, while the next batch is written), so a
//! block file under a CID name is always complete and there is no fsync per
//! block. Copies fetched to be read are placed at once and never synced.
//!
//! A writer is blocking code: call it from a blocking thread (see the rule
//! in the store's module docs). It holds a collection guard (`gc`) for its
//! whole life, so nothing it wrote or found already stored is collected
//! before the caller pins it; it never waits for a collection.

use super::{Store, blocks::Pending, gc::Guard};
use crate::error::{Error, Result};

/// Blocks written between two syncs of a [`BlockWriter`].
const BATCH_BLOCKS: usize = 256;

/// Whether a writer's blocks must survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced before `finish` returns (puts, replicas).
    Synced,
    /// Placed at once, never synced, written around the page cache where
    /// the file system allows (copies fetched for reading).
    Cached,
}

/// Writes many blocks with one sync per batch; see the module docs.
/// Nothing it wrote is guaranteed durable before [`finish`](Self::finish)
/// returns; whatever is still pending when it is dropped is discarded.
pub struct BlockWriter {
    store: Store,
    durability: Durability,
    pending: Vec<Pending>,
    written: u64,
    committer: Option<Committer>,
    _guard: Guard,
}

/// The background thread that syncs and places full batches.
struct Committer {
    batches: crossbeam_channel::Sender<Vec<Pending>>,
    thread: std::thread::JoinHandle<Result<()>>,
}

/// A block written to a temporary file by [`BlockWriter::prepare`]; removed
/// if it is dropped without being added to a writer.
pub struct Prepared(Option<Pending>);

impl Store {
    /// Stores one block, verifying it first, and syncs it. For many blocks
    /// use a [`BlockWriter`].
    pub fn put(&self, cid: &cid::Cid, bytes: &[u8]) -> Result<()> {
        super::assert_blocking_context();
        if !crate::block::verify(cid, bytes) {
            return Err(Error::Corrupt { cid: *cid });
        }
        let mut writer = self.writer();
        writer.put_verified(cid, bytes)?;
        writer.finish()
    }

    /// A writer of blocks that must survive a crash (a put, a replica).
    pub fn writer(&self) -> BlockWriter {
        super::assert_blocking_context();
        BlockWriter::new(self.clone(), Durability::Synced)
    }

    /// A writer for copies fetched to be read (a get): blocks go into place
    /// at once and are never synced. A crash may lose or damage some of
    /// them; every read verifies, so a damaged one is moved aside and
    /// fetched again.
    pub fn cache_writer(&self) -> BlockWriter {
        super::assert_blocking_context();
        BlockWriter::new(self.clone(), Durability::Cached)
    }
}

/// Syncs a batch of written blocks, then moves them into place, so that a
/// block file under a CID name is complete even after a crash.
fn place_batch(store: &Store, batch: Vec<Pending>) -> Result<()> {
    store.sync()?;
    for mut p in batch {
        p.place().map_err(|e| Error::io("cannot move block into place", &p.path, e))?;
    }
    Ok(())
}

impl BlockWriter {
    fn new(store: Store, durability: Durability) -> Self {
        let guard = store.guard();
        Self { store, durability, pending: Vec::new(), written: 0, committer: None, _guard: guard }
    }

    /// Stores a block whose CID the caller computed or verified from these
    /// very bytes. Returns whether it was new.
    pub fn put_verified(&mut self, cid: &cid::Cid, bytes: &[u8]) -> Result<bool> {
        let pending = self.store.write_tmp(cid, bytes, self.durability)?;
        self.add(pending)
    }

    /// Prepares a block from any thread; hand the result to
    /// [`add_prepared`](Self::add_prepared) of a writer of the same
    /// durability. The caller must hold a live writer (or a guard) of this
    /// store meanwhile: its guard is what keeps the block from collection.
    pub fn prepare(
        store: &Store,
        durability: Durability,
        cid: &cid::Cid,
        bytes: &[u8],
    ) -> Result<Prepared> {
        let mut pending = store.write_tmp(cid, bytes, durability)?;
        // A copy fetched for reading goes into place at once, on the thread
        // that wrote it: threads sharing a writer never wait for each
        // other's renames.
        if durability == Durability::Cached
            && let Some(p) = pending.as_mut()
        {
            p.place().map_err(|e| Error::io("cannot move block into place", &p.path, e))?;
        }
        Ok(Prepared(pending))
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Adds a block prepared by [`prepare`](Self::prepare).
    pub fn add_prepared(&mut self, prepared: Prepared) -> Result<bool> {
        self.add(prepared.0)
    }

    fn add(&mut self, pending: Option<Pending>) -> Result<bool> {
        let Some(mut pending) = pending else { return Ok(false) };
        self.written += 1;
        if self.durability == Durability::Cached {
            if !pending.placed {
                pending
                    .place()
                    .map_err(|e| Error::io("cannot move block into place", &pending.path, e))?;
            }
            return Ok(true);
        }
        self.pending.push(pending);
        if self.pending.len() >= BATCH_BLOCKS {
            self.commit_in_background()?;
        }
        Ok(true)
    }

    fn commit_in_background(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.pending);
        let committer = self.committer.get_or_insert_with(|| {
            // One batch syncing and one waiting at most.
            let (batches, rx) = crossbeam_channel::bounded::<Vec<Pending>>(1);
            let store = self.store.clone();
            let thread = std::thread::spawn(move || {
                rx.into_iter().try_for_each(|batch| place_batch(&store, batch))
            });
            Committer { batches, thread }
        });
        if committer.batches.send(batch).is_err() {
            // The committer stopped on an error; report it.
            return self.join_committer();
        }
        Ok(())
    }

    fn join_committer(&mut self) -> Result<()> {
        match self.committer.take() {
            Some(Committer { batches, thread }) => {
                drop(batches);
                thread.join().expect("the block committer panicked")
            }
            None => Ok(()),
        }
    }

    /// Syncs everything written so far and moves it into place.
    pub fn commit(&mut self) -> Result<()> {
        self.join_committer()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        place_batch(&self.store, std::mem::take(&mut self.pending))
    }

    /// Commits the last batch and syncs the renames. The writer's guard
    /// stays until it is dropped, so the caller can pin what it wrote.
    pub fn finish(&mut self) -> Result<()> {
        self.commit()?;
        match self.durability {
            Durability::Synced => self.store.sync(),
            Durability::Cached => Ok(()),
        }
    }

    /// New blocks written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        // Batches already handed over are synced and placed; the rest is
        // removed as `pending` drops.
        let _ = self.join_committer();
    }
}
