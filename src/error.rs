//! The error type of the storage core (blocks, DAG, tickets, store, import
//! and export). Every variant reads as one line a user can act on, and says
//! who is at fault: a block that does not match its CID, a key that does not
//! open a block, a disk that is full, a ticket that does not parse.

use std::{io, path::PathBuf};

use cid::Cid;

/// Errors of the storage core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes stored or received under a CID do not hash to that CID.
    #[error("block {cid} is corrupt: its bytes do not match its CID")]
    Corrupt { cid: Cid },
    /// The block is not in the store (or not on the network).
    #[error("block {cid} is missing")]
    Missing { cid: Cid },
    /// The key does not open the block: a wrong ticket, or a block that was
    /// replaced by another validly addressed one.
    #[error("block {cid} cannot be decrypted: wrong key or tampered content")]
    Decrypt { cid: Cid },
    /// A structure block decoded but does not describe a valid file.
    #[error("block {cid} is malformed: {reason}")]
    Malformed { cid: Cid, reason: String },
    /// A DAG that breaks a limit: the format's depth, or what was declared
    /// or allowed for it.
    #[error("the DAG under {root} {limit}")]
    Limit { root: Cid, limit: DagLimit },
    /// A ticket or CID string that does not parse.
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// A write failed because the disk is full.
    #[error("disk full while writing {path}: {source}")]
    DiskFull { path: PathBuf, source: io::Error },
    /// Not enough disk space for what an operation would write; checked
    /// before it writes anything.
    #[error(
        "not enough disk space in {path}: {need} needed, {free} free (and {reserve} kept free)",
        path = path.display(),
        need = crate::units::human_size(*need),
        free = crate::units::human_size(*free),
        reserve = "64 MiB"
    )]
    NoSpace { path: PathBuf, need: u64, free: u64 },
    /// The root index cannot be read; `dfs-p2p rebuild-index` makes a new
    /// one from the blocks on disk.
    #[error(
        "the index of stored files {path} is damaged ({reason}): run `dfs-p2p rebuild-index` \
         with the same data directory to rebuild it from the blocks on disk",
        path = path.display()
    )]
    DamagedIndex { path: PathBuf, reason: String },
    /// Any other IO failure, with what was being done.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// Another process holds the data directory.
    #[error("data directory {dir} is in use by another dfs-p2p process")]
    InUse { dir: PathBuf },
    /// A secret file that other users can read.
    #[error(
        "{path} is readable by other users (mode {mode:o}); refusing to use it: run `chmod 600 {path}`",
        path = path.display()
    )]
    InsecureKey { path: PathBuf, mode: u32 },
    /// An option outside its allowed range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The requested byte range lies outside the file.
    #[error("range {offset}+{len} is outside the file ({size} bytes)")]
    Range { offset: u64, len: u64, size: u64 },
    /// No peer could send a block of the DAG under `root`: none of the
    /// `found` providers discovery found for it had `cid`, or none was
    /// found at all (`found` 0: the content is not to be had, which
    /// `node::NodeError` reports as not found).
    #[error("{}", no_providers(root, cid, *found))]
    NoProviders { root: Cid, cid: Box<Cid>, found: usize },
    /// The node stopped while the operation waited on the network (its
    /// runtime shut down under a fetch).
    #[error("the node stopped")]
    NodeStopped,
    /// The operation was cancelled: by its caller, or because it ran past
    /// its deadline.
    #[error("cancelled")]
    Cancelled,
    /// A worker thread or task panicked while doing the named work: a bug,
    /// reported as such rather than as a stopped node.
    #[error("internal error: {0} panicked (a bug; the log has the details)")]
    WorkerPanicked(String),
    /// Anything else that is the program's fault, not the user's, a peer's
    /// or the disk's.
    #[error("internal error: {0}")]
    Internal(String),
}

fn no_providers(root: &Cid, cid: &Cid, found: usize) -> String {
    if found == 0 {
        format!("no provider found for {root}")
    } else {
        format!("block {cid} of {root}: none of the {found} providers found could send it")
    }
}

/// Which limit a DAG broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DagLimit {
    /// The format's depth limit, `dag::MAX_DEPTH` levels.
    #[error("is deeper than {0} levels")]
    Depth(usize),
    /// More distinct blocks than declared or allowed.
    #[error("has more than {0} blocks")]
    Blocks(u64),
    /// More bytes than declared or allowed.
    #[error("holds more than {0} bytes")]
    Bytes(u64),
}

/// A ticket or CID string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A ticket without its prefix (the prefix it must start with).
    #[error("malformed ticket: it must start with `{0}`")]
    TicketPrefix(&'static str),
    #[error("malformed ticket: {0}")]
    TicketEncoding(String),
    #[error("malformed ticket: wrong version {0}")]
    TicketVersion(u8),
    #[error("malformed CID `{input}`: {reason}")]
    Cid { input: String, reason: String },
    #[error("unsupported CID {cid}: {reason}")]
    UnsupportedCid { cid: String, reason: String },
}

impl Error {
    /// Wraps an IO error with what was being done; `ENOSPC` becomes
    /// [`Error::DiskFull`].
    pub fn io(context: impl Into<String>, path: &std::path::Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::StorageFull
            || source.raw_os_error() == Some(libc::ENOSPC)
        {
            return Error::DiskFull { path: path.to_path_buf(), source };
        }
        Error::Io { context: format!("{} {}", context.into(), path.display()), source }
    }

    /// The block this error blames, if any.
    pub fn blamed_block(&self) -> Option<&Cid> {
        match self {
            Error::Corrupt { cid }
            | Error::Missing { cid }
            | Error::Decrypt { cid }
            | Error::Malformed { cid, .. } => Some(cid),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
