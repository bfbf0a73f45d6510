//! Frames on a stream: the [`FileCodec`] that carries one request and its
//! response over a `request_response` stream, and the frames of a block
//! stream, many in order on one long-lived stream. A body is read as it
//! arrives, never allocated ahead of it, and only after its header passed
//! the type's limit.

use std::{io, sync::Arc};

use cid::Cid;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

use super::frame::{
    Direction, TYPE_BLOCK, TYPE_GET_BLOCK, TYPE_PROVE, decode_request_body,
    decode_small_response_body, encode_request, encode_response, frame_header, invalid_data,
    parse_header,
};
use super::messages::invalid_input;
use super::{FRAME_HEADER_LEN, Request, RequestFrame, Response, STREAM_PROTOCOL_4};
use crate::block::BlockBuf;

/// Request bodies up to this size are read without asking the budget:
/// every request but a `Have` of more than 27 CIDs.
pub const SMALL_REQUEST_BODY: usize = 1024;
/// Bytes of larger request bodies being read at once, on all connections
/// together: a request whose body would pass it is answered `Busy` unread.
/// Bodies are allocated at their announced length (at most 37,890 bytes,
/// a `Have` of 1,024 CIDs) only once the budget holds it, so a peer that
/// sends a header and never the rest of its body holds at most this much.
pub const LARGE_BODIES_BUDGET: usize = 4 << 20;

/// The `request_response` codec of the file protocol; see the module docs.
/// Its clones (one per connection) share one budget of large request
/// bodies being read, [`LARGE_BODIES_BUDGET`].
#[derive(Debug, Clone)]
pub struct FileCodec {
    large_bodies: Arc<tokio::sync::Semaphore>,
}

impl Default for FileCodec {
    fn default() -> Self {
        FileCodec { large_bodies: Arc::new(tokio::sync::Semaphore::new(LARGE_BODIES_BUDGET)) }
    }
}

impl request_response::Codec for FileCodec {
    type Protocol = StreamProtocol;
    type Request = RequestFrame;
    type Response = Response;

    /// Reads one request frame. Malformed bytes are not an error here but
    /// [`RequestFrame::Malformed`]: the body of a frame whose header is
    /// already wrong is not read at all, and the reason is answered. Only a
    /// failing stream (reset, closed connection) is an error.
    async fn read_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<RequestFrame>
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
        if message_type == TYPE_PROVE && *protocol != STREAM_PROTOCOL_4 {
            return malformed(invalid_data(format!(
                "unknown Request type 0x{message_type:02x} under {protocol}"
            )));
        }
        // A large body is read only within the budget, and held to it
        // until it is decoded.
        let _budget = if len > SMALL_REQUEST_BODY {
            match self.large_bodies.clone().try_acquire_many_owned(len as u32) {
                Ok(permit) => Some(permit),
                Err(_) => return Ok(RequestFrame::Busy),
            }
        } else {
            None
        };
        // Allocated at its length, which is within the type's limit (and
        // the budget), so it never grows.
        let mut body = Vec::with_capacity(len);
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
        protocol: &StreamProtocol,
        io: &mut T,
        request: RequestFrame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let RequestFrame::Valid(request) = request else {
            return Err(invalid_input("only a valid request is ever sent"));
        };
        if matches!(request, Request::Prove { .. }) && *protocol != STREAM_PROTOCOL_4 {
            return Err(invalid_input(format!("the peer speaks {protocol}, which has no Prove")));
        }
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

fn eof_is_truncation(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        invalid_data("stream ended inside a frame")
    } else {
        e
    }
}
