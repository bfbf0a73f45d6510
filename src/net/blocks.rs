//! Both sides of the block messages: `GetBlock` ([`ask_block`], on a
//! block stream or else over `request_response`, and [`judge_block`];
//! [`BlockService::serve_streams`], [`BlockService::handle_get_block`]) and
//! `Have` ([`rpc_have`], [`BlockService::handle_have`]).
//!
//! The requester checks every block against the CID it asked for before it
//! uses it; the responder reads blocks from its store, which verifies them
//! (a block that fails is moved aside and answered `NotFound`).
//!
//! A block stream's responder reads at most [`STREAM_READ_AHEAD`] requests
//! ahead of the answer it is writing, holds the blocks it read within its
//! peer's share of a pool for all streams (`net::shares`), accepts
//! [`MAX_BLOCK_STREAMS_PER_PEER`] streams per peer and [`MAX_BLOCK_STREAMS`]
//! in all (more are reset), and waits [`STREAM_IDLE`] for a next request;
//! anything but a well-formed `GetBlock` ends the stream. An answer the
//! asker takes no byte of for [`STREAM_STALL`] ([`STREAM_STALL_CONTENDED`]
//! while other peers wait for the pool) ends the stream, frees its blocks
//! and shrinks its peer's share.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use cid::Cid;
use futures::{AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, request_response::ResponseChannel};
use libp2p_stream::IncomingStreams;
use tokio::sync::{Semaphore, mpsc};

use crate::{
    block::{self, BlockBuf},
    error::Error,
    net::{
        codec::{self, ErrorCode, Request, Response},
        event_loop::{NetHandle, RequestError},
        lanes::{ActiveStreams, LaneError, StreamGuard},
        shares::{BlockShares, Share},
    },
    store::Store,
};

/// Block reads from disk running at once for requesters (each on a
/// blocking thread, holding a block of up to 2 MiB until it is handed to
/// the swarm).
pub const MAX_CONCURRENT_READS: usize = 32;
/// `Have` requests answered at once (each looks up to 1,024 files up).
pub const MAX_CONCURRENT_HAVES: usize = 4;
/// Requests a block stream's responder reads ahead of the answer it is
/// writing (so the disk read of the next block overlaps the sending).
pub const STREAM_READ_AHEAD: usize = 4;
/// Block streams accepted per peer, counting those this node opened to it
/// (a requester opens up to `lanes::LANES_PER_PEER`, and two nodes may get
/// from each other), and in all.
pub const MAX_BLOCK_STREAMS_PER_PEER: usize = 2 * crate::net::lanes::LANES_PER_PEER;
pub const MAX_BLOCK_STREAMS: usize = 256;
/// How long a block stream may wait for its next request.
pub const STREAM_IDLE: Duration = Duration::from_secs(60);
/// How long an answer on a block stream may go without the asker taking a
/// byte of it.
pub const STREAM_STALL: Duration = Duration::from_secs(10);
/// The same while other peers wait for the blocks the stalled answers hold.
/// A reader on a link of 128 KiB/s or more takes a byte well within it.
pub const STREAM_STALL_CONTENDED: Duration = Duration::from_secs(2);
/// How often a watched write looks at its progress.
const STALL_CHECK: Duration = Duration::from_millis(100);

/// What a `GetBlock` brought back, judged.
#[derive(Debug)]
pub enum Fetched {
    /// The block, checked against its CID.
    Block(BlockBuf),
    /// The peer does not hold it (or cannot send it now for a reason that
    /// is not overload).
    Lacks(String),
    /// The peer is overloaded: ask again later.
    Busy,
    /// The peer broke the protocol: a block that does not match its CID,
    /// or an answer that does not answer `GetBlock`. Blame it.
    Wrong(String),
    /// The request failed (timeout, closed connection).
    Failed(RequestError),
}

/// Asks `peer` for the block `cid` on its block stream (over
/// `request_response` if it does not speak it); the answer is not checked
/// yet (see [`judge_block`]).
pub async fn ask_block(
    net: &NetHandle,
    peer: PeerId,
    cid: Cid,
    timeout: Duration,
) -> Result<Response, RequestError> {
    match net.lanes().get_block(peer, cid, timeout).await {
        Err(LaneError::Unavailable) => net.request(peer, Request::GetBlock { cid }, timeout).await,
        Err(LaneError::Timeout(_)) => Err(RequestError::Timeout { peer, secs: timeout.as_secs() }),
        Err(LaneError::Failed(reason)) => Err(RequestError::Failed { peer, reason }),
        Err(e @ LaneError::Dropped) => Err(RequestError::Failed { peer, reason: e.to_string() }),
        Ok(response) => Ok(response),
    }
}

/// Judges the answer to a `GetBlock` of `cid`: a block is checked against
/// the CID here (a SHA-256 pass: on a blocking thread, or a small block).
pub fn judge_block(cid: &Cid, answer: Result<Response, RequestError>) -> Fetched {
    match answer {
        Ok(Response::Block { data }) if block::verify(cid, &data) => Fetched::Block(data),
        Ok(Response::Block { .. }) => Fetched::Wrong(format!("sent a wrong block for {cid}")),
        Ok(Response::NotFound) => Fetched::Lacks("not found".into()),
        Ok(Response::Error { code: ErrorCode::Busy, .. }) => Fetched::Busy,
        Ok(Response::Error { code, message }) => Fetched::Lacks(format!("{code}: {message}")),
        Ok(other) => Fetched::Wrong(format!("answered GetBlock with {other:?}")),
        Err(e) => Fetched::Failed(e),
    }
}

/// Asks `peer` which of `cids` it holds; `None` if it gives no valid
/// answer.
pub async fn rpc_have(
    net: &NetHandle,
    peer: PeerId,
    cids: Vec<Cid>,
    timeout: Duration,
) -> Option<Vec<bool>> {
    let count = cids.len();
    match net.request(peer, Request::Have { cids }, timeout).await {
        Ok(Response::Have { present }) if present.len() == count => Some(present),
        _ => None,
    }
}

/// The responder of the block messages; its clones share one count of
/// the blocks served.
#[derive(Clone)]
pub struct BlockService {
    store: Store,
    net: NetHandle,
    reads: Arc<Semaphore>,
    haves: Arc<Semaphore>,
    /// Blocks held for block streams' answers, shared by peer.
    stream_blocks: BlockShares,
    served: Arc<AtomicU64>,
}

impl BlockService {
    pub fn new(store: Store, net: NetHandle) -> Self {
        BlockService {
            store,
            net,
            reads: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)),
            haves: Arc::new(Semaphore::new(MAX_CONCURRENT_HAVES)),
            stream_blocks: BlockShares::default(),
            served: Arc::default(),
        }
    }

    /// Blocks sent to peers so far (`GetBlock` answered with the block).
    pub fn blocks_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Blocks read for block-stream answers and not yet taken, in all.
    pub fn stream_blocks_held(&self) -> usize {
        self.stream_blocks.held_in_all()
    }

    /// Answers `GetBlock`: the block as stored (verified), or `NotFound`.
    pub async fn handle_get_block(self, cid: Cid, channel: ResponseChannel<Response>) {
        let Ok(_permit) = self.reads.clone().acquire_owned().await else { return };
        let response = self.read_block(cid).await;
        self.net.respond(channel, response).await;
    }

    /// The answer to `GetBlock`: the block as stored (verified), or
    /// `NotFound`.
    async fn read_block(&self, cid: Cid) -> Response {
        let store = self.store.clone();
        let read = crate::store::spawn_blocking(move || store.get(&cid)).await;
        match read {
            Ok(Ok(data)) => {
                self.served.fetch_add(1, Ordering::Relaxed);
                Response::Block { data }
            }
            // A corrupt block was moved aside by the store: we do not have it.
            Ok(Err(Error::Missing { .. } | Error::Corrupt { .. })) => Response::NotFound,
            Ok(Err(e)) => {
                tracing::warn!("cannot serve {cid}: {e}");
                Response::error(ErrorCode::Internal, "cannot read the block")
            }
            Err(_) => Response::error(ErrorCode::Internal, "block read task failed"),
        }
    }

    /// Accepts block streams until the node stops, each served on a task
    /// of its own within the limits of the module docs.
    pub async fn serve_streams(self, mut incoming: IncomingStreams, active: ActiveStreams) {
        loop {
            // The streams come through the swarm's behaviour, which the
            // node's handles keep alive: stop with the event loop, so that
            // the store is let go.
            let next = tokio::select! {
                next = incoming.next() => next,
                () = self.net.stopped() => None,
            };
            let Some((peer, stream)) = next else { return };
            if active.of(&peer) >= MAX_BLOCK_STREAMS_PER_PEER || active.total() >= MAX_BLOCK_STREAMS
            {
                tracing::debug!("refusing a block stream of {peer}: too many open");
                continue; // dropping it resets it
            }
            let guard = active.enter(peer);
            tokio::spawn(self.clone().serve_stream(peer, stream, guard));
        }
    }

    /// Answers the requests of one block stream, in order, until the
    /// requester closes it, breaks the protocol, idles or stops reading.
    async fn serve_stream(self, peer: PeerId, stream: libp2p::Stream, _guard: StreamGuard) {
        let opened = Instant::now();
        let (mut reader, mut writer) = stream.split();
        // Answers being read from disk, in the order asked.
        let (reading, mut answers) =
            mpsc::channel::<tokio::task::JoinHandle<(Response, Share)>>(STREAM_READ_AHEAD);
        let service = self.clone();
        let read_requests = async move {
            loop {
                let cid =
                    match tokio::time::timeout(STREAM_IDLE, codec::read_block_request(&mut reader))
                        .await
                    {
                        Ok(Ok(Some(cid))) => cid,
                        Ok(Ok(None)) => return,
                        Ok(Err(e)) => {
                            tracing::debug!("block stream of {peer} ended: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                let Ok(room) = reading.reserve().await else { return };
                let Some(held) = service.stream_blocks.take(peer, opened).await else { return };
                let service = service.clone();
                room.send(tokio::spawn(async move { (service.read_block(cid).await, held) }));
            }
        };
        let shares = self.stream_blocks.clone();
        let write_answers = async move {
            while let Some(answer) = answers.recv().await {
                let Ok((response, _held)) = answer.await else { return };
                let mut watched = Watched::new(&mut writer);
                let progress = watched.progress.clone();
                let write = async {
                    codec::write_block_response(&mut watched, response).await?;
                    watched.flush().await
                };
                let written = tokio::select! {
                    written = write => written,
                    () = stall(&progress, &shares, &peer) => {
                        tracing::debug!("block stream of {peer}: an answer was not taken");
                        shares.stalled(peer);
                        return;
                    }
                };
                if let Err(e) = written {
                    tracing::debug!("block stream of {peer}: cannot write an answer: {e}");
                    return;
                }
            }
            let _ = writer.close().await;
        };
        // The writer ends after the reader (the requester closed its side)
        // once every answer is out, or first, which ends the reader.
        futures::pin_mut!(read_requests);
        futures::pin_mut!(write_answers);
        if let futures::future::Either::Left(((), write_answers)) =
            futures::future::select(read_requests, write_answers).await
        {
            write_answers.await;
        }
    }

    /// Answers `Have`: which of the blocks are on disk right now.
    pub async fn handle_have(self, cids: Vec<Cid>, channel: ResponseChannel<Response>) {
        let Ok(_permit) = self.haves.clone().acquire_owned().await else { return };
        let store = self.store.clone();
        let present =
            crate::store::spawn_blocking(move || cids.iter().map(|c| store.has(c)).collect()).await;
        let response = match present {
            Ok(present) => Response::Have { present },
            Err(_) => Response::error(ErrorCode::Internal, "have task failed"),
        };
        self.net.respond(channel, response).await;
    }
}

/// Ends when a write to `peer` has taken no byte for [`STREAM_STALL`], or
/// for [`STREAM_STALL_CONTENDED`] while other peers wait for blocks.
async fn stall(progress: &std::sync::Mutex<Instant>, shares: &BlockShares, peer: &PeerId) {
    loop {
        tokio::time::sleep(STALL_CHECK).await;
        let since = progress.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        let contended = shares.contended_for(peer);
        let limit = if contended { STREAM_STALL_CONTENDED } else { STREAM_STALL };
        if since >= limit {
            return;
        }
    }
}

/// A writer that notes when it last took a byte.
struct Watched<'a, W> {
    inner: &'a mut W,
    progress: Arc<std::sync::Mutex<Instant>>,
}

impl<'a, W> Watched<'a, W> {
    fn new(inner: &'a mut W) -> Self {
        Watched { inner, progress: Arc::new(std::sync::Mutex::new(Instant::now())) }
    }

    fn moved(&self) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Watched<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written
            && *n > 0
        {
            self.moved();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut *self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.moved();
        }
        flushed
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_close(cx)
    }
}
