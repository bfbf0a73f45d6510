//! The links of `bench net` as the benchmark drives them: in this process
//! or in a child process of their own (`dfs-p2p bench link-proxy`), opened
//! in front of a target and read for what they carried.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Stdio},
    sync::{Arc, Mutex},
};

use libp2p::{Multiaddr, multiaddr::Protocol};

use super::{LINK_ANSWER, child_command, stop_child};
use crate::{
    bench::proxy::{self, Link, LinkProxy},
    node::NodeError,
};

/// The IP address and TCP port of `addr`.
pub(super) fn socket_addr(addr: &Multiaddr) -> Result<SocketAddr, NodeError> {
    let (mut ip, mut port) = (None, None);
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    ip.zip(port)
        .map(|(ip, port)| SocketAddr::new(ip, port))
        .ok_or_else(|| NodeError::Transport(format!("no IP address and TCP port in {addr}")))
}

/// The address of a link on loopback port `port`, in front of the peer of
/// `target` (a full address, ending with `/p2p/<peer id>`).
pub(super) fn through(port: u16, target: &Multiaddr) -> Result<Multiaddr, NodeError> {
    let Some(Protocol::P2p(peer)) = target.iter().last() else {
        return Err(NodeError::Transport(format!("no peer id in {target}")));
    };
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("valid address");
    Ok(addr.with(Protocol::P2p(peer)))
}

/// What a link forwarded toward the side that connects to it, and the
/// connections it took.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LinkCount {
    pub(super) from_target: u64,
    pub(super) connections: u64,
}

impl LinkCount {
    /// What the links in `which` carried between two readings, together.
    pub(super) fn since(
        now: &[LinkCount],
        before: &[LinkCount],
        which: impl std::slice::SliceIndex<[LinkCount], Output = [LinkCount]> + Clone,
    ) -> LinkCount {
        let (now, before) = (&now[which.clone()], &before[which]);
        now.iter().zip(before).fold(LinkCount::default(), |sum, (n, b)| LinkCount {
            from_target: sum.from_target + n.from_target.saturating_sub(b.from_target),
            connections: sum.connections + n.connections.saturating_sub(b.connections),
        })
    }
}

/// The links in front of the serving nodes and of the raw stream, in the
/// order they were opened: in a process of their own when the nodes run in
/// theirs, in this one otherwise.
pub(super) enum Links {
    InProcess(Vec<LinkProxy>),
    Process(LinkProcess),
}

impl Links {
    /// Opens a link in front of `target`; returns its port on loopback.
    pub(super) async fn open(&mut self, target: SocketAddr, link: Link) -> Result<u16, NodeError> {
        match self {
            Links::InProcess(proxies) => {
                let proxy = LinkProxy::start(target, link)
                    .await
                    .map_err(|e| NodeError::Transport(format!("cannot start a link: {e}")))?;
                let port = proxy.local_addr().port();
                proxies.push(proxy);
                Ok(port)
            }
            Links::Process(process) => {
                let answer = process.ask(proxy::open_line(target, link)).await?;
                answer.trim().parse().map_err(|_| {
                    NodeError::Transport(format!("the links' process answered {answer:?}"))
                })
            }
        }
    }

    /// What each link has carried so far.
    pub(super) async fn counts(&self) -> Result<Vec<LinkCount>, NodeError> {
        match self {
            Links::InProcess(proxies) => Ok(proxies
                .iter()
                .map(|p| LinkCount { from_target: p.from_target(), connections: p.connections() })
                .collect()),
            Links::Process(process) => {
                let answer = process.ask("count".into()).await?;
                let numbers: Result<Vec<u64>, _> =
                    answer.split_whitespace().map(str::parse).collect();
                match numbers {
                    Ok(numbers) if numbers.len() % 3 == 0 => Ok(numbers
                        .chunks(3)
                        .map(|c| LinkCount { from_target: c[1], connections: c[2] })
                        .collect()),
                    _ => {
                        Err(NodeError::Transport(format!("the links' process answered {answer:?}")))
                    }
                }
            }
        }
    }

    /// The links' process, if they have one.
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            Links::InProcess(_) => None,
            Links::Process(process) => Some(process.child.id()),
        }
    }

    pub(super) fn stop(self) {
        if let Links::Process(process) = self {
            process.stop();
        }
    }
}

/// The links in a child process (`dfs-p2p bench link-proxy`), driven
/// through its stdin and stdout (see `proxy::serve_links`).
pub(super) struct LinkProcess {
    child: Child,
    pipes: Arc<Mutex<(ChildStdin, io::BufReader<ChildStdout>)>>,
}

impl LinkProcess {
    pub(super) fn start(exe: &Path) -> Result<LinkProcess, NodeError> {
        let failed =
            |e: String| NodeError::Transport(format!("cannot start the links' process: {e}"));
        let mut child = child_command(exe)
            .args(["bench", "link-proxy"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            stop_child(&mut child);
            return Err(failed("no pipes".into()));
        };
        Ok(LinkProcess { child, pipes: Arc::new(Mutex::new((stdin, io::BufReader::new(stdout)))) })
    }

    /// Sends one command line and returns the line that answers it.
    async fn ask(&self, line: String) -> Result<String, NodeError> {
        let pipes = self.pipes.clone();
        let exchange = crate::store::spawn_blocking(move || -> io::Result<String> {
            use std::io::{BufRead, Write};
            let mut pipes = pipes.lock().expect("link pipes");
            let (stdin, stdout) = &mut *pipes;
            writeln!(stdin, "{line}")?;
            stdin.flush()?;
            let mut answer = String::new();
            match stdout.read_line(&mut answer)? {
                0 => Err(io::ErrorKind::UnexpectedEof.into()),
                _ => Ok(answer),
            }
        });
        let failed = |e: String| NodeError::Transport(format!("the links' process: {e}"));
        // A process that does not answer is stopped at the end, which also
        // ends the read.
        match tokio::time::timeout(LINK_ANSWER, exchange).await {
            Err(_) => Err(failed("no answer".into())),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Ok(Ok(Err(e))) => Err(failed(e.to_string())),
            Ok(Ok(Ok(answer))) if answer.starts_with("error") => Err(failed(answer.trim().into())),
            Ok(Ok(Ok(answer))) => Ok(answer),
        }
    }

    pub(super) fn stop(self) {
        // The end of its stdin stops it.
        let LinkProcess { mut child, pipes } = self;
        drop(pipes);
        stop_child(&mut child);
    }
}
