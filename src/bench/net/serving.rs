//! The serving side of `bench net`: the file placed on the serving nodes,
//! the nodes started (child processes of this binary, or in this process),
//! and the raw stream's serving end in a child process.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

use super::{SERVER_START, child_command, stop_child};
use crate::{
    Ticket,
    node::{Node, NodeConfig, NodeError, PutOptions},
    store::{Store, StoreOptions},
    testdata::Generator,
};

/// How the file reached the serving nodes.
pub(super) enum Placed {
    /// Imported into the one serving node's data directory.
    Imported { ticket: Ticket, peer: PeerId },
    /// Put on the first of these nodes, running in this process, with a
    /// copy on each of the others.
    Running { ticket: Ticket, nodes: Vec<Node> },
}

/// Puts a file of `size` bytes on a node on the first of `dirs`, asking for
/// a copy on every node: the nodes on the others take replicas of it, under
/// the same ticket. Returns the ticket and the nodes, still running (in
/// this process, listening on loopback).
pub(super) async fn place_copies(
    size: u64,
    dirs: &[PathBuf],
) -> Result<(Ticket, Vec<Node>), NodeError> {
    let mut nodes: Vec<Node> = Vec::new();
    let placed = async {
        let mut first = Vec::new();
        for dir in dirs {
            let mut config = NodeConfig::new(dir.clone());
            config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid address")];
            config.bootstrap = first.clone();
            config.replicas = dirs.len();
            let node = Node::start(config).await?;
            if first.is_empty() {
                first = node.listen_addrs().await;
            }
            nodes.push(node);
        }
        let others = dirs.len() - 1;
        let reached = nodes[0].wait_for_peers(others, SERVER_START).await;
        if reached < others {
            return Err(NodeError::Transport(format!(
                "{reached} of the other {others} serving nodes joined the first"
            )));
        }
        let options =
            PutOptions { name: Some("bench".into()), total: Some(size), ..Default::default() };
        let put = nodes[0].put_with(Box::new(Generator::new(size)), options).await?;
        if put.copies < dirs.len() {
            let failed: Vec<String> = put.failed.iter().map(|(p, e)| format!("{p}: {e}")).collect();
            return Err(NodeError::Transport(format!(
                "the file reached {} of the {} serving nodes ({})",
                put.copies,
                dirs.len(),
                failed.join("; ")
            )));
        }
        Ok(put.ticket)
    }
    .await;
    match placed {
        Ok(ticket) => Ok((ticket, nodes)),
        Err(e) => {
            for node in nodes {
                node.shutdown().await;
            }
            Err(e)
        }
    }
}

/// Starts the serving nodes on the file `placed`: child processes when
/// `exe` is given (this binary), in this process otherwise. Each goes into
/// `servers` as soon as it runs; returns their full addresses.
pub(super) async fn start_servers(
    placed: Placed,
    dirs: &[PathBuf],
    exe: Option<&Path>,
    servers: &mut Vec<Server>,
) -> Result<Vec<Multiaddr>, NodeError> {
    let mut addrs = Vec::new();
    match placed {
        Placed::Imported { peer, .. } => {
            let port = free_port()?;
            let listen: Multiaddr =
                format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("valid address");
            servers.push(match exe {
                Some(exe) => Server::Child(spawn_server(exe, &listen, &dirs[0])?),
                None => {
                    let mut config = NodeConfig::new(dirs[0].clone());
                    config.listen = vec![listen.clone()];
                    config.replicas = 1;
                    Server::InProcess(Node::start(config).await?)
                }
            });
            addrs.push(listen.with(Protocol::P2p(peer)));
        }
        Placed::Running { nodes, .. } => {
            let Some(exe) = exe else {
                for node in nodes {
                    let listening = node.listen_addrs().await;
                    servers.push(Server::InProcess(node));
                    let addr = listening.into_iter().next().ok_or_else(|| {
                        NodeError::Transport("a serving node has no listen address".into())
                    })?;
                    addrs.push(addr);
                }
                return Ok(addrs);
            };
            // The same data directories, served by child processes.
            let peers: Vec<PeerId> = nodes.iter().map(Node::peer_id).collect();
            for node in nodes {
                node.shutdown().await;
            }
            for (dir, peer) in dirs.iter().zip(peers) {
                wait_unlocked(dir).await?;
                let port = free_port()?;
                let listen: Multiaddr =
                    format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("valid address");
                servers.push(Server::Child(spawn_server(exe, &listen, dir)?));
                addrs.push(listen.with(Protocol::P2p(peer)));
            }
        }
    }
    Ok(addrs)
}

/// Waits until no one holds the lock of the data directory `dir` (a node
/// of this process that stopped lets it go once its last task ends).
pub(super) async fn wait_unlocked(dir: &Path) -> Result<(), NodeError> {
    let deadline = Instant::now() + SERVER_START;
    loop {
        let path = dir.to_path_buf();
        let opened = crate::store::spawn_blocking(move || {
            Store::open_unindexed(path, StoreOptions::default()).map(drop)
        })
        .await
        .map_err(|_| NodeError::Stopped)?;
        match opened {
            Ok(()) => return Ok(()),
            Err(crate::error::Error::InUse { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until something accepts TCP connections at `addr`.
pub(super) async fn wait_listening(addr: SocketAddr) -> Result<(), NodeError> {
    let deadline = Instant::now() + SERVER_START;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() >= deadline {
            return Err(NodeError::Transport(format!(
                "the serving node at {addr} did not come up"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(super) enum Server {
    Child(Child),
    InProcess(Node),
}

impl Server {
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            Server::Child(child) => Some(child.id()),
            Server::InProcess(_) => None,
        }
    }
}

pub(super) fn spawn_server(exe: &Path, listen: &Multiaddr, dir: &Path) -> Result<Child, NodeError> {
    let mut command = child_command(exe);
    command
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--data-dir")
        .arg(dir)
        .arg("--replicas")
        .arg("1")
        .env_remove("DFS_DATA_DIR")
        .stdout(Stdio::null());
    command.spawn().map_err(|e| {
        NodeError::Transport(format!("cannot start the serving node {}: {e}", exe.display()))
    })
}
/// The serving end of the raw stream in a child process (`bench raw-serve`).
pub(super) struct RawServer {
    pub(super) child: Child,
    pub(super) addr: Multiaddr,
}

impl RawServer {
    pub(super) async fn start(exe: &Path) -> Result<RawServer, NodeError> {
        let failed = |e: String| NodeError::Transport(format!("cannot start the raw server: {e}"));
        let mut child = child_command(exe)
            .args(["bench", "raw-serve"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let stdout = child.stdout.take().ok_or_else(|| failed("no stdout".into()))?;
        let read = crate::store::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line)
        });
        // A child that never reports is stopped, which also ends the read.
        let addr = match tokio::time::timeout(SERVER_START, read).await {
            Err(_) => Err(failed("it did not report its address".into())),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Ok(Ok(Err(e))) => Err(failed(e.to_string())),
            Ok(Ok(Ok(line))) => {
                line.trim().parse::<Multiaddr>().map_err(|e| failed(format!("{line:?}: {e}")))
            }
        };
        match addr {
            Ok(addr) => Ok(RawServer { child, addr }),
            Err(e) => {
                stop_child(&mut child);
                Err(e)
            }
        }
    }
}
pub(super) fn free_port() -> Result<u16, NodeError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| NodeError::Transport(format!("cannot find a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| NodeError::Transport(format!("cannot find a free port: {e}")))
}
