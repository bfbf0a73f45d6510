//! The raw-stream baseline of `bench net`: one libp2p stream over the same
//! TCP (nodelay) + Noise + Yamux transport as the nodes, carrying N bytes
//! from a `request_response` codec that writes them and counts them on the
//! other side without storing them. No hashing, no disk, no crypto beyond
//! Noise: what the transport gives. Its serving end runs in this process
//! or in a child (`dfs-p2p bench raw-serve`).
//!
//! A *checked* raw stream's reader also does, to every MiB it reads, the
//! two checks a getting node cannot skip: SHA-256 (a block's CID) and
//! AES-256-GCM (a leaf's decryption). What its reader spends per GB is the
//! floor of a get's CPU, measured on data fresh from the socket, as a
//! get's is.

use std::{
    io,
    time::{Duration, Instant},
};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, noise,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
    tcp, yamux,
};

use crate::node::NodeError;

const RAW_PROTOCOL: StreamProtocol = StreamProtocol::new("/dfs-p2p/bench-raw/1.0.0");
const RAW_BUF: usize = 1024 * 1024;

/// Asks for N bytes (8-byte request); the answer is N bytes on the stream,
/// counted (and checked, when `checked`) and dropped by the reader.
#[derive(Clone, Default)]
struct RawCodec {
    checked: bool,
}

/// SHA-256 of `block`, and AES-256-GCM over it (sealing costs what opening
/// does: one AES-CTR pass and one GHASH).
fn check(block: &mut [u8]) {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use sha2::{Digest, Sha256};
    std::hint::black_box(Sha256::digest(&*block));
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).expect("a 32-byte key"));
    let nonce = Nonce::assume_unique_for_key([0; 12]);
    let _ = std::hint::black_box(key.seal_in_place_separate_tag(nonce, Aad::empty(), block));
}

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = u64;
    type Response = u64;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<u64> {
        let mut len = [0u8; 8];
        io.read_exact(&mut len).await?;
        Ok(u64::from_be_bytes(len))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<u64> {
        let mut buf = vec![0u8; RAW_BUF];
        let (mut total, mut filled) = (0u64, 0usize);
        loop {
            let n = io.read(&mut buf[filled..]).await?;
            total += n as u64;
            filled = if self.checked { filled + n } else { 0 };
            if filled == RAW_BUF || (n == 0 && filled > 0) {
                check(&mut buf[..filled]);
                filled = 0;
            }
            if n == 0 {
                return Ok(total);
            }
        }
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        len: u64,
    ) -> io::Result<()> {
        io.write_all(&len.to_be_bytes()).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        len: u64,
    ) -> io::Result<()> {
        let buf = vec![0x5Au8; RAW_BUF];
        let mut left = len;
        while left > 0 {
            let n = left.min(RAW_BUF as u64) as usize;
            io.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        Ok(())
    }
}

type RawSwarm = Swarm<request_response::Behaviour<RawCodec>>;

fn raw_swarm(checked: bool) -> Result<RawSwarm, NodeError> {
    let behaviour = request_response::Behaviour::with_codec(
        RawCodec { checked },
        [(RAW_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(600)),
    );
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// A raw-stream server listening on loopback, and its full address.
async fn raw_listener() -> Result<(RawSwarm, Multiaddr), NodeError> {
    let mut server = raw_swarm(false)?;
    server
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("valid address"))
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            let peer = *server.local_peer_id();
            return Ok((server, address.with(libp2p::multiaddr::Protocol::P2p(peer))));
        }
    }
}

/// Answers a raw-stream request, if `event` is one.
fn answer(server: &mut RawSwarm, event: SwarmEvent<request_response::Event<u64, u64>>) {
    if let SwarmEvent::Behaviour(request_response::Event::Message {
        message: request_response::Message::Request { request, channel, .. },
        ..
    }) = event
    {
        let _ = server.behaviour_mut().send_response(channel, request);
    }
}

/// The serving end of the raw stream in a process of its own (`dfs-p2p
/// bench raw-serve`): prints its address on stdout, then answers until its
/// stdin closes.
pub async fn raw_serve() -> Result<(), NodeError> {
    use std::io::Write;
    let (mut server, addr) = raw_listener().await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{addr}").and_then(|()| stdout.flush()).map_err(|e| {
        NodeError::Transport(format!("cannot report the raw server's address: {e}"))
    })?;
    let stdin_closed = crate::store::spawn_blocking(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    });
    tokio::pin!(stdin_closed);
    loop {
        tokio::select! {
            _ = &mut stdin_closed => return Ok(()),
            event = server.select_next_some() => answer(&mut server, event),
        }
    }
}

/// The serving end of the raw stream as a task of this process, answering
/// until the task is aborted; and its full address.
pub async fn raw_server_task() -> Result<(Multiaddr, tokio::task::JoinHandle<()>), NodeError> {
    let (mut server, addr) = raw_listener().await?;
    let task = tokio::spawn(async move {
        loop {
            let event = server.select_next_some().await;
            answer(&mut server, event);
        }
    });
    Ok((addr, task))
}

/// One transfer of `size` bytes over one raw stream, `checked` or not;
/// returns bytes/s. The serving end is `remote` (a `raw-serve` process) or,
/// without one, a swarm in this process.
pub async fn raw_stream(
    size: u64,
    remote: Option<&Multiaddr>,
    checked: bool,
) -> Result<f64, NodeError> {
    let mut client = raw_swarm(checked)?;
    let (addr, server_task) = match remote {
        Some(addr) => (addr.clone(), None),
        None => {
            let (addr, task) = raw_server_task().await?;
            (addr, Some(task))
        }
    };
    let Some(libp2p::multiaddr::Protocol::P2p(server_peer)) = addr.iter().last() else {
        return Err(NodeError::Transport(format!("no peer id in {addr}")));
    };
    let dial =
        libp2p::swarm::dial_opts::DialOpts::peer_id(server_peer).addresses(vec![addr]).build();
    client.dial(dial).map_err(|e| NodeError::Transport(e.to_string()))?;
    // Connect first (not timed), with a one-byte transfer.
    let mut timed = None;
    let mut started = Instant::now();
    let mut id = client.behaviour_mut().send_request(&server_peer, 1);
    let result = loop {
        match client.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) if request_id == id => {
                if timed.is_none() {
                    started = Instant::now();
                    id = client.behaviour_mut().send_request(&server_peer, size);
                    timed = Some(());
                    continue;
                }
                if response != size {
                    break Err(NodeError::Transport(format!(
                        "raw stream carried {response} of {size} bytes"
                    )));
                }
                break Ok(size as f64 / started.elapsed().as_secs_f64());
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                break Err(NodeError::Transport(format!("raw stream failed: {error}")));
            }
            _ => {}
        }
    };
    if let Some(task) = server_task {
        task.abort();
    }
    result
}
