//! The async export: the walk's leaves as an ordered window of futures,
//! polled in the task that awaits [`stream`], and written out in order by a
//! second future of the same task. The walk itself is cheap; what is not
//! (reading, verifying, decrypting, storing a block) the [`LeafSource`]
//! runs on the store's seam, a bounded pool shared by the whole node. A get
//! thus holds no thread while it waits for the network, and any number of
//! them share the same few threads.

use std::{future::Future, io::Write};

use cid::Cid;
use futures::{StreamExt, stream::FuturesOrdered};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use super::walk::{Leaf, Step, Walker};
use crate::{
    block::BlockBuf,
    crypto::Key,
    dag::{FileMeta, Opened},
    error::{Error, Result},
    progress::Progress,
    store,
};

/// Where the async export gets its blocks from. Every block it hands over
/// is verified against its CID first.
pub trait LeafSource: Sync {
    /// A structure node, opened with [`open_node`](super::open_node).
    fn open(&self, cid: Cid, key: Key) -> impl Future<Output = Result<Opened>> + Send;
    /// A leaf's wanted plaintext, opened with [`open_leaf`](super::open_leaf).
    fn leaf(&self, leaf: Leaf) -> impl Future<Output = Result<BlockBuf>> + Send;
}

/// An [`Output::Async`] that hands what is written to a bounded channel,
/// as `wrap(bytes)` in pieces of at most `max` bytes, on the runtime: a
/// slow reader at the other end (an HTTP client, a control client) holds
/// its get's leaves, not a thread. A closed channel is a broken pipe.
pub struct ChannelWriter<T: Send + 'static> {
    tx: tokio_util::sync::PollSender<T>,
    wrap: fn(tokio_util::bytes::Bytes) -> T,
    max: usize,
}

impl<T: Send + 'static> ChannelWriter<T> {
    pub fn new(tx: mpsc::Sender<T>, wrap: fn(tokio_util::bytes::Bytes) -> T, max: usize) -> Self {
        ChannelWriter { tx: tokio_util::sync::PollSender::new(tx), wrap, max: max.max(1) }
    }
}

impl<T: Send + 'static> AsyncWrite for ChannelWriter<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let gone = |_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader went away");
        std::task::ready!(self.tx.poll_reserve(cx)).map_err(gone)?;
        let n = buf.len().min(self.max);
        let item = (self.wrap)(tokio_util::bytes::Bytes::copy_from_slice(&buf[..n]));
        self.tx.send_item(item).map_err(gone)?;
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Leaves handed to the writer and not written yet (beyond the window).
const WRITE_QUEUE: usize = 2;
/// Leaves a blocking output writes in one job, when that many are ready.
const WRITE_BATCH: usize = 8;

/// Where an async export writes.
pub enum Output {
    /// A blocking writer (a file, standard output): written on a blocking
    /// thread, the leaves that are ready at a time.
    Blocking(Box<dyn Write + Send>),
    /// An async writer (an HTTP body): written on the runtime.
    Async(Box<dyn AsyncWrite + Send + Unpin>),
}

impl<W: Write + Send + ?Sized + 'static> From<Box<W>> for Output {
    fn from(writer: Box<W>) -> Self {
        Output::Blocking(Box::new(writer))
    }
}

/// How to stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// `(offset, len)` of the bytes wanted; `None` for the whole file.
    pub range: Option<(u64, u64)>,
    /// Leaves in flight or waiting to be written.
    pub window: usize,
}

/// Fetches and opens the root: the file's metadata and top-level children.
pub async fn open_root_async(
    source: &impl LeafSource,
    root: &Cid,
    key: &Key,
) -> Result<(FileMeta, Opened)> {
    super::check_root(root, source.open(*root, *key).await?)
}

/// Writes the file under `root` (opened with [`open_root_async`]), or
/// `options.range` of it, to `out`; returns the bytes written. Wrong bytes
/// are never written: the source verifies and authenticates every block,
/// and the first failure stops the export and names the block.
pub async fn stream(
    source: &impl LeafSource,
    root: (&Cid, &FileMeta, &Opened),
    out: Output,
    options: &StreamOptions,
    progress: Option<Progress<'_>>,
) -> Result<u64> {
    let (root_cid, meta, opened) = root;
    let (offset, len, end) = super::span(options.range, meta.size)?;
    if len == 0 {
        return Ok(0);
    }
    let window = options.window.max(1);
    let mut walker = Walker::new(*root_cid, opened, offset, end);
    let (leaves, ready) = mpsc::channel::<BlockBuf>(WRITE_QUEUE);
    let fetch = async move {
        let send = |bytes| {
            let leaves = leaves.clone();
            // The writer stopped: it says why.
            async move { leaves.send(bytes).await.map_err(|_| Error::Cancelled) }
        };
        let mut pending = FuturesOrdered::new();
        let mut walked = false;
        loop {
            while !walked && pending.len() < window {
                match walker.next_step()? {
                    Step::Leaf(leaf) => pending.push_back(source.leaf(leaf)),
                    Step::Open(cid, key) => {
                        // The leaves in flight keep moving while the node
                        // comes.
                        let open = source.open(cid, key);
                        tokio::pin!(open);
                        let node = loop {
                            tokio::select! {
                                biased;
                                node = &mut open => break node?,
                                Some(bytes) = pending.next(), if !pending.is_empty() => {
                                    send(bytes?).await?;
                                }
                            }
                        };
                        walker.enter(node)?;
                    }
                    Step::Done => walked = true,
                }
            }
            match pending.next().await {
                Some(bytes) => send(bytes?).await?,
                None => return Ok::<_, Error>(()),
            }
        }
    };
    let (fetched, written) = tokio::join!(fetch, write_out(out, ready, len, progress));
    let written = written?;
    fetched?;
    if written != len {
        return Err(Error::Internal(format!(
            "the export stopped after {written} of {len} bytes without saying why"
        )));
    }
    Ok(written)
}

fn output_error(e: std::io::Error) -> Error {
    Error::Io { context: "cannot write the output".into(), source: e }
}

/// Writes the leaves in the order they come until the fetch ends, then
/// flushes; returns the bytes written.
async fn write_out(
    out: Output,
    mut ready: mpsc::Receiver<BlockBuf>,
    len: u64,
    progress: Option<Progress<'_>>,
) -> Result<u64> {
    let mut written = 0u64;
    let mut advance = |n: usize| {
        written += n as u64;
        if let Some(progress) = progress {
            progress(written, Some(len));
        }
    };
    match out {
        Output::Async(mut out) => {
            while let Some(bytes) = ready.recv().await {
                out.write_all(&bytes).await.map_err(output_error)?;
                advance(bytes.len());
            }
            out.flush().await.map_err(output_error)?;
        }
        Output::Blocking(out) => {
            let mut out = Some(out);
            let mut batch = Vec::with_capacity(WRITE_BATCH);
            loop {
                if ready.recv_many(&mut batch, WRITE_BATCH).await == 0 {
                    break;
                }
                let mut writer = out.take().expect("the writer is back after every job");
                let bytes: usize = batch.iter().map(|b| b.len()).sum();
                let leaves = std::mem::take(&mut batch);
                let (writer, result) = store::spawn_blocking(move || {
                    let result = leaves.iter().try_for_each(|b| writer.write_all(b));
                    // Dropping the leaves hands their buffers back.
                    drop(leaves);
                    (writer, result)
                })
                .await
                .map_err(|e| store::joined(e, "writing the output"))?;
                result.map_err(output_error)?;
                out = Some(writer);
                advance(bytes);
            }
            let mut writer = out.take().expect("the writer is back after every job");
            store::spawn_blocking(move || writer.flush())
                .await
                .map_err(|e| store::joined(e, "writing the output"))?
                .map_err(output_error)?;
        }
    }
    Ok(written)
}
