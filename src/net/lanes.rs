//! Block streams, the requester's side: long-lived streams to each peer
//! (`/dfs-p2p/blocks/1.0.0`, `protocols/file-protocol.md` section 11), on
//! which `GetBlock` requests are pipelined and answered in order. A
//! [`Lanes`] keeps up to [`LANES_PER_PEER`] such streams ("lanes") per
//! peer for the whole node, shared by every download, and hands requests
//! to them in turn.
//!
//! Why: a `request_response` exchange opens a new Yamux stream per block,
//! and every new stream starts with Yamux's 256 KiB receive window, which
//! grows only after round trips. A 1 MiB block then takes about five round
//! trips: at 80 ms, 32 blocks in flight carried 32 MiB per ~435 ms, 55% of
//! a 1 Gbit/s link. A lane's window grows once (Yamux doubles it while it
//! is used up within two round trips) and stays grown, so the requests in
//! flight, not the window, bound what is in the air. Several lanes start
//! with several windows: the first blocks of a get come through 8 × 256
//! KiB instead of 256 KiB, three doublings (three round trips) sooner at
//! the size that fills the link (`bench net --rtt 80 --rate 1000`: 105.5
//! MB/s with one lane, 111.5 with 4, 112.6 with 8).
//!
//! Bounds: at most [`LANE_DEPTH`] requests unanswered per lane (more wait
//! for room), [`MAX_LANES`] lanes (beyond that a request goes over
//! `request_response`, as to a peer that does not speak the protocol); a
//! lane with no answer for [`LANE_PROGRESS_TIMEOUT`] while requests are
//! unanswered fails them all and closes; one idle for [`LANE_IDLE`] closes.
//! What a lane reads is bounded by the codec (a frame's size is checked
//! before its body is read) and by Yamux's window, which grows only as fast
//! as the lane reads. Blocks are not checked here: the caller checks each
//! against its CID (`net::blocks`).
//!
//! [`ActiveStreams`] counts the block streams of each peer, both ways, so
//! that the event loop does not close a connection a stream is using.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cid::Cid;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use libp2p_stream::{Control, IncomingStreams, OpenStreamError};
use tokio::sync::{mpsc, oneshot};

use crate::net::codec::{self, BLOCKS_STREAM_PROTOCOL, Response};

/// Requests unanswered on one lane. Enough to cover a 1 Gbit/s link's
/// bandwidth-delay product at 250 ms with 1 MiB blocks; a download keeps
/// fewer in flight to one provider (`net::providers`), several downloads
/// share a lane.
pub const LANE_DEPTH: usize = 64;
/// Lanes to one peer, opened as requests come (a lone block opens one).
pub const LANES_PER_PEER: usize = 8;
/// Time between two lanes opened to one peer: streams that reach a
/// responder in the same instant are not all taken (libp2p-stream keeps
/// one waiting and drops the rest, see [`LaneError::Dropped`]).
pub const LANE_SPACING: Duration = Duration::from_millis(3);
/// Peers with lanes open at once.
pub const MAX_LANES: usize = 256;
/// How long a lane may go without an answer while it waits for one.
pub const LANE_PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a lane with nothing to ask stays open.
pub const LANE_IDLE: Duration = Duration::from_secs(30);
/// How long opening a lane (a dial, if needed, and the protocol
/// negotiation) may take.
pub const LANE_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer that does not speak the block stream is asked over
/// `request_response` before it is tried again, and how many such peers
/// are remembered.
pub const UNSUPPORTED_RETRY: Duration = Duration::from_secs(600);
pub const MAX_UNSUPPORTED: usize = 1024;

/// Why a lane did not bring an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LaneError {
    /// The peer does not speak the block stream (or no lane is free): ask
    /// over `request_response` instead.
    #[error("no block stream to the peer")]
    Unavailable,
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
    /// The stream ended before its first answer: the peer took no more
    /// streams just then (libp2p-stream drops an inbound stream its
    /// responder has not taken yet), or closed the connection. The request
    /// is asked again on a new lane, [`LANE_ATTEMPTS`] times at most.
    #[error("the block stream ended before its first answer")]
    Dropped,
}

/// Lanes a request is sent on, at most, when they end before their first
/// answer (see [`LaneError::Dropped`]); the pause before the next one
/// doubles from [`LANE_RETRY_PAUSE`].
pub const LANE_ATTEMPTS: u32 = 4;
pub const LANE_RETRY_PAUSE: Duration = Duration::from_millis(5);

type Reply = oneshot::Sender<Result<Response, LaneError>>;

/// The block streams of each peer, opened or accepted, counted while they
/// are open; shared by the lanes, the responder and the event loop.
#[derive(Clone, Default)]
pub struct ActiveStreams(Arc<Mutex<HashMap<PeerId, usize>>>);

/// One open block stream, counted until dropped.
pub struct StreamGuard {
    streams: ActiveStreams,
    peer: PeerId,
}

impl ActiveStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, usize>> {
        self.0.lock().expect("active streams lock")
    }

    /// Counts a stream of `peer` until the guard is dropped.
    pub fn enter(&self, peer: PeerId) -> StreamGuard {
        *self.lock().entry(peer).or_default() += 1;
        StreamGuard { streams: self.clone(), peer }
    }

    /// Block streams of `peer` open now.
    pub fn of(&self, peer: &PeerId) -> usize {
        self.lock().get(peer).copied().unwrap_or(0)
    }

    /// Block streams open now, in all.
    pub fn total(&self) -> usize {
        self.lock().values().sum()
    }

    /// The peers with a block stream open.
    pub fn peers(&self) -> Vec<PeerId> {
        self.lock().keys().copied().collect()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut map = self.streams.lock();
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

type Lane = tokio::sync::Mutex<Option<mpsc::Sender<(Cid, Reply)>>>;

/// A peer's lanes: where its requests are queued, or nothing yet; and
/// which lane the next request takes.
#[derive(Default)]
struct Slot {
    lanes: [Lane; LANES_PER_PEER],
    next: std::sync::atomic::AtomicUsize,
    /// When the last lane was opened, and the next may be.
    opened: Mutex<Option<tokio::time::Instant>>,
}

impl Slot {
    /// Whether a lane of the slot is open, or being opened.
    fn in_use(&self) -> bool {
        self.lanes.iter().any(|lane| {
            lane.try_lock().map_or(true, |l| l.as_ref().is_some_and(|s| !s.is_closed()))
        })
    }
}

/// The lanes of a node, up to [`LANES_PER_PEER`] per peer; cheap to share
/// (`Arc`).
pub struct Lanes {
    control: Mutex<Control>,
    slots: Mutex<HashMap<PeerId, Arc<Slot>>>,
    /// Peers that refused the protocol, and when.
    unsupported: Unsupported,
    active: ActiveStreams,
}

impl Lanes {
    pub fn new(control: Control, active: ActiveStreams) -> Self {
        Lanes {
            control: Mutex::new(control),
            slots: Mutex::default(),
            unsupported: Unsupported::default(),
            active,
        }
    }

    /// The block streams open now, both ways.
    pub fn active(&self) -> &ActiveStreams {
        &self.active
    }

    /// The block streams peers open to this node, for its responder;
    /// `None` if they are already taken.
    pub fn incoming(&self) -> Option<IncomingStreams> {
        self.control.lock().expect("control lock").accept(BLOCKS_STREAM_PROTOCOL).ok()
    }

    /// Asks `peer` for the block `cid` on its lane, opening the lane if
    /// needed; waits at most `timeout` for the answer (queueing included).
    /// [`LaneError::Unavailable`] means: ask over `request_response`.
    pub async fn get_block(
        &self,
        peer: PeerId,
        cid: Cid,
        timeout: Duration,
    ) -> Result<Response, LaneError> {
        if self.unsupported.refused(&peer) {
            return Err(LaneError::Unavailable);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let asked = async {
            // A lane may close between being handed out and being used
            // (it idled out, or ended before its first answer), or fail
            // under the request (its connection closed: the peer restarted
            // with the same identity, and a new connection is up or comes
            // with the next dial): the request was not answered, and
            // asking again is harmless, so ask on a new lane at once
            // rather than let the download rest the peer.
            let mut pause = LANE_RETRY_PAUSE;
            for attempt in 1..=LANE_ATTEMPTS {
                let lane = self.lane(peer).await?;
                let (reply, answer) = oneshot::channel();
                if lane.send((cid, reply)).await.is_ok() {
                    match answer.await {
                        Ok(Err(LaneError::Failed(_))) if attempt < LANE_ATTEMPTS => {
                            // Its connection is gone, and so are the other
                            // lanes on it: open new ones (on the peer's
                            // live connection) rather than try each dead
                            // one in turn.
                            self.slots.lock().expect("lanes lock").remove(&peer);
                        }
                        Ok(Err(LaneError::Dropped)) | Err(_) if attempt < LANE_ATTEMPTS => {}
                        Ok(answer) => return answer,
                        Err(_) => return Err(LaneError::Failed("lane closed".into())),
                    }
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(LaneError::Dropped)
        };
        tokio::time::timeout_at(deadline, asked).await.map_err(|_| LaneError::Timeout(timeout))?
    }

    /// The next lane of `peer` in turn, opened now if it is not open.
    async fn lane(&self, peer: PeerId) -> Result<mpsc::Sender<(Cid, Reply)>, LaneError> {
        let slot = {
            let mut slots = self.slots.lock().expect("lanes lock");
            if !slots.contains_key(&peer) && slots.len() >= MAX_LANES {
                slots.retain(|_, slot| slot.in_use());
                if slots.len() >= MAX_LANES {
                    return Err(LaneError::Unavailable);
                }
            }
            slots.entry(peer).or_default().clone()
        };
        let turn = slot.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % LANES_PER_PEER;
        // One opener per lane; the others wait for it.
        let mut lane = slot.lanes[turn].lock().await;
        if let Some(sender) = lane.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let due = {
            let mut opened = slot.opened.lock().expect("lane spacing lock");
            let now = tokio::time::Instant::now();
            let due = opened.map_or(now, |at| (at + LANE_SPACING).max(now));
            *opened = Some(due);
            due
        };
        tokio::time::sleep_until(due).await;
        let mut control = self.control.lock().expect("control lock").clone();
        let opened = tokio::time::timeout(
            LANE_OPEN_TIMEOUT,
            control.open_stream(peer, BLOCKS_STREAM_PROTOCOL),
        )
        .await;
        let stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(OpenStreamError::UnsupportedProtocol(_))) => {
                tracing::debug!("{peer} does not speak the block stream");
                self.unsupported.refuse(peer);
                return Err(LaneError::Unavailable);
            }
            Ok(Err(e)) => {
                return Err(LaneError::Failed(format!("cannot open a block stream: {e}")));
            }
            Err(_) => return Err(LaneError::Timeout(LANE_OPEN_TIMEOUT)),
        };
        let (sender, requests) = mpsc::channel(LANE_DEPTH);
        let guard = self.active.enter(peer);
        tokio::spawn(run_lane(peer, stream, requests, guard, self.unsupported.clone()));
        *lane = Some(sender.clone());
        Ok(sender)
    }
}

/// The peers that refused the block stream, and when; shared with the
/// lanes, which learn it from their first answer.
#[derive(Clone, Default)]
struct Unsupported(Arc<Mutex<HashMap<PeerId, Instant>>>);

impl Unsupported {
    fn refused(&self, peer: &PeerId) -> bool {
        let mut unsupported = self.0.lock().expect("unsupported lock");
        match unsupported.get(peer) {
            Some(at) if at.elapsed() < UNSUPPORTED_RETRY => true,
            Some(_) => {
                unsupported.remove(peer);
                false
            }
            None => false,
        }
    }

    fn refuse(&self, peer: PeerId) {
        let mut unsupported = self.0.lock().expect("unsupported lock");
        if unsupported.len() >= MAX_UNSUPPORTED {
            unsupported.retain(|_, at| at.elapsed() < UNSUPPORTED_RETRY);
            if unsupported.len() >= MAX_UNSUPPORTED {
                return;
            }
        }
        unsupported.insert(peer, Instant::now());
    }
}

/// Whether a block stream's read failed because the peer refused the
/// protocol: streams are opened without waiting for the peer to confirm
/// it (`behaviour::swarm_config`), so its `na` is the first read's error.
fn refused_protocol(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<libp2p::core::upgrade::NegotiationError>())
        .is_some_and(|e| matches!(e, libp2p::core::upgrade::NegotiationError::Failed))
}

/// Runs one lane until it fails, idles out, or nobody can use it: one half
/// writes the requests in the order they come, the other reads the answers
/// in the same order and hands each to its asker.
async fn run_lane(
    peer: PeerId,
    stream: libp2p::Stream,
    mut requests: mpsc::Receiver<(Cid, Reply)>,
    _guard: StreamGuard,
    unsupported: Unsupported,
) {
    let (mut reader, mut writer) = stream.split();
    // Whether an answer came: until then a failure is `Dropped`.
    let answered = std::sync::atomic::AtomicBool::new(false);
    let failure = |e: std::io::Error| {
        if answered.load(std::sync::atomic::Ordering::Relaxed) {
            LaneError::Failed(format!("block stream: {e}"))
        } else {
            LaneError::Dropped
        }
    };
    let (answered, failure) = (&answered, &failure);
    // The askers of the requests written and not yet answered, oldest
    // first; its capacity is the lane's depth.
    let (unanswered, mut waiting) = mpsc::channel::<Reply>(LANE_DEPTH);
    let write = async move {
        loop {
            let next = tokio::time::timeout(LANE_IDLE, requests.recv()).await;
            let Ok(Some((cid, reply))) = next else { break };
            if reply.is_closed() {
                continue; // its asker gave up while it queued
            }
            // Room among the unanswered first, so that an answer never
            // comes before its asker is in line.
            let Ok(permit) = unanswered.reserve().await else { break };
            let written = tokio::time::timeout(LANE_PROGRESS_TIMEOUT, async {
                codec::write_block_request(&mut writer, &cid).await?;
                writer.flush().await
            })
            .await;
            match written {
                Ok(Ok(())) => permit.send(reply),
                Ok(Err(e)) => {
                    let _ = reply.send(Err(failure(e)));
                    break;
                }
                Err(_) => {
                    let _ = reply.send(Err(LaneError::Timeout(LANE_PROGRESS_TIMEOUT)));
                    break;
                }
            }
        }
        // No more requests: the responder answers those written, then
        // sees the end of the stream.
        let _ = writer.close().await;
    };
    let read = async move {
        while let Some(reply) = waiting.recv().await {
            let read = tokio::time::timeout(
                LANE_PROGRESS_TIMEOUT,
                codec::read_block_response(&mut reader),
            )
            .await;
            let failure = match read {
                Ok(Ok(response)) => {
                    answered.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = reply.send(Ok(response));
                    continue;
                }
                // Those asking go over `request_response` instead.
                Ok(Err(e)) if refused_protocol(&e) => {
                    unsupported.refuse(peer);
                    LaneError::Unavailable
                }
                Ok(Err(e)) => failure(e),
                Err(_) => LaneError::Timeout(LANE_PROGRESS_TIMEOUT),
            };
            tracing::debug!("block stream to {peer} failed: {failure}");
            let _ = reply.send(Err(failure.clone()));
            waiting.close();
            while let Some(reply) = waiting.recv().await {
                let _ = reply.send(Err(failure.clone()));
            }
            return;
        }
    };
    // The reader ends when the writer has ended and every answer is in,
    // or on the first failure, which ends the writer too.
    futures::pin_mut!(write);
    futures::pin_mut!(read);
    match futures::future::select(write, read).await {
        futures::future::Either::Left(((), read)) => read.await,
        futures::future::Either::Right(((), _write)) => {}
    }
}
