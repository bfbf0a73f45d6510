//! The file protocol's messages: the requests, the responses and the error
//! codes, and the limits a peer enforces on each (`validate`). Their bytes
//! are the business of `frame`.

use std::fmt;
use std::io;

use cid::Cid;

use super::{MAX_BLOCK_SIZE, MAX_ERROR_MESSAGE_LEN, MAX_HAVE_CIDS, MAX_PROVE_CIDS};
use crate::block::{self, BlockBuf};
use crate::lease::LEASE_LEN;

/// A request of the file protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Fetch one block by CID.
    GetBlock {
        /// The block wanted.
        cid: Cid,
    },
    /// Which of these blocks does the peer hold? At most [`MAX_HAVE_CIDS`].
    Have {
        /// The blocks asked about.
        cids: Vec<Cid>,
    },
    /// Pull, verify, pin (for the owner the lease names) and provide the
    /// DAG under `root`, then answer. The requester declares what it asks
    /// to be stored; the responder reserves that against its quota first,
    /// and stops pulling a DAG that turns out bigger.
    Replicate {
        /// Root of the DAG to replicate.
        root: Cid,
        /// Distinct blocks of the DAG, the root included.
        blocks: u64,
        /// Bytes of those blocks.
        bytes: u64,
        /// The owner's signed lease ([`crate::lease::Lease`], exactly
        /// [`LEASE_LEN`] bytes; checked by the responder, not here): who
        /// owns the replica, how many copies it wants, until when.
        lease: Vec<u8>,
    },
    /// Drop the replica of `root` that the requester owns.
    Delete {
        /// Root of the replica to drop.
        root: Cid,
    },
    /// Does the peer hold the whole DAG under `root` as a replica or as its
    /// own content (a repair's live count)?
    Holds {
        /// The root asked about.
        root: Cid,
    },
    /// Prove that you hold these blocks of `root`: answer, for each CID in
    /// order, SHA-256 of `nonce` then the block's bytes. At most
    /// [`MAX_PROVE_CIDS`]. Only under `/dfs-p2p/file/4.0.0`.
    Prove {
        /// The root the blocks belong to.
        root: Cid,
        /// Fresh random bytes of the challenger's.
        nonce: [u8; 32],
        /// The blocks whose possession is proven.
        cids: Vec<Cid>,
    },
}

/// A request as a responder reads it off a stream: well-formed, or the
/// reason it is not (which the responder sends back as `Error BadRequest`,
/// so that the requester can tell a malformed request from a dropped one).
/// A requester only ever sends [`RequestFrame::Valid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFrame {
    Valid(Request),
    Malformed(String),
    /// A well-formed header of a large request that arrived while the
    /// bodies of others filled the responder's budget (see
    /// [`FileCodec`](super::FileCodec)): its body was not read, and the
    /// responder answers `Busy`.
    Busy,
}

/// A response of the file protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The block's bytes, at most [`MAX_BLOCK_SIZE`]. Not yet verified: the
    /// requester must check them against the CID it asked for.
    Block {
        /// The raw block bytes.
        data: BlockBuf,
    },
    /// The peer does not hold the requested block.
    NotFound,
    /// One answer per CID of the `Have` request, in the same order.
    Have {
        /// `present[i]`: the peer holds the request's `cids[i]`.
        present: Vec<bool>,
    },
    /// The replica is complete and pinned; it holds this many blocks.
    Replicated {
        /// Blocks of the DAG the replica holds.
        blocks: u64,
    },
    /// The requester's pin on the root is gone.
    Deleted,
    /// The answer to `Holds`.
    Holding {
        /// The peer holds the whole DAG pinned (not only cached).
        pinned: bool,
        /// The copies its owners want (0: unknown, or not pinned).
        replicas: u8,
        /// Unix seconds of the last repair this peer made of the root; 0
        /// if none.
        repaired: u64,
    },
    /// The answer to `Prove`: SHA-256 of the nonce then each block asked,
    /// in the request's order.
    Proof {
        /// One digest per CID of the request.
        digests: Vec<[u8; 32]>,
    },
    /// The request failed; `message` (at most [`MAX_ERROR_MESSAGE_LEN`]
    /// bytes) is for humans and logs, `code` for programs.
    Error {
        /// What went wrong, for programs.
        code: ErrorCode,
        /// Why, for people and logs.
        message: String,
    },
}

/// Why a request failed. Each code has a fixed number on the wire; numbers
/// this version does not know decode as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The content is not available (e.g. a `Replicate` whose blocks could
    /// not be found).
    NotFound,
    /// The peer will not do this for the requester (e.g. a `Delete` from a
    /// peer that is not the owner, or a replica the node declines to hold).
    Refused,
    /// A `Delete` for a root this node has not pinned for anyone.
    NotPinned,
    /// Temporarily overloaded; try later or elsewhere.
    Busy,
    /// The responder failed on its own side (disk, bug).
    Internal,
    /// The request was well-formed but made no sense.
    BadRequest,
    /// The responder does not implement this request.
    Unsupported,
    /// A code this version does not know; keep the number for the log.
    /// Decoding yields it only for unassigned numbers; encoding writes the
    /// number as it is.
    Unknown(u16),
}

// Error code numbers. Must not change. 0 is reserved; 8..=0x7FFF are left
// for later revisions of this spec; 0x8000..=0xFFFF for private use.
const CODE_NOT_FOUND: u16 = 1;
const CODE_REFUSED: u16 = 2;
const CODE_NOT_PINNED: u16 = 3;
const CODE_BUSY: u16 = 4;
const CODE_INTERNAL: u16 = 5;
const CODE_BAD_REQUEST: u16 = 6;
const CODE_UNSUPPORTED: u16 = 7;

impl ErrorCode {
    /// The code's number on the wire.
    #[must_use]
    pub const fn to_u16(self) -> u16 {
        match self {
            Self::NotFound => CODE_NOT_FOUND,
            Self::Refused => CODE_REFUSED,
            Self::NotPinned => CODE_NOT_PINNED,
            Self::Busy => CODE_BUSY,
            Self::Internal => CODE_INTERNAL,
            Self::BadRequest => CODE_BAD_REQUEST,
            Self::Unsupported => CODE_UNSUPPORTED,
            Self::Unknown(code) => code,
        }
    }

    /// The code for a number read from the wire; never fails.
    #[must_use]
    pub const fn from_u16(code: u16) -> Self {
        match code {
            CODE_NOT_FOUND => Self::NotFound,
            CODE_REFUSED => Self::Refused,
            CODE_NOT_PINNED => Self::NotPinned,
            CODE_BUSY => Self::Busy,
            CODE_INTERNAL => Self::Internal,
            CODE_BAD_REQUEST => Self::BadRequest,
            CODE_UNSUPPORTED => Self::Unsupported,
            other => Self::Unknown(other),
        }
    }
}

impl From<u16> for ErrorCode {
    fn from(code: u16) -> Self {
        Self::from_u16(code)
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> Self {
        code.to_u16()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("not found"),
            Self::Refused => f.write_str("refused"),
            Self::NotPinned => f.write_str("not pinned"),
            Self::Busy => f.write_str("busy"),
            Self::Internal => f.write_str("internal error"),
            Self::BadRequest => f.write_str("bad request"),
            Self::Unsupported => f.write_str("unsupported"),
            Self::Unknown(code) => write!(f, "unknown error code {code}"),
        }
    }
}

/// Whether `cid` is one this protocol carries: version 1, codec `raw` (0x55) or
/// `dag-cbor` (0x71), multihash `sha2-256` (the CIDs [`block`] supports).
#[must_use]
pub fn is_supported_cid(cid: &Cid) -> bool {
    block::is_supported(cid)
}

impl Request {
    /// Checks the limits a peer enforces, so that a bad request fails here
    /// instead of resetting the stream.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if a CID is not one
    /// [`is_supported_cid`] accepts or a `Have` has over [`MAX_HAVE_CIDS`].
    pub fn validate(&self) -> io::Result<()> {
        match self {
            Self::Replicate { lease, .. } if lease.len() != LEASE_LEN => {
                Err(invalid_input(format!("lease of {} bytes (exactly {LEASE_LEN})", lease.len())))
            }
            Self::GetBlock { cid: root }
            | Self::Replicate { root, .. }
            | Self::Delete { root }
            | Self::Holds { root } => check_cid(root),
            Self::Prove { root, cids, .. } => {
                if cids.len() > MAX_PROVE_CIDS {
                    return Err(invalid_input(format!(
                        "Prove request with {} CIDs (at most {MAX_PROVE_CIDS})",
                        cids.len()
                    )));
                }
                check_cid(root)?;
                cids.iter().try_for_each(check_cid)
            }
            Self::Have { cids } => {
                if cids.len() > MAX_HAVE_CIDS {
                    return Err(invalid_input(format!(
                        "Have request with {} CIDs (at most {MAX_HAVE_CIDS})",
                        cids.len()
                    )));
                }
                cids.iter().try_for_each(check_cid)
            }
        }
    }
}

impl Response {
    /// An `Error` response; `message` is cut at a character boundary to at
    /// most [`MAX_ERROR_MESSAGE_LEN`] bytes.
    #[must_use]
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut end = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self::Error { code, message }
    }

    /// Checks the limits a peer enforces, so that a bad response fails here
    /// instead of resetting the stream.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if a block, a `Have` answer list or
    /// an error message is over its limit.
    pub fn validate(&self) -> io::Result<()> {
        match self {
            Self::Block { data } if data.len() > MAX_BLOCK_SIZE => Err(invalid_input(format!(
                "block of {} bytes (at most {MAX_BLOCK_SIZE})",
                data.len()
            ))),
            Self::Have { present } if present.len() > MAX_HAVE_CIDS => Err(invalid_input(format!(
                "Have response with {} answers (at most {MAX_HAVE_CIDS})",
                present.len()
            ))),
            Self::Proof { digests } if digests.len() > MAX_PROVE_CIDS => Err(invalid_input(
                format!("Proof with {} digests (at most {MAX_PROVE_CIDS})", digests.len()),
            )),
            Self::Error { message, .. } if message.len() > MAX_ERROR_MESSAGE_LEN => {
                Err(invalid_input(format!(
                    "error message of {} bytes (at most {MAX_ERROR_MESSAGE_LEN})",
                    message.len()
                )))
            }
            _ => Ok(()),
        }
    }
}

fn check_cid(cid: &Cid) -> io::Result<()> {
    if is_supported_cid(cid) {
        Ok(())
    } else {
        Err(invalid_input(format!("CID {cid} is not CIDv1 raw/dag-cbor with sha2-256")))
    }
}

pub(super) fn invalid_input(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.into())
}
