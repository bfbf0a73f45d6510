//! The walk of a file's tree, as a state machine with no IO: it says which
//! structure node to open next or which leaf to fetch next, in file order,
//! descending only into the children that overlap the range wanted. The
//! threaded export (`export::export`) and the async one
//! (`export::stream`) drive it, each fetching what it asks for its own
//! way; both open blocks with [`open_node`] and [`open_leaf`].
//!
//! The walker keeps an explicit stack of the opened nodes on the current
//! path (never recursion), at most [`MAX_DEPTH`] of them. A node linked
//! several times is opened each time: the file's bytes repeat with it.

use cid::Cid;

use crate::{
    block::{BlockBuf, DAG_CBOR, RAW},
    crypto::{self, Domain, Key},
    dag::{ChildRef, MAX_DEPTH, Node, Opened},
    error::{DagLimit, Error, Result},
};

/// One leaf to fetch, and which of its plaintext bytes to keep.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Its place among the leaves the walk hands out (0, 1, ...).
    pub seq: u64,
    pub cid: Cid,
    pub(crate) key: Key,
    size: u64,
    skip: usize,
    take: usize,
}

/// What the walk needs next.
#[derive(Debug)]
pub enum Step {
    /// Fetch this leaf (in any order: `seq` says where it goes).
    Leaf(Leaf),
    /// Open this structure node and hand it to [`Walker::enter`] before
    /// asking for the next step.
    Open(Cid, Key),
    /// Every leaf in the range was handed out.
    Done,
}

/// An opened node on the walker's path: its children, the next one to
/// look at, and the file offset where that child starts.
struct Frame {
    children: Vec<ChildRef>,
    next: usize,
    start: u64,
}

/// The walk of one file's tree over the bytes `offset..end`.
pub struct Walker {
    root: Cid,
    offset: u64,
    end: u64,
    seq: u64,
    path: Vec<Frame>,
    /// The child [`Step::Open`] asked for, and where it starts.
    opening: Option<(ChildRef, u64)>,
}

impl Walker {
    /// A walk of the tree under the opened `root` over `offset..end`.
    pub fn new(root_cid: Cid, root: &Opened, offset: u64, end: u64) -> Self {
        Walker {
            root: root_cid,
            offset,
            end,
            seq: 0,
            path: vec![Frame { children: root.children.clone(), next: 0, start: 0 }],
            opening: None,
        }
    }

    /// Leaves handed out so far.
    pub fn leaves(&self) -> u64 {
        self.seq
    }

    /// The next leaf, or the next node to open; fails on a tree deeper
    /// than [`MAX_DEPTH`].
    pub fn next_step(&mut self) -> Result<Step> {
        debug_assert!(self.opening.is_none(), "a node asked for was not entered");
        while let Some(frame) = self.path.last_mut() {
            let Some(child) = frame.children.get(frame.next) else {
                self.path.pop();
                continue;
            };
            let start = frame.start;
            if start >= self.end {
                // Past the range: so is everything after it here.
                self.path.pop();
                continue;
            }
            let child_end = start.saturating_add(child.size);
            frame.next += 1;
            frame.start = child_end;
            if child_end <= self.offset {
                continue;
            }
            let child = child.clone();
            if child.cid.codec() == RAW {
                let skip = self.offset.saturating_sub(start) as usize;
                let take = (self.end.min(child_end) - start.max(self.offset)) as usize;
                let leaf = Leaf {
                    seq: self.seq,
                    cid: child.cid,
                    key: child.key,
                    size: child.size,
                    skip,
                    take,
                };
                self.seq += 1;
                return Ok(Step::Leaf(leaf));
            }
            if self.path.len() >= MAX_DEPTH {
                return Err(Error::Limit { root: self.root, limit: DagLimit::Depth(MAX_DEPTH) });
            }
            let step = Step::Open(child.cid, child.key);
            self.opening = Some((child, start));
            return Ok(step);
        }
        Ok(Step::Done)
    }

    /// Descends into the node the last [`Step::Open`] asked for.
    pub fn enter(&mut self, opened: Opened) -> Result<()> {
        let Some((child, start)) = self.opening.take() else {
            return Err(Error::Internal("the walk entered a node it did not ask for".into()));
        };
        if opened.meta.is_some() || opened.size() != Some(child.size) {
            return Err(Error::Malformed {
                cid: child.cid,
                reason: "inner node's size differs from its parent's record".into(),
            });
        }
        self.path.push(Frame { children: opened.children, next: 0, start });
        Ok(())
    }
}

/// Decodes and decrypts a structure block (already verified against `cid`).
pub fn open_node(cid: &Cid, bytes: &[u8], key: &Key) -> Result<Opened> {
    if cid.codec() != DAG_CBOR {
        return Err(Error::Malformed { cid: *cid, reason: "expected a structure block".into() });
    }
    Node::decode(cid, bytes)?.open(cid, key)
}

/// Decrypts a leaf (already verified against its CID) in place, checks its
/// size against its parent's record and keeps the bytes the walk wants.
pub fn open_leaf(mut bytes: BlockBuf, leaf: &Leaf) -> Result<BlockBuf> {
    let Some(len) = crypto::open_in_place(&leaf.key, Domain::Leaf, &mut bytes) else {
        return Err(Error::Decrypt { cid: leaf.cid });
    };
    bytes.truncate(len);
    if bytes.len() as u64 != leaf.size {
        return Err(Error::Malformed {
            cid: leaf.cid,
            reason: "leaf size differs from its parent's record".into(),
        });
    }
    if leaf.skip > 0 || leaf.take < bytes.len() {
        bytes.keep(leaf.skip, leaf.take);
    }
    Ok(bytes)
}
