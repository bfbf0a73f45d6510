//! Export: a ticket in, the file's plaintext (or a byte range of it) out, in
//! order and in bounded memory. Owns the walk of the tree and the export
//! pipeline: a walker thread descends only into the parts of the tree that
//! overlap the range, worker threads fetch, verify and decrypt leaves, and
//! the calling thread writes them out in order. At most `window` leaves are
//! in flight or waiting to be written at any time.
//!
//! Blocks come from a [`BlockSource`]: the local store, or the network
//! (which verifies and stores what it fetches).

use std::io::Write;

use cid::Cid;
use crossbeam_channel::bounded;

use crate::{
    block::{BlockBuf, DAG_CBOR, RAW},
    crypto::{self, Domain, Key},
    dag::{ChildRef, FileMeta, MAX_DEPTH, Node, Opened},
    error::{DagLimit, Error, Result},
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
    let opened = open_node(source, &ticket.root, &ticket.key)?;
    let bad = |reason: &str| Error::Malformed { cid: ticket.root, reason: reason.into() };
    let meta = opened.meta.clone().ok_or_else(|| bad("the root has no file metadata"))?;
    if opened.size() != Some(meta.size) {
        return Err(bad("the root's size does not match its children"));
    }
    Ok((meta, opened))
}

fn open_node(source: &impl BlockSource, cid: &Cid, key: &Key) -> Result<Opened> {
    if cid.codec() != DAG_CBOR {
        return Err(Error::Malformed { cid: *cid, reason: "expected a structure block".into() });
    }
    Node::decode(cid, &source.block(cid)?)?.open(cid, key)
}

/// One leaf to fetch, and which of its plaintext bytes to keep.
struct Task {
    seq: u64,
    cid: Cid,
    key: Key,
    size: u64,
    skip: usize,
    take: usize,
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
    let (offset, len) = options.range.unwrap_or((0, meta.size));
    let end = offset.checked_add(len).filter(|&end| end <= meta.size).ok_or(Error::Range {
        offset,
        len,
        size: meta.size,
    })?;
    if len == 0 {
        return Ok(0);
    }
    let window = options.window.max(1);
    let (credit_tx, credit_rx) = bounded::<()>(window);
    for _ in 0..window {
        credit_tx.send(()).expect("room for every credit");
    }
    let (task_tx, task_rx) = bounded::<Task>(window);
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
                for task in task_rx {
                    let result = fetch_leaf(source, &task);
                    if done_tx.send((task.seq, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(task_rx);
        let walker_done = done_tx.clone();
        scope.spawn(move || {
            let mut walk = Walk {
                source,
                root: ticket.root,
                offset,
                end,
                seq: 0,
                credits: &credit_rx,
                tasks: &task_tx,
            };
            if let Err(e) = walk.run(&root) {
                let _ = walker_done.send((walk.seq, Err(e)));
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

fn fetch_leaf(source: &impl BlockSource, task: &Task) -> Result<BlockBuf> {
    let mut bytes = source.block(&task.cid)?;
    let Some(len) = crypto::open_in_place(&task.key, Domain::Leaf, &mut bytes) else {
        return Err(Error::Decrypt { cid: task.cid });
    };
    bytes.truncate(len);
    if bytes.len() as u64 != task.size {
        return Err(Error::Malformed {
            cid: task.cid,
            reason: "leaf size differs from its parent's record".into(),
        });
    }
    if task.skip > 0 || task.take < bytes.len() {
        bytes.keep(task.skip, task.take);
    }
    Ok(bytes)
}

/// The walker: descends the tree in order, only into children that overlap
/// `offset..end`, and hands out one task per overlapping leaf. It keeps an
/// explicit stack of the opened nodes on the current path (never
/// recursion), at most [`MAX_DEPTH`] of them. A node linked several times
/// is opened each time: the file's bytes repeat with it.
struct Walk<'a, S> {
    source: &'a S,
    root: Cid,
    offset: u64,
    end: u64,
    seq: u64,
    credits: &'a crossbeam_channel::Receiver<()>,
    tasks: &'a crossbeam_channel::Sender<Task>,
}

/// An opened node on the walker's path: its children, the next one to
/// look at, and the file offset where that child starts.
struct Frame {
    children: Vec<ChildRef>,
    next: usize,
    start: u64,
}

impl<S: BlockSource> Walk<'_, S> {
    fn run(&mut self, root: &Opened) -> Result<()> {
        let mut path = vec![Frame { children: root.children.clone(), next: 0, start: 0 }];
        while let Some(frame) = path.last_mut() {
            let Some(child) = frame.children.get(frame.next) else {
                path.pop();
                continue;
            };
            let start = frame.start;
            if start >= self.end {
                // Past the range: so is everything after it here.
                path.pop();
                continue;
            }
            let child_end = start.saturating_add(child.size);
            frame.next += 1;
            frame.start = child_end;
            if child_end <= self.offset {
                continue;
            }
            let child = child.clone();
            match child.cid.codec() {
                RAW => {
                    let skip = self.offset.saturating_sub(start) as usize;
                    let take = (self.end.min(child_end) - start.max(self.offset)) as usize;
                    if self.credits.recv().is_err() {
                        return Err(Error::Cancelled);
                    }
                    let task = Task {
                        seq: self.seq,
                        cid: child.cid,
                        key: child.key,
                        size: child.size,
                        skip,
                        take,
                    };
                    self.seq += 1;
                    if self.tasks.send(task).is_err() {
                        return Err(Error::Cancelled);
                    }
                }
                _ => {
                    if path.len() >= MAX_DEPTH {
                        return Err(Error::Limit {
                            root: self.root,
                            limit: DagLimit::Depth(MAX_DEPTH),
                        });
                    }
                    let opened = open_node(self.source, &child.cid, &child.key)?;
                    if opened.meta.is_some() || opened.size() != Some(child.size) {
                        return Err(Error::Malformed {
                            cid: child.cid,
                            reason: "inner node's size differs from its parent's record".into(),
                        });
                    }
                    path.push(Frame { children: opened.children, next: 0, start });
                }
            }
        }
        Ok(())
    }
}
