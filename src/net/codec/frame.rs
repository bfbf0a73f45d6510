//! The bytes of one frame: the message type bytes, the frame header, and
//! encoding and decoding a whole frame held in memory. Every constant here
//! is part of the wire format (`protocols/file-protocol.md`).

use std::io;

use cid::Cid;
use cid::multihash::Multihash;

use super::{
    ErrorCode, FRAME_HEADER_LEN, MAX_BLOCK_SIZE, MAX_ERROR_MESSAGE_LEN, MAX_HAVE_CIDS,
    MAX_PROVE_CIDS, MAX_REQUEST_SIZE, Request, Response,
};
use crate::block::{self, BlockBuf, DAG_CBOR, RAW, SHA2_256};
use crate::lease::LEASE_LEN;

// Message type bytes. Must not change. Requests are 0x01..=0x04, 0x07 and
// 0x08;
// the response to request type `t` is `0x80 | t`, and the two responses that
// can answer more than one request are 0x85 and 0x86 (so 0x05 and 0x06 are
// never requests). 0x00, 0x80 and 0xFF are reserved and
// never assigned; every unassigned byte is rejected as malformed.
pub(super) const TYPE_GET_BLOCK: u8 = 0x01;
const TYPE_HAVE: u8 = 0x02;
const TYPE_REPLICATE: u8 = 0x03;
const TYPE_DELETE: u8 = 0x04;
const TYPE_HOLDS: u8 = 0x07;
/// Version 4 only (see [`super::PROTOCOL_4`]).
pub(super) const TYPE_PROVE: u8 = 0x08;
pub(super) const TYPE_BLOCK: u8 = 0x81;
const TYPE_HAVE_RESULT: u8 = 0x82;
const TYPE_REPLICATED: u8 = 0x83;
const TYPE_DELETED: u8 = 0x84;
const TYPE_NOT_FOUND: u8 = 0x85;
const TYPE_ERROR: u8 = 0x86;
const TYPE_HOLDING: u8 = 0x87;
const TYPE_PROOF: u8 = 0x88;

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
const MAX_PROVE_BODY: usize = CID_FIELD_LEN + 32 + 2 + MAX_PROVE_CIDS * CID_FIELD_LEN;
const MAX_PROOF_BODY: usize = 2 + MAX_PROVE_CIDS * 32;

const _: () = assert!(FRAME_HEADER_LEN + MAX_HAVE_REQUEST_BODY <= MAX_REQUEST_SIZE);
const _: () = assert!(MAX_HAVE_CIDS <= u16::MAX as usize);
const _: () = assert!(FRAME_HEADER_LEN + MAX_PROVE_BODY <= MAX_REQUEST_SIZE);
const _: () = assert!(MAX_BLOCK_SIZE <= u32::MAX as usize);

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
        Request::Prove { root, nonce, cids } => {
            let mut frame =
                begin_frame(TYPE_PROVE, CID_FIELD_LEN + 32 + 2 + cids.len() * CID_FIELD_LEN);
            put_cid(&mut frame, root);
            frame.extend_from_slice(nonce);
            frame.extend_from_slice(&saturating_u16(cids.len()).to_be_bytes());
            for cid in cids {
                put_cid(&mut frame, cid);
            }
            finish_frame(frame)
        }
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
        Response::Proof { digests } => {
            let mut frame = begin_frame(TYPE_PROOF, 2 + digests.len() * 32);
            frame.extend_from_slice(&saturating_u16(digests.len()).to_be_bytes());
            for digest in digests {
                frame.extend_from_slice(digest);
            }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
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
        (Direction::Request, TYPE_PROVE) => Some(MAX_PROVE_BODY),
        (Direction::Response, TYPE_PROOF) => Some(MAX_PROOF_BODY),
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
pub(super) fn parse_header(
    header: [u8; FRAME_HEADER_LEN],
    direction: Direction,
) -> io::Result<(u8, usize)> {
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

pub(super) fn decode_request_body(message_type: u8, body: &[u8]) -> io::Result<Request> {
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
        TYPE_PROVE => {
            let root = body.cid()?;
            let nonce = body.array()?;
            let count = usize::from(body.u16()?);
            if count > MAX_PROVE_CIDS {
                return Err(invalid_data(format!(
                    "Prove request with {count} CIDs (at most {MAX_PROVE_CIDS})"
                )));
            }
            let cids = (0..count).map(|_| body.cid()).collect::<io::Result<_>>()?;
            Request::Prove { root, nonce, cids }
        }
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
pub(super) fn decode_small_response_body(message_type: u8, body: &[u8]) -> io::Result<Response> {
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
        TYPE_PROOF => {
            let count = usize::from(body.u16()?);
            if count > MAX_PROVE_CIDS {
                return Err(invalid_data(format!(
                    "Proof with {count} digests (at most {MAX_PROVE_CIDS})"
                )));
            }
            let digests = (0..count).map(|_| body.array()).collect::<io::Result<_>>()?;
            Response::Proof { digests }
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

pub(super) fn frame_header(message_type: u8, body_len: usize) -> [u8; FRAME_HEADER_LEN] {
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

pub(super) fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}
