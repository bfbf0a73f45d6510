//! Export: a ticket in, the file's plaintext (or a byte range of it) out, in
//! order and in bounded memory. One walk of the tree ([`Walker`], which
//! descends only into the parts that overlap the range) and two drivers:
//!
//! - [`export`], for a blocking [`BlockSource`] (the local store: `bench
//!   store`, the store's tests): a walker thread, worker threads that fetch,
//!   verify and decrypt leaves, and the calling thread writing them out in
//!   order;
//! - [`stream`], async, for a [`LeafSource`] (the network get and the HTTP
//!   gateway): an ordered window of leaf futures on the runtime, in one
//!   task, whatever the window; the source runs the blocking work (reading,
//!   verifying, decrypting, storing a block) on the store's seam, so a get
//!   takes no thread of its own.
//!
//! Either way at most `window` leaves are in flight or waiting to be
//! written at any time (and [`stream`] two more, being written).

use std::io::Write;

use cid::Cid;
use crossbeam_channel::bounded;

mod stream;
mod walk;

pub use self::{
    stream::{ChannelWriter, LeafSource, Output, StreamOptions, open_root_async, stream},
    walk::{Leaf, Step, Walker, open_leaf, open_node},
};
use crate::{
    block::BlockBuf,
    crypto::Key,
    dag::{FileMeta, Opened},
    error::{Error, Result},
    progress::Progress,
    store::Store,
    ticket::Ticket,
};

/// Where export gets blocks from. Every block returned must already be
/// verified against its CID.
pub trait BlockSource: Sync {
    fn block(&self, cid: &Cid) -> Result<BlockBuf>;
}

impl BlockSource for Store {
    fn block(&self, cid: &Cid) -> Result<BlockBuf> {
        self.get(cid)
    }
}

impl<S: BlockSource + ?Sized> BlockSource for &S {
    fn block(&self, cid: &Cid) -> Result<BlockBuf> {
        (**self).block(cid)
    }
}

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// `(offset, len)` of the bytes wanted; `None` for the whole file.
    pub range: Option<(u64, u64)>,
    /// Threads that fetch and decrypt leaves.
    pub workers: usize,
    /// Leaves in flight or waiting to be written.
    pub window: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self { range: None, workers: 2, window: 8 }
    }
}

/// A byte range of a file as a user or an HTTP client gives it: `a-b`
/// (bytes a to b, both included), `a-` (from a to the end) or `-n` (the
/// last n bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    FromTo(u64, u64),
    From(u64),
    Last(u64),
}

impl ByteRange {
    /// (offset, length) within a file of `size` bytes, or `None` if the
    /// range is unsatisfiable there (it starts at or past the end, or asks
    /// for the last 0 bytes). An end past the file is cut to the file.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        let (start, end) = match self {
            ByteRange::FromTo(a, b) if a <= b => (a, b.min(size.saturating_sub(1))),
            ByteRange::FromTo(..) => return None,
            ByteRange::From(a) => (a, size.saturating_sub(1)),
            ByteRange::Last(0) => return None,
            ByteRange::Last(n) => (size.saturating_sub(n), size.saturating_sub(1)),
        };
        (start < size).then(|| (start, end - start + 1))
    }
}

impl std::str::FromStr for ByteRange {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<ByteRange, String> {
        let bad = || format!("`{s}` is not a byte range: give START-END, START- or -LAST");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let number = |t: &str| t.trim().parse::<u64>().map_err(|_| bad());
        match (a.trim().is_empty(), b.trim().is_empty()) {
            (false, false) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(format!("`{s}`: the range ends before it starts"));
                }
                Ok(ByteRange::FromTo(a, b))
            }
            (false, true) => Ok(ByteRange::From(number(a)?)),
            (true, false) => Ok(ByteRange::Last(number(b)?)),
            (true, true) => Err(bad()),
        }
    }
}

/// Fetches and opens the root: the file's metadata and top-level children.
pub fn open_root(source: &impl BlockSource, ticket: &Ticket) -> Result<(FileMeta, Opened)> {
    check_root(&ticket.root, open_source_node(source, &ticket.root, &ticket.key)?)
}

/// `(offset, len, end)` of the bytes `range` wants of a file of `size`
/// bytes (all of them for `None`), or why not.
fn span(range: Option<(u64, u64)>, size: u64) -> Result<(u64, u64, u64)> {
    let (offset, len) = range.unwrap_or((0, size));
    let end = offset.checked_add(len).filter(|&end| end <= size).ok_or(Error::Range {
        offset,
        len,
        size,
    })?;
    Ok((offset, len, end))
}

/// The file's metadata from its opened root, checked against its children.
fn check_root(root: &Cid, opened: Opened) -> Result<(FileMeta, Opened)> {
    let bad = |reason: &str| Error::Malformed { cid: *root, reason: reason.into() };
    let meta = opened.meta.clone().ok_or_else(|| bad("the root has no file metadata"))?;
    if opened.size() != Some(meta.size) {
        return Err(bad("the root's size does not match its children"));
    }
    Ok((meta, opened))
}

fn open_source_node(source: &impl BlockSource, cid: &Cid, key: &Key) -> Result<Opened> {
    open_node(cid, &source.block(cid)?, key)
}

/// Writes the file (or `options.range` of it) to `out`; returns the bytes
/// written. Wrong bytes are never written: every block is verified and
/// authenticated first, and the first failure stops the export and names
/// the block.
pub fn export(
    source: &impl BlockSource,
    ticket: &Ticket,
    out: &mut impl Write,
    options: &ExportOptions,
    progress: Option<Progress<'_>>,
) -> Result<u64> {
    let (meta, root) = open_root(source, ticket)?;
    let (offset, len, end) = span(options.range, meta.size)?;
    if len == 0 {
        return Ok(0);
    }
    let window = options.window.max(1);
    let (credit_tx, credit_rx) = bounded::<()>(window);
    for _ in 0..window {
        credit_tx.send(()).expect("room for every credit");
    }
    let (task_tx, task_rx) = bounded::<Leaf>(window);
    let (done_tx, done_rx) = bounded::<(u64, Result<BlockBuf>)>(window + 1);

    std::thread::scope(|scope| {
        // Owned by this closure, so that an early return (an output error)
        // drops them before the scope joins: the walker then stops on its
        // credits and the workers on their results, instead of waiting
        // forever.
        let (credit_tx, done_rx) = (credit_tx, done_rx);
        for _ in 0..options.workers.max(1) {
            let (task_rx, done_tx) = (task_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                for leaf in task_rx {
                    let result = source.block(&leaf.cid).and_then(|bytes| open_leaf(bytes, &leaf));
                    if done_tx.send((leaf.seq, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(task_rx);
        let walker_done = done_tx.clone();
        scope.spawn(move || {
            let mut walker = Walker::new(ticket.root, &root, offset, end);
            if let Err(e) = walk(source, &mut walker, &credit_rx, &task_tx) {
                let _ = walker_done.send((walker.leaves(), Err(e)));
            }
        });
        drop(done_tx);

        let mut reorder = std::collections::BTreeMap::new();
        let (mut next, mut written) = (0u64, 0u64);
        let write = |out: &mut dyn Write, bytes: &[u8]| {
            out.write_all(bytes)
                .map_err(|e| Error::Io { context: "cannot write the output".into(), source: e })
        };
        for (seq, result) in &done_rx {
            reorder.insert(seq, result);
            while let Some(result) = reorder.remove(&next) {
                next += 1;
                let bytes = result?;
                write(out, &bytes)?;
                written += bytes.len() as u64;
                // Dropping the leaf hands its buffer back for a later block.
                drop(bytes);
                if let Some(progress) = progress {
                    progress(written, Some(len));
                }
                let _ = credit_tx.send(());
            }
        }
        if written != len {
            // Only reached if a thread stopped without reporting an error.
            return Err(Error::Internal(format!(
                "the export stopped after {written} of {len} bytes without saying why"
            )));
        }
        out.flush()
            .map_err(|e| Error::Io { context: "cannot write the output".into(), source: e })?;
        Ok(written)
    })
}

/// The walker's thread: hands out the leaves in order, each once a credit
/// says there is room in the window, opening structure nodes on the way.
fn walk(
    source: &impl BlockSource,
    walker: &mut Walker,
    credits: &crossbeam_channel::Receiver<()>,
    tasks: &crossbeam_channel::Sender<Leaf>,
) -> Result<()> {
    loop {
        match walker.next_step()? {
            Step::Leaf(leaf) => {
                if credits.recv().is_err() || tasks.send(leaf).is_err() {
                    return Err(Error::Cancelled);
                }
            }
            Step::Open(cid, key) => walker.enter(open_source_node(source, &cid, &key)?)?,
            Step::Done => return Ok(()),
        }
    }
}
