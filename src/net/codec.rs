//! The dfs-p2p file protocol, version 3 (`/dfs-p2p/file/3.0.0`): its messages,
//! their binary framing, and the [`FileCodec`] that carries them over a
//! libp2p `request_response` stream.
//!
//! This module owns the wire format and nothing else: it touches only the
//! stream it is handed, knows nothing of the store, and does not check block
//! bytes against their CID (the caller must, see the spec). The normative
//! description, with byte-level examples, is `protocols/file-protocol.md`;
//! `tests/protocol_golden.rs` holds this code to those bytes.
//!
//! Every frame is `type: u8 | body_len: u32 big-endian | body`. A reader
//! checks the type and the length against that type's limit before it reads
//! the body, reads the body as it arrives (a block's into one buffer, which
//! becomes its `data` without another copy), and insists on end of stream
//! afterwards. A malformed request is read as [`RequestFrame::Malformed`],
//! which the node answers with `Error BadRequest` and a clean close (spec
//! §7); a malformed response is an [`io::ErrorKind::InvalidData`] error, on
//! which `request_response` drops the stream and fails the request.

use std::fmt;
use std::io;
use std::time::Duration;

use cid::Cid;
use cid::multihash::Multihash;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

use crate::block::{self, BlockBuf, DAG_CBOR, RAW, SHA2_256};
use crate::lease::LEASE_LEN;

/// The protocol id negotiated by multistream-select.
/// Must not change: a different wire format gets a different id.
pub const PROTOCOL: &str = "/dfs-p2p/file/3.0.0";

/// [`PROTOCOL`] as the type `request_response::Behaviour::new` takes.
pub const STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new(PROTOCOL);

/// The block stream: the same `GetBlock` frames and their answers, many
/// in order on one long-lived stream (`protocols/file-protocol.md`, section
/// 11). Must not change.
pub const BLOCKS_PROTOCOL: &str = "/dfs-p2p/blocks/1.0.0";

/// [`BLOCKS_PROTOCOL`] as the type `libp2p_stream` takes.
pub const BLOCKS_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new(BLOCKS_PROTOCOL);

/// Bytes before the body of every frame: the type byte and the `u32`
/// big-endian body length. Must not change.
pub const FRAME_HEADER_LEN: usize = 5;

/// Largest block, in bytes, that a `Block` response carries: the block size
/// limit of the whole system, [`block::MAX_BLOCK_SIZE`] (2 MiB).
pub const MAX_BLOCK_SIZE: usize = block::MAX_BLOCK_SIZE;

/// Largest request frame, header included (64 KiB). Must not change.
pub const MAX_REQUEST_SIZE: usize = 64 * 1024;

/// Largest response frame, header included: a full block plus the header.
/// Must not change.
pub const MAX_RESPONSE_SIZE: usize = FRAME_HEADER_LEN + MAX_BLOCK_SIZE;

/// Most CIDs in one `Have` request (and so most answers in a `Have`
/// response). Must not change.
pub const MAX_HAVE_CIDS: usize = 1024;

/// Longest `Error` message, in bytes of UTF-8. Must not change.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;

/// Timeout the spec recommends for every request (30 s), for
/// `request_response::Config::with_request_timeout`. The libp2p default is
/// 10 s; this is a default, not part of the wire format.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// Message type bytes. Must not change. Requests are 0x01..=0x04 and 0x07;
// the response to request type `t` is `0x80 | t`, and the two responses that
// can answer more than one request are 0x85 and 0x86 (so 0x05 and 0x06 are
// never requests). 0x00, 0x80 and 0xFF are reserved and
// never assigned; every unassigned byte is rejected as malformed.
const TYPE_GET_BLOCK: u8 = 0x01;
const TYPE_HAVE: u8 = 0x02;
const TYPE_REPLICATE: u8 = 0x03;
const TYPE_DELETE: u8 = 0x04;
const TYPE_HOLDS: u8 = 0x07;
const TYPE_BLOCK: u8 = 0x81;
const TYPE_HAVE_RESULT: u8 = 0x82;
const TYPE_REPLICATED: u8 = 0x83;
const TYPE_DELETED: u8 = 0x84;
const TYPE_NOT_FOUND: u8 = 0x85;
const TYPE_ERROR: u8 = 0x86;
const TYPE_HOLDING: u8 = 0x87;

// The only CIDs this protocol carries are those `block` supports: CIDv1,
// codec raw or dag-cbor, multihash sha2-256 with a 32-byte digest. Their
// binary form is always `01 <codec> 12 20 <digest>`, `block::CID_LEN` (36)
// bytes, and goes on the wire after a one-byte length. Must not change.
const CID_VERSION_1: u8 = 0x01;
const CID_LEN: usize = block::CID_LEN;
const _: () = assert!(RAW < 0x80 && DAG_CBOR < 0x80 && SHA2_256 < 0x80);
const _: () = assert!(block::DIGEST_LEN < 0x80);

// Exact or maximal body lengths per message type, derived from the field
// encodings in the spec. A reader checks these before allocating.
const CID_FIELD_LEN: usize = 1 + CID_LEN;
const REPLICATE_BODY: usize = CID_FIELD_LEN + 8 + 8 + LEASE_LEN;
const HOLDING_BODY: usize = 1 + 1 + 8;
const MAX_HAVE_REQUEST_BODY: usize = 2 + MAX_HAVE_CIDS * CID_FIELD_LEN;
const MAX_HAVE_RESULT_BODY: usize = 2 + MAX_HAVE_CIDS.div_ceil(8);
const MAX_ERROR_BODY: usize = 2 + MAX_ERROR_MESSAGE_LEN;

const _: () = assert!(FRAME_HEADER_LEN + MAX_HAVE_REQUEST_BODY <= MAX_REQUEST_SIZE);
const _: () = assert!(MAX_HAVE_CIDS <= u16::MAX as usize);
const _: () = assert!(MAX_BLOCK_SIZE <= u32::MAX as usize);

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
}

/// A request as a responder reads it off a stream: well-formed, or the
/// reason it is not (which the responder sends back as `Error BadRequest`,
/// so that the requester can tell a malformed request from a dropped one).
/// A requester only ever sends [`RequestFrame::Valid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFrame {
    Valid(Request),
    Malformed(String),
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

/// Encodes a request as one frame. Limits are not checked here (see
/// [`Request::validate`]): a request that breaks them encodes to bytes that
/// [`decode_request`] rejects.
#[must_use]
pub fn encode_request(request: &Request) -> Vec<u8> {
    match request {
        Request::GetBlock { cid } => encode_cid_frame(TYPE_GET_BLOCK, cid),
        Request::Replicate { root, blocks, bytes, lease } => {
            let mut frame = begin_frame(TYPE_REPLICATE, CID_FIELD_LEN + 16 + lease.len());
            put_cid(&mut frame, root);
            frame.extend_from_slice(&blocks.to_be_bytes());
            frame.extend_from_slice(&bytes.to_be_bytes());
            frame.extend_from_slice(lease);
            finish_frame(frame)
        }
        Request::Delete { root } => encode_cid_frame(TYPE_DELETE, root),
        Request::Holds { root } => encode_cid_frame(TYPE_HOLDS, root),
        Request::Have { cids } => {
            let mut frame = begin_frame(TYPE_HAVE, 2 + cids.len() * CID_FIELD_LEN);
            frame.extend_from_slice(&saturating_u16(cids.len()).to_be_bytes());
            for cid in cids {
                put_cid(&mut frame, cid);
            }
            finish_frame(frame)
        }
    }
}

/// Encodes a response as one frame. Limits are not checked here (see
/// [`Response::validate`]): a response that breaks them encodes to bytes that
/// [`decode_response`] rejects.
#[must_use]
pub fn encode_response(response: &Response) -> Vec<u8> {
    match response {
        Response::Block { data } => {
            let mut frame = begin_frame(TYPE_BLOCK, data.len());
            frame.extend_from_slice(data);
            finish_frame(frame)
        }
        Response::NotFound => finish_frame(begin_frame(TYPE_NOT_FOUND, 0)),
        Response::Deleted => finish_frame(begin_frame(TYPE_DELETED, 0)),
        Response::Holding { pinned, replicas, repaired } => {
            let mut frame = begin_frame(TYPE_HOLDING, HOLDING_BODY);
            frame.push(u8::from(*pinned));
            frame.push(*replicas);
            frame.extend_from_slice(&repaired.to_be_bytes());
            finish_frame(frame)
        }
        Response::Replicated { blocks } => {
            let mut frame = begin_frame(TYPE_REPLICATED, 8);
            frame.extend_from_slice(&blocks.to_be_bytes());
            finish_frame(frame)
        }
        Response::Have { present } => {
            let bitmap_len = present.len().div_ceil(8);
            let mut frame = begin_frame(TYPE_HAVE_RESULT, 2 + bitmap_len);
            frame.extend_from_slice(&saturating_u16(present.len()).to_be_bytes());
            let bitmap_start = frame.len();
            frame.resize(bitmap_start + bitmap_len, 0);
            for (i, _) in present.iter().enumerate().filter(|(_, held)| **held) {
                // Bit i is the (i % 8)-th most significant bit of byte i / 8.
                frame[bitmap_start + i / 8] |= 0x80 >> (i % 8);
            }
            finish_frame(frame)
        }
        Response::Error { code, message } => {
            let mut frame = begin_frame(TYPE_ERROR, 2 + message.len());
            frame.extend_from_slice(&code.to_u16().to_be_bytes());
            frame.extend_from_slice(message.as_bytes());
            finish_frame(frame)
        }
    }
}

/// Decodes one complete request frame; `frame` must hold exactly one frame.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] if the bytes are not exactly one
/// well-formed request frame.
pub fn decode_request(frame: &[u8]) -> io::Result<Request> {
    let (message_type, body) = split_frame(frame, Direction::Request)?;
    decode_request_body(message_type, body)
}

/// Decodes one complete response frame; `frame` must hold exactly one frame.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] if the bytes are not exactly one
/// well-formed response frame.
pub fn decode_response(frame: &[u8]) -> io::Result<Response> {
    let (message_type, body) = split_frame(frame, Direction::Response)?;
    if message_type == TYPE_BLOCK {
        return Ok(Response::Block { data: BlockBuf::copy_from(body) });
    }
    decode_small_response_body(message_type, body)
}

/// The `request_response` codec of the file protocol; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileCodec;

impl request_response::Codec for FileCodec {
    type Protocol = StreamProtocol;
    type Request = RequestFrame;
    type Response = Response;

    /// Reads one request frame. Malformed bytes are not an error here but
    /// [`RequestFrame::Malformed`]: the body of a frame whose header is
    /// already wrong is not read at all, and the reason is answered. Only a
    /// failing stream (reset, closed connection) is an error.
    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RequestFrame>
    where
        T: AsyncRead + Unpin + Send,
    {
        let malformed = |e: io::Error| match e.kind() {
            io::ErrorKind::InvalidData => Ok(RequestFrame::Malformed(e.to_string())),
            _ => Err(e),
        };
        let (message_type, len) = match read_header(io, Direction::Request).await {
            Ok(header) => header,
            Err(e) => return malformed(e),
        };
        // The body is read as it arrives, never allocated ahead of it.
        let mut body = Vec::new();
        if let Err(e) = read_growing(io, len, &mut body).await {
            return malformed(e);
        }
        let request = match decode_request_body(message_type, &body) {
            Ok(request) => request,
            Err(e) => return malformed(e),
        };
        match read_end(io).await {
            Ok(()) => Ok(RequestFrame::Valid(request)),
            Err(e) => malformed(e),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let response = read_response_frame(io).await?;
        read_end(io).await?;
        Ok(response)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: RequestFrame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let RequestFrame::Valid(request) = request else {
            return Err(invalid_input("a malformed request is never sent"));
        };
        request.validate()?;
        io.write_all(&encode_request(&request)).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_response_frame(io, response).await
    }
}

/// Reads one response frame, and not the end of the stream: a block
/// stream carries many.
async fn read_response_frame<T>(io: &mut T) -> io::Result<Response>
where
    T: AsyncRead + Unpin + Send,
{
    let (message_type, len) = read_header(io, Direction::Response).await?;
    if message_type == TYPE_BLOCK {
        // The buffer the body is read into becomes the block: no copy.
        // (A fresh buffer's pages are only backed as they are written.)
        let mut data = BlockBuf::with_len(len);
        io.read_exact(&mut data).await.map_err(eof_is_truncation)?;
        return Ok(Response::Block { data });
    }
    let mut body = Vec::new();
    read_growing(io, len, &mut body).await?;
    decode_small_response_body(message_type, &body)
}

/// Writes one response frame (checked first). Takes the response whole: a
/// block's buffer is not `Sync`, so no reference to it may live across the
/// writes.
async fn write_response_frame<T>(io: &mut T, response: Response) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    response.validate()?;
    match response {
        Response::Block { data } => {
            // Header and block go out as two writes so the block is
            // never copied into a frame buffer.
            io.write_all(&frame_header(TYPE_BLOCK, data.len())).await?;
            io.write_all(&data).await
        }
        other => io.write_all(&encode_response(&other)).await,
    }
}

/// The requester's side of a block stream: writes one `GetBlock` frame.
pub async fn write_block_request<T>(io: &mut T, cid: &Cid) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let request = Request::GetBlock { cid: *cid };
    request.validate()?;
    io.write_all(&encode_request(&request)).await
}

/// The requester's side of a block stream: reads the answer to the oldest
/// `GetBlock` not yet answered.
pub async fn read_block_response<T>(io: &mut T) -> io::Result<Response>
where
    T: AsyncRead + Unpin + Send,
{
    read_response_frame(io).await
}

/// The responder's side of a block stream: the next `GetBlock`'s CID, or
/// `None` where the requester closed the stream between frames. A frame
/// that is malformed or is not a `GetBlock` is an
/// [`io::ErrorKind::InvalidData`] error: the stream ends (spec section 11).
pub async fn read_block_request<T>(io: &mut T) -> io::Result<Option<Cid>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut filled = 0;
    while filled < FRAME_HEADER_LEN {
        match io.read(&mut header[filled..]).await {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(invalid_data("stream ended inside a frame header")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let (message_type, len) = parse_header(header, Direction::Request)?;
    if message_type != TYPE_GET_BLOCK {
        return Err(invalid_data(format!("type 0x{message_type:02x} on a block stream")));
    }
    let mut body = Vec::new();
    read_growing(io, len, &mut body).await?;
    match decode_request_body(message_type, &body)? {
        Request::GetBlock { cid } => Ok(Some(cid)),
        _ => Err(invalid_data("not a GetBlock")),
    }
}

/// The responder's side of a block stream: writes one answer.
pub async fn write_block_response<T>(io: &mut T, response: Response) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    write_response_frame(io, response).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// The largest body a frame of `message_type` may have, or `None` if the
/// type is not one of `direction`'s.
fn max_body_len(direction: Direction, message_type: u8) -> Option<usize> {
    match (direction, message_type) {
        (Direction::Request, TYPE_GET_BLOCK | TYPE_DELETE | TYPE_HOLDS) => Some(CID_FIELD_LEN),
        (Direction::Request, TYPE_REPLICATE) => Some(REPLICATE_BODY),
        (Direction::Request, TYPE_HAVE) => Some(MAX_HAVE_REQUEST_BODY),
        (Direction::Response, TYPE_BLOCK) => Some(MAX_BLOCK_SIZE),
        (Direction::Response, TYPE_HAVE_RESULT) => Some(MAX_HAVE_RESULT_BODY),
        (Direction::Response, TYPE_REPLICATED) => Some(8),
        (Direction::Response, TYPE_HOLDING) => Some(HOLDING_BODY),
        (Direction::Response, TYPE_DELETED | TYPE_NOT_FOUND) => Some(0),
        (Direction::Response, TYPE_ERROR) => Some(MAX_ERROR_BODY),
        _ => None,
    }
}

/// Checks a frame header and returns its type and body length, which is
/// within that type's limit (so the caller may allocate it).
fn parse_header(header: [u8; FRAME_HEADER_LEN], direction: Direction) -> io::Result<(u8, usize)> {
    let [message_type, len @ ..] = header;
    let Some(max) = max_body_len(direction, message_type) else {
        return Err(invalid_data(format!("unknown {direction:?} type 0x{message_type:02x}")));
    };
    // A u32 always fits in usize on the 32- and 64-bit targets we build for;
    // if it did not, the length is certainly over the limit.
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > max {
        return Err(invalid_data(format!(
            "body of {len} bytes for type 0x{message_type:02x} (at most {max})"
        )));
    }
    Ok((message_type, len))
}

fn split_frame(frame: &[u8], direction: Direction) -> io::Result<(u8, &[u8])> {
    let Some((header, body)) = frame.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(invalid_data("truncated frame header"));
    };
    let (message_type, len) = parse_header(*header, direction)?;
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(invalid_data("truncated frame body")),
        std::cmp::Ordering::Greater => Err(invalid_data("trailing bytes after frame")),
        std::cmp::Ordering::Equal => Ok((message_type, body)),
    }
}

/// Reads a frame header; returns the type and the body length, which is
/// within that type's limit (so the caller may allocate it).
async fn read_header<T>(io: &mut T, direction: Direction) -> io::Result<(u8, usize)>
where
    T: AsyncRead + Unpin + Send,
{
    let mut header = [0u8; FRAME_HEADER_LEN];
    io.read_exact(&mut header).await.map_err(eof_is_truncation)?;
    parse_header(header, direction)
}

/// Reads exactly `len` bytes into `body`, growing it as they arrive.
async fn read_growing<T>(io: &mut T, len: usize, body: &mut Vec<u8>) -> io::Result<()>
where
    T: AsyncRead + Unpin + Send,
{
    let read = (&mut *io).take(len as u64).read_to_end(body).await?;
    if read < len {
        return Err(invalid_data("stream ended inside a frame"));
    }
    Ok(())
}

/// Reads the end of the stream: one frame per stream and direction, and
/// the sender closes its side after writing it, so anything else is a
/// protocol violation.
async fn read_end<T>(io: &mut T) -> io::Result<()>
where
    T: AsyncRead + Unpin + Send,
{
    let mut probe = [0u8; 1];
    loop {
        match io.read(&mut probe).await {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(invalid_data("trailing bytes after frame")),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn decode_request_body(message_type: u8, body: &[u8]) -> io::Result<Request> {
    let mut body = Fields(body);
    let request = match message_type {
        TYPE_GET_BLOCK => Request::GetBlock { cid: body.cid()? },
        TYPE_REPLICATE => Request::Replicate {
            root: body.cid()?,
            blocks: u64::from_be_bytes(body.array()?),
            bytes: u64::from_be_bytes(body.array()?),
            lease: body.bytes(LEASE_LEN)?.to_vec(),
        },
        TYPE_DELETE => Request::Delete { root: body.cid()? },
        TYPE_HOLDS => Request::Holds { root: body.cid()? },
        TYPE_HAVE => {
            let count = usize::from(body.u16()?);
            if count > MAX_HAVE_CIDS {
                return Err(invalid_data(format!(
                    "Have request with {count} CIDs (at most {MAX_HAVE_CIDS})"
                )));
            }
            let cids = (0..count).map(|_| body.cid()).collect::<io::Result<_>>()?;
            Request::Have { cids }
        }
        other => return Err(invalid_data(format!("unknown request type 0x{other:02x}"))),
    };
    body.finish()?;
    Ok(request)
}

/// Decodes every response but `Block`, whose body is the block itself.
fn decode_small_response_body(message_type: u8, body: &[u8]) -> io::Result<Response> {
    let mut body = Fields(body);
    let response = match message_type {
        TYPE_NOT_FOUND => Response::NotFound,
        TYPE_DELETED => Response::Deleted,
        TYPE_REPLICATED => Response::Replicated { blocks: u64::from_be_bytes(body.array()?) },
        TYPE_HOLDING => {
            let pinned = match body.array::<1>()? {
                [0] => false,
                [1] => true,
                [other] => return Err(invalid_data(format!("Holding flag {other} is not 0 or 1"))),
            };
            Response::Holding {
                pinned,
                replicas: u8::from_be_bytes(body.array()?),
                repaired: u64::from_be_bytes(body.array()?),
            }
        }
        TYPE_HAVE_RESULT => {
            let count = usize::from(body.u16()?);
            if count > MAX_HAVE_CIDS {
                return Err(invalid_data(format!(
                    "Have response with {count} answers (at most {MAX_HAVE_CIDS})"
                )));
            }
            let bitmap = body.bytes(count.div_ceil(8))?;
            let present: Vec<bool> =
                (0..count).map(|i| bitmap[i / 8] & (0x80 >> (i % 8)) != 0).collect();
            // Padding bits must be zero, so that every answer has exactly
            // one encoding.
            if let Some(&last) = bitmap.last() {
                // 1..=8 bits of the last byte carry answers.
                let used_bits = u32::try_from(count - (bitmap.len() - 1) * 8).unwrap_or(8);
                if last & 0xFFu8.checked_shr(used_bits).unwrap_or(0) != 0 {
                    return Err(invalid_data("Have bitmap padding bits are not zero"));
                }
            }
            Response::Have { present }
        }
        TYPE_ERROR => {
            let code = ErrorCode::from_u16(body.u16()?);
            let text = body.rest();
            if text.len() > MAX_ERROR_MESSAGE_LEN {
                return Err(invalid_data("error message too long"));
            }
            let message = std::str::from_utf8(text)
                .map_err(|_| invalid_data("error message is not UTF-8"))?
                .to_owned();
            Response::Error { code, message }
        }
        other => return Err(invalid_data(format!("unknown response type 0x{other:02x}"))),
    };
    body.finish()?;
    Ok(response)
}

/// A cursor over a frame body; every read checks the bytes are there.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn bytes(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(invalid_data("frame body ends inside a field"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let Some((head, tail)) = self.0.split_first_chunk::<N>() else {
            return Err(invalid_data("frame body ends inside a field"));
        };
        self.0 = tail;
        Ok(*head)
    }

    fn u16(&mut self) -> io::Result<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn cid(&mut self) -> io::Result<Cid> {
        let [len] = self.array()?;
        if usize::from(len) != CID_LEN {
            return Err(invalid_data(format!(
                "CID of {len} bytes (only {CID_LEN}-byte CIDv1 sha2-256 are allowed)"
            )));
        }
        let bytes: [u8; CID_LEN] = self.array()?;
        let [version, codec, hash_code, digest_len, digest @ ..] = bytes;
        if version != CID_VERSION_1 {
            return Err(invalid_data("CID is not version 1"));
        }
        let codec = u64::from(codec);
        if codec != RAW && codec != DAG_CBOR {
            return Err(invalid_data(format!(
                "CID codec 0x{codec:02x} is neither raw nor dag-cbor"
            )));
        }
        if u64::from(hash_code) != SHA2_256 || usize::from(digest_len) != block::DIGEST_LEN {
            return Err(invalid_data("CID multihash is not sha2-256"));
        }
        let hash = Multihash::wrap(SHA2_256, &digest)
            .map_err(|_| invalid_data("CID multihash is malformed"))?;
        Ok(Cid::new_v1(codec, hash))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn finish(self) -> io::Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(invalid_data("trailing bytes in frame body")) }
    }
}

fn frame_header(message_type: u8, body_len: usize) -> [u8; FRAME_HEADER_LEN] {
    // An over-long body saturates the length, which every reader rejects.
    let [a, b, c, d] = u32::try_from(body_len).unwrap_or(u32::MAX).to_be_bytes();
    [message_type, a, b, c, d]
}

/// Starts a frame buffer with room for `body_len` body bytes; the length
/// field is filled in by [`finish_frame`].
fn begin_frame(message_type: u8, body_len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + body_len);
    frame.extend_from_slice(&frame_header(message_type, 0));
    frame
}

fn finish_frame(mut frame: Vec<u8>) -> Vec<u8> {
    let header = frame_header(frame[0], frame.len() - FRAME_HEADER_LEN);
    frame[..FRAME_HEADER_LEN].copy_from_slice(&header);
    frame
}

fn encode_cid_frame(message_type: u8, cid: &Cid) -> Vec<u8> {
    let mut frame = begin_frame(message_type, CID_FIELD_LEN);
    put_cid(&mut frame, cid);
    finish_frame(frame)
}

fn put_cid(out: &mut Vec<u8>, cid: &Cid) {
    let bytes = cid.to_bytes();
    // A CID with a 64-byte digest is under 100 bytes, so this never
    // saturates; an unsupported CID is rejected by the reader anyway.
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&bytes);
}

fn saturating_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn check_cid(cid: &Cid) -> io::Result<()> {
    if is_supported_cid(cid) {
        Ok(())
    } else {
        Err(invalid_input(format!("CID {cid} is not CIDv1 raw/dag-cbor with sha2-256")))
    }
}

fn eof_is_truncation(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        invalid_data("stream ended inside a frame")
    } else {
        e
    }
}

fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn invalid_input(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.into())
}
