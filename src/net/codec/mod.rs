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
//!
//! The module is in three parts: `messages` (the requests, responses
//! and error codes, and the limits each must keep), `frame` (their bytes:
//! the type bytes, the frame header, encoding and decoding one frame) and
//! `stream` (reading and writing frames on a stream: the [`FileCodec`] of
//! `request_response` and the block stream's frames).

use std::time::Duration;

use libp2p::StreamProtocol;

use crate::block;

mod frame;
mod messages;
mod stream;

pub use frame::{decode_request, decode_response, encode_request, encode_response};
pub use messages::{ErrorCode, Request, RequestFrame, Response, is_supported_cid};
pub use stream::{
    FileCodec, LARGE_BODIES_BUDGET, SMALL_REQUEST_BODY, read_block_request, read_block_response,
    write_block_request, write_block_response,
};

/// The protocol id negotiated by multistream-select.
/// Must not change: a different wire format gets a different id.
pub const PROTOCOL: &str = "/dfs-p2p/file/3.0.0";

/// [`PROTOCOL`] as the type `request_response::Behaviour::new` takes.
pub const STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new(PROTOCOL);

/// Version 4 of the file protocol: version 3 and `Prove`/`Proof`. A node
/// speaks both, 4 first; a `Prove` is never sent under version 3. Must
/// not change.
pub const PROTOCOL_4: &str = "/dfs-p2p/file/4.0.0";

/// [`PROTOCOL_4`] as the type `request_response::Behaviour::new` takes.
pub const STREAM_PROTOCOL_4: StreamProtocol = StreamProtocol::new(PROTOCOL_4);

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

/// Most CIDs in one `Prove` request (and digests in its `Proof`). Must
/// not change.
pub const MAX_PROVE_CIDS: usize = 16;

/// Longest `Error` message, in bytes of UTF-8. Must not change.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;

/// Timeout the spec recommends for every request (30 s), for
/// `request_response::Config::with_request_timeout`. The libp2p default is
/// 10 s; this is a default, not part of the wire format.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
